"""Pair scores between videos and texts: :func:`pair_scores`, its backends and :func:`attention_maps`.

The math follows docs/study.md section 2. The losses built on these scores (section 3) are the
modules of :mod:`fgmm_lib.losses.modules`. Every similarity is a cosine: tokens are
L2-normalised along D inside. Masks are bool with True = valid; masked tokens never
influence a score or a gradient, whatever their values (they are replaced by zeros
before anything else is computed).

Pair score backends (``pair_scores(..., backend=...)``):

- ``"naive"``: the reference. Materialises the full ``[Bv, Bt, N, M]`` similarity tensor.
- ``"chunked"``: pure PyTorch. Processes blocks of texts and recomputes each block in
  backward, so memory grows with ``Bv * block * N * M``; with ``keep_single_block`` a problem that
  fits one block runs once and autograd keeps it. ``"mean"`` needs no block at all:
  the mean of a bilinear form over valid pairs is the cosine of summed unit tokens.
- ``"triton"``: the fused kernel of :mod:`fgmm_lib.kernels.triton_scores`, imported only when it runs.
- ``"auto"``: ``"triton"`` for CUDA tensors of an aggregation in ``AUTO_FUSED`` when the kernel
  can be imported, else ``"chunked"``. ``"mean"`` is not in it: its closed form on the chunked
  backend took 3.7 ms a step on an H100 at B = 1024, N = 196, M = 32, D = 256
  (``results/bench/gpu.csv``), the fused kernel 82 ms (``results/bench/gpu_kernel_times.json``); ``attention_floor``, ``attention_gate`` and ``attention_uniform`` have no kernel.

Aggregations of the cosines s[n, m] of valid cells n and valid phrases m (docs/study.md section 2):

- ``"mean"``: mean of s over all valid (n, m).
- ``"max"`` (FILIP): 1/2 (mean_m max_n s[n, m] + mean_n max_m s[n, m]).
- ``"attention"``: 1/2 (t2v + v2t). Each phrase attends over cells,
  c[m] = sum_n softmax_n(s[:, m] / tau_a)[n] s[n, m]; each cell over phrases,
  e[n] = sum_m softmax_m(s[n, :] / tau_a)[m] s[n, m]; t2v = sum_m w[m] c[m] and
  v2t = sum_n u[n] e[n] with the outer weights w = softmax_m(c / tau_w), u = softmax_n(e / tau_w)
  over valid phrases / cells.

A sharp tau_w lets ``"attention"`` put almost all the weight on one phrase (one cell): a winner
that takes everything, which on colour-named digits is the colour word. Two further aggregations
keep the idea (lower the weight of (cell, phrase) pairs that match badly) with a bound on how far
the weights can collapse. Both keep c, e, the inner softmax over tau_a and the form
1/2 (sum_m w[m] c[m] + sum_n u[n] e[n]); only the outer weights w (and likewise u over cells,
with e and the N_v valid cells in place of c and the M_v valid phrases) change:

- ``"attention_floor"``: a softmax mixed with a uniform floor,
  w[m] = (1 - lam) softmax_m(c / tau_w)[m] + lam / M_v, with lam = ``ATTENTION_FLOOR`` (1/2).
  Every phrase keeps at least lam / M_v of the weight and none takes more than
  1 - lam + lam / M_v, at any tau_w. lam = 0 is ``"attention"``; lam = 1 is the plain mean of c.
- ``"attention_gate"``: a sigmoid gate relative to the text's median match,
  g[m] = sigmoid((c[m] - med_v(c)) / tau_w), w[m] = g[m] / sum_m' g[m'] over valid m', where
  med_v is the lower median over the valid phrases (the value at index (M_v - 1) // 2 of the
  ascending order). Phrases that match worse than the median are lowered towards 0, those that
  match better saturate at 1 together instead of competing: at least ceil(M_v / 2) phrases have
  g >= 1/2 and every g <= 1, so no phrase takes more than 2 / (ceil(M_v / 2) + 1) of the weight
  at any tau_w. tau_w -> infinity gives the plain mean of c; tau_w -> 0 a hard gate (weight 1 above
  the median, 1/2 at it, 0 below). The median, not the mean, is the centre because a single
  outlier above the mean would otherwise be alone with g near 1 and take everything again.

The ablation that isolates the down-weighting keeps everything else:

- ``"attention_uniform"``: the outer weights uniform over valid phrases / cells, w[m] = 1 / M_v and
  u[n] = 1 / N_v (no pair is lowered); the inner softmax over tau_a stays. tau_w is unused. It is
  ``"attention"`` at tau_w -> infinity and ``"attention_floor"`` with lam = 1.

The limits of section 2 hold for all three: tau_a -> 0 makes the inner pooling a max, and
``"attention_gate"`` / ``"attention_floor"`` with lam = 1 weigh the outer terms uniformly at any
tau_w (``"attention"`` at tau_w -> infinity), which with tau_a -> 0 is ``"max"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: Every pretraining loss of the study, in the order tables list them (coarse baselines first).
LOSSES = ("coarse", "milnce", "mean", "max", "attention", "attention_floor", "attention_gate", "attention_uniform")
#: The fine-grained aggregations of (cell, phrase) cosines (docs/study.md section 2; module docstring).
AGGREGATIONS = ("mean", "max", "attention", "attention_floor", "attention_gate", "attention_uniform")
#: The aggregations ``backend="auto"`` computes with the fused kernel on CUDA.
AUTO_FUSED = ("max", "attention")
#: Aggregations of the attention form (inner softmax over tau_a, outer weights over tau_w): they
#: take both temperatures and give attention maps.
ATTENTION_AGGREGATIONS = ("attention", "attention_floor", "attention_gate", "attention_uniform")
#: lam of "attention_floor": the share of the outer weight spread uniformly over valid phrases / cells.
ATTENTION_FLOOR = 0.5
#: Losses whose pair score is the cosine of the global embeddings.
GLOBAL_LOSSES = tuple(loss for loss in LOSSES if loss not in AGGREGATIONS)
#: Pair scores that InfoNCE (:class:`ContrastiveLoss`) takes.
CONTRASTIVE_AGGREGATIONS = ("coarse",) + AGGREGATIONS
BACKENDS = ("naive", "chunked", "triton", "auto")

#: Memory the chunked backend allows one block's working set (bytes).
CHUNK_MEMORY_BUDGET_BYTES = 64 * 2**20
#: How many ``[Bv, block, N, M]`` tensors one block's working set is counted as. Counted generously:
#: the recomputed backward of "attention" holds about 5 to 6 at once (similarities, masked logits,
#: softmaxes, products and their gradients; "max" about 3, measured with torch.profiler), the rest
#: is headroom so that the budget is an upper bound.
CHUNK_WORKING_COPIES = 12
#: Smallest InfoNCE temperature: the learnable temperature is clamped to it after every optimiser
#: step (open_clip clamps its logit scale at 100 the same way), never inside the forward pass.
MIN_TEMPERATURE = 0.01

Temperature = float | Tensor


# --------------------------------------------------------------------------------------
# validation and preparation
# --------------------------------------------------------------------------------------

def check_temperature(value: Temperature, name: str) -> None:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        scalar = float(value.detach())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        scalar = float(value)
    else:
        raise ValueError(f"{name} must be a positive float or a scalar tensor, got {value!r}")
    if not scalar > 0 or not math.isfinite(scalar):
        raise ValueError(f"{name} must be a finite value > 0, got {scalar}")


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")


def check_tokens(tokens: Any, name: str, ndim: int = 3) -> None:
    if not isinstance(tokens, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.ndim != ndim:
        layout = "[B, N, D]" if ndim == 3 else "[N, D]"
        raise ValueError(f"{name} must have shape {layout} ({ndim} dims), got shape {tuple(tokens.shape)}")
    if not tokens.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tokens.dtype}")
    if tokens.shape[-2] == 0 or tokens.shape[-1] == 0:
        raise ValueError(f"{name} has no tokens or no features: shape {tuple(tokens.shape)}")


def check_mask(mask: Tensor | None, tokens: Tensor, name: str, tokens_name: str, what: str,
                item: str = "token") -> Tensor:
    """Return a bool mask of ``tokens.shape[:-1]`` (all valid when ``mask`` is None)."""
    expected = tuple(tokens.shape[:-1])
    if mask is None:
        return torch.ones(expected, dtype=torch.bool, device=tokens.device)
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must have dtype torch.bool (True = valid), got {mask.dtype}")
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but {tokens_name} {tuple(tokens.shape)} needs {expected}")
    if mask.device != tokens.device:
        raise ValueError(f"{name} is on {mask.device} but {tokens_name} is on {tokens.device}")
    if mask.ndim == 1:
        if not bool(mask.any()):
            raise ValueError(f"{name} leaves the {what} with no valid {item}")
    else:
        empty_rows = (~mask.any(dim=-1)).nonzero().flatten()
        if empty_rows.numel() > 0:
            rows = empty_rows.tolist()
            raise ValueError(f"{name} leaves {what} {rows[:10]} (row index) with no valid {item}")
    return mask


def check_pair(video_tokens: Tensor, text_tokens: Tensor, video_name: str, text_name: str) -> None:
    if video_tokens.shape[-1] != text_tokens.shape[-1]:
        raise ValueError(
            f"{video_name} {tuple(video_tokens.shape)} and {text_name} {tuple(text_tokens.shape)} "
            f"disagree on the feature size D ({video_tokens.shape[-1]} vs {text_tokens.shape[-1]})")
    if video_tokens.dtype != text_tokens.dtype:
        raise ValueError(f"{video_name} has dtype {video_tokens.dtype} but {text_name} has {text_tokens.dtype}")
    if video_tokens.device != text_tokens.device:
        raise ValueError(f"{video_name} is on {video_tokens.device} but {text_name} is on {text_tokens.device}")


def unit_tokens(tokens: Tensor, mask: Tensor) -> Tensor:
    """L2-normalise valid tokens along D; masked tokens become exact zeros (no value, no gradient)."""
    kept = torch.where(mask.unsqueeze(-1), tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
    return F.normalize(kept, dim=-1)


# --------------------------------------------------------------------------------------
# aggregation of a similarity tensor s [..., N, M]
# --------------------------------------------------------------------------------------

def _masked_mean(values: Tensor, valid: Tensor, dim: int) -> Tensor:
    return values.masked_fill(~valid, 0).sum(dim) / valid.sum(dim).to(values.dtype)


def _lower_median(values: Tensor, valid: Tensor) -> Tensor:
    """The lower median of ``values [..., K]`` over ``valid`` entries (index (K_v - 1) // 2 of the
    ascending order), ``[..., 1]``; its gradient goes to the median entry."""
    ordered = values.masked_fill(~valid, float("inf")).sort(dim=-1).values
    index = (valid.sum(-1, keepdim=True) - 1) // 2  # broadcasts like valid: expanded, as gather does not
    return ordered.gather(-1, index.expand(*ordered.shape[:-1], 1))


def _outer_weights(match: Tensor, valid: Tensor, weight_temperature: Temperature, aggregation: str) -> Tensor:
    """Outer weights over the last dim of ``match [..., K]`` (0 where not ``valid``) for an attention
    aggregation: softmax ("attention"), softmax mixed with a uniform floor ("attention_floor"),
    sigmoid gate around the median ("attention_gate"). See the module docstring."""
    # Temperatures divide before masking: -inf / tau would give a nan gradient for tau.
    if aggregation == "attention_uniform":
        return valid.to(match.dtype) / valid.sum(-1, keepdim=True).to(match.dtype)
    if aggregation == "attention_gate":
        gate = torch.sigmoid((match - _lower_median(match, valid)) / weight_temperature).masked_fill(~valid, 0)
        return gate / gate.sum(-1, keepdim=True)
    weight = torch.softmax((match / weight_temperature).masked_fill(~valid, float("-inf")), dim=-1)
    if aggregation == "attention_floor":
        uniform = valid.to(match.dtype) / valid.sum(-1, keepdim=True).to(match.dtype)
        weight = (1 - ATTENTION_FLOOR) * weight + ATTENTION_FLOOR * uniform
    return weight


def _attention_terms(similarity: Tensor, cell_valid: Tensor, phrase_valid: Tensor,
                     attn_temperature: Temperature, weight_temperature: Temperature,
                     aggregation: str = "attention") -> dict[str, Tensor]:
    """Every term of an attention aggregation (:data:`ATTENTION_AGGREGATIONS`; docs/study.md section 2 and
    the module docstring), for ``similarity [..., N, M]``.

    ``cell_valid`` broadcasts as ``[..., N, 1]`` and ``phrase_valid`` as ``[..., 1, M]``. Returns
    ``phrase_attention`` [..., N, M] (softmax over cells per phrase), ``phrase_match`` c [..., M],
    ``phrase_weight`` w [..., M], ``cell_attention`` [..., N, M] (softmax over phrases per cell),
    ``cell_match`` e [..., N], ``cell_weight`` u [..., N], ``text_to_video`` and ``video_to_text``.
    """
    phrase_is_valid = phrase_valid.squeeze(-2)   # [..., M]
    cell_is_valid = cell_valid.squeeze(-1)       # [..., N]
    # Temperatures divide before masking: -inf / tau would give a nan gradient for tau.
    scaled = similarity / attn_temperature
    # text to video: each phrase attends over cells, phrases weighted by how well they match
    phrase_attention = torch.softmax(scaled.masked_fill(~cell_valid, float("-inf")), dim=-2)
    phrase_match = (phrase_attention * similarity).sum(-2)
    phrase_weight = _outer_weights(phrase_match, phrase_is_valid, weight_temperature, aggregation)
    text_to_video = (phrase_weight * phrase_match.masked_fill(~phrase_is_valid, 0)).sum(-1)
    # video to text: each cell attends over phrases, cells weighted by how well they match
    cell_attention = torch.softmax(scaled.masked_fill(~phrase_valid, float("-inf")), dim=-1)
    cell_match = (cell_attention * similarity).sum(-1)
    cell_weight = _outer_weights(cell_match, cell_is_valid, weight_temperature, aggregation)
    video_to_text = (cell_weight * cell_match.masked_fill(~cell_is_valid, 0)).sum(-1)
    return {"phrase_attention": phrase_attention, "phrase_match": phrase_match, "phrase_weight": phrase_weight,
            "cell_attention": cell_attention, "cell_match": cell_match, "cell_weight": cell_weight,
            "text_to_video": text_to_video, "video_to_text": video_to_text}


def _aggregate(similarity: Tensor, cell_valid: Tensor, phrase_valid: Tensor, aggregation: str,
               attn_temperature: Temperature, weight_temperature: Temperature) -> Tensor:
    """Pair scores from cosine similarities.

    ``similarity`` is ``[..., N, M]`` and zero wherever a cell or a phrase is masked;
    ``cell_valid`` broadcasts as ``[..., N, 1]`` and ``phrase_valid`` as ``[..., 1, M]``.
    """
    if aggregation == "mean":
        pair_valid = cell_valid & phrase_valid
        total = similarity.masked_fill(~pair_valid, 0).sum((-2, -1))
        count = cell_valid.sum((-2, -1)) * phrase_valid.sum((-2, -1))
        return total / count.to(similarity.dtype)
    phrase_is_valid = phrase_valid.squeeze(-2)   # [..., M]
    cell_is_valid = cell_valid.squeeze(-1)       # [..., N]
    if aggregation == "max":
        best_cell = similarity.masked_fill(~cell_valid, float("-inf")).amax(dim=-2)      # [..., M]
        best_phrase = similarity.masked_fill(~phrase_valid, float("-inf")).amax(dim=-1)  # [..., N]
        return 0.5 * (_masked_mean(best_cell, phrase_is_valid, -1) + _masked_mean(best_phrase, cell_is_valid, -1))
    if aggregation in ATTENTION_AGGREGATIONS:
        terms = _attention_terms(similarity, cell_valid, phrase_valid, attn_temperature, weight_temperature,
                                 aggregation)
        return 0.5 * (terms["text_to_video"] + terms["video_to_text"])
    raise ValueError(f"unknown aggregation {aggregation!r}; valid choices: {', '.join(AGGREGATIONS)}")


def _block_scores(video_unit: Tensor, text_unit: Tensor, video_valid: Tensor, text_valid: Tensor,
                  aggregation: str, attn_temperature: Temperature, weight_temperature: Temperature) -> Tensor:
    """Scores [Bv, Bt] of unit (masked-zeroed) tokens through the full [Bv, Bt, N, M] similarity."""
    similarity = torch.einsum("ind,jmd->ijnm", video_unit, text_unit)
    cell_valid = video_valid[:, None, :, None]
    phrase_valid = text_valid[None, :, None, :]
    return _aggregate(similarity, cell_valid, phrase_valid, aggregation, attn_temperature, weight_temperature)


# --------------------------------------------------------------------------------------
# chunked backend
# --------------------------------------------------------------------------------------

def chunk_block_size(num_videos: int, cells: int, phrases: int, element_size: int,
                     budget_bytes: int | None = None) -> int:
    """Texts per block so that ``CHUNK_WORKING_COPIES`` tensors of [Bv, block, N, M] fit ``budget_bytes``
    (default ``CHUNK_MEMORY_BUDGET_BYTES``); at least 1."""
    if budget_bytes is None:
        budget_bytes = CHUNK_MEMORY_BUDGET_BYTES
    per_text = CHUNK_WORKING_COPIES * num_videos * cells * phrases * element_size
    return max(1, budget_bytes // per_text)


class _ChunkedPairScores(torch.autograd.Function):
    """Pair scores over blocks of texts; backward recomputes one block at a time.

    Saves only its inputs (unit tokens, masks, temperatures), never a [Bv, Bt, N, M] tensor.
    """

    @staticmethod
    def forward(ctx: Any, video_unit: Tensor, text_unit: Tensor, video_valid: Tensor, text_valid: Tensor,
                attn_temperature: Tensor, weight_temperature: Tensor, aggregation: str, block_size: int) -> Tensor:
        num_texts = text_unit.shape[0]
        scores = video_unit.new_empty(video_unit.shape[0], num_texts)
        for start in range(0, num_texts, block_size):
            stop = min(start + block_size, num_texts)
            scores[:, start:stop] = _block_scores(
                video_unit, text_unit[start:stop], video_valid, text_valid[start:stop],
                aggregation, attn_temperature, weight_temperature)
        ctx.save_for_backward(video_unit, text_unit, video_valid, text_valid, attn_temperature, weight_temperature)
        ctx.aggregation = aggregation
        ctx.block_size = block_size
        return scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_scores: Tensor) -> tuple[Tensor | None, ...]:
        video_unit, text_unit, video_valid, text_valid, attn_temperature, weight_temperature = ctx.saved_tensors
        need_video, need_text, _, _, need_attn, need_weight = ctx.needs_input_grad[:6]
        grad_video = torch.zeros_like(video_unit) if need_video else None
        grad_text = torch.zeros_like(text_unit) if need_text else None
        grad_attn = torch.zeros_like(attn_temperature) if need_attn else None
        grad_weight = torch.zeros_like(weight_temperature) if need_weight else None
        num_texts = text_unit.shape[0]
        with torch.enable_grad():
            video = video_unit.detach().requires_grad_(need_video)
            attn = attn_temperature.detach().requires_grad_(need_attn)
            weight = weight_temperature.detach().requires_grad_(need_weight)
            for start in range(0, num_texts, ctx.block_size):
                stop = min(start + ctx.block_size, num_texts)
                text = text_unit[start:stop].detach().requires_grad_(need_text)
                block = _block_scores(video, text, video_valid, text_valid[start:stop],
                                      ctx.aggregation, attn, weight)
                wanted = [(tensor, need) for tensor, need in
                          ((video, need_video), (text, need_text), (attn, need_attn), (weight, need_weight))]
                inputs = [tensor for tensor, need in wanted if need]
                if not inputs:
                    break
                grads = iter(torch.autograd.grad(block, inputs, grad_scores[:, start:stop], allow_unused=True))
                for (_, need), slot in zip(wanted, ("video", "text", "attn", "weight")):
                    if not need:
                        continue
                    grad = next(grads)
                    if grad is None:
                        continue
                    if slot == "video":
                        grad_video += grad
                    elif slot == "text":
                        grad_text[start:stop] = grad
                    elif slot == "attn":
                        grad_attn += grad
                    else:
                        grad_weight += grad
        return grad_video, grad_text, None, None, grad_attn, grad_weight, None, None


def _as_scalar_tensor(value: Temperature, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.reshape(())
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def _chunked_scores(video_unit: Tensor, text_unit: Tensor, video_valid: Tensor, text_valid: Tensor,
                    aggregation: str, attn_temperature: Temperature, weight_temperature: Temperature,
                    block_size: int | None, keep_single_block: bool = False) -> Tensor:
    if aggregation == "mean":
        # mean over valid (n, m) of <v_n, t_m> = <sum of valid v_n, sum of valid t_m> / (N_valid * M_valid)
        video_mean = video_unit.sum(1) / video_valid.sum(1, keepdim=True).to(video_unit.dtype)
        text_mean = text_unit.sum(1) / text_valid.sum(1, keepdim=True).to(text_unit.dtype)
        return video_mean @ text_mean.T
    if block_size is None:
        block_size = chunk_block_size(video_unit.shape[0], video_unit.shape[1], text_unit.shape[1],
                                      video_unit.element_size())
        if keep_single_block and block_size >= text_unit.shape[0]:
            # One block holds every text: autograd keeps that block's intermediates (within the same
            # budget) instead of recomputing them in backward. The same operations, but run with
            # gradients on, where PyTorch may pick other float32 kernels: equal within rounding.
            return _block_scores(video_unit, text_unit, video_valid, text_valid,
                                 aggregation, attn_temperature, weight_temperature)
    return _ChunkedPairScores.apply(
        video_unit, text_unit, video_valid, text_valid,
        _as_scalar_tensor(attn_temperature, video_unit), _as_scalar_tensor(weight_temperature, video_unit),
        aggregation, block_size)


_TRITON_AVAILABLE: bool | None = None

#: The package of the fused kernels. It is imported only when the "triton" backend runs (asked for,
#: or picked by "auto" on CUDA), so a CPU run never loads it and the study's stages do not depend on it.
KERNELS_MODULE = "fgmm_lib.kernels.triton_scores"


def _triton_available() -> bool:
    global _TRITON_AVAILABLE
    if _TRITON_AVAILABLE is None:
        _TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
    return _TRITON_AVAILABLE


def _kernels() -> Any:
    """The fused-kernel module, imported on first use (see :data:`KERNELS_MODULE`)."""
    return importlib.import_module(KERNELS_MODULE)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------

def auto_backend(on_cuda: bool, aggregation: str) -> str:
    """The backend ``backend="auto"`` picks for tensors on CUDA (or not) and ``aggregation``."""
    return "triton" if on_cuda and aggregation in AUTO_FUSED and _triton_available() else "chunked"


def scores_unchecked(video_tokens: Tensor, text_tokens: Tensor, video_valid: Tensor, text_valid: Tensor,
                      aggregation: str, attn_temperature: Temperature, weight_temperature: Temperature,
                      backend: str, block_size: int | None = None, keep_single_block: bool = False) -> Tensor:
    """:func:`pair_scores` for inputs its caller has validated: no check, nothing that waits on the device."""
    if backend == "auto":
        backend = auto_backend(video_tokens.is_cuda, aggregation)
    if backend == "triton":
        zero = torch.zeros((), dtype=video_tokens.dtype, device=video_tokens.device)
        return _kernels().triton_pair_scores(
            torch.where(video_valid.unsqueeze(-1), video_tokens, zero),
            torch.where(text_valid.unsqueeze(-1), text_tokens, zero),
            text_valid, video_valid, aggregation, attn_temperature, weight_temperature)
    video_unit = unit_tokens(video_tokens, video_valid)
    text_unit = unit_tokens(text_tokens, text_valid)
    if backend == "naive":
        return _block_scores(video_unit, text_unit, video_valid, text_valid,
                             aggregation, attn_temperature, weight_temperature)
    return _chunked_scores(video_unit, text_unit, video_valid, text_valid,
                           aggregation, attn_temperature, weight_temperature, block_size, keep_single_block)


def pair_scores(video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor | None = None,
                video_mask: Tensor | None = None, aggregation: str = "attention",
                attn_temperature: Temperature = 0.1, weight_temperature: Temperature = 0.1,
                backend: str = "naive", block_size: int | None = None, keep_single_block: bool = False) -> Tensor:
    """Fine-grained pair scores S[i, j] between every video i and every text j (docs/study.md section 2).

    Args:
        video_tokens: ``[Bv, N, D]`` cell tokens, any scale (cosine is taken inside).
        text_tokens: ``[Bt, M, D]`` phrase tokens, any scale.
        text_mask: ``[Bt, M]`` bool, True = valid phrase; None = all valid.
        video_mask: ``[Bv, N]`` bool, True = valid cell; None = all valid.
        aggregation: one of ``AGGREGATIONS`` ("mean", "max", "attention", "attention_floor",
            "attention_gate"; see the module docstring).
        attn_temperature: tau_a of the attention aggregations (inner softmax over cells / phrases), > 0.
        weight_temperature: tau_w of the attention aggregations (outer weighting of phrases / cells), > 0.
        backend: one of ``BACKENDS``; see the module docstring.
        block_size: texts per block for the "chunked" backend; None = from ``CHUNK_MEMORY_BUDGET_BYTES``.
        keep_single_block: "chunked" with ``block_size=None``: when one block of the budget holds every
            text, keep it for backward instead of recomputing it (faster; equal within rounding).

    Every argument is validated here, once; the loss modules call the same computation without
    the checks on every training step.

    Returns:
        ``[Bv, Bt]`` scores, in [-1, 1] (float32 from the triton backend, whatever the input dtype).

    Ties in "max" take different subgradients: the triton backend gives the whole gradient of a
    tied maximum to its first index (lowest cell, lowest phrase), "naive" and "chunked" split it
    evenly between the tied entries (``torch.amax``). Scores agree exactly.
    """
    check_choice(aggregation, "aggregation", AGGREGATIONS)
    check_choice(backend, "backend", BACKENDS)
    check_tokens(video_tokens, "video_tokens")
    check_tokens(text_tokens, "text_tokens")
    check_pair(video_tokens, text_tokens, "video_tokens", "text_tokens")
    video_valid = check_mask(video_mask, video_tokens, "video_mask", "video_tokens", "video")
    text_valid = check_mask(text_mask, text_tokens, "text_mask", "text_tokens", "text")
    check_temperature(attn_temperature, "attn_temperature")
    check_temperature(weight_temperature, "weight_temperature")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                   or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    return scores_unchecked(video_tokens, text_tokens, video_valid, text_valid, aggregation,
                             attn_temperature, weight_temperature, backend, block_size, bool(keep_single_block))


def attention_maps(video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor | None = None,
                   video_mask: Tensor | None = None, attn_temperature: Temperature = 0.1,
                   weight_temperature: Temperature = 0.1, aggregation: str = "attention") -> dict[str, Tensor]:
    """The attention of one (video, text) pair, for plots and the pointing metric.

    Args:
        video_tokens: ``[N, D]`` cell tokens of one clip; text_tokens: ``[M, D]`` phrase tokens of one text.
        text_mask: ``[M]`` bool; video_mask: ``[N]`` bool (True = valid; None = all valid).
        aggregation: one of :data:`ATTENTION_AGGREGATIONS`: which outer weights to return.

    Returns:
        ``"similarity"`` [N, M] cosines (0 where masked); ``"phrase_attention"`` [M, N] softmax over
        valid cells per phrase; ``"phrase_weight"`` [M] the aggregation's weights over valid phrases
        (sum 1); ``"cell_attention"`` [N, M] softmax over valid phrases per cell; ``"cell_weight"`` [N]
        the aggregation's weights over valid cells (sum 1); ``"score"`` the pair's score under
        ``aggregation`` (a 0-dim tensor). Rows and weights of masked phrases or cells are 0.
    """
    check_tokens(video_tokens, "video_tokens", ndim=2)
    check_tokens(text_tokens, "text_tokens", ndim=2)
    check_pair(video_tokens, text_tokens, "video_tokens", "text_tokens")
    video_valid = check_mask(video_mask, video_tokens, "video_mask", "video_tokens", "video")
    text_valid = check_mask(text_mask, text_tokens, "text_mask", "text_tokens", "text")
    check_temperature(attn_temperature, "attn_temperature")
    check_temperature(weight_temperature, "weight_temperature")
    check_choice(aggregation, "aggregation with attention maps", ATTENTION_AGGREGATIONS)
    return _attention_maps_unchecked(video_tokens, text_tokens, video_valid, text_valid,
                                     attn_temperature, weight_temperature, aggregation)


def _attention_maps_unchecked(video_tokens: Tensor, text_tokens: Tensor, video_valid: Tensor, text_valid: Tensor,
                              attn_temperature: Temperature, weight_temperature: Temperature,
                              aggregation: str = "attention") -> dict[str, Tensor]:
    similarity = unit_tokens(video_tokens, video_valid) @ unit_tokens(text_tokens, text_valid).T
    cell_valid = video_valid[:, None]
    phrase_valid = text_valid[None, :]
    pair_valid = cell_valid & phrase_valid
    terms = _attention_terms(similarity, cell_valid, phrase_valid, attn_temperature, weight_temperature,
                             aggregation)
    return {
        "similarity": similarity,
        "phrase_attention": terms["phrase_attention"].masked_fill(~pair_valid, 0).T,
        "phrase_weight": terms["phrase_weight"],
        "cell_attention": terms["cell_attention"].masked_fill(~pair_valid, 0),
        "cell_weight": terms["cell_weight"],
        "score": 0.5 * (terms["text_to_video"] + terms["video_to_text"]),
    }
