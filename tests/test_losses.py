"""Tests of fgmm_lib.losses against plain loop references written from docs/study.md sections 2 and 3."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import fgmm_lib.losses.scores as losses
from fgmm_lib.losses.modules import ContrastiveLoss, build_loss, mil_nce_loss
from fgmm_lib.losses.scores import (
    AGGREGATIONS,
    ATTENTION_AGGREGATIONS,
    ATTENTION_FLOOR,
    CHUNK_MEMORY_BUDGET_BYTES,
    CHUNK_WORKING_COPIES,
    CONTRASTIVE_AGGREGATIONS,
    MIN_TEMPERATURE,
    attention_maps,
    auto_backend,
    chunk_block_size,
    pair_scores,
)

DTYPE = torch.float64


# --------------------------------------------------------------------------------------
# inputs and loop references
# --------------------------------------------------------------------------------------

def random_mask(rows: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Random bool mask with at least one True per row."""
    mask = torch.rand(rows, length, generator=generator) < 0.6
    keep = torch.randint(0, length, (rows,), generator=generator)
    mask[torch.arange(rows), keep] = True
    return mask


def random_inputs(bv: int, bt: int, n: int, m: int, d: int, seed: int, masked: bool = True):
    generator = torch.Generator().manual_seed(seed)
    video = (torch.randn(bv, n, d, generator=generator, dtype=DTYPE) * 3).requires_grad_()
    text = (torch.randn(bt, m, d, generator=generator, dtype=DTYPE) * 0.5).requires_grad_()
    video_mask = random_mask(bv, n, generator) if masked else None
    text_mask = random_mask(bt, m, generator) if masked else None
    return video, text, video_mask, text_mask


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (torch.sqrt(torch.dot(a, a)) * torch.sqrt(torch.dot(b, b)))


