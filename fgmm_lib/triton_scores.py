"""Fused Triton kernels for the fine-grained pair scores (STUDY.md section 2).

``triton_pair_scores`` computes S[i, j] for every video i and text j without ever holding the
[Bv, Bt, N, M] cell-phrase similarity tensor. One forward program handles one (video, text)
pair: it streams over blocks of cells, computes the similarity tile s[n, m] with ``tl.dot``
over D, and keeps running statistics (an online softmax, as in FlashAttention):

- per phrase m (a column): running max, normaliser and weighted sum of the softmax over cells,
  giving c[m] and its log-sum-exp (``attention``), or the running max and its cell (``max``);
- per cell n (a row): all phrases are in the tile, so e[n] (or the row max) is local;
- per pair: the online softmax over cells of e / tau_w gives v2t; the phrase weighting gives t2v.

The forward writes S [Bv, Bt], per-phrase statistics [Bv, Bt, 2, M] and per-pair scalars
[Bv, Bt, 4]. The backward recomputes the similarity tiles from those statistics in two passes
without atomics: one program per (video, block of cells) loops over all texts and accumulates
dV; one program per text (and slice of videos) loops over videos and cells and accumulates dT.

Inputs may be float32, bfloat16 or float16; accumulation is float32 throughout, and float32
inputs use IEEE (not TF32) dot products. Cosine normalisation happens in PyTorch before the
kernels, so autograd carries the gradient through it. Gradients with respect to the attention
temperatures are supported when they are passed as tensors that require grad.

Triton is an optional dependency: this module imports without it, and the kernels are built on
the first call (``TRITON_INTERPRET=1`` must be set before that first call to run them with the
interpreter on CPU tensors).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.nn.functional as F

AGGREGATIONS = ("mean", "max", "attention")
_AGG_CODE = {"mean": 0, "max": 1, "attention": 2}
MAX_PHRASES = 256  # all phrases of a text sit in one tile
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Filled by _load_kernels(); the kernel bodies below refer to ``tl`` as a module global.
triton: Any = None
tl: Any = None
_KERNELS_READY = False


def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    try:
        import triton as _triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# --------------------------------------------------------------------------------------------
# Kernel bodies. They are plain functions at import time and become ``triton.jit`` functions in
# _load_kernels(), so that importing this module never imports triton.
# --------------------------------------------------------------------------------------------


def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with float32 accumulation. UPCAST multiplies in float32: the Triton interpreter's dot
    reads bfloat16 operands as raw integers, so interpreted bfloat16 runs take this path."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


def _grad_tile(
    s,
    offs_n,
    offs_m,
    n_valid,
    m_valid,
    g,
    pair,
    PAIR,
    PHRASE,
    M,
    n_cnt,
    m_cnt,
    inv_ta,
    inv_tw,
    AGG: tl.constexpr,
):
    """dS[i, j] / ds[n, m] for one tile of one pair, scaled by the incoming gradient g."""
    valid = n_valid[:, None] & m_valid[None, :]
    m_in = offs_m < M
    if AGG == 0:
        ds = tl.where(valid, g / (n_cnt * m_cnt), 0.0)
    elif AGG == 1:
        col_arg = tl.load(PHRASE + pair * 2 * M + offs_m, mask=m_in, other=-1.0).to(tl.int32)
        col_hit = offs_n[:, None] == col_arg[None, :]
        row_arg = tl.argmax(tl.where(m_valid[None, :], s, float("-inf")), axis=1)
        row_hit = offs_m[None, :] == row_arg[:, None]
        ds = tl.where(col_hit & valid, 0.5 * g / m_cnt, 0.0) + tl.where(row_hit & valid, 0.5 * g / n_cnt, 0.0)
    else:
        c = tl.load(PHRASE + pair * 2 * M + offs_m, mask=m_in, other=0.0)
        lse_col = tl.load(PHRASE + pair * 2 * M + M + offs_m, mask=m_in, other=0.0)
        t2v = tl.load(PAIR + pair * 4 + 0)
        lse_w = tl.load(PAIR + pair * 4 + 1)
        v2t = tl.load(PAIR + pair * 4 + 2)
        lse_u = tl.load(PAIR + pair * 4 + 3)
        x = s * inv_ta
        # text to video: phrase m attends over cells (softmax over n), phrases weighted by w
        p = tl.where(valid, tl.exp(x - lse_col[None, :]), 0.0)
        w = tl.where(m_valid, tl.exp(c * inv_tw - lse_w), 0.0)
        grad_c = 0.5 * g * w * (1.0 + (c - t2v) * inv_tw)
        ds = grad_c[None, :] * p * (1.0 + (s - c[None, :]) * inv_ta)
        # video to text: cell n attends over phrases (softmax over m), cells weighted by u
        xr = tl.where(m_valid[None, :], x, -1e30)
        q = tl.where(m_valid[None, :], tl.exp(xr - tl.max(xr, axis=1)[:, None]), 0.0)
        q = q / tl.sum(q, axis=1)[:, None]
        e = tl.sum(q * s, axis=1)
        u = tl.where(n_valid, tl.exp(e * inv_tw - lse_u), 0.0)
        grad_e = 0.5 * g * u * (1.0 + (e - v2t) * inv_tw)
        ds += grad_e[:, None] * q * (1.0 + (s - e[:, None]) * inv_ta)
        ds = tl.where(valid, ds, 0.0)
    return ds


def _forward_kernel(
    V,
    T,
    VMASK,
    TMASK,
    NCNT,
    MCNT,
    OUT,
    PAIR,
    PHRASE,
    TEMPGRAD,
    Bt,
    N,
    M,
    D,
    inv_ta,
    inv_tw,
    AGG: tl.constexpr,
    TEMP_GRAD: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program = one (video i, text j) pair; streams over blocks of cells."""
    j = tl.program_id(0)
    i = tl.program_id(1)
    pair = i * Bt + j
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_in = offs_m < M
    d_in = offs_d < D
    m_valid = m_in & (tl.load(TMASK + j * M + offs_m, mask=m_in, other=0) != 0)
    t = tl.load(T + j * M * D + offs_m[:, None] * D + offs_d[None, :], mask=m_in[:, None] & d_in[None, :], other=0.0)
    t_trans = tl.trans(t)
    n_cnt = tl.load(NCNT + i)
    m_cnt = tl.load(MCNT + j)

    total = 0.0  # mean: sum of s over valid pairs; max: sum over valid cells of the row max
    col_max = tl.full([BLOCK_M], -1e30, tl.float32)  # max: column max; attention: running max
    col_arg = tl.zeros([BLOCK_M], tl.int32)
    col_l = tl.zeros([BLOCK_M], tl.float32)
    col_acc = tl.zeros([BLOCK_M], tl.float32)
    col_acc2 = tl.zeros([BLOCK_M], tl.float32)
    u_max = -1e30
    u_l = 0.0
    u_acc = 0.0
    u_acc2 = 0.0  # sum of u * e^2 (temperature gradient)
    u_var = 0.0  # sum of u * var_q(s) (temperature gradient)
    u_evar = 0.0  # sum of u * e * var_q(s) (temperature gradient)

    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_in = offs_n < N
        n_valid = n_in & (tl.load(VMASK + i * N + offs_n, mask=n_in, other=0) != 0)
        v = tl.load(
            V + i * N * D + offs_n[:, None] * D + offs_d[None, :], mask=n_in[:, None] & d_in[None, :], other=0.0
        )
        s = _dot(v, t_trans, PRECISION, UPCAST)
        valid = n_valid[:, None] & m_valid[None, :]
        if AGG == 0:
            total += tl.sum(tl.sum(tl.where(valid, s, 0.0), axis=1), axis=0)
        elif AGG == 1:
            xc = tl.where(n_valid[:, None], s, -1e30)
            chunk_max = tl.max(xc, axis=0)
            chunk_arg = tl.argmax(xc, axis=0).to(tl.int32) + n0
            better = chunk_max > col_max
            col_arg = tl.where(better, chunk_arg, col_arg)
            col_max = tl.where(better, chunk_max, col_max)
            row_max = tl.max(tl.where(m_valid[None, :], s, -1e30), axis=1)
            total += tl.sum(tl.where(n_valid, row_max, 0.0), axis=0)
        else:
            x = s * inv_ta
            # per phrase: online softmax over cells
            xc = tl.where(n_valid[:, None], x, -1e30)
            new_max = tl.maximum(col_max, tl.max(xc, axis=0))
            alpha = tl.exp(col_max - new_max)
            p = tl.where(n_valid[:, None], tl.exp(xc - new_max[None, :]), 0.0)
            col_l = col_l * alpha + tl.sum(p, axis=0)
            col_acc = col_acc * alpha + tl.sum(p * s, axis=0)
            if TEMP_GRAD:
                col_acc2 = col_acc2 * alpha + tl.sum(p * s * s, axis=0)
            col_max = new_max
            # per cell: softmax over the phrases of this text (all in the tile)
            xr = tl.where(m_valid[None, :], x, -1e30)
            q = tl.where(m_valid[None, :], tl.exp(xr - tl.max(xr, axis=1)[:, None]), 0.0)
            q = q / tl.sum(q, axis=1)[:, None]
            e = tl.sum(q * s, axis=1)
            # per pair: online softmax over cells of e / tau_w
            xe = tl.where(n_valid, e * inv_tw, -1e30)
            new_u_max = tl.maximum(u_max, tl.max(xe, axis=0))
            beta = tl.exp(u_max - new_u_max)
            pu = tl.where(n_valid, tl.exp(xe - new_u_max), 0.0)
            u_l = u_l * beta + tl.sum(pu, axis=0)
            u_acc = u_acc * beta + tl.sum(pu * e, axis=0)
            if TEMP_GRAD:
                var_row = tl.sum(q * s * s, axis=1) - e * e
                u_acc2 = u_acc2 * beta + tl.sum(pu * e * e, axis=0)
                u_var = u_var * beta + tl.sum(pu * var_row, axis=0)
                u_evar = u_evar * beta + tl.sum(pu * e * var_row, axis=0)
            u_max = new_u_max

    if AGG == 0:
        score = total / (n_cnt * m_cnt)
    elif AGG == 1:
        score = 0.5 * (tl.sum(tl.where(m_valid, col_max, 0.0), axis=0) / m_cnt + total / n_cnt)
        tl.store(PHRASE + pair * 2 * M + offs_m, col_arg.to(tl.float32), mask=m_in)
    else:
        c = col_acc / col_l
        lse_col = col_max + tl.log(col_l)
        xw = tl.where(m_valid, c * inv_tw, -1e30)
        w_max = tl.max(xw, axis=0)
        pw = tl.where(m_valid, tl.exp(xw - w_max), 0.0)
        w_l = tl.sum(pw, axis=0)
        t2v = tl.sum(pw * c, axis=0) / w_l
        v2t = u_acc / u_l
        score = 0.5 * (t2v + v2t)
        tl.store(PHRASE + pair * 2 * M + offs_m, c, mask=m_in)
        tl.store(PHRASE + pair * 2 * M + M + offs_m, lse_col, mask=m_in)
        tl.store(PAIR + pair * 4 + 0, t2v)
        tl.store(PAIR + pair * 4 + 1, w_max + tl.log(w_l))
        tl.store(PAIR + pair * 4 + 2, v2t)
        tl.store(PAIR + pair * 4 + 3, u_max + tl.log(u_l))
        if TEMP_GRAD:
            # dS/d(1/tau_a): c and e move by their attention-weighted variance of s
            var_col = col_acc2 / col_l - c * c
            w = pw / w_l
            dt2v_da = tl.sum(w * (1.0 + (c - t2v) * inv_tw) * var_col, axis=0)
            dv2t_da = (u_var + inv_tw * (u_evar - v2t * u_var)) / u_l
            # dS/d(1/tau_w): the weighted variance of c (over phrases) and of e (over cells)
            dt2v_dw = tl.sum(w * c * c, axis=0) - t2v * t2v
            dv2t_dw = u_acc2 / u_l - v2t * v2t
            tl.store(TEMPGRAD + pair * 2 + 0, 0.5 * (dt2v_da + dv2t_da))
            tl.store(TEMPGRAD + pair * 2 + 1, 0.5 * (dt2v_dw + dv2t_dw))
    tl.store(OUT + pair, score)


