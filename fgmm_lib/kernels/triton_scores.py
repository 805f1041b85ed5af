"""Fused Triton kernels for the fine-grained pair scores (docs/study.md section 2).

``triton_pair_scores`` computes S[i, j] for every video i and text j without ever holding the
[Bv, Bt, N, M] cell-phrase similarity tensor. The similarity is one GEMM of the cells
[Bv*N, D] by the phrases [D, Bt*M], taken in tiles:

- a tile is ``BLOCK_N`` cells by ``TEXTS`` texts of ``BLOCK_M`` phrases each (64 to 128 columns,
  so that Hopper's wgmma and Ampere's mma.sync run at a useful width); D is looped in chunks of
  ``BLOCK_D``, so shared memory does not grow with D;
- statistics per text (softmax and max over the phrases of a cell) are grouped reductions over a
  [BLOCK_N, TEXTS, BLOCK_M] view of the tile; statistics over the cells of a video (per phrase:
  sum, max and its cell, softmax sums; per text: the pair's softmax sums) are kept per cell row
  of the tile, [BLOCK_N, columns] in registers, and reduced over cells once per video: a
  reduction per block of cells costs more issued instructions (cross-warp shuffles, barriers)
  than the sums it reduces (attention's shifted forward, whose sums are rescaled, keeps running
  column statistics); every exponential is an ``exp2`` with 1/tau * log2(e) folded into one
  scale, and the compiled kernels take log2 on the special function unit (``_log2_fast``);
- attention's softmaxes need no running maximum while both temperatures are at least 1/64
  (``MAX_UNSHIFTED_INVERSE_TEMPERATURE``): cosines lie in [-1, 1], so exp2(s / tau * log2 e)
  stays within float32's normal range, and one exponential per entry serves the softmax over cells
  and the one over phrases. That forward (``UNSHIFTED``) drops a max reduction over cells, one over
  phrases and one over the pairs' cells, and the rescaling, per block of cells: a third more
  similarity per issued instruction on sm90 (``fgmm_lib.bench.kernel_report``). Below 1/64 the forward
  keeps running maxima (an online softmax, as in FlashAttention). The backward kernels have the
  same two variants. Both are launched, and a flag computed on the device from the temperatures
  makes one of them return at once, so nothing waits for the device to read a temperature.

Forward: one program per (group of texts, ``VIDEOS`` consecutive videos) loops over the cells of
each video and writes S (float32), per-phrase statistics [Bv, Bt, 3, M] and per-pair statistics
[Bv, Bt, 4]. The last block of cells of a video is partly empty (N = 196 in blocks of 64 computes
256 rows). Its configurations either stream both operands in chunks of D for every block of cells,
or load the texts' tile once per program and keep it (``RESIDENT_FORWARD_CONFIGS``, D <= 256).
Why: the streaming forward re-reads the texts' tile for each block of cells, about 100 GB from L2
at B = 1024, N = 196, M = 32, D = 256; in the 16.5 ms the `mean` forward took on an H100 that is
about 6 TB/s, near the L2's bandwidth, so we take that forward to be bound by it. The resident
tile cuts the traffic to about a third. The autotuner times both.

Backward, three designs (``BACKWARD_DESIGN``); each forms dS/ds from the forward's statistics,
gathered per cell's video, so tiles of flattened cells run over video boundaries. The gathers are
masked by bounds only and attention's dS/ds by rows only (a masked phrase carries a zero phrase
gradient and an exponent of -1e30): per-entry masks cost more predicate logic than the arithmetic
they guard. Attention's tiles that span two videos at most (``two_videos``) load the statistics of
both as vectors and each row picks its video's. Attention's unshifted backward takes one
exponential an entry for both softmaxes, with the column softmax's norm folded into its per-phrase
factors (``_backward_inputs``): at B = 1024, N = 196, M = 32, D = 256 its tile issues 2,391 warp
instructions against the shifted variant's 2,631, in 183 registers against 250 (``kernel_report``).

- tiles (``_backward_kernel``): one program per (tile of flattened cells, group of texts)
  recomputes its similarity tile once and adds ds @ T and ds^T @ V into the float32 gradients with
  atomic adds, unmasked: the gradients are padded so that every add lands in bounds. On an H100
  (``results/bench/gpu_kernel_times.json``) its cost is those adds, one [cells x D] and one
  [columns x D] add per tile: 128-cell tiles (``WIDE_BACKWARD_CONFIGS``, mean and max) add a third
  fewer and took the mean backward from 112 to 65 ms at the size above;
- sweeps (``_sweep_backward_kernel``, texts of at most 64 phrases): one launch per gradient. For
  dV a program holds a tile of cells and sweeps every group of texts, for dT a program holds a
  group of texts and sweeps every tile of cells; the gradient accumulates in registers and
  reaches memory once (one atomic add per split of a long sweep, ``sweep_splits``). The
  similarity and dS/ds are computed once per gradient (twice per backward) in exchange for no
  atomic traffic in the loop; a gradient nobody asks for is not computed. Where D fits one
  accumulator slice the held tile is loaded once and each swept tile once for both of its dot
  products (``RESIDENT``; for dT only up to D = 128, beyond which it spills registers).

- stored (``_stored_backward``): ``_stored_kernel`` recomputes each similarity tile once, as the
  tiles do, and writes its dS/ds (in the dot products' dtype) to memory, a chunk of whole videos at
  a time (``STORED_BYTES``); both gradients are then GEMMs of the GEMM library (cuBLAS on a GPU),
  dV = dS/ds @ T and dT = dS/ds^T @ V. No atomic add at all, in exchange for writing and reading
  dS/ds once ([Bv * N, Bt * M], 13 GB in bfloat16 at the size above, about 8 ms of an H100's
  memory bandwidth). Its kernel issues 1,455 warp instructions a tile there (unshifted), against
  the tiled backward's 2,391, which also runs both gradients' dot products (``kernel_report``).

``auto`` (the default) times each design that applies on a GPU at the first backward of each
shape and keeps the fastest (``chosen_designs``).

Precision: the dot products take bfloat16 or float16 inputs with float32 accumulation; every
statistic and every score is float32 (bfloat16 inputs return float32 scores). On CUDA, float32
tokens are cast to bfloat16 after the cosine normalisation, inside this module, so that
training runs on the tensor cores; the gradients returned to float32 tokens are the float32
accumulators (the stored backward's are the sums of its GEMMs' bfloat16 outputs, one per chunk of
videos). Under the Triton interpreter float32 inputs stay float32 (IEEE dot products).

The aggregation is a constexpr code (``AGGREGATION_CODES``); a further aggregation is a new
code and a new branch in ``_forward_video`` and ``_ds_tile``. Aggregations of
:data:`fgmm_lib.losses.scores.AGGREGATIONS` without a code here, and texts of more than
``MAX_PHRASES`` phrases, are computed by the chunked backend, with a warning.

Ties in ``max``: this kernel gives the whole gradient of a tied maximum to its first index
(lowest cell, lowest phrase); the naive and chunked backends (``torch.amax``) split it evenly
between the tied entries. Both are subgradients; the scores agree exactly.

The learnable temperatures reach the kernels as a device tensor [1/tau_a, 1/tau_w]; nothing
here reads a value back from the device, so a call never waits for the GPU. Gradients with
respect to the temperatures come from per-pair slopes taken in the forward.

``triton_pair_scores`` trusts its caller: :func:`fgmm_lib.losses.scores.pair_scores` validates the
inputs once (shapes, dtypes, masks with a valid entry per row, positive temperatures).

Triton is an optional dependency: this module imports without it, and the kernels are built on
the first call (``TRITON_INTERPRET=1`` must be set before that first call to run them with the
interpreter on CPU tensors).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from fgmm_lib.losses.scores import AGGREGATIONS, pair_scores

#: Constexpr code of each aggregation the kernels compute.
AGGREGATION_CODES = {"mean": 0, "max": 1, "attention": 2}
assert set(AGGREGATION_CODES) <= set(AGGREGATIONS)
#: Phrases per text the fused kernels take (all phrases of a text sit in one tile); beyond it, at 256
#: columns a tile, the attention kernels spill registers, so longer texts run on the chunked backend.
MAX_PHRASES = 128
#: Columns (texts x phrases) a tile aims at; texts of up to 16 phrases fill it with 8 texts.
TILE_COLUMNS = 128
LOG2E = math.log2(math.e)
#: Largest 1/tau (both temperatures) at which attention's forward takes its exponentials unshifted,
#: exp2(s / tau * log2(e)) with no running max: cosines lie in [-1, 1], so every term lies within
#: 2^(+-93) and neither a term nor a sum of up to 2^30 of them leaves float32's normal range. Smaller
#: temperatures run the forward with running maxima (``UNSHIFTED`` = False), decided on the device.
MAX_UNSHIFTED_INVERSE_TEMPERATURE = 64.0
#: On CUDA, float32 tokens are cast to bfloat16 for the dot products (the tensor cores). False keeps
#: them float32 (IEEE dot products, no tensor cores): slower, but the same similarities as the
#: float32 references, which a check of ``max`` needs (bfloat16 rounding moves near-tied argmaxes).
BF16_ON_CUDA = True
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: Launch configurations the autotuner chooses from (per kernel): cells per tile, D per chunk,
#: warps, pipeline stages. Every one is compiled and checked by ``fgmm_lib.bench.kernel_report``.
#: Forward: VIDEOS per program, D_RESIDENT = 0 (both operands streamed in chunks of BLOCK_D).
FORWARD_CONFIGS = (
    {"BLOCK_N": 64, "BLOCK_D": 64, "VIDEOS": 1, "D_RESIDENT": 0, "num_warps": 8, "num_stages": 3},
    {"BLOCK_N": 64, "BLOCK_D": 32, "VIDEOS": 1, "D_RESIDENT": 0, "num_warps": 8, "num_stages": 3},
)
#: Forward with the texts' tile resident (loaded once per program of 4 videos, D padded to
#: D_RESIDENT): about a third of the streaming forward's operand traffic (module docstring).
#: See ``forward_configs``.
RESIDENT_FORWARD_CONFIGS = (
    {"BLOCK_N": 64, "BLOCK_D": 64, "VIDEOS": 4, "D_RESIDENT": 128, "num_warps": 8, "num_stages": 3},
    {"BLOCK_N": 64, "BLOCK_D": 64, "VIDEOS": 4, "D_RESIDENT": 256, "num_warps": 8, "num_stages": 3},
)
BACKWARD_CONFIGS = (
    {"BLOCK_N": 64, "BLOCK_D": 64, "num_warps": 8, "num_stages": 2},
    {"BLOCK_N": 64, "BLOCK_D": 32, "num_warps": 8, "num_stages": 2},
)
#: Backward configurations of 128 cells a tile, for ``mean`` and ``max`` only (attention's temporaries
#: spill at 128 rows). The backward's cost on an H100 is its atomic adds (one [cells x D] and one
#: [columns x D] add per tile); 128 cells a tile make a third fewer of them.
WIDE_BACKWARD_CONFIGS = (
    {"BLOCK_N": 128, "BLOCK_D": 64, "num_warps": 8, "num_stages": 2},
    {"BLOCK_N": 128, "BLOCK_D": 32, "num_warps": 8, "num_stages": 2},
)

#: The stored backward's kernel (``_stored_kernel``): the tiled backward's configurations at 128
#: columns a tile (texts x phrases), and tiles of 128 cells by 64 columns with 4 warps. Without the
#: gradients' dot products in the tile, attention's 128-cell tile fits 4 warps' registers (255, no
#: spills on sm_90, ``kernel_report``) where texts have 32 to 64 phrases, in its unshifted variant:
#: at M = 32, D = 256 its SASS bound is 42.9% of the bf16 peak against 35.2% for 64 cells by 128
#: columns (fewer instructions per multiply-add). See ``stored_configs``.
STORED_COLUMNS = 64
STORED_CONFIGS = (
    {"BLOCK_N": 128, "COLUMNS": STORED_COLUMNS, "BLOCK_D": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_N": 128, "COLUMNS": STORED_COLUMNS, "BLOCK_D": 32, "num_warps": 4, "num_stages": 2},
)

#: The backward in sweeps (``_sweep_backward_kernel``): cells per tile, columns (texts x phrases)
#: per tile, and the configurations its autotuner chooses from (D per chunk of a streamed
#: similarity, D per accumulator slice, resident operands or not, warps, stages; ``sweep_configs``
#: offers those that compile without spills on sm_90). 128 columns a tile spill, so texts of more
#: than 64 phrases take the tiled backward. With 8 warps, a resident sweep lays its 64-row
#: similarity out over both warpgroups along the rows (the layout its dS needs as the register
#: operand of the next dot), so both warpgroups compute the whole tile: 1.5 times the multiply-adds
#: and twice the elementwise work (``kernel_report``'s ``tensor_macs``). With 4 warps the work is
#: done once, at 1.6 to 1.9 times the issue ceiling, but half the warps an SM holds; the autotuner
#: times both.
SWEEP_BLOCK_N = 64
SWEEP_COLUMNS = 64
SWEEP_CONFIGS = (
    {"BLOCK_D": 64, "D_SLICE": 256, "RESIDENT": 1, "num_warps": 8, "num_stages": 2},
    {"BLOCK_D": 64, "D_SLICE": 128, "RESIDENT": 1, "num_warps": 8, "num_stages": 2},
    {"BLOCK_D": 64, "D_SLICE": 256, "RESIDENT": 0, "num_warps": 8, "num_stages": 2},
    {"BLOCK_D": 64, "D_SLICE": 128, "RESIDENT": 0, "num_warps": 8, "num_stages": 2},
    {"BLOCK_D": 64, "D_SLICE": 256, "RESIDENT": 1, "num_warps": 4, "num_stages": 2},
    {"BLOCK_D": 64, "D_SLICE": 128, "RESIDENT": 1, "num_warps": 4, "num_stages": 2},
)
#: Programs a sweep launch aims at: the swept range is split until (fixed tiles x splits) reaches it;
#: None = 4 per streaming multiprocessor of the device.
SWEEP_PROGRAMS: int | None = None
#: Which backward runs: "tiles" (``_backward_kernel``), "sweep" (``_sweep_backward_kernel`` where
#: ``sweep_shape`` allows it, else tiles), "stored" (``_stored_backward``) or "auto": on a GPU, the
#: first backward of each shape times each design that applies (each after its own autotuning) and
#: keeps the fastest (``chosen_designs``); under the interpreter, the sweep wherever it applies.
BACKWARD_DESIGN = "auto"
BACKWARD_DESIGNS = ("auto", "tiles", "sweep", "stored")
#: The stored backward's dS/ds buffer: chunks of whole videos of at most this many bytes (at least
#: one video a chunk). At B = 1024, N = 196, M = 32 in bfloat16, 256 MiB hold 20 videos, 3,920 cells:
#: its GEMMs then have 3,920 rows (dV) and a depth of 3,920 (dT). More bytes make wider GEMMs and
#: fewer launches, against the 2 GB the loss may hold at that size.
STORED_BYTES = 256 * 2**20


#: Which forward configurations the autotuner may pick: "auto" (all of ``forward_configs``),
#: "streamed" (``FORWARD_CONFIGS``) or "resident" (``RESIDENT_FORWARD_CONFIGS`` where one fits, else
#: streamed). After a change, ``reset_tuning()`` lets the autotuner choose again.
FORWARD_DESIGN = "auto"
FORWARD_DESIGNS = ("auto", "streamed", "resident")


def forward_configs(aggregation: str, phrases: int, dim: int) -> tuple[dict[str, int], ...]:
    """The forward configurations the autotuner chooses from: the streaming ones, and the resident
    one whose D_RESIDENT is D rounded up to a power of two (>= 128), where it compiles without
    spills on sm_90 (attention: 32 to 64 phrases a text; ``kernel_report`` checks every one)."""
    if FORWARD_DESIGN not in FORWARD_DESIGNS:
        raise ValueError(f"FORWARD_DESIGN={FORWARD_DESIGN!r}; valid: {', '.join(FORWARD_DESIGNS)}")
    block_m = tile_shape(phrases)[0]
    width = padded_width(dim, 128)
    fits = AGGREGATION_CODES[aggregation] != 2 or 32 <= block_m <= 64
    resident = tuple(c for c in RESIDENT_FORWARD_CONFIGS if fits and c["D_RESIDENT"] == width)
    if FORWARD_DESIGN == "streamed" or not resident:
        return FORWARD_CONFIGS
    return resident if FORWARD_DESIGN == "resident" else FORWARD_CONFIGS + resident


def backward_configs(aggregation: str) -> tuple[dict[str, int], ...]:
    """The tiled backward's configurations the autotuner chooses from for ``aggregation``."""
    return BACKWARD_CONFIGS + (WIDE_BACKWARD_CONFIGS if AGGREGATION_CODES[aggregation] != 2 else ())