def softmax_loop(values: list[torch.Tensor], temperature) -> list[torch.Tensor]:
    top = max(float(v.detach()) for v in values)  # a constant shift, for overflow safety only
    exps = [torch.exp((v - top) / temperature) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def floor_weights_loop(values: list[torch.Tensor], temperature, floor: float) -> list[torch.Tensor]:
    """"attention_floor": w = (1 - lam) softmax(values / tau_w) + lam / count."""
    return [(1 - floor) * w + floor / len(values) for w in softmax_loop(values, temperature)]


def gate_weights_loop(values: list[torch.Tensor], temperature) -> list[torch.Tensor]:
    """"attention_gate": g = sigmoid((value - lower median) / tau_w), normalised to sum 1."""
    ordered = sorted(values, key=lambda v: float(v.detach()))
    median = ordered[(len(values) - 1) // 2]
    gates = [1 / (1 + torch.exp(-(v - median) / temperature)) for v in values]
    total = sum(gates)
    return [g / total for g in gates]


def reference_pair_score(video: torch.Tensor, text: torch.Tensor, video_mask, text_mask, aggregation: str,
                         attn_temperature=0.1, weight_temperature=0.1, inner: str = "softmax",
                         outer: str = "softmax") -> torch.Tensor:
    """One pair's score, loops over valid cells n and phrases m, straight from docs/study.md section 2 (and the
    formulas of "attention_floor" and "attention_gate" in the module docstring of fgmm_lib.losses)."""
    cells = [n for n in range(video.shape[0]) if video_mask is None or bool(video_mask[n])]
    phrases = [m for m in range(text.shape[0]) if text_mask is None or bool(text_mask[m])]
    s = {(n, m): cosine(video[n], text[m]) for n in cells for m in phrases}
    if aggregation == "mean":
        return sum(s.values()) / (len(cells) * len(phrases))
    if aggregation == "max":
        phrase_best = [max((s[n, m] for n in cells), key=lambda v: float(v.detach())) for m in phrases]
        cell_best = [max((s[n, m] for m in phrases), key=lambda v: float(v.detach())) for n in cells]
        return 0.5 * (sum(phrase_best) / len(phrases) + sum(cell_best) / len(cells))
    assert aggregation in ("attention", "attention_floor", "attention_gate", "attention_uniform")

    def pool(values: list[torch.Tensor]) -> torch.Tensor:
        if inner == "max":
            return max(values, key=lambda v: float(v.detach()))
        weights = softmax_loop(values, attn_temperature)
        return sum(w * v for w, v in zip(weights, values))

    def weigh(values: list[torch.Tensor]) -> torch.Tensor:
        if outer == "mean" or aggregation == "attention_uniform":
            return sum(values) / len(values)
        if aggregation == "attention_floor":
            weights = floor_weights_loop(values, weight_temperature, ATTENTION_FLOOR)
        elif aggregation == "attention_gate":
            weights = gate_weights_loop(values, weight_temperature)
        else:
            weights = softmax_loop(values, weight_temperature)
        return sum(w * v for w, v in zip(weights, values))

    c = [pool([s[n, m] for n in cells]) for m in phrases]
    e = [pool([s[n, m] for m in phrases]) for n in cells]
    return 0.5 * (weigh(c) + weigh(e))


def reference_scores(video, text, video_mask, text_mask, aggregation, attn_temperature=0.1,
                     weight_temperature=0.1, **options) -> torch.Tensor:
    rows = []
    for i in range(video.shape[0]):
        row = []
        for j in range(text.shape[0]):
            row.append(reference_pair_score(video[i], text[j], None if video_mask is None else video_mask[i],
                                            None if text_mask is None else text_mask[j], aggregation,
                                            attn_temperature, weight_temperature, **options))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def grads_of(scores: torch.Tensor, inputs: list[torch.Tensor], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Gradients of sum(S * fixed random weights) w.r.t. ``inputs`` (zeros for an input the scores do not
    use, such as tau_w of "attention_uniform")."""
    weights = torch.randn(scores.shape, generator=torch.Generator().manual_seed(seed), dtype=scores.dtype)
    return torch.autograd.grad((scores * weights).sum(), inputs, allow_unused=True, materialize_grads=True)


def close(actual, expected, tol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------
# pair scores against the loop reference
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["naive", "chunked"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_pair_scores_match_loop_reference(aggregation: str, backend: str) -> None:
    video, text, video_mask, text_mask = random_inputs(3, 4, 5, 4, 6, seed=1)
    attn = torch.tensor(0.3, dtype=DTYPE, requires_grad=True)
    weight = torch.tensor(0.2, dtype=DTYPE, requires_grad=True)
    got = pair_scores(video, text, text_mask, video_mask, aggregation, attn, weight, backend=backend, block_size=3)
    want = reference_scores(video, text, video_mask, text_mask, aggregation, attn, weight)
    close(got, want)
    inputs = [video, text] + ([attn, weight] if aggregation in ATTENTION_AGGREGATIONS else [])
    for got_grad, want_grad in zip(grads_of(got, inputs), grads_of(want, inputs)):
        close(got_grad, want_grad)


def test_pair_scores_without_masks_match_reference() -> None:
    video, text, _, _ = random_inputs(2, 3, 4, 3, 5, seed=2, masked=False)
    for aggregation in AGGREGATIONS:
        close(pair_scores(video, text, aggregation=aggregation),
              reference_scores(video, text, None, None, aggregation))


def test_scores_are_scale_invariant_and_bounded() -> None:
    video, text, video_mask, text_mask = random_inputs(3, 3, 4, 5, 6, seed=3)
    for aggregation in AGGREGATIONS:
        scores = pair_scores(video, text, text_mask, video_mask, aggregation)
        scaled = pair_scores(video * 7.5, text * 0.01, text_mask, video_mask, aggregation)
        close(scores, scaled)
        assert scores.abs().max() <= 1 + 1e-12


# --------------------------------------------------------------------------------------
# chunked == naive
# --------------------------------------------------------------------------------------

CHUNK_CASES = [
    # (Bv, Bt, N, M, D, block_size)
    (3, 7, 5, 3, 4, 2),
    (5, 2, 7, 9, 3, 1),
    (4, 9, 1, 1, 5, 4),
    (1, 1, 1, 1, 1, None),
    (2, 5, 6, 1, 3, 5),
    (6, 3, 1, 4, 2, 10),
]


@pytest.mark.parametrize("case", CHUNK_CASES)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_chunked_matches_naive(aggregation: str, case: tuple) -> None:
    bv, bt, n, m, d, block = case
    video, text, video_mask, text_mask = random_inputs(bv, bt, n, m, d, seed=bv * 100 + bt)
    attn = torch.tensor(0.15, dtype=DTYPE, requires_grad=True)
    weight = torch.tensor(0.4, dtype=DTYPE, requires_grad=True)
    naive = pair_scores(video, text, text_mask, video_mask, aggregation, attn, weight, backend="naive")
    chunked = pair_scores(video, text, text_mask, video_mask, aggregation, attn, weight,
                          backend="chunked", block_size=block)
    assert chunked.shape == (bv, bt)
    close(chunked, naive)
    inputs = [video, text] + ([attn, weight] if aggregation in ATTENTION_AGGREGATIONS else [])
    for got, want in zip(grads_of(chunked, inputs), grads_of(naive, inputs)):
        close(got, want)


def test_chunked_with_float_temperatures_and_partial_grads() -> None:
    video, text, video_mask, text_mask = random_inputs(3, 5, 4, 3, 4, seed=5)
    frozen_video = video.detach()
    naive = pair_scores(frozen_video, text, text_mask, video_mask, "attention", 0.2, 0.3, backend="naive")
    chunked = pair_scores(frozen_video, text, text_mask, video_mask, "attention", 0.2, 0.3,
                          backend="chunked", block_size=2)
    close(chunked, naive)
    close(grads_of(chunked, [text])[0], grads_of(naive, [text])[0])


def test_chunk_block_size_follows_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    per_text = CHUNK_WORKING_COPIES * 8 * 64 * 16 * 4
    assert chunk_block_size(8, 64, 16, 4, budget_bytes=per_text * 5) == 5
    assert chunk_block_size(8, 64, 16, 4, budget_bytes=per_text * 5 + per_text - 1) == 5
    assert chunk_block_size(8, 64, 16, 4, budget_bytes=1) == 1
    assert chunk_block_size(8, 64, 16, 4) == CHUNK_MEMORY_BUDGET_BYTES // per_text
    # a budget that fits one text per block: still correct
    monkeypatch.setattr(losses, "CHUNK_MEMORY_BUDGET_BYTES", 1)
    video, text, video_mask, text_mask = random_inputs(2, 4, 3, 3, 4, seed=6)
    close(pair_scores(video, text, text_mask, video_mask, "max", backend="chunked"),
          pair_scores(video, text, text_mask, video_mask, "max", backend="naive"))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_one_block_keeps_its_graph_with_the_same_numbers(aggregation: str) -> None:
    """keep_single_block: when the budget fits every text, the chunked backend runs the block once and
    lets autograd keep it; in float64 scores and gradients are bit for bit the recomputing path's."""
    bv, bt, n, m, d = 4, 5, 6, 3, 4
    video, text, video_mask, text_mask = random_inputs(bv, bt, n, m, d, seed=11)
    attn = torch.tensor(0.15, dtype=DTYPE, requires_grad=True)
    weight = torch.tensor(0.4, dtype=DTYPE, requires_grad=True)
    inputs = [video, text] + ([attn, weight] if aggregation in ATTENTION_AGGREGATIONS else [])
    results = {}
    for name, keep in (("one block", True), ("recomputing", False)):
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            scores = pair_scores(video, text, text_mask, video_mask, aggregation, attn, weight,
                                 backend="chunked", keep_single_block=keep)
        results[name] = (scores, grads_of(scores, inputs), max(saved))
    (one, one_grads, one_saved), (again, again_grads, again_saved) = results["one block"], results["recomputing"]
    assert torch.equal(one, again)
    assert all(torch.equal(a, b) for a, b in zip(one_grads, again_grads))
    if aggregation != "mean":  # the one block's pair tensors are kept; the recomputing path keeps none
        assert one_saved >= bv * bt * n * m > again_saved


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return result


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_chunked_never_materialises_all_pairs(aggregation: str) -> None:
    bv, bt, n, m, d, block = 4, 6, 5, 3, 2, 2
    video, text, video_mask, text_mask = random_inputs(bv, bt, n, m, d, seed=7)
    all_pairs = bv * bt * n * m

    def largest(backend: str) -> int:
        with LargestTensor() as recorder:
            scores = pair_scores(video, text, text_mask, video_mask, aggregation, backend=backend, block_size=block)
            scores.sum().backward()
        return recorder.largest

    assert largest("naive") >= all_pairs  # the recorder sees the naive tensor, so the check can fail
    chunked_largest = largest("chunked")
    assert chunked_largest < all_pairs
    if aggregation != "mean":  # the backward recompute is seen: one block of pairs
        assert chunked_largest == bv * block * n * m


def test_chunked_saves_no_pair_tensor() -> None:
    bv, bt, n, m, d = 3, 8, 5, 4, 2
    video, text, video_mask, text_mask = random_inputs(bv, bt, n, m, d, seed=8)
    saved_sizes: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved_sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        scores = pair_scores(video, text, text_mask, video_mask, "attention", backend="chunked", block_size=3)
    assert saved_sizes and max(saved_sizes) < bv * bt * n * m
    saved_sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        pair_scores(video, text, text_mask, video_mask, "attention", backend="naive")
    assert max(saved_sizes) >= bv * bt * n * m
    scores.sum().backward()


# --------------------------------------------------------------------------------------
# limits of attention
# --------------------------------------------------------------------------------------

TINY, HUGE = 1e-7, 1e9


def limit_case(seed: int, aggregation: str, backend: str):
    """Fixed inputs and the scores of ``aggregation`` as a function of (tau_a, tau_w)."""
    video, text, video_mask, text_mask = random_inputs(3, 4, 6, 5, 8, seed=seed)
    video, text = video.detach(), text.detach()

    def scores(attn: float, weight: float) -> torch.Tensor:
        return pair_scores(video, text, text_mask, video_mask, aggregation, attn, weight, backend=backend,
                           block_size=3)

    return (video, text, video_mask, text_mask), scores


@pytest.mark.parametrize("backend", ["naive", "chunked"])
def test_attention_limits_are_max_and_mean(backend: str) -> None:
    (video, text, video_mask, text_mask), attention = limit_case(9, "attention", backend)

    max_scores = pair_scores(video, text, text_mask, video_mask, "max")
    mean_scores = pair_scores(video, text, text_mask, video_mask, "mean")
    close(attention(TINY, HUGE), max_scores, tol=1e-7)
    close(attention(HUGE, HUGE), mean_scores, tol=1e-7)
    # each limit alone: inner pooling becomes max, outer weighting becomes mean
    close(attention(TINY, 0.3), reference_scores(video, text, video_mask, text_mask, "attention",
                                                  weight_temperature=0.3, inner="max"), tol=1e-7)
    close(attention(0.3, HUGE), reference_scores(video, text, video_mask, text_mask, "attention",
                                                  attn_temperature=0.3, outer="mean"), tol=1e-7)
    assert not torch.allclose(max_scores, mean_scores, atol=1e-3)  # the limits differ, so the test can fail


@pytest.mark.parametrize("backend", ["naive", "chunked"])
def test_floor_limits_are_attention_and_uniform_weights(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (video, text, video_mask, text_mask), floor = limit_case(30, "attention_floor", backend)

    attention = pair_scores(video, text, text_mask, video_mask, "attention", 0.2, 0.05)
    uniform = reference_scores(video, text, video_mask, text_mask, "attention", attn_temperature=0.2, outer="mean")
    assert not torch.allclose(floor(0.2, 0.05), attention, atol=1e-3)  # the floor changes the scores
    monkeypatch.setattr(losses, "ATTENTION_FLOOR", 0.0)
    close(floor(0.2, 0.05), attention)
    monkeypatch.setattr(losses, "ATTENTION_FLOOR", 1.0)
    close(floor(0.2, 0.05), uniform)
    close(floor(TINY, 0.05), pair_scores(video, text, text_mask, video_mask, "max"), tol=1e-7)  # lam = 1, tau_a -> 0


@pytest.mark.parametrize("backend", ["naive", "chunked"])
def test_gate_limits_are_uniform_weights_and_a_hard_median_gate(backend: str) -> None:
    (video, text, video_mask, text_mask), gate = limit_case(31, "attention_gate", backend)

    close(gate(0.3, HUGE), reference_scores(video, text, video_mask, text_mask, "attention", attn_temperature=0.3,
                                            outer="mean"), tol=1e-7)
    close(gate(TINY, HUGE), pair_scores(video, text, text_mask, video_mask, "max"), tol=1e-7)
    # tau_w -> 0: weight 1 above the lower median, 1/2 at it, 0 below
    maps = attention_maps(video[0], text[0], text_mask[0], video_mask[0], 0.3, TINY, aggregation="attention_gate")
    valid = text_mask[0].nonzero().flatten().tolist()
    matches = sorted(valid, key=lambda m: float((maps["phrase_attention"][m] * maps["similarity"][:, m]).sum()))
    median = (len(valid) - 1) // 2
    gates = torch.zeros(text.shape[1], dtype=DTYPE)
    gates[matches[median + 1:]] = 1.0
    gates[matches[median]] = 0.5
    close(maps["phrase_weight"], gates / gates.sum(), tol=1e-7)


@pytest.mark.parametrize("weight_temperature", [1e-3, 0.1, 10.0])
def test_floor_and_gate_weights_never_collapse_onto_one_token(weight_temperature: float) -> None:
    """At a sharp tau_w "attention" gives one phrase (one cell) almost all the weight; the floor
    keeps every weight within [lam / K, 1 - lam + lam / K] and the median gate below 2 / (ceil(K / 2) + 1)
    over K valid phrases (cells)."""
    video, text, video_mask, text_mask = random_inputs(4, 4, 9, 6, 3, seed=32)
    for i in range(4):
        n_valid, m_valid = video_mask[i], text_mask[i]
        for aggregation in ATTENTION_AGGREGATIONS:
            maps = attention_maps(video[i].detach(), text[i].detach(), m_valid, n_valid, 0.1, weight_temperature,
                                  aggregation=aggregation)
            for weights, valid in ((maps["phrase_weight"], m_valid), (maps["cell_weight"], n_valid)):
                count = int(valid.sum())
                assert (weights[~valid] == 0).all()
                if aggregation == "attention_floor":
                    floor = ATTENTION_FLOOR
                    assert weights[valid].min() >= floor / count - 1e-12
                    assert weights.max() <= 1 - floor + floor / count + 1e-12
                elif aggregation == "attention_gate":
                    assert weights.max() <= 2 / (math.ceil(count / 2) + 1) + 1e-12
                elif aggregation == "attention_uniform":  # no down-weighting at any tau_w
                    torch.testing.assert_close(weights[valid], torch.full((count,), 1 / count, dtype=weights.dtype))
                elif weight_temperature == 1e-3 and count > 1:  # the collapse, so the test can fail
                    assert weights.max() > 0.97


@pytest.mark.parametrize("aggregation", ["attention_floor", "attention_gate", "attention_uniform"])
def test_aggregations_without_a_kernel_fall_back_to_chunked_with_a_warning(aggregation: str) -> None:
    from fgmm_lib.kernels import triton_scores

    assert aggregation not in triton_scores.AGGREGATION_CODES
    video, text, video_mask, text_mask = random_inputs(2, 3, 4, 3, 5, seed=33)
    attn = torch.tensor(0.2, dtype=DTYPE, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=f"no code for aggregation '{aggregation}'.*chunked"):
        got = pair_scores(video, text, text_mask, video_mask, aggregation, attn, 0.3, backend="triton")
    want = pair_scores(video, text, text_mask, video_mask, aggregation, attn, 0.3, backend="chunked")
    assert got.dtype == torch.float32
    close(got, want.float(), tol=1e-6)  # the fallback computes in float32, like the kernels
    # float32 arithmetic rounds the gradients it passes back
    for got_grad, want_grad in zip(grads_of(got.double(), [video, text, attn]), grads_of(want, [video, text, attn])):
        close(got_grad, want_grad, tol=1e-6)


# --------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["naive", "chunked"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_masked_positions_change_nothing(aggregation: str, backend: str) -> None:
    video, text, video_mask, text_mask = random_inputs(3, 4, 5, 6, 4, seed=10)
    scores = pair_scores(video, text, text_mask, video_mask, aggregation, backend=backend, block_size=3)
    video_grad, text_grad = grads_of(scores, [video, text])
    assert (video_grad[~video_mask] == 0).all() and (text_grad[~text_mask] == 0).all()
    for junk in (1e30, -1e300, float("inf"), float("nan")):
        other_video = video.detach().clone()
        other_text = text.detach().clone()
        other_video[~video_mask] = junk
        other_text[~text_mask] = -junk
        other_video.requires_grad_()
        other_text.requires_grad_()
        other = pair_scores(other_video, other_text, text_mask, video_mask, aggregation,
                            backend=backend, block_size=3)
        close(other, scores, tol=0)
        other_video_grad, other_text_grad = grads_of(other, [other_video, other_text])
        close(other_video_grad, video_grad, tol=0)
        close(other_text_grad, text_grad, tol=0)


def test_all_valid_mask_equals_no_mask() -> None:
    video, text, _, _ = random_inputs(2, 3, 4, 5, 3, seed=11, masked=False)
    for aggregation in AGGREGATIONS:
        close(pair_scores(video, text, torch.ones(3, 5, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool),
                          aggregation), pair_scores(video, text, aggregation=aggregation))


# --------------------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["naive", "chunked"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_gradcheck(aggregation: str, backend: str) -> None:
    video, text, video_mask, text_mask = random_inputs(2, 3, 3, 4, 3, seed=12)
    attn = torch.tensor(0.3, dtype=DTYPE, requires_grad=True)
    weight = torch.tensor(0.5, dtype=DTYPE, requires_grad=True)

    def scores(video, text, attn, weight):
        return pair_scores(video, text, text_mask, video_mask, aggregation, attn, weight,
                           backend=backend, block_size=2)

    assert torch.autograd.gradcheck(scores, (video.detach().requires_grad_(), text.detach().requires_grad_(),
                                             attn, weight))


# --------------------------------------------------------------------------------------
# coarse
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["naive", "chunked"])
def test_single_tokens_reduce_to_cosine(backend: str) -> None:
    generator = torch.Generator().manual_seed(13)
    video_global = torch.randn(5, 7, generator=generator, dtype=DTYPE)
    text_global = torch.randn(4, 7, generator=generator, dtype=DTYPE)
    cosines = torch.tensor([[float(cosine(v, t)) for t in text_global] for v in video_global], dtype=DTYPE)
    coarse = ContrastiveLoss("coarse").scores(None, video_global, None, text_global)
    close(coarse, cosines)
    for aggregation in AGGREGATIONS:
        close(pair_scores(video_global[:, None], text_global[:, None], aggregation=aggregation, backend=backend),
              cosines)


# --------------------------------------------------------------------------------------
# attention maps
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("aggregation", ATTENTION_AGGREGATIONS)
def test_attention_maps_agree_with_pair_scores(aggregation: str) -> None:
    video, text, video_mask, text_mask = random_inputs(1, 1, 6, 5, 4, seed=14)
    maps = attention_maps(video[0], text[0], text_mask[0], video_mask[0], 0.2, 0.3, aggregation=aggregation)
    score = pair_scores(video, text, text_mask, video_mask, aggregation, 0.2, 0.3)[0, 0]
    close(maps["score"], score)
    n, m = video_mask[0], text_mask[0]
    assert maps["similarity"].shape == (6, 5) and maps["phrase_attention"].shape == (5, 6)
    assert maps["cell_attention"].shape == (6, 5)
    assert maps["phrase_weight"].shape == (5,) and maps["cell_weight"].shape == (6,)
    close(maps["phrase_attention"][m].sum(1), torch.ones(int(m.sum()), dtype=DTYPE))
    close(maps["cell_attention"][n].sum(1), torch.ones(int(n.sum()), dtype=DTYPE))
    assert (maps["phrase_attention"][:, ~n] == 0).all() and (maps["phrase_attention"][~m] == 0).all()
    assert (maps["phrase_weight"][~m] == 0).all() and (maps["cell_weight"][~n] == 0).all()
    close(maps["phrase_weight"].sum(), torch.tensor(1.0, dtype=DTYPE))
    close(maps["cell_weight"].sum(), torch.tensor(1.0, dtype=DTYPE))
    # the phrase attention of one valid (phrase, cell) entry from its definition
    valid_cells = n.nonzero().flatten().tolist()
    phrase = int(m.nonzero()[0])
    sims = [cosine(video[0, c], text[0, phrase]) for c in valid_cells]
    expected = softmax_loop(sims, 0.2)
    close(maps["phrase_attention"][phrase, valid_cells], torch.stack(expected).detach())


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_loss_attention_focus(aggregation: str) -> None:
    """Every aggregation points: the attention aggregations with their softmax over cells and their
    own outer weights, "mean" and "max" with the cosines."""
    video, text, video_mask, text_mask = random_inputs(1, 1, 6, 5, 4, seed=34)
    module = build_loss(aggregation, attn_temperature=0.2, weight_temperature=0.3, backend="naive").double()
    assert module.has_attention and module.uses_tokens
    maps = module.attention(video[0].detach(), text[0].detach(), text_mask[0], video_mask[0])
    assert maps["focus"].shape == (5, 6)
    if aggregation in ATTENTION_AGGREGATIONS:
        close(maps["focus"], maps["phrase_attention"])
        expected = attention_maps(video[0].detach(), text[0].detach(), text_mask[0], video_mask[0],
                                  module.attn_temperature, module.weight_temperature, aggregation=aggregation)
        close(maps["phrase_weight"], expected["phrase_weight"])
        close(maps["score"], module.scores(video.detach(), None, text.detach(), None, text_mask, video_mask)[0, 0])
    else:
        close(maps["focus"], maps["similarity"].T)


# --------------------------------------------------------------------------------------
# ContrastiveLoss
# --------------------------------------------------------------------------------------

def reference_info_nce(scores: torch.Tensor, temperature: float) -> float:
    batch = scores.shape[0]
    total = 0.0
    for i in range(batch):
        row = [math.exp(float(scores[i, j]) / temperature) for j in range(batch)]
        column = [math.exp(float(scores[j, i]) / temperature) for j in range(batch)]
        positive = math.exp(float(scores[i, i]) / temperature)
        total += -math.log(positive / sum(row)) - math.log(positive / sum(column))
    return total / (2 * batch)


@pytest.mark.parametrize("aggregation", CONTRASTIVE_AGGREGATIONS)
def test_contrastive_loss_is_symmetric_info_nce(aggregation: str) -> None:
    video, text, video_mask, text_mask = random_inputs(5, 5, 4, 3, 6, seed=15)
    video_global, text_global = video.detach().sum(1), text.detach().sum(1)
    module = ContrastiveLoss(aggregation, temperature=0.2, attn_temperature=0.3, weight_temperature=0.4,
                             backend="naive").double()
    loss = module(video, video_global, text, text_global, text_mask, video_mask)
    if aggregation == "coarse":
        scores = torch.tensor([[float(cosine(v, t)) for t in text_global] for v in video_global], dtype=DTYPE)
    else:
        # the module stores float32 log temperatures: use the values it holds
        scores = reference_scores(video.detach(), text.detach(), video_mask, text_mask, aggregation,
                                  module.attn_temperature, module.weight_temperature)
    assert loss.ndim == 0
    assert math.isclose(module.temperature, 0.2, rel_tol=1e-6)
    assert math.isclose(float(loss.detach()), reference_info_nce(scores, module.temperature), rel_tol=1e-10)
    loss.backward()
    assert module.log_temperature.grad is not None and module.log_temperature.grad != 0


def test_equal_scores_give_log_batch() -> None:
    batch, dim = 6, 4
    video_global = torch.zeros(batch, dim, dtype=DTYPE)
    video_global[:, 0] = 1.0
    text_global = torch.zeros(batch, dim, dtype=DTYPE)
    text_global[:, 1] = 2.0  # orthogonal: every score is exactly 0
    module = ContrastiveLoss("coarse").double()
    # exact up to the rounding of the final means (a few ulp)
    loss = module(None, video_global, None, text_global).detach()
    assert math.isclose(float(loss), math.log(batch), rel_tol=1e-15)
    # every fine-grained aggregation, with identical videos and identical texts
    generator = torch.Generator().manual_seed(16)
    video_tokens = torch.randn(1, 5, dim, generator=generator, dtype=DTYPE).expand(batch, 5, dim)
    text_tokens = torch.randn(1, 3, dim, generator=generator, dtype=DTYPE).expand(batch, 3, dim)
    for aggregation in AGGREGATIONS:
        module = ContrastiveLoss(aggregation, backend="chunked").double()
        loss = module(video_tokens, None, text_tokens, None)
        assert math.isclose(float(loss.detach()), math.log(batch), rel_tol=1e-12)


def test_contrastive_loss_temperatures() -> None:
    fixed = ContrastiveLoss("attention", attn_temperature=0.2, weight_temperature=0.5)
    assert math.isclose(fixed.temperature, 0.07, rel_tol=1e-6)
    assert math.isclose(fixed.attn_temperature, 0.2, rel_tol=1e-6)
    assert math.isclose(fixed.weight_temperature, 0.5, rel_tol=1e-6)
    assert all(isinstance(v, float) for v in (fixed.temperature, fixed.attn_temperature, fixed.weight_temperature))
    assert [name for name, _ in fixed.named_parameters()] == ["log_temperature"]
    assert {"log_attn_temperature", "log_weight_temperature"} <= {name for name, _ in fixed.named_buffers()}

    video, text, video_mask, text_mask = random_inputs(4, 4, 3, 3, 5, seed=17)
    for aggregation in ATTENTION_AGGREGATIONS:
        learned = ContrastiveLoss(aggregation, learn_attention_temperatures=True, backend="chunked").double()
        names = {name for name, _ in learned.named_parameters()}
        assert names == {"log_temperature", "log_attn_temperature", "log_weight_temperature"}
        learned(video, None, text, None, text_mask, video_mask).backward()
        for name, parameter in learned.named_parameters():
            if aggregation == "attention_uniform" and name == "log_weight_temperature":  # tau_w is unused there
                assert parameter.grad is None or parameter.grad == 0
                continue
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad != 0

    with torch.no_grad():
        learned.log_temperature.fill_(math.log(0.001))
    learned.clamp_temperatures_()
    assert math.isclose(learned.temperature, MIN_TEMPERATURE, rel_tol=1e-12)


@pytest.mark.parametrize("name", ["coarse", "milnce"])
def test_temperature_clamped_after_the_step_keeps_its_gradient_and_recovers(name: str) -> None:
    """At the lower clamp the forward pass still sees the parameter, so its gradient is not zero and
    an optimiser step can raise it again (a clamp inside the forward pass would freeze it there)."""
    loss_module = build_loss(name)
    with torch.no_grad():
        loss_module.log_temperature.fill_(math.log(0.001))
    loss_module.clamp_temperatures_()
    assert loss_module.temperature == pytest.approx(MIN_TEMPERATURE)
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(6, 8, generator=generator)
    if name == "milnce":
        value = loss_module(video, torch.randn(6, 3, 8, generator=generator))
    else:
        value = loss_module(None, video, None, torch.randn(6, 8, generator=generator))
    value.backward()
    grad = float(loss_module.log_temperature.grad)
    assert grad != 0.0
    optimizer = torch.optim.SGD(loss_module.parameters(), lr=10.0)
    optimizer.step()
    loss_module.clamp_temperatures_()
    if grad < 0:  # the loss wants a larger temperature: it comes back up
        assert loss_module.temperature > MIN_TEMPERATURE
    else:
        assert loss_module.temperature == pytest.approx(MIN_TEMPERATURE)


# --------------------------------------------------------------------------------------
# MIL-NCE
# --------------------------------------------------------------------------------------

def reference_mil_nce(video_global, text_global, temperature, candidate_mask=None) -> torch.Tensor:
    """Loops over clips i, texts j, candidates k."""
    batch, candidates, _ = text_global.shape

    def valid(j: int, k: int) -> bool:
        return candidate_mask is None or bool(candidate_mask[j, k])

    def x(i: int, j: int, k: int) -> torch.Tensor:
        return cosine(video_global[i], text_global[j, k]) / temperature

    total = 0.0
    for i in range(batch):
        positives = sum(torch.exp(x(i, i, k)) for k in range(candidates) if valid(i, k))
        against_texts = sum(torch.exp(x(i, j, k)) for j in range(batch) for k in range(candidates) if valid(j, k))
        against_clips = sum(torch.exp(x(j, i, k)) for j in range(batch) for k in range(candidates) if valid(i, k))
        total = total - torch.log(positives / (against_texts + against_clips))
    return total / batch


@pytest.mark.parametrize("masked", [False, True])
def test_mil_nce_matches_loop_reference(masked: bool) -> None:
    generator = torch.Generator().manual_seed(18)
    video_global = torch.randn(4, 5, generator=generator, dtype=DTYPE, requires_grad=True)
    text_global = torch.randn(4, 3, 5, generator=generator, dtype=DTYPE, requires_grad=True)
    mask = random_mask(4, 3, generator) if masked else None
    loss = mil_nce_loss(video_global, text_global, 0.3, mask)
    want = reference_mil_nce(video_global, text_global, 0.3, mask)
    close(loss, want)
    for got_grad, want_grad in zip(torch.autograd.grad(loss, [video_global, text_global]),
                                   torch.autograd.grad(want, [video_global, text_global])):
        close(got_grad, want_grad)
    if masked:
        junk = text_global.detach().clone()
        junk[~mask] = float("nan")
        close(mil_nce_loss(video_global, junk, 0.3, mask), loss, tol=0)


def test_mil_nce_relations() -> None:
    generator = torch.Generator().manual_seed(19)
    # K = 1, no mask: loss_i = logaddexp(logsumexp_j x_ij, logsumexp_j x_ji) - x_ii with x = cos / temperature
    video_global = torch.randn(5, 6, generator=generator, dtype=DTYPE)
    text_global = torch.randn(5, 1, 6, generator=generator, dtype=DTYPE)
    x = ContrastiveLoss("coarse").double().scores(None, video_global, None, text_global[:, 0]) / 0.1
    expected = (torch.logaddexp(torch.logsumexp(x, 1), torch.logsumexp(x, 0)) - x.diagonal()).mean()
    close(mil_nce_loss(video_global, text_global, 0.1), expected)
    # one clip: the positives appear twice in the denominator, so the loss is log 2 for any K
    close(mil_nce_loss(video_global[:1], torch.randn(1, 4, 6, generator=generator, dtype=DTYPE), 0.1),
          torch.tensor(math.log(2), dtype=DTYPE))
    # all similarities equal: log(2 * B)
    same_video = torch.ones(3, 6, dtype=DTYPE)
    same_text = torch.ones(3, 4, 6, dtype=DTYPE) * 2
    close(mil_nce_loss(same_video, same_text, 0.07), torch.tensor(math.log(6), dtype=DTYPE))


# --------------------------------------------------------------------------------------
# backends and bad input
# --------------------------------------------------------------------------------------

def test_auto_backend_on_cpu_is_chunked() -> None:
    video, text, video_mask, text_mask = random_inputs(2, 3, 4, 3, 5, seed=20)
    close(pair_scores(video, text, text_mask, video_mask, backend="auto"),
          pair_scores(video, text, text_mask, video_mask, backend="chunked"), tol=0)


def test_auto_backend_fuses_only_where_the_kernel_wins(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(losses, "_TRITON_AVAILABLE", True)
    assert [auto_backend(True, a) for a in AGGREGATIONS] == [
        "chunked", "triton", "triton", "chunked", "chunked", "chunked"]  # mean: closed form; floor, gate, uniform: no kernel
    assert {auto_backend(False, a) for a in AGGREGATIONS} == {"chunked"}
    monkeypatch.setattr(losses, "_TRITON_AVAILABLE", False)
    assert auto_backend(True, "attention") == "chunked"


def test_triton_backend_delegates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_triton_pair_scores(video_tokens, text_tokens, text_mask, video_mask, aggregation,
                                attn_temperature, weight_temperature):
        calls.append((video_tokens, text_tokens, text_mask, video_mask, aggregation, attn_temperature,
                      weight_temperature))
        return pair_scores(video_tokens, text_tokens, text_mask, video_mask, aggregation, attn_temperature,
                           weight_temperature, backend="naive")

    monkeypatch.setitem(sys.modules, "fgmm_lib.kernels.triton_scores",
                        types.SimpleNamespace(triton_pair_scores=fake_triton_pair_scores))
    video, text, video_mask, text_mask = random_inputs(2, 3, 4, 3, 5, seed=21)
    got = pair_scores(video, text, text_mask, video_mask, "max", 0.2, 0.3, backend="triton")
    close(got, pair_scores(video, text, text_mask, video_mask, "max", backend="naive"))
    (video_arg, text_arg, text_mask_arg, video_mask_arg, aggregation, attn, weight), = calls
    assert aggregation == "max" and attn == 0.2 and weight == 0.3
    assert torch.equal(text_mask_arg, text_mask) and torch.equal(video_mask_arg, video_mask)
    assert (video_arg[~video_mask] == 0).all()


def _bad_pair_scores_cases():
    generator = torch.Generator().manual_seed(22)
    video = torch.randn(2, 3, 4, generator=generator)
    text = torch.randn(3, 5, 4, generator=generator)
    ok_video_mask = torch.ones(2, 3, dtype=torch.bool)
    empty_text_mask = torch.ones(3, 5, dtype=torch.bool)
    empty_text_mask[1] = False
    return [
        (dict(video_tokens=video[0], text_tokens=text), "video_tokens"),
        (dict(video_tokens=video, text_tokens=text[..., :3]), "D"),
        (dict(video_tokens=video, text_tokens=text.double()), "dtype"),
        (dict(video_tokens=video, text_tokens=text, video_mask=torch.ones(2, 4, dtype=torch.bool)), "video_mask"),
        (dict(video_tokens=video, text_tokens=text, text_mask=torch.ones(3, 5)), "text_mask"),
        (dict(video_tokens=video, text_tokens=text, text_mask=empty_text_mask), r"text_mask leaves text \[1\]"),
        (dict(video_tokens=video, text_tokens=text, video_mask=~ok_video_mask), r"video_mask leaves video \[0, 1\]"),
        (dict(video_tokens=video, text_tokens=text, aggregation="median"), "aggregation 'median'.*attention"),
        (dict(video_tokens=video, text_tokens=text, backend="cuda"), "backend 'cuda'.*chunked"),
        (dict(video_tokens=video, text_tokens=text, attn_temperature=0.0), "attn_temperature"),
        (dict(video_tokens=video, text_tokens=text, weight_temperature=-1.0), "weight_temperature"),
        (dict(video_tokens=video, text_tokens=text, backend="chunked", block_size=0), "block_size"),
        (dict(video_tokens=video, text_tokens=text[:, :0]), "text_tokens"),
    ]


@pytest.mark.parametrize("kwargs, message", _bad_pair_scores_cases())
def test_bad_pair_scores_input_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pair_scores(**kwargs)


def test_bad_loss_input_raises() -> None:
    with pytest.raises(ValueError, match="aggregation 'median'"):
        ContrastiveLoss("median")
    with pytest.raises(ValueError, match="MilNceLoss"):
        ContrastiveLoss("milnce")
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss("mean", temperature=0)
    with pytest.raises(ValueError, match="unknown loss 'median'"):
        build_loss("median")
    with pytest.raises(ValueError, match="attn_temperature"):
        build_loss("attention", attn_temperature=-1.0)
    with pytest.raises(ValueError, match="as many videos as texts"):
        ContrastiveLoss("coarse")(None, torch.randn(3, 4), None, torch.randn(2, 4))
    with pytest.raises(ValueError, match="text_tokens"):
        attention_maps(torch.randn(3, 4), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="aggregation with attention maps 'max'.*attention_gate"):
        attention_maps(torch.randn(3, 4), torch.randn(2, 4), aggregation="max")
    mask = torch.ones(3, 2, dtype=torch.bool)
    mask[2] = False
    with pytest.raises(ValueError, match=r"candidate_mask leaves clip \[2\]"):
        mil_nce_loss(torch.randn(3, 4), torch.randn(3, 2, 4), candidate_mask=mask)
    with pytest.raises(ValueError, match="candidate sets"):
        mil_nce_loss(torch.randn(3, 4), torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match="temperature"):
        mil_nce_loss(torch.randn(3, 4), torch.randn(3, 2, 4), temperature=-0.1)


def test_attention_uniform_is_attention_without_down_weighting():
    """"attention_uniform" is "attention" at tau_w -> infinity and "attention_floor" with all weight on the floor."""
    generator = torch.Generator().manual_seed(3)
    video = torch.randn(3, 6, 5, generator=generator, dtype=torch.float64)
    text = torch.randn(4, 4, 5, generator=generator, dtype=torch.float64)
    text_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    uniform = losses.pair_scores(video, text, text_mask, aggregation="attention_uniform", attn_temperature=0.3,
                          weight_temperature=0.01)
    flat = losses.pair_scores(video, text, text_mask, aggregation="attention", attn_temperature=0.3,
                       weight_temperature=1e9)
    sharp = losses.pair_scores(video, text, text_mask, aggregation="attention", attn_temperature=0.3,
                        weight_temperature=0.01)
    torch.testing.assert_close(uniform, flat)
    assert not torch.allclose(uniform, sharp)