def _video_grad_kernel(
    V,
    T,
    VMASK,
    TMASK,
    NCNT,
    MCNT,
    GRAD,
    PAIR,
    PHRASE,
    DV,
    Bt,
    N,
    M,
    D,
    inv_ta,
    inv_tw,
    AGG: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program = one video i and one block of its cells; loops over all texts for dV."""
    n_block = tl.program_id(0)
    i = tl.program_id(1)
    offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_in = offs_n < N
    m_in = offs_m < M
    d_in = offs_d < D
    n_valid = n_in & (tl.load(VMASK + i * N + offs_n, mask=n_in, other=0) != 0)
    v = tl.load(V + i * N * D + offs_n[:, None] * D + offs_d[None, :], mask=n_in[:, None] & d_in[None, :], other=0.0)
    n_cnt = tl.load(NCNT + i)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for j in range(0, Bt):
        m_valid = m_in & (tl.load(TMASK + j * M + offs_m, mask=m_in, other=0) != 0)
        t = tl.load(T + j * M * D + offs_m[:, None] * D + offs_d[None, :], mask=m_in[:, None] & d_in[None, :], other=0.0)
        s = _dot(v, tl.trans(t), PRECISION, UPCAST)
        g = tl.load(GRAD + i * Bt + j)
        m_cnt = tl.load(MCNT + j)
        ds = _grad_tile(
            s, offs_n, offs_m, n_valid, m_valid, g, i * Bt + j, PAIR, PHRASE, M, n_cnt, m_cnt, inv_ta, inv_tw, AGG
        )
        acc += _dot(ds.to(t.dtype), t, PRECISION, UPCAST)
    tl.store(DV + i * N * D + offs_n[:, None] * D + offs_d[None, :], acc, mask=n_in[:, None] & d_in[None, :])


def _text_grad_kernel(
    V,
    T,
    VMASK,
    TMASK,
    NCNT,
    MCNT,
    GRAD,
    PAIR,
    PHRASE,
    DT,
    Bv,
    Bt,
    N,
    M,
    D,
    inv_ta,
    inv_tw,
    SPLIT,
    AGG: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program = one text j and every SPLIT-th video; loops over videos and cells for dT."""
    j = tl.program_id(0)
    split = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_in = offs_m < M
    d_in = offs_d < D
    m_valid = m_in & (tl.load(TMASK + j * M + offs_m, mask=m_in, other=0) != 0)
    t = tl.load(T + j * M * D + offs_m[:, None] * D + offs_d[None, :], mask=m_in[:, None] & d_in[None, :], other=0.0)
    t_trans = tl.trans(t)
    m_cnt = tl.load(MCNT + j)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for i in range(split, Bv, SPLIT):
        g = tl.load(GRAD + i * Bt + j)
        n_cnt = tl.load(NCNT + i)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_in = offs_n < N
            n_valid = n_in & (tl.load(VMASK + i * N + offs_n, mask=n_in, other=0) != 0)
            v = tl.load(
                V + i * N * D + offs_n[:, None] * D + offs_d[None, :], mask=n_in[:, None] & d_in[None, :], other=0.0
            )
            s = _dot(v, t_trans, PRECISION, UPCAST)
            ds = _grad_tile(
                s, offs_n, offs_m, n_valid, m_valid, g, i * Bt + j, PAIR, PHRASE, M, n_cnt, m_cnt, inv_ta, inv_tw, AGG
            )
            acc += _dot(tl.trans(ds.to(v.dtype)), v, PRECISION, UPCAST)
    out = DT + (split * Bt + j) * M * D
    tl.store(out + offs_m[:, None] * D + offs_d[None, :], acc, mask=m_in[:, None] & d_in[None, :])


_JIT_FUNCTIONS = ("_dot", "_grad_tile", "_forward_kernel", "_video_grad_kernel", "_text_grad_kernel")


def _load_kernels() -> None:
    """Import triton and turn the kernel bodies above into ``triton.jit`` functions (once)."""
    global triton, tl, _KERNELS_READY
    if _KERNELS_READY:
        return
    try:
        import triton as triton_module
        import triton.language as tl_module
    except ImportError as error:
        raise ImportError(
            "pair_scores(backend='triton') needs the optional 'triton' package "
            "(pip install 'fgmm_lib[triton]'); use backend='chunked' or 'naive' without it"
        ) from error
    triton, tl = triton_module, tl_module
    module_globals = globals()
    for name in _JIT_FUNCTIONS:
        module_globals[name] = triton.jit(module_globals[name])
    _KERNELS_READY = True


# --------------------------------------------------------------------------------------------
# Launch helpers and autograd
# --------------------------------------------------------------------------------------------


def _next_power_of_two(value: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (max(int(value), 1) - 1).bit_length())


def _block_sizes(N: int, M: int, D: int, element_size: int) -> tuple[int, int, int]:
    """Tile sizes: all phrases and all of D in one tile, cells in blocks of at most 64."""
    block_m = _next_power_of_two(M)
    block_d = _next_power_of_two(D)
    block_n = min(_next_power_of_two(N), 64)
    while block_n > 16 and block_n * block_d * element_size > 32768:
        block_n //= 2
    return block_n, block_m, block_d


def _launch_config(block_n: int, block_d: int) -> dict[str, int]:
    if _interpret_mode():
        return {}
    return {"num_warps": 8 if block_n * block_d >= 8192 else 4}


class _TritonPairScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, video, text, video_valid, text_valid, inv_ta, inv_tw, aggregation_code):  # type: ignore[override]
        Bv, N, D = video.shape
        Bt, M, _ = text.shape
        block_n, block_m, block_d = _block_sizes(N, M, D, video.element_size())
        device = video.device
        precision = "ieee" if video.dtype == torch.float32 else "tf32"
        upcast = _interpret_mode() and video.dtype == torch.bfloat16
        n_count = video_valid.sum(dim=1).to(torch.float32)
        m_count = text_valid.sum(dim=1).to(torch.float32)
        inv_ta_value = float(inv_ta)
        inv_tw_value = float(inv_tw)
        temp_grad = aggregation_code == 2 and (ctx.needs_input_grad[4] or ctx.needs_input_grad[5])
        scores = torch.empty(Bv, Bt, device=device, dtype=torch.float32)
        # statistics an aggregation does not use get a one-element placeholder
        pair_stats = torch.empty((Bv, Bt, 4) if aggregation_code == 2 else (1,), device=device, dtype=torch.float32)
        phrase_stats = torch.empty((Bv, Bt, 2, M) if aggregation_code else (1,), device=device, dtype=torch.float32)
        temp_slopes = torch.empty((Bv, Bt, 2) if temp_grad else (1,), device=device, dtype=torch.float32)
        video_valid_u8 = video_valid.to(torch.uint8).contiguous()
        text_valid_u8 = text_valid.to(torch.uint8).contiguous()
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            _forward_kernel[(Bt, Bv)](
                video, text, video_valid_u8, text_valid_u8, n_count, m_count,
                scores, pair_stats, phrase_stats, temp_slopes,
                Bt, N, M, D, inv_ta_value, inv_tw_value,
                AGG=aggregation_code, TEMP_GRAD=temp_grad, PRECISION=precision, UPCAST=upcast,
                BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d,
                **_launch_config(block_n, block_d),
            )  # fmt: skip
        ctx.save_for_backward(video, text, video_valid_u8, text_valid_u8, n_count, m_count, pair_stats, phrase_stats)
        ctx.temp_slopes = temp_slopes if temp_grad else None
        ctx.settings = (aggregation_code, inv_ta_value, inv_tw_value, precision, upcast, block_n, block_m, block_d)
        ctx.mark_non_differentiable(pair_stats, phrase_stats)
        return scores

    @staticmethod
    def backward(ctx, grad_scores):  # type: ignore[override]
        video, text, video_valid_u8, text_valid_u8, n_count, m_count, pair_stats, phrase_stats = ctx.saved_tensors
        aggregation_code, inv_ta_value, inv_tw_value, precision, upcast, block_n, block_m, block_d = ctx.settings
        Bv, N, D = video.shape
        Bt, M, _ = text.shape
        device = video.device
        grad = grad_scores.to(torch.float32).contiguous()
        grad_video = grad_text = grad_inv_ta = grad_inv_tw = None
        launch = _launch_config(block_n, block_d)
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            if ctx.needs_input_grad[0]:
                dv = torch.empty(Bv, N, D, device=device, dtype=torch.float32)
                _video_grad_kernel[(triton.cdiv(N, block_n), Bv)](
                    video, text, video_valid_u8, text_valid_u8, n_count, m_count,
                    grad, pair_stats, phrase_stats, dv,
                    Bt, N, M, D, inv_ta_value, inv_tw_value,
                    AGG=aggregation_code, PRECISION=precision, UPCAST=upcast,
                    BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d, **launch,
                )  # fmt: skip
                grad_video = dv.to(video.dtype)
            if ctx.needs_input_grad[1]:
                split = _video_split(Bv, Bt, device)
                dt = torch.empty(split, Bt, M, D, device=device, dtype=torch.float32)
                _text_grad_kernel[(Bt, split)](
                    video, text, video_valid_u8, text_valid_u8, n_count, m_count,
                    grad, pair_stats, phrase_stats, dt,
                    Bv, Bt, N, M, D, inv_ta_value, inv_tw_value, split,
                    AGG=aggregation_code, PRECISION=precision, UPCAST=upcast,
                    BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d, **launch,
                )  # fmt: skip
                grad_text = dt.sum(dim=0).to(text.dtype)
        if ctx.temp_slopes is not None:
            weighted = (ctx.temp_slopes * grad.unsqueeze(-1)).sum(dim=(0, 1))
            grad_inv_ta = weighted[0] if ctx.needs_input_grad[4] else None
            grad_inv_tw = weighted[1] if ctx.needs_input_grad[5] else None
        return grad_video, grad_text, None, None, grad_inv_ta, grad_inv_tw, None