def backward_padding(aggregation: str) -> tuple[int, int]:
    """(cells, dimensions): the tiled backward pads its gradients' rows and D to multiples of these,
    the largest BLOCK_N and BLOCK_D of its configurations (``_tiled_backward``)."""
    configs = backward_configs(aggregation)
    return max(c["BLOCK_N"] for c in configs), max(c["BLOCK_D"] for c in configs)


def stored_configs(aggregation: str, phrases: int, cells: int, unshifted: bool = True
                   ) -> tuple[dict[str, int], ...]:
    """The stored kernel's configurations the autotuner chooses from for ``aggregation``, M =
    ``phrases``, videos of ``cells`` cells and (attention) the ``unshifted`` variant: those of
    ``backward_configs`` at ``TILE_COLUMNS`` columns, and ``STORED_CONFIGS`` where they compile
    without spills on sm_90: texts of at most 64 phrases; for attention, of at least 32 (4 texts of 16
    spill) in the unshifted variant (its running maxima spill), where its tiles span two videos at
    most (``two_videos``), as the smaller ones do."""
    code = AGGREGATION_CODES[aggregation]
    tiles = tuple({**c, "COLUMNS": TILE_COLUMNS} for c in backward_configs(aggregation))
    block_m = tile_shape(phrases)[0]
    if code == AGGREGATION_CODES["attention"]:
        own = tuple(c for c in STORED_CONFIGS if unshifted and 32 <= block_m <= c["COLUMNS"]
                    and two_videos(code, cells, c["BLOCK_N"]))
    else:
        own = tuple(c for c in STORED_CONFIGS if block_m <= c["COLUMNS"])
    return tiles + own


def sweep_configs(dim: int, for_text: bool, aggregation: str) -> tuple[dict[str, int], ...]:
    """The sweep configurations worth timing at D = ``dim`` for one gradient (``for_text``: dT) of
    ``aggregation``.

    No accumulator slice is wider than D rounded up to a power of two (>= 128). A resident
    configuration needs D within its one slice, and only up to 128 dimensions for dT and for
    attention: at 256 their held tiles, streamed tiles and accumulator spill registers on sm_90
    (``kernel_report``; attention's dV with 4 warps, and with 8 in its unshifted variant).
    Attention's resident dT with 4 warps spills at 128 too."""
    width = padded_width(dim, 128)
    attention = AGGREGATION_CODES[aggregation] == AGGREGATION_CODES["attention"]
    wide_spills = width > 128 and (for_text or attention)
    return tuple(c for c in SWEEP_CONFIGS if c["D_SLICE"] <= width and (
        not c["RESIDENT"] or (c["D_SLICE"] == width and not wide_spills
                              and not (for_text and attention and c["num_warps"] < 8))))


# Filled by _load_kernels(); the kernel bodies below refer to ``tl`` as a module global.
triton: Any = None
tl: Any = None
libdevice: Any = None
_log2: Any = None
_KERNELS_READY = False
_TUNED: dict[str, Any] = {}


def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    try:
        import triton as _triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def padded_width(size: int, floor: int) -> int:
    """``size`` rounded up to a power of two, and at least ``floor``: the width of a tile or slice
    that holds it."""
    return max(floor, 1 << (max(int(size), 1) - 1).bit_length())