def _video_split(Bv: int, Bt: int, device: torch.device) -> int:
    """How many slices of videos the dT pass splits into, so that small Bt still fills the device."""
    if device.type != "cuda":
        return 1
    programs_wanted = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(Bv, -(-programs_wanted // max(Bt, 1))))


def _check_mask(mask: torch.Tensor | None, shape: tuple[int, int], name: str, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = valid), got {getattr(mask, 'dtype', type(mask))}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(mask.shape)}")
    empty_rows = (~mask.any(dim=1)).nonzero().flatten()
    if empty_rows.numel():
        raise ValueError(f"{name} has rows without any valid entry (rows {empty_rows[:5].tolist()}); every item needs one")
    return mask.to(device)


def _as_inverse_temperature(value: float | torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    if tensor.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {list(tensor.shape)}")
    if not float(tensor.detach()) > 0:
        raise ValueError(f"{name} must be > 0, got {float(tensor.detach())}")
    return 1.0 / tensor.reshape(()).to(device=device, dtype=torch.float32)


def triton_pair_scores(
    video_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    video_mask: torch.Tensor | None = None,
    aggregation: str = "attention",
    attn_temperature: float | torch.Tensor = 0.1,
    weight_temperature: float | torch.Tensor = 0.1,
) -> torch.Tensor:
    """Pair scores S [Bv, Bt] of STUDY.md section 2, computed by fused Triton kernels.

    Args:
        video_tokens: [Bv, N, D] cell embeddings (any scale: cosine similarity inside).
        text_tokens: [Bt, M, D] phrase embeddings, same D and dtype (float32, bfloat16, float16).
        text_mask: optional bool [Bt, M], True = real phrase; every text needs one.
        video_mask: optional bool [Bv, N], True = valid cell; every video needs one.
        aggregation: "mean", "max" (FILIP) or "attention".
        attn_temperature, weight_temperature: tau_a and tau_w of ``attention`` (> 0); tensors
            that require grad receive gradients.

    Returns:
        S [Bv, Bt] in the dtype of the inputs, differentiable with respect to both token sets.
        M may be at most 256 (all phrases of a text share one tile). CUDA tensors, or CPU tensors
        when ``TRITON_INTERPRET=1`` was set before the first call.
    """
    if aggregation not in _AGG_CODE:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    for name, tokens in (("video_tokens", video_tokens), ("text_tokens", text_tokens)):
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
            raise ValueError(f"{name} must be a 3-d tensor [B, tokens, D], got {getattr(tokens, 'shape', type(tokens))}")
        if tokens.dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {tokens.dtype}")
    Bv, N, D = video_tokens.shape
    Bt, M, text_dim = text_tokens.shape
    if text_dim != D:
        raise ValueError(f"video_tokens and text_tokens must share D, got {D} and {text_dim}")
    if text_tokens.dtype != video_tokens.dtype:
        raise ValueError(f"video_tokens and text_tokens must share a dtype, got {video_tokens.dtype} and {text_tokens.dtype}")
    if text_tokens.device != video_tokens.device:
        raise ValueError(f"video_tokens and text_tokens must be on one device, got {video_tokens.device} and {text_tokens.device}")
    if min(Bv, N, Bt, M, D) < 1:
        raise ValueError(f"empty input: video_tokens {list(video_tokens.shape)}, text_tokens {list(text_tokens.shape)}")
    if M > MAX_PHRASES:
        raise ValueError(f"text_tokens has M={M} phrases; the triton backend handles at most {MAX_PHRASES}")
    if Bv > 65535:
        raise ValueError(f"video_tokens has Bv={Bv}; the triton backend launches at most 65535 videos per call")
    if max(Bv * N * D, Bt * M * D, Bv * Bt * 2 * M, Bv * Bt * 4) >= 2**31:
        raise ValueError(
            f"inputs too large for 32-bit offsets: Bv={Bv}, Bt={Bt}, N={N}, M={M}, D={D} "
            f"(needs Bv*N*D, Bt*M*D and Bv*Bt*2*M below 2**31); split the batch"
        )
    device = video_tokens.device
    if device.type != "cuda" and not _interpret_mode():
        raise ValueError(
            f"the triton backend needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 before the first call "
            "to run it with the Triton interpreter on CPU"
        )
    video_valid = _check_mask(video_mask, (Bv, N), "video_mask", device)
    text_valid = _check_mask(text_mask, (Bt, M), "text_mask", device)
    inv_ta = _as_inverse_temperature(attn_temperature, "attn_temperature", device)
    inv_tw = _as_inverse_temperature(weight_temperature, "weight_temperature", device)
    _load_kernels()

    dtype = video_tokens.dtype
    video = F.normalize(video_tokens.float(), dim=-1).to(dtype).contiguous()
    text = F.normalize(text_tokens.float(), dim=-1).to(dtype).contiguous()
    scores = _TritonPairScores.apply(video, text, video_valid, text_valid, inv_ta, inv_tw, _AGG_CODE[aggregation])
    return scores.to(dtype)