def tile_shape(phrases: int, columns: int = TILE_COLUMNS) -> tuple[int, int]:
    """(BLOCK_M, TEXTS): phrases per text padded to a power of two (>= 16), texts per tile of
    ``columns`` columns (at least one text)."""
    block_m = padded_width(phrases, 16)
    return block_m, max(1, columns // block_m)


def sweep_shape(phrases: int) -> tuple[int, int] | None:
    """(BLOCK_M, TEXTS) of the backward in sweeps, or None where it does not apply (more phrases
    per text than ``SWEEP_COLUMNS``)."""
    block_m, texts = tile_shape(phrases, SWEEP_COLUMNS)
    return (block_m, texts) if block_m <= SWEEP_COLUMNS else None


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


def _log2_exact(x):
    """tl.log2 (a polynomial of about 25 instructions in the compiled code): ``_log2`` under the
    interpreter, which cannot run libdevice."""
    return tl.log2(x)


def _log2_fast(x):
    """log2 on the special function unit (``lg2.approx``, relative error below 2^-22): ``_log2`` of
    the compiled kernels. Its arguments, sums of exponentials, lie far above float32's subnormals,
    which it flushes to zero."""
    return libdevice.fast_log2f(x)


def _idle_variant(TEMPS, AGG: tl.constexpr, UNSHIFTED: tl.constexpr):
    """Whether this launch is attention's variant that the temperatures do not run (TEMPS[2]: 1.0
    where they let the kernels run unshifted), whose kernel returns at once; the other aggregations
    have one variant, never idle."""
    idle = False
    if AGG == 2:
        idle = (tl.load(TEMPS + 2) != 0.0) != UNSHIFTED
    return idle


def _fast_divide(x, y):
    """x / y by ``div.approx.f32`` (2 ulp where |y| lies in [2^-126, 2^126]): a few instructions
    against about ten for the IEEE division. The kernels divide by sums of exponentials, which lie
    within 2^(+-100) (``MAX_UNSHIFTED_INVERSE_TEMPERATURE``; a clamp at 1e-30 below)."""
    return tl.fdiv(x, y, approx=True)


def _similarity(V, T, v_rows, v_in, t_rows, t_in, D, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """s[r, c] = <V[v_rows[r]], T[t_rows[c]]>, D taken in chunks of BLOCK_D."""
    offs_d = tl.arange(0, BLOCK_D)
    s = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_in = (d0 + offs_d) < D
        v = tl.load(V + v_rows[:, None] * D + d0 + offs_d[None, :], mask=v_in[:, None] & d_in[None, :], other=0.0)
        t = tl.load(T + t_rows[:, None] * D + d0 + offs_d[None, :], mask=t_in[:, None] & d_in[None, :], other=0.0)
        s += _dot(v, tl.trans(t), PRECISION, UPCAST)
    return s


def _per_column(x, BLOCK_R: tl.constexpr, TEXTS: tl.constexpr, BLOCK_M: tl.constexpr):
    """[BLOCK_R, TEXTS] -> [BLOCK_R, TEXTS * BLOCK_M]: a value per (row, text) on each of its phrases."""
    return tl.reshape(tl.broadcast_to(x[:, :, None], [BLOCK_R, TEXTS, BLOCK_M]), [BLOCK_R, TEXTS * BLOCK_M])


def _text_columns(TMASK, g, Bt, M, TEXTS: tl.constexpr, BLOCK_M: tl.constexpr):
    """The columns of text group g: text, phrase, in range, row of T, valid phrase."""
    cols = tl.arange(0, TEXTS * BLOCK_M)
    texts = g * TEXTS + cols // BLOCK_M
    phrases = cols % BLOCK_M
    col_in = (texts < Bt) & (phrases < M)
    t_rows = texts * M + phrases
    m_valid = col_in & (tl.load(TMASK + t_rows, mask=col_in, other=0) != 0)
    return texts, phrases, col_in, t_rows, m_valid


def _forward_kernel(
    V, T, VMASK, TMASK, NCNT, MCNT, TEMPS, OUT, PAIR, PHRASE, SLOPES,
    Bv, Bt, N, M, D,
    AGG: tl.constexpr, TEMP_GRAD: tl.constexpr, UNSHIFTED: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, TEXTS: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, VIDEOS: tl.constexpr, D_RESIDENT: tl.constexpr,
):
    """One program = TEXTS texts and VIDEOS consecutive videos; for each video it streams over
    blocks of the video's cells. D_RESIDENT = 0: both operands are loaded in chunks of BLOCK_D for
    every block of cells; D_RESIDENT >= D: the texts' [columns x D_RESIDENT] tile is loaded once per
    program and stays (the cells are the only operand streamed).

    Attention is launched twice, UNSHIFTED True and False; TEMPS[2] (set on the device from the
    temperatures, ``MAX_UNSHIFTED_INVERSE_TEMPERATURE``) says which of the two computes, the other
    returns at once."""
    if _idle_variant(TEMPS, AGG, UNSHIFTED):
        return
    g = tl.program_id(0)
    texts, phrases, col_in, t_rows, m_valid = _text_columns(TMASK, g, Bt, M, TEXTS, BLOCK_M)
    m_valid3 = tl.reshape(m_valid, [1, TEXTS, BLOCK_M])
    group = g * TEXTS + tl.arange(0, TEXTS)
    group_in = group < Bt
    m_cnt = tl.load(MCNT + group, mask=group_in, other=1.0)
    inv_ta = tl.load(TEMPS)
    inv_tw = tl.load(TEMPS + 1)
    scale_a = inv_ta * 1.4426950408889634  # exp(x / tau) = exp2(x * scale)
    scale_w = inv_tw * 1.4426950408889634
    if D_RESIDENT > 0:
        offs_r = tl.arange(0, D_RESIDENT)
        t_tile = tl.load(T + t_rows[:, None] * D + offs_r[None, :], mask=col_in[:, None] & (offs_r < D)[None, :],
                         other=0.0)
    if VIDEOS == 1:  # no loop: a loop of one video holds more registers (attention at M = 128 spilled)
        _forward_video(V, VMASK, NCNT, OUT, PAIR, PHRASE, SLOPES, T, t_tile if D_RESIDENT > 0 else T,
                       tl.program_id(1), g, Bt, N, M, D, texts, phrases, col_in, t_rows, m_valid, m_valid3, group,
                       group_in, m_cnt, inv_ta, inv_tw, scale_a, scale_w, AGG, TEMP_GRAD, UNSHIFTED, PRECISION, UPCAST,
                       BLOCK_M, TEXTS, BLOCK_N, BLOCK_D, D_RESIDENT)
    else:
        first = tl.program_id(1) * VIDEOS
        for i in range(first, tl.minimum(first + VIDEOS, Bv)):
            _forward_video(V, VMASK, NCNT, OUT, PAIR, PHRASE, SLOPES, T, t_tile if D_RESIDENT > 0 else T, i, g, Bt,
                           N, M, D, texts, phrases, col_in, t_rows, m_valid, m_valid3, group, group_in, m_cnt, inv_ta,
                           inv_tw, scale_a, scale_w, AGG, TEMP_GRAD, UNSHIFTED, PRECISION, UPCAST, BLOCK_M, TEXTS,
                           BLOCK_N, BLOCK_D, D_RESIDENT)


def _forward_video(V, VMASK, NCNT, OUT, PAIR, PHRASE, SLOPES, T, t_tile, i, g, Bt, N, M, D, texts, phrases, col_in,
                   t_rows, m_valid, m_valid3, group, group_in, m_cnt, inv_ta, inv_tw, scale_a, scale_w,
                   AGG: tl.constexpr, TEMP_GRAD: tl.constexpr, UNSHIFTED: tl.constexpr, PRECISION: tl.constexpr,
                   UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, TEXTS: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, D_RESIDENT: tl.constexpr):
    """The scores and statistics of video i against the program's TEXTS texts."""
    COLS: tl.constexpr = TEXTS * BLOCK_M
    n_cnt = tl.load(NCNT + i)

    # Statistics over cells stay per (cell, column) and per (cell, text) until the video ends, where
    # one reduction over cells takes them: a reduction per block of cells costs more issue slots
    # (cross-warp shuffles and barriers) than the arithmetic it reduces. Attention's shifted forward
    # rescales its sums by running maxima and keeps them per column and per text, reduced block by
    # block, as do both attention forwards for the temperatures' sums per text (per cell, they spill).
    if AGG == 0:
        cell_sum = tl.zeros([BLOCK_N, COLS], tl.float32)  # sum of s
    elif AGG == 1:
        cell_max = tl.full([BLOCK_N, COLS], -1e30, tl.float32)  # max of s, and its cell
        cell_arg = tl.zeros([BLOCK_N, COLS], tl.int32)
        cell_total = tl.zeros([BLOCK_N, TEXTS], tl.float32)  # sum of each text's max over phrases
    else:
        u_sq = tl.zeros([TEXTS], tl.float32)  # sum of u * e^2 (temperature gradient)
        u_var = tl.zeros([TEXTS], tl.float32)  # sum of u * var_q(s) (temperature gradient)
        u_evar = tl.zeros([TEXTS], tl.float32)  # sum of u * e * var_q(s) (temperature gradient)
        if UNSHIFTED:
            # a masked phrase's exponent: -1e30 (exp2 gives 0), added with the scale's multiply
            # instead of a select per entry
            col_bias = tl.where(m_valid, 0.0, -1e30)
            cell_l = tl.zeros([BLOCK_N, COLS], tl.float32)
            cell_s = tl.zeros([BLOCK_N, COLS], tl.float32)
            cell_u = tl.zeros([BLOCK_N, TEXTS], tl.float32)
            cell_ue = tl.zeros([BLOCK_N, TEXTS], tl.float32)
            if TEMP_GRAD:
                cell_sq = tl.zeros([BLOCK_N, COLS], tl.float32)
        else:
            col_sum = tl.zeros([COLS], tl.float32)  # softmax-weighted s
            col_max = tl.full([COLS], -1e30, tl.float32)  # running max (log2)
            col_l = tl.zeros([COLS], tl.float32)
            col_sq = tl.zeros([COLS], tl.float32)
            u_max = tl.full([TEXTS], -1e30, tl.float32)
            u_l = tl.zeros([TEXTS], tl.float32)
            u_acc = tl.zeros([TEXTS], tl.float32)

    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_in = offs_n < N
        n_valid = n_in & (tl.load(VMASK + i * N + offs_n, mask=n_in, other=0) != 0)
        if D_RESIDENT > 0:
            offs_r = tl.arange(0, D_RESIDENT)
            v = tl.load(V + (i * N + offs_n)[:, None] * D + offs_r[None, :], mask=n_in[:, None] & (offs_r < D)[None, :],
                        other=0.0)
            s = _dot(v, tl.trans(t_tile), PRECISION, UPCAST)
        else:
            s = _similarity(V, T, i * N + offs_n, n_in, t_rows, col_in, D, PRECISION, UPCAST, BLOCK_N, COLS, BLOCK_D)
        if AGG == 0:
            cell_sum += tl.where(n_valid[:, None] & m_valid[None, :], s, 0.0)
        elif AGG == 1:
            xc = tl.where(n_valid[:, None], s, -1e30)
            better = xc > cell_max  # a tie keeps the earlier cell
            cell_arg = tl.where(better, offs_n[:, None], cell_arg)
            cell_max = tl.where(better, xc, cell_max)
            row_max = tl.max(tl.where(m_valid3, tl.reshape(s, [BLOCK_N, TEXTS, BLOCK_M]), -1e30), axis=2)
            cell_total += tl.where(n_valid[:, None], row_max, 0.0)
        else:
            # per phrase: softmax over cells, online (running max, sums rescaled) unless UNSHIFTED: then
            # no maxima (see MAX_UNSHIFTED_INVERSE_TEMPERATURE) and one exponential serves both softmaxes
            if UNSHIFTED:
                ex = tl.exp2(s * scale_a + col_bias[None, :])
                p = tl.where(n_valid[:, None], ex, 0.0)
                cell_l += p
                cell_s += p * s
                if TEMP_GRAD:
                    cell_sq += p * s * s
            else:
                x = s * scale_a
                xc = tl.where(n_valid[:, None], x, -1e30)
                new_max = tl.maximum(col_max, tl.max(xc, axis=0))
                alpha = tl.exp2(col_max - new_max)
                p = tl.where(n_valid[:, None], tl.exp2(xc - new_max[None, :]), 0.0)
                col_max = new_max
                col_l = col_l * alpha + tl.sum(p, axis=0)
                col_sum = col_sum * alpha + tl.sum(p * s, axis=0)
                if TEMP_GRAD:
                    col_sq = col_sq * alpha + tl.sum(p * s * s, axis=0)
            # per cell and text: softmax over the text's phrases (all in the tile)
            s3 = tl.reshape(s, [BLOCK_N, TEXTS, BLOCK_M])
            if UNSHIFTED:
                q = tl.reshape(ex, [BLOCK_N, TEXTS, BLOCK_M])
                q_l = tl.maximum(tl.sum(q, axis=2), 1e-30)  # a text past the last has no valid phrase
            else:
                xr = tl.where(m_valid3, tl.reshape(x, [BLOCK_N, TEXTS, BLOCK_M]), -1e30)
                q = tl.exp2(xr - tl.max(xr, axis=2)[:, :, None])
                q_l = tl.sum(q, axis=2)
            e = _fast_divide(tl.sum(q * s3, axis=2), q_l)
            if TEMP_GRAD:
                var_row = tl.sum(q * s3 * s3, axis=2) / q_l - e * e
            # per pair: softmax over cells of e / tau_w, online unless UNSHIFTED
            if UNSHIFTED:
                pu = tl.where(n_valid[:, None], tl.exp2(e * scale_w), 0.0)
                cell_u += pu
                cell_ue += pu * e
                if TEMP_GRAD:
                    u_sq += tl.sum(pu * e * e, axis=0)
                    u_var += tl.sum(pu * var_row, axis=0)
                    u_evar += tl.sum(pu * e * var_row, axis=0)
            else:
                xe = tl.where(n_valid[:, None], e * scale_w, -1e30)
                new_u_max = tl.maximum(u_max, tl.max(xe, axis=0))
                beta = tl.exp2(u_max - new_u_max)
                pu = tl.where(n_valid[:, None], tl.exp2(xe - new_u_max[None, :]), 0.0)
                u_max = new_u_max
                u_l = u_l * beta + tl.sum(pu, axis=0)
                u_acc = u_acc * beta + tl.sum(pu * e, axis=0)
                if TEMP_GRAD:
                    u_sq = u_sq * beta + tl.sum(pu * e * e, axis=0)
                    u_var = u_var * beta + tl.sum(pu * var_row, axis=0)
                    u_evar = u_evar * beta + tl.sum(pu * e * var_row, axis=0)

    if AGG == 0:
        col_sum = tl.sum(cell_sum, axis=0)
    elif AGG == 1:
        col_max = tl.max(cell_max, axis=0)
        col_arg = tl.min(tl.where(cell_max == col_max[None, :], cell_arg, N), axis=0)  # the first best cell
        row_total = tl.sum(cell_total, axis=0)
    elif UNSHIFTED:
        col_l = tl.sum(cell_l, axis=0)
        col_sum = tl.sum(cell_s, axis=0)
        u_l = tl.sum(cell_u, axis=0)
        u_acc = tl.sum(cell_ue, axis=0)
        if TEMP_GRAD:
            col_sq = tl.sum(cell_sq, axis=0)
    pair = i * Bt + group
    col_out = PHRASE + (i * Bt + texts) * 3 * M + phrases
    if AGG == 0:
        score = tl.sum(tl.reshape(col_sum, [TEXTS, BLOCK_M]), axis=1) / (n_cnt * m_cnt)
    elif AGG == 1:
        best_cell = tl.sum(tl.reshape(tl.where(m_valid, col_max, 0.0), [TEXTS, BLOCK_M]), axis=1)
        score = 0.5 * (best_cell / m_cnt + row_total / n_cnt)
        tl.store(col_out, col_arg.to(tl.float32), mask=col_in)
    else:
        if UNSHIFTED:  # the sums' shift: 0
            col_max = tl.zeros([COLS], tl.float32)
            u_max = tl.zeros([TEXTS], tl.float32)
        col_l = tl.where(col_l > 0.0, col_l, 1.0)  # columns past the last text
        c = _fast_divide(col_sum, col_l)
        c3 = tl.reshape(c, [TEXTS, BLOCK_M])
        xw = tl.where(tl.reshape(m_valid, [TEXTS, BLOCK_M]), c3 * scale_w, -1e30)
        w_max = tl.max(xw, axis=1)
        pw = tl.where(tl.reshape(m_valid, [TEXTS, BLOCK_M]), tl.exp2(xw - w_max[:, None]), 0.0)
        w_l = tl.maximum(tl.sum(pw, axis=1), 1e-30)
        t2v = _fast_divide(tl.sum(pw * c3, axis=1), w_l)
        v2t = _fast_divide(u_acc, u_l)
        score = 0.5 * (t2v + v2t)
        tl.store(col_out, c, mask=col_in)
        tl.store(col_out + M, col_max + _log2(col_l), mask=col_in)
        tl.store(PAIR + pair * 4 + 0, t2v, mask=group_in)
        tl.store(PAIR + pair * 4 + 1, w_max + _log2(w_l), mask=group_in)
        tl.store(PAIR + pair * 4 + 2, v2t, mask=group_in)
        tl.store(PAIR + pair * 4 + 3, u_max + _log2(u_l), mask=group_in)
        if TEMP_GRAD:
            # dS/d(1/tau_a): c and e move by their attention-weighted variance of s
            var_col = tl.reshape(col_sq / col_l - c * c, [TEXTS, BLOCK_M])
            w = pw / w_l[:, None]
            dt2v_da = tl.sum(w * (1.0 + (c3 - t2v[:, None]) * inv_tw) * var_col, axis=1)
            dv2t_da = (u_var + inv_tw * (u_evar - v2t * u_var)) / u_l
            # dS/d(1/tau_w): the weighted variance of c (over phrases) and of e (over cells)
            dt2v_dw = tl.sum(w * c3 * c3, axis=1) - t2v * t2v
            dv2t_dw = u_sq / u_l - v2t * v2t
            tl.store(SLOPES + pair * 2 + 0, 0.5 * (dt2v_da + dv2t_da), mask=group_in)
            tl.store(SLOPES + pair * 2 + 1, 0.5 * (dt2v_dw + dv2t_dw), mask=group_in)
    tl.store(OUT + pair, score, mask=group_in)


def _tile_values(BASE, per_video, offs, offs_in, r_in, video, second, v0, v1, TWO_VIDEOS: tl.constexpr):
    """BASE[video[r] * per_video + offs[c]] on a tile [rows x len(offs)], 0 where offs_in is False.
    TWO_VIDEOS: the tile's rows span videos v0 and v1 at most (``second`` marks those of v1), so two
    vectors are loaded and each row picks one; otherwise each entry is gathered."""
    if TWO_VIDEOS:
        a0 = tl.load(BASE + v0 * per_video + offs, mask=offs_in, other=0.0)
        a1 = tl.load(BASE + v1 * per_video + offs, mask=offs_in, other=0.0)
        return tl.where(second[:, None], a1[None, :], a0[None, :])
    return tl.load(BASE + video[:, None] * per_video + offs[None, :], mask=r_in[:, None] & offs_in[None, :],
                   other=0.0)


def _ds_tile(s, first, rows, r_in, n_valid, g, texts, phrases, col_in, m_valid, TEMPS, COEF, PHRASE, Bt, N, M, R,
             AGG: tl.constexpr, BLOCK_M: tl.constexpr, TEXTS: tl.constexpr, BLOCK_N: tl.constexpr,
             TWO_VIDEOS: tl.constexpr, UNSHIFTED: tl.constexpr):
    """dS/ds on a tile of cells ``rows`` = first + arange(BLOCK_N) (flattened [Bv * N], may span
    videos) by the columns of text group g, from the similarity tile s; zero off the valid cells and
    phrases (float32). TWO_VIDEOS (``two_videos``; attention's tiled backward): BLOCK_N <= N + 1, so
    the tile spans two videos at most and their statistics are loaded as vectors, not gathered entry
    by entry.

    COEF [Bv, Bt, 3] and PHRASE [Bv, Bt, 3, M] hold what ds needs per pair and per phrase
    (prepared from the forward's statistics and the incoming gradient, see ``_backward_inputs``;
    attention's phrase gradient there is zero on masked phrases)."""
    COLS: tl.constexpr = TEXTS * BLOCK_M
    if TWO_VIDEOS:
        v0 = first // N
        second = rows >= (v0 + 1) * N
        video = v0 + second.to(tl.int32)
        # the last video's tile has no second video: its rows past the last cell read the first's
        # statistics, and are masked
        v1 = tl.minimum(v0 + 1, (R - 1) // N)
    else:
        video = rows // N
        second = r_in
        v0 = 0
        v1 = 0
    group = g * TEXTS + tl.arange(0, TEXTS)
    group_in = group < Bt
    col_offs = texts * 3 * M + phrases  # of a phrase's statistics within its video's block of PHRASE
    if AGG == 0:
        ds = _per_column(_tile_values(COEF, Bt * 3, group * 3, group_in, r_in, video, second, v0, v1, TWO_VIDEOS),
                         BLOCK_N, TEXTS, BLOCK_M)
        return tl.where(n_valid[:, None] & m_valid[None, :], ds, 0.0)
    elif AGG == 1:
        cell = rows - video * N
        col_arg = _tile_values(PHRASE, Bt * 3 * M, col_offs, col_in, r_in, video, second, v0, v1,
                               TWO_VIDEOS).to(tl.int32)
        col_coef = _per_column(_tile_values(COEF, Bt * 3, group * 3, group_in, r_in, video, second, v0, v1,
                                            TWO_VIDEOS), BLOCK_N, TEXTS, BLOCK_M)
        row_coef = _per_column(_tile_values(COEF + 1, Bt * 3, group * 3, group_in, r_in, video, second, v0, v1,
                                            TWO_VIDEOS), BLOCK_N, TEXTS, BLOCK_M)
        masked = tl.where(tl.reshape(m_valid, [1, TEXTS, BLOCK_M]), tl.reshape(s, [BLOCK_N, TEXTS, BLOCK_M]), -1e30)
        row_arg = _per_column(tl.argmax(masked, axis=2).to(tl.int32), BLOCK_N, TEXTS, BLOCK_M)
        ds = tl.where(cell[:, None] == col_arg, col_coef, 0.0) + tl.where(phrases[None, :] == row_arg, row_coef, 0.0)
        return tl.where(n_valid[:, None] & m_valid[None, :], ds, 0.0)
    else:
        # masks by rows only (a predicate per row): a masked phrase has a zero phrase gradient and no
        # weight in its text's softmax, a text past the last a zero pair gradient
        inv_ta = tl.load(TEMPS)
        inv_tw = tl.load(TEMPS + 1)
        scale_a = inv_ta * 1.4426950408889634
        scale_w = inv_tw * 1.4426950408889634
        s3 = tl.reshape(s, [BLOCK_N, TEXTS, BLOCK_M])
        if UNSHIFTED:
            # one exponential serves both softmaxes (MAX_UNSHIFTED_INVERSE_TEMPERATURE): the column
            # softmax's norm 2^-lse is folded into a and b (``_backward_inputs``), and the row softmax
            # q over phrases is ex, a masked phrase's exponent -1e30 (added with the scale's multiply)
            ex = tl.exp2(s * scale_a + tl.where(m_valid, 0.0, -1e30)[None, :])
            a = _tile_values(PHRASE, Bt * 3 * M, col_offs, col_in, r_in, video, second, v0, v1, TWO_VIDEOS)
            b = _tile_values(PHRASE + 2 * M, Bt * 3 * M, col_offs, col_in, r_in, video, second, v0, v1, TWO_VIDEOS)
            ds = tl.where(n_valid[:, None], ex * (a + b * s), 0.0)
            q = tl.reshape(ex, [BLOCK_N, TEXTS, BLOCK_M])
            inv_q_l = _fast_divide(1.0, tl.maximum(tl.sum(q, axis=2), 1e-30))
        else:
            # text to video: phrase m attends over cells (softmax p over n), phrases weighted by w:
            # ds = grad_c * p * (1 + (s - c) / tau_a) = p * (a + b * s), a and b per phrase from
            # ``_backward_inputs``. A valid cell's p is at most 1 (lse_col sums it), a masked cell's may
            # overflow and is selected away.
            a = _tile_values(PHRASE, Bt * 3 * M, col_offs, col_in, r_in, video, second, v0, v1, TWO_VIDEOS)
            lse_col = _tile_values(PHRASE + M, Bt * 3 * M, col_offs, col_in, r_in, video, second, v0, v1, TWO_VIDEOS)
            b = _tile_values(PHRASE + 2 * M, Bt * 3 * M, col_offs, col_in, r_in, video, second, v0, v1, TWO_VIDEOS)
            p = tl.where(n_valid[:, None], tl.exp2(s * scale_a - lse_col), 0.0)
            ds = p * (a + b * s)
            # video to text: cell n attends over phrases (softmax q over m, unnormalised here, 1 / q_l
            # its norm), cells weighted by u: ds += grad_e * q / q_l * (1 + (s - e) / tau_a) = q *
            # (a_row + b_row * s) with a_row and b_row per cell and text. A masked phrase's exponent is
            # -1e30 (zero weight: every text has a valid phrase).
            xr = tl.reshape(s * scale_a + tl.where(m_valid, 0.0, -1e30)[None, :], [BLOCK_N, TEXTS, BLOCK_M])
            q = tl.exp2(xr - tl.max(xr, axis=2)[:, :, None])
            inv_q_l = _fast_divide(1.0, tl.sum(q, axis=2))
        e = tl.sum(q * s3, axis=2) * inv_q_l
        half_g = _tile_values(COEF, Bt * 3, group * 3, group_in, r_in, video, second, v0, v1, TWO_VIDEOS)
        v2t = _tile_values(COEF + 1, Bt * 3, group * 3, group_in, r_in, video, second, v0, v1, TWO_VIDEOS)
        lse_u = _tile_values(COEF + 2, Bt * 3, group * 3, group_in, r_in, video, second, v0, v1, TWO_VIDEOS)
        u = tl.where(n_valid[:, None], tl.exp2(e * scale_w - lse_u), 0.0)
        grad_e = half_g * u * (1.0 + (e - v2t) * inv_tw) * inv_q_l
        b_row = grad_e * inv_ta
        a_row = grad_e - b_row * e
        return ds + tl.reshape(q * (a_row[:, :, None] + b_row[:, :, None] * s3), [BLOCK_N, COLS])


def _backward_kernel(
    V, T, VMASK, TMASK, TEMPS, COEF, PHRASE, DV, DT,
    Bt, N, M, D, R, D_PAD,
    AGG: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, TEXTS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    TWO_VIDEOS: tl.constexpr, UNSHIFTED: tl.constexpr,
):
    """Backward in tiles: one program = BLOCK_N consecutive cells of the flattened [Bv * N] cells and
    TEXTS texts; recomputes its similarity tile once and adds ds @ T and ds^T @ V to the float32
    gradients DV and DT with atomic adds, D in chunks of BLOCK_D (any D). DV [cells, D_PAD] and DT
    [texts, BLOCK_M, D_PAD] are padded (``_tiled_backward``) so that every add of every tile lands
    in bounds: the adds take no masks (the padding receives zeros or is discarded). Attention is
    launched twice, UNSHIFTED True and False, as the forward is."""
    if _idle_variant(TEMPS, AGG, UNSHIFTED):
        return
    g = tl.program_id(0)
    COLS: tl.constexpr = TEXTS * BLOCK_M
    rows, r_in, col_in, t_rows, ds = _tile_ds(V, T, VMASK, TMASK, TEMPS, COEF, PHRASE, g, tl.program_id(1) * BLOCK_N,
                                              Bt, N, M, D, R, AGG, PRECISION, UPCAST, BLOCK_M, TEXTS, BLOCK_N,
                                              BLOCK_D, TWO_VIDEOS, UNSHIFTED)
    ds = ds.to(V.dtype.element_ty)

    offs_d = tl.arange(0, BLOCK_D)
    dt_rows = (g * TEXTS) * BLOCK_M + tl.arange(0, COLS)  # of DT's padded [texts * BLOCK_M] rows
    for d0 in range(0, D, BLOCK_D):
        d_in = (d0 + offs_d) < D
        t = tl.load(T + t_rows[:, None] * D + d0 + offs_d[None, :], mask=col_in[:, None] & d_in[None, :], other=0.0)
        dv = _dot(ds, t, PRECISION, UPCAST)
        tl.atomic_add(DV + rows[:, None] * D_PAD + d0 + offs_d[None, :], dv, sem="relaxed")
        v = tl.load(V + rows[:, None] * D + d0 + offs_d[None, :], mask=r_in[:, None] & d_in[None, :], other=0.0)
        dt = _dot(tl.trans(ds), v, PRECISION, UPCAST)
        tl.atomic_add(DT + dt_rows[:, None] * D_PAD + d0 + offs_d[None, :], dt, sem="relaxed")


def _tile_ds(V, T, VMASK, TMASK, TEMPS, COEF, PHRASE, g, first, Bt, N, M, D, R, AGG: tl.constexpr,
             PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, TEXTS: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, TWO_VIDEOS: tl.constexpr, UNSHIFTED: tl.constexpr):
    """The tile of the tiled and stored backwards: BLOCK_N consecutive cells from ``first`` of the R
    flattened cells by the TEXTS texts of group g. Recomputes the similarity (D in chunks of BLOCK_D)
    and returns (rows, r_in, col_in, t_rows, dS/ds in float32) (``_text_columns``, ``_ds_tile``)."""
    rows = first + tl.arange(0, BLOCK_N)
    r_in = rows < R
    n_valid = r_in & (tl.load(VMASK + rows, mask=r_in, other=0) != 0)
    texts, phrases, col_in, t_rows, m_valid = _text_columns(TMASK, g, Bt, M, TEXTS, BLOCK_M)
    s = _similarity(V, T, rows, r_in, t_rows, col_in, D, PRECISION, UPCAST, BLOCK_N, TEXTS * BLOCK_M, BLOCK_D)
    ds = _ds_tile(s, first, rows, r_in, n_valid, g, texts, phrases, col_in, m_valid, TEMPS, COEF, PHRASE, Bt, N, M,
                  R, AGG, BLOCK_M, TEXTS, BLOCK_N, TWO_VIDEOS, UNSHIFTED)
    return rows, r_in, col_in, t_rows, ds


def _stored_kernel(
    V, T, VMASK, TMASK, TEMPS, COEF, PHRASE, DS,
    Bt, N, M, D, R,
    AGG: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, COLUMNS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    TWO_VIDEOS: tl.constexpr, UNSHIFTED: tl.constexpr,
):
    """dS/ds written to memory: one program = the tile of ``_backward_kernel`` (``_tile_ds``), BLOCK_N
    cells by COLUMNS // BLOCK_M texts (at least one), whose dS/ds (in the dot products' dtype) goes
    to DS [R, Bt * M] instead of into two gradients. ``_stored_backward`` takes both gradients from
    DS by GEMMs. Attention is launched twice, UNSHIFTED True and False, as the forward is."""
    if _idle_variant(TEMPS, AGG, UNSHIFTED):
        return
    TEXTS: tl.constexpr = (COLUMNS + BLOCK_M - 1) // BLOCK_M
    rows, r_in, col_in, t_rows, ds = _tile_ds(V, T, VMASK, TMASK, TEMPS, COEF, PHRASE, tl.program_id(0),
                                              tl.program_id(1) * BLOCK_N, Bt, N, M, D, R, AGG, PRECISION, UPCAST,
                                              BLOCK_M, TEXTS, BLOCK_N, BLOCK_D, TWO_VIDEOS, UNSHIFTED)
    # 64-bit offsets: R * Bt * M may pass 2^31 (a chunk holds at least one video)
    tl.store(DS + rows.to(tl.int64)[:, None] * (Bt * M) + t_rows[None, :], ds.to(DS.dtype.element_ty),
             mask=r_in[:, None] & col_in[None, :])


def _sweep_ds(V, T, v, t, rows, r_in, n_valid, g, texts, phrases, col_in, t_rows, m_valid, TEMPS, COEF,
              PHRASE, Bt, N, M, D, AGG: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
              BLOCK_M: tl.constexpr, TEXTS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              RESIDENT: tl.constexpr, UNSHIFTED: tl.constexpr):
    """dS/ds of a sweep's tile in the dot products' dtype: the similarity from the loaded tiles v and t
    (RESIDENT) or streamed from V and T in chunks of BLOCK_D."""
    if RESIDENT:
        s = _dot(v, tl.trans(t), PRECISION, UPCAST)
    else:
        s = _similarity(V, T, rows, r_in, t_rows, col_in, D, PRECISION, UPCAST, BLOCK_N, TEXTS * BLOCK_M, BLOCK_D)
    # the sweeps gather the statistics (TWO_VIDEOS False), which needs neither first nor R (0 here)
    return _ds_tile(s, 0, rows, r_in, n_valid, g, texts, phrases, col_in, m_valid, TEMPS, COEF, PHRASE, Bt, N, M, 0,
                    AGG, BLOCK_M, TEXTS, BLOCK_N, False, UNSHIFTED).to(V.dtype.element_ty)


def _sweep_backward_kernel(
    V, T, VMASK, TMASK, TEMPS, COEF, PHRASE, DV, DT,
    Bt, N, M, D, R, PER_SPLIT,
    AGG: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, TEXTS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    D_SLICE: tl.constexpr, RESIDENT: tl.constexpr, FOR_TEXT: tl.constexpr, UNSHIFTED: tl.constexpr,
):
    """Backward in sweeps: one gradient per launch, no atomic add inside the loop.

    FOR_TEXT = False: a program holds BLOCK_N flattened cells and sweeps PER_SPLIT groups of texts
    (split ``program_id(1)``), adding ds @ T into a float32 accumulator of D_SLICE dimensions (slice
    ``program_id(2)``); FOR_TEXT = True: a program holds one group of TEXTS texts and sweeps
    PER_SPLIT tiles of BLOCK_N cells, adding ds^T @ V. The accumulator reaches DV or DT with one
    atomic add per split. RESIDENT (D <= D_SLICE, one slice): the held tile is loaded once and each
    swept tile once, for both of its dot products; otherwise the similarity is taken in chunks of
    BLOCK_D from memory and recomputed once per slice. Attention is launched twice, UNSHIFTED True
    and False, as the forward is."""
    if _idle_variant(TEMPS, AGG, UNSHIFTED):
        return
    fixed = tl.program_id(0)
    split = tl.program_id(1)
    offs_a = tl.program_id(2) * D_SLICE + tl.arange(0, D_SLICE)
    a_in = offs_a < D
    first = split * PER_SPLIT
    if FOR_TEXT:
        g = fixed
        texts, phrases, col_in, t_rows, m_valid = _text_columns(TMASK, g, Bt, M, TEXTS, BLOCK_M)
        if RESIDENT:
            t = tl.load(T + t_rows[:, None] * D + offs_a[None, :], mask=col_in[:, None] & a_in[None, :], other=0.0)
        acc = tl.zeros([TEXTS * BLOCK_M, D_SLICE], tl.float32)
        for block in range(first, tl.minimum(first + PER_SPLIT, tl.cdiv(R, BLOCK_N))):
            rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
            r_in = rows < R
            n_valid = r_in & (tl.load(VMASK + rows, mask=r_in, other=0) != 0)
            v = tl.load(V + rows[:, None] * D + offs_a[None, :], mask=r_in[:, None] & a_in[None, :], other=0.0)
            ds = _sweep_ds(V, T, v, t if RESIDENT else T, rows, r_in, n_valid, g, texts, phrases, col_in, t_rows,
                           m_valid, TEMPS, COEF, PHRASE, Bt, N, M, D, AGG, PRECISION, UPCAST, BLOCK_M, TEXTS,
                           BLOCK_N, BLOCK_D, RESIDENT, UNSHIFTED)
            acc += _dot(tl.trans(ds), v, PRECISION, UPCAST)
        tl.atomic_add(DT + t_rows[:, None] * D + offs_a[None, :], acc, mask=col_in[:, None] & a_in[None, :],
                      sem="relaxed")
    else:
        rows = fixed * BLOCK_N + tl.arange(0, BLOCK_N)
        r_in = rows < R
        n_valid = r_in & (tl.load(VMASK + rows, mask=r_in, other=0) != 0)
        if RESIDENT:
            v = tl.load(V + rows[:, None] * D + offs_a[None, :], mask=r_in[:, None] & a_in[None, :], other=0.0)
        acc = tl.zeros([BLOCK_N, D_SLICE], tl.float32)
        for g in range(first, tl.minimum(first + PER_SPLIT, tl.cdiv(Bt, TEXTS))):
            texts, phrases, col_in, t_rows, m_valid = _text_columns(TMASK, g, Bt, M, TEXTS, BLOCK_M)
            t = tl.load(T + t_rows[:, None] * D + offs_a[None, :], mask=col_in[:, None] & a_in[None, :], other=0.0)
            ds = _sweep_ds(V, T, v if RESIDENT else V, t, rows, r_in, n_valid, g, texts, phrases, col_in, t_rows,
                           m_valid, TEMPS, COEF, PHRASE, Bt, N, M, D, AGG, PRECISION, UPCAST, BLOCK_M, TEXTS,
                           BLOCK_N, BLOCK_D, RESIDENT, UNSHIFTED)
            acc += _dot(ds, t, PRECISION, UPCAST)
        tl.atomic_add(DV + rows[:, None] * D + offs_a[None, :], acc, mask=r_in[:, None] & a_in[None, :],
                      sem="relaxed")


_JIT_FUNCTIONS = ("_dot", "_log2_exact", "_log2_fast", "_idle_variant", "_fast_divide", "_similarity", "_per_column",
                  "_text_columns", "_tile_values", "_ds_tile", "_tile_ds", "_forward_kernel", "_forward_video",
                  "_backward_kernel", "_stored_kernel", "_sweep_ds", "_sweep_backward_kernel")


def _load_kernels() -> None:
    """Import triton and turn the kernel bodies above into ``triton.jit`` functions (once); off the
    interpreter, wrap the two kernels in ``triton.autotune`` over their configurations."""
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
    if _interpret_mode():
        module_globals["_log2"] = module_globals["_log2_exact"]
    else:
        from triton.language.extra import libdevice as libdevice_module
        module_globals["libdevice"], module_globals["_log2"] = libdevice_module, module_globals["_log2_fast"]
    if not _interpret_mode():
        # the aggregation is part of the key: each has its own best configuration (a key of sizes
        # alone would reuse the first aggregation's choice for the others)
        key = ["N", "M", "D", "AGG"]
        _TUNED["forward"] = triton.autotune([_config(c) for c in FORWARD_CONFIGS + RESIDENT_FORWARD_CONFIGS],
                                            key=key + ["TEMP_GRAD", "UNSHIFTED"],
                                            prune_configs_by={"early_config_prune": _forward_prune})(_forward_kernel)
        _TUNED["backward"] = triton.autotune([_config(c) for c in BACKWARD_CONFIGS + WIDE_BACKWARD_CONFIGS],
                                             key=key + ["UNSHIFTED"],
                                             prune_configs_by={"early_config_prune": _backward_prune},
                                             pre_hook=_zero_gradients)(_backward_kernel)
        # every entry of DS that a launch covers is stored, so tuning trials need no reset
        every_stored = [{**c, "COLUMNS": TILE_COLUMNS} for c in BACKWARD_CONFIGS + WIDE_BACKWARD_CONFIGS]
        _TUNED["stored"] = triton.autotune([_config(c) for c in every_stored + list(STORED_CONFIGS)],
                                           key=key + ["UNSHIFTED"],
                                           prune_configs_by={"early_config_prune": _stored_prune})(_stored_kernel)
        # each sweep launch writes one gradient; the other pointer is a placeholder, so zeroing both
        # between trials never wipes the gradient the other launch wrote
        _TUNED["sweep"] = triton.autotune([_config(c) for c in SWEEP_CONFIGS], key=key + ["FOR_TEXT", "UNSHIFTED"],
                                          prune_configs_by={"early_config_prune": _sweep_prune},
                                          pre_hook=_zero_gradients)(_sweep_backward_kernel)
    _KERNELS_READY = True


def _zero_gradients(nargs: dict[str, Any], reset_only: bool = False) -> None:
    """The backward autotuners' pre_hook (their reset_to_zero): zeroes DV and DT before each timed
    trial and after tuning, except in attention's variant that returns at once, whose tuning would
    otherwise wipe the gradients the variant that runs has just written. Which one runs is read on
    the device (TEMPS[2]), so nothing waits."""
    if nargs["AGG"] == AGGREGATION_CODES["attention"]:
        runs = (nargs["TEMPS"][2] != 0.0) == bool(nargs["UNSHIFTED"])
        for name in ("DV", "DT"):
            nargs[name].masked_fill_(runs, 0.0)
    else:
        for name in ("DV", "DT"):
            nargs[name].zero_()


def _aggregation_name(code: int) -> str:
    return next(name for name, value in AGGREGATION_CODES.items() if value == code)


def _allowed(configs: list[Any], offered: Sequence[dict[str, int]]) -> list[Any]:
    """The autotuner's ``configs`` that are among ``offered`` (constexprs, warps and stages alike)."""
    keys = [(_tuned_keys(c), c["num_warps"], c["num_stages"]) for c in offered]
    return [config for config in configs if (config.kwargs, config.num_warps, config.num_stages) in keys]


def _forward_prune(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """The autotuner's candidates for one launch: those of ``forward_configs``."""
    args = {**named_args, **kwargs}
    return _allowed(configs, forward_configs(_aggregation_name(args["AGG"]), args["M"], args["D"]))


def _tuned_keys(config: dict[str, int]) -> dict[str, int]:
    """A configuration's constexprs (everything but warps and stages)."""
    return {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}


def _backward_prune(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """The autotuner's candidates for one launch: those of ``backward_configs`` for its aggregation."""
    return _allowed(configs, backward_configs(_aggregation_name({**named_args, **kwargs}["AGG"])))


def _stored_prune(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """The stored kernel's candidates for one launch: those of ``stored_configs``."""
    args = {**named_args, **kwargs}
    return _allowed(configs, stored_configs(_aggregation_name(args["AGG"]), args["M"], args["N"],
                                            bool(args["UNSHIFTED"])))


def _sweep_prune(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """The sweep's candidates for one launch: those of ``sweep_configs`` for its D, gradient and
    aggregation."""
    args = {**named_args, **kwargs}
    return _allowed(configs, sweep_configs(args["D"], bool(args["FOR_TEXT"]), _aggregation_name(args["AGG"])))


def _config(config: dict[str, int]) -> Any:
    return triton.Config(_tuned_keys(config), num_warps=config["num_warps"], num_stages=config["num_stages"])


def _launch(name: str, aggregation_code: int, phrases: int, dim: int, for_text: bool = False, cells: int = 0
            ) -> tuple[Any, dict[str, int]]:
    """The kernel to launch and the launch options the caller adds: the autotuned kernel on a GPU,
    the plain one with the first configuration the autotuner could pick under the interpreter
    (``cells``: cells per video, which the stored kernel's configurations depend on)."""
    if name in _TUNED:
        return _TUNED[name], {}
    aggregation = _aggregation_name(aggregation_code)
    kernel, configs = {"forward": (_forward_kernel, lambda: forward_configs(aggregation, phrases, dim)),
                       "backward": (_backward_kernel, lambda: backward_configs(aggregation)),
                       "stored": (_stored_kernel, lambda: stored_configs(aggregation, phrases, cells)),
                       "sweep": (_sweep_backward_kernel, lambda: sweep_configs(dim, for_text, aggregation))}[name]
    return kernel, _tuned_keys(configs()[0])


# --------------------------------------------------------------------------------------------
# Launch helpers and autograd
# --------------------------------------------------------------------------------------------


def _backward_inputs(aggregation_code: int, grad: torch.Tensor, n_count: torch.Tensor, m_count: torch.Tensor,
                     temps: torch.Tensor, pair_stats: torch.Tensor, phrase_stats: torch.Tensor,
                     text_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """COEF [Bv, Bt, 3] and PHRASE [Bv, Bt, 3, M] of ``_backward_kernel``, on the device. Attention's
    PHRASE holds a, lse and b per phrase, where the phrase's gradient grad_c (of the score through
    its attended similarity c) gives dS/ds = p * (a + b * s) over its softmax p of cells:
    a = grad_c * (1 - c / tau_a), b = grad_c / tau_a; both are zero on the masked phrases of
    ``text_valid`` [Bt, M]. Where the temperatures let the kernels run unshifted (TEMPS[2]), a and b
    also carry the softmax's norm 2^-lse, so that the kernels take p * (a + b * s) as
    exp2(s / tau_a * log2 e) * (a + b * s); 2^-lse is at most 2^93 (a lse of a valid cell's
    exponentials is at least -1 / tau_a * log2 e)."""
    Bv, Bt = grad.shape
    coef = torch.zeros(Bv, Bt, 3, device=grad.device, dtype=torch.float32)
    if aggregation_code == 0:
        coef[:, :, 0] = grad / (n_count[:, None] * m_count[None, :])
        return coef, phrase_stats
    if aggregation_code == 1:
        coef[:, :, 0] = 0.5 * grad / m_count[None, :]
        coef[:, :, 1] = 0.5 * grad / n_count[:, None]
        return coef, phrase_stats
    inv_ta, inv_tw = temps[0], temps[1]
    t2v, lse_w, v2t, lse_u = pair_stats.unbind(-1)
    c = phrase_stats[:, :, 0]
    w = torch.exp2(c * (inv_tw * LOG2E) - lse_w[..., None])
    phrase = phrase_stats.clone()
    grad_c = torch.where(text_valid != 0, (0.5 * grad)[..., None] * w * (1.0 + (c - t2v[..., None]) * inv_tw), 0.0)
    norm = torch.where(temps[2] != 0.0, torch.exp2(-phrase_stats[:, :, 1]), 1.0)
    phrase[:, :, 0] = grad_c * (1.0 - c * inv_ta) * norm
    phrase[:, :, 2] = grad_c * inv_ta * norm
    coef[:, :, 0] = 0.5 * grad
    coef[:, :, 1] = v2t
    coef[:, :, 2] = lse_u
    return coef, phrase


def _tiled_backward(inputs: tuple[torch.Tensor, ...], settings: tuple[Any, ...]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both gradients [Bv, N, D] and [Bt, M, D] (float32) by ``_backward_kernel``: atomic adds into
    zeroed buffers padded so that no tile of any configuration adds out of bounds (cells to a
    multiple of the largest BLOCK_N, texts to whole groups, phrases to BLOCK_M, D to a multiple of
    the largest BLOCK_D), then cut to size. Masks on the adds (with their branches around each add)
    cost attention's tile at M = 32, D = 256 about a tenth of its warp instructions (``kernel_report``)."""
    aggregation_code, precision, upcast, Bv, Bt, N, M, D = settings
    block_m, texts = tile_shape(M)
    kernel, blocks = _launch("backward", aggregation_code, M, D)
    aggregation = _aggregation_name(aggregation_code)
    block_n, block_d = backward_padding(aggregation)
    d_pad = _cdiv(D, block_d) * block_d
    device = inputs[0].device
    dv = torch.zeros(_cdiv(Bv * N, block_n) * block_n, d_pad, device=device, dtype=torch.float32)
    dt = torch.zeros(_cdiv(Bt, texts) * texts, block_m, d_pad, device=device, dtype=torch.float32)

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return triton.cdiv(Bt, texts), triton.cdiv(Bv * N, meta["BLOCK_N"])

    for unshifted in _variants(aggregation_code):
        kernel[grid](*inputs, dv, dt, Bt, N, M, D, Bv * N, d_pad, AGG=aggregation_code, PRECISION=precision,
                     UPCAST=upcast, BLOCK_M=block_m, TEXTS=texts,
                     TWO_VIDEOS=launch_two_videos(aggregation_code, N, backward_configs(aggregation)),
                     UNSHIFTED=unshifted, **blocks)
    return dv[:Bv * N, :D].reshape(Bv, N, D), dt[:Bt, :M, :D].contiguous()


def stored_videos(videos: int, cells: int, columns: int, element_size: int) -> int:
    """Videos per chunk of the stored backward: as many whole videos as keep a chunk's dS/ds
    [videos * cells, columns] within ``STORED_BYTES`` (at least one)."""
    return max(1, min(videos, STORED_BYTES // max(1, cells * columns * element_size)))


def _stored_backward(inputs: tuple[torch.Tensor, ...], settings: tuple[Any, ...], needs: tuple[bool, bool]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both gradients, [Bv, N, D] in the dot products' dtype and [Bt, M, D] in float32 (one is zero
    where ``needs`` does not ask for it), from dS/ds stored by ``_stored_kernel``, a chunk of whole
    videos at a time (``stored_videos``): dV of the chunk's videos = dS/ds @ T, dT += dS/ds^T @ V of
    the chunk, two GEMMs of the GEMM library (cuBLAS on a GPU) in the dot products' dtype. dV is
    written once per entry, so it stays in the GEMM's dtype (for bfloat16 tokens, the gradient
    needs no copy). No atomic add, and the similarity is recomputed once; the price is writing and
    reading dS/ds, [Bv * N, Bt * M] in all."""
    aggregation_code, precision, upcast, Bv, Bt, N, M, D = settings
    video, text, video_valid, text_valid, temps, coef, phrase = inputs
    block_m = tile_shape(M)[0]
    kernel, blocks = _launch("stored", aggregation_code, M, D, cells=N)
    device = video.device
    per_chunk = stored_videos(Bv, N, Bt * M, video.element_size())
    ds = torch.empty(per_chunk * N, Bt * M, device=device, dtype=video.dtype)
    dv = (torch.empty if needs[0] else torch.zeros)(Bv, N, D, device=device, dtype=video.dtype)
    dt = torch.zeros(Bt * M, D, device=device, dtype=torch.float32)
    text_rows = text.reshape(Bt * M, D)
    aggregation = _aggregation_name(aggregation_code)
    # TWO_VIDEOS of each variant, from the tiles its autotuner is offered (the same for every chunk)
    two = {unshifted: launch_two_videos(aggregation_code, N, stored_configs(aggregation, M, N, unshifted))
           for unshifted in _variants(aggregation_code)}
    for v0 in range(0, Bv, per_chunk):
        v1 = min(Bv, v0 + per_chunk)
        cells = (v1 - v0) * N
        chunk = ds[:cells]
        # the chunk's videos as a batch of their own: its statistics start at video v0 (mean has no
        # phrase statistics, a one-element placeholder)
        chunk_inputs = (video[v0:v1], text, video_valid[v0:v1], text_valid, temps, coef[v0:v1],
                        phrase[v0:v1] if phrase.dim() > 1 else phrase)

        def grid(meta: dict[str, int], cells: int = cells) -> tuple[int, int]:
            return triton.cdiv(Bt, tile_shape(M, meta["COLUMNS"])[1]), triton.cdiv(cells, meta["BLOCK_N"])

        for unshifted, two_videos_now in two.items():
            kernel[grid](*chunk_inputs, chunk, Bt, N, M, D, cells, AGG=aggregation_code, PRECISION=precision,
                         UPCAST=upcast, BLOCK_M=block_m, TWO_VIDEOS=two_videos_now, UNSHIFTED=unshifted, **blocks)
        if needs[0]:
            torch.mm(chunk, text_rows, out=dv[v0:v1].view(cells, D))
        if needs[1]:
            dt += chunk.t() @ video[v0:v1].reshape(cells, D)
    return dv, dt.view(Bt, M, D)


def _sweep_programs(device: torch.device) -> int:
    if SWEEP_PROGRAMS is not None:
        return SWEEP_PROGRAMS
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def sweep_splits(fixed: int, swept: int, programs: int) -> tuple[int, int]:
    """(splits, swept tiles per split) for ``fixed`` programs that sweep ``swept`` tiles: about
    ``programs / fixed`` splits of equal length (at most one per swept tile), none empty."""
    per_split = _cdiv(swept, min(swept, max(1, _cdiv(programs, fixed))))
    return _cdiv(swept, per_split), per_split


def two_videos(aggregation_code: int, cells: int, block_n: int) -> bool:
    """The ``TWO_VIDEOS`` of the tiled backward (``_ds_tile``): attention's tiles of ``block_n``
    consecutive cells that span two videos of ``cells`` cells at most load the statistics of both
    as vectors instead of gathering them entry by entry. Not for ``mean`` and ``max``, which gather
    one or two values an entry: their SASS counts favour the gather at 128 cells a tile, nor for the
    sweeps, whose counts favour it too (``kernel_report``)."""
    return aggregation_code == AGGREGATION_CODES["attention"] and block_n <= cells + 1


def launch_two_videos(aggregation_code: int, cells: int, configs: Sequence[dict[str, int]]) -> bool:
    """The ``TWO_VIDEOS`` of a launch whose autotuner picks among ``configs``: it must hold for the
    largest tile, since it is set before the configuration is chosen."""
    return two_videos(aggregation_code, cells, max(c["BLOCK_N"] for c in configs))


def _variants(aggregation_code: int) -> tuple[bool, ...]:
    """The UNSHIFTED variants a kernel is launched in: attention's two (the temperatures, TEMPS[2] on
    the device, make one of them return at once), one for the other aggregations."""
    return (True, False) if aggregation_code == AGGREGATION_CODES["attention"] else (False,)


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _sweep_backward(inputs: tuple[torch.Tensor, ...], settings: tuple[Any, ...], needs: tuple[bool, bool]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both gradients [Bv, N, D] and [Bt, M, D] (float32; one is zero where ``needs`` does not ask
    for it), one ``_sweep_backward_kernel`` launch each."""
    aggregation_code, precision, upcast, Bv, Bt, N, M, D = settings
    device = inputs[0].device
    dv = torch.zeros(Bv, N, D, device=device, dtype=torch.float32)
    dt = torch.zeros(Bt, M, D, device=device, dtype=torch.float32)
    shape = sweep_shape(M)
    assert shape is not None
    block_m, texts = shape
    cells, groups = _cdiv(Bv * N, SWEEP_BLOCK_N), _cdiv(Bt, texts)
    placeholder = torch.zeros(1, device=dv.device, dtype=torch.float32)
    programs = _sweep_programs(dv.device)
    for for_text, fixed, swept, out_video, out_text in ((False, cells, groups, dv, placeholder),
                                                       (True, groups, cells, placeholder, dt)):
        if not needs[int(for_text)]:
            continue
        splits, per_split = sweep_splits(fixed, swept, programs)
        kernel, blocks = _launch("sweep", aggregation_code, M, D, for_text)

        def grid(meta: dict[str, int], fixed: int = fixed, splits: int = splits) -> tuple[int, int, int]:
            return fixed, splits, _cdiv(D, meta["D_SLICE"])

        for unshifted in _variants(aggregation_code):
            kernel[grid](*inputs, out_video, out_text, Bt, N, M, D, Bv * N, per_split, AGG=aggregation_code,
                         PRECISION=precision, UPCAST=upcast, BLOCK_M=block_m, TEXTS=texts, BLOCK_N=SWEEP_BLOCK_N,
                         FOR_TEXT=for_text, UNSHIFTED=unshifted, **blocks)
    return dv, dt


_DESIGNS: dict[tuple[Any, ...], str] = {}


def reset_tuning() -> None:
    """Forget every autotuner choice and every ``auto`` backward design, so that the next call of
    each shape chooses again (after changing ``FORWARD_DESIGN`` or ``BACKWARD_DESIGN``)."""
    for kernel in _TUNED.values():
        kernel.cache.clear()
    _DESIGNS.clear()


def chosen_designs() -> dict[str, str]:
    """The backward design ``auto`` chose for each shape so far ("Bv x Bt, N, M, D, aggregation, dtype")."""
    return {f"{k[3]}x{k[4]} N={k[5]} M={k[6]} D={k[7]} {_aggregation_name(k[0])} {k[8]} grads={k[9]}": v
            for k, v in _DESIGNS.items()}


def _backward_design(settings: tuple[Any, ...], needs: tuple[bool, bool], dtype: torch.dtype, device: torch.device,
                     run: Any) -> str:
    """The design this backward runs (see ``BACKWARD_DESIGN``); ``run(design)`` launches one."""
    if BACKWARD_DESIGN not in BACKWARD_DESIGNS:
        raise ValueError(f"BACKWARD_DESIGN={BACKWARD_DESIGN!r}; valid: {', '.join(BACKWARD_DESIGNS)}")
    sweeps = sweep_shape(settings[6]) is not None
    if BACKWARD_DESIGN in ("tiles", "stored"):
        return BACKWARD_DESIGN
    if BACKWARD_DESIGN == "sweep" or device.type != "cuda":
        return "sweep" if sweeps else "tiles"
    key = (*settings, str(dtype).removeprefix("torch."), "".join("vt"[i] for i in (0, 1) if needs[i]))
    if key not in _DESIGNS:
        import triton.testing

        timings = {}
        for design in ("tiles", "sweep", "stored") if sweeps else ("tiles", "stored"):
            run(design)  # its autotuning first, so the timing below sees only the chosen configuration
            timings[design] = triton.testing.do_bench(lambda design=design: run(design), warmup=5, rep=25,
                                                      return_mode="median")
        _DESIGNS[key] = min(timings, key=timings.get)
    return _DESIGNS[key]


def _device_context(device: torch.device) -> Any:
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _TritonPairScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, video, text, video_valid, text_valid, inv_ta, inv_tw, aggregation_code):  # type: ignore[override]
        Bv, N, D = video.shape
        Bt, M, _ = text.shape
        device = video.device
        input_dtype = video.dtype
        if device.type == "cuda" and video.dtype == torch.float32 and BF16_ON_CUDA:
            video, text = video.to(torch.bfloat16), text.to(torch.bfloat16)  # the tensor cores' input
        precision = "ieee" if video.dtype == torch.float32 else "tf32"
        upcast = _interpret_mode() and video.dtype == torch.bfloat16
        block_m, texts = tile_shape(M)
        n_count = video_valid.sum(dim=1).to(torch.float32)
        m_count = text_valid.sum(dim=1).to(torch.float32)
        temps = _kernel_temperatures(inv_ta, inv_tw)
        temp_grad = aggregation_code == 2 and (ctx.needs_input_grad[4] or ctx.needs_input_grad[5])
        scores = torch.empty(Bv, Bt, device=device, dtype=torch.float32)
        # statistics an aggregation does not use get a one-element placeholder
        pair_stats = torch.empty((Bv, Bt, 4) if aggregation_code == 2 else (1,), device=device, dtype=torch.float32)
        phrase_stats = torch.empty((Bv, Bt, 3, M) if aggregation_code else (1,), device=device, dtype=torch.float32)
        slopes = torch.empty((Bv, Bt, 2) if temp_grad else (1,), device=device, dtype=torch.float32)
        video_valid_u8 = video_valid.to(torch.uint8).contiguous()
        text_valid_u8 = text_valid.to(torch.uint8).contiguous()
        kernel, blocks = _launch("forward", aggregation_code, M, D)

        def grid(meta: dict[str, int]) -> tuple[int, int]:
            return triton.cdiv(Bt, texts), triton.cdiv(Bv, meta["VIDEOS"])

        with _device_context(device):
            # attention: both variants are launched, and the temperatures (TEMPS[2]) pick the one that runs
            for unshifted in _variants(aggregation_code):
                kernel[grid](
                    video, text, video_valid_u8, text_valid_u8, n_count, m_count, temps,
                    scores, pair_stats, phrase_stats, slopes,
                    Bv, Bt, N, M, D,
                    AGG=aggregation_code, TEMP_GRAD=temp_grad, UNSHIFTED=unshifted, PRECISION=precision,
                    UPCAST=upcast, BLOCK_M=block_m, TEXTS=texts, **blocks,
                )  # fmt: skip
        ctx.save_for_backward(video, text, video_valid_u8, text_valid_u8, n_count, m_count, temps, pair_stats,
                              phrase_stats, slopes)
        ctx.settings = (aggregation_code, temp_grad, precision, upcast)
        ctx.input_dtype = input_dtype
        return scores

    @staticmethod
    def backward(ctx, grad_scores):  # type: ignore[override]
        (video, text, video_valid_u8, text_valid_u8, n_count, m_count, temps, pair_stats, phrase_stats,
         slopes) = ctx.saved_tensors
        aggregation_code, temp_grad, precision, upcast = ctx.settings
        Bv, N, D = video.shape
        Bt, M, _ = text.shape
        device = video.device
        grad = grad_scores.to(torch.float32).contiguous()
        grad_video = grad_text = grad_inv_ta = grad_inv_tw = None
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if any(needs):
            coef, phrase = _backward_inputs(aggregation_code, grad, n_count, m_count, temps, pair_stats, phrase_stats,
                                           text_valid_u8)
            inputs = (video, text, video_valid_u8, text_valid_u8, temps, coef, phrase)
            settings = (aggregation_code, precision, upcast, Bv, Bt, N, M, D)

            def run(design: str) -> tuple[torch.Tensor, torch.Tensor]:
                with _device_context(device):
                    if design == "sweep":
                        return _sweep_backward(inputs, settings, needs)
                    if design == "stored":
                        return _stored_backward(inputs, settings, needs)
                    return _tiled_backward(inputs, settings)

            dv, dt = run(_backward_design(settings, needs, video.dtype, device, run))
            input_dtype = ctx.input_dtype
            grad_video = dv.to(input_dtype) if needs[0] else None
            grad_text = dt.to(input_dtype) if needs[1] else None
        if temp_grad:
            weighted = (slopes * grad.unsqueeze(-1)).sum(dim=(0, 1))
            grad_inv_ta = weighted[0] if ctx.needs_input_grad[4] else None
            grad_inv_tw = weighted[1] if ctx.needs_input_grad[5] else None
        return grad_video, grad_text, None, None, grad_inv_ta, grad_inv_tw, None


def _inverse_temperature(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """1 / tau as a 0-dim float32 tensor on ``device``, differentiable when tau is a tensor; a float is
    written by a device-side fill, so no host-to-device copy waits for the GPU."""
    if isinstance(value, torch.Tensor):
        return 1.0 / value.reshape(()).to(device=device, dtype=torch.float32)
    return torch.full((), 1.0 / float(value), device=device, dtype=torch.float32)


def _kernel_temperatures(inv_ta: torch.Tensor, inv_tw: torch.Tensor) -> torch.Tensor:
    """TEMPS of the kernels, float32 on the device: [1/tau_a, 1/tau_w, unshifted], where unshifted is
    1.0 when both are at most ``MAX_UNSHIFTED_INVERSE_TEMPERATURE`` (computed on the device: no wait)."""
    inverse = torch.stack((inv_ta.detach(), inv_tw.detach())).to(torch.float32)
    return torch.cat((inverse, (inverse.amax() <= MAX_UNSHIFTED_INVERSE_TEMPERATURE).to(torch.float32)[None]))


def fused_limits(phrases: int) -> str | None:
    """Why the fused kernels cannot take texts of ``phrases`` phrases (None when they can)."""
    if phrases > MAX_PHRASES:
        return f"M={phrases} phrases exceeds the fused kernels' {MAX_PHRASES} phrases per tile"
    return None


def triton_pair_scores(
    video_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    aggregation: str = "attention",
    attn_temperature: float | torch.Tensor = 0.1,
    weight_temperature: float | torch.Tensor = 0.1,
) -> torch.Tensor:
    """Pair scores S [Bv, Bt] of docs/study.md section 2, computed by the fused Triton kernels.

    The kernel entry of :func:`fgmm_lib.losses.scores.pair_scores` (``backend="triton"``), which has
    validated the arguments: it checks nothing and never synchronises with the device.

    Args:
        video_tokens: [Bv, N, D] cell embeddings (any scale: cosine similarity inside), masked cells zero.
        text_tokens: [Bt, M, D] phrase embeddings, same D and dtype (float32, bfloat16 or float16).
        text_mask: bool [Bt, M], True = real phrase, at least one per text.
        video_mask: bool [Bv, N], True = valid cell, at least one per video.
        aggregation: one of ``AGGREGATIONS``; those without a kernel code run on the chunked backend.
        attn_temperature, weight_temperature: tau_a and tau_w of ``attention`` (> 0); tensors
            that require grad receive gradients.

    Returns:
        S [Bv, Bt] in float32 (whatever the input dtype), differentiable with respect to both token
        sets. CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before the first call.
    """
    reason = fused_limits(text_tokens.shape[1])
    if aggregation not in AGGREGATION_CODES:
        reason = f"the fused kernels have no code for aggregation {aggregation!r}"
    if reason is not None:

        warnings.warn(f"{reason}; using the chunked backend", RuntimeWarning, stacklevel=2)
        # in float32, like the kernels' statistics: chunked in bfloat16 would round its softmaxes too
        return pair_scores(video_tokens.float(), text_tokens.float(), text_mask, video_mask, aggregation,
                           attn_temperature, weight_temperature, backend="chunked")
    _load_kernels()
    device = video_tokens.device
    dtype = video_tokens.dtype
    video = F.normalize(video_tokens.float(), dim=-1).to(dtype).contiguous()
    text = F.normalize(text_tokens.float(), dim=-1).to(dtype).contiguous()
    inv_ta = _inverse_temperature(attn_temperature, device)
    inv_tw = _inverse_temperature(weight_temperature, device)
    return _TritonPairScores.apply(video, text, video_mask, text_mask, inv_ta, inv_tw,
                                   AGGREGATION_CODES[aggregation])
