"""The metrics of the downstream evaluation (docs/study.md section 5): retrieval, linear probe, pointing.

These functions take tensors that have already been computed (scores, relevance, features, boxes)
and load no model or dataset. :mod:`fgmm_lib.evaluation.embedding` computes the embeddings and
score matrices they read, and :func:`fgmm_lib.evaluation.protocol.evaluate` runs the tasks.

- Retrieval: :func:`retrieval_metrics` (R@K as a hit rate through torchmetrics'
  ``RetrievalHitRate``, median and mean rank), :func:`best_relevant_ranks`,
  :func:`random_ranking_hit_rate` (the exact chance level), :func:`bootstrap_interval` and
  :func:`retrieval_with_intervals` (95% bootstrap over queries, :data:`BOOTSTRAP_RESAMPLES`
  resamples, seed :data:`BOOTSTRAP_SEED`), :func:`attribute_relevance` and
  :func:`attribute_retrieval` (the same ranking judged on one attribute at a time).
- Linear probe: :func:`linear_probe`, a multinomial logistic regression on frozen features, with
  its weight decay chosen on a held-out part of the train set.
- Pointing: :func:`cell_hit_mask`, :func:`pointing_accuracy`, :func:`digit_phrase_indices`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.retrieval import RetrievalHitRate

from fgmm_lib.data.dataset import DIGIT_WORDS
from fgmm_lib.losses.modules import PairLoss
from fgmm_lib.losses.scores import AGGREGATIONS
from fgmm_lib.models.encoders import token_to_cell

# --------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------


def _check_retrieval_inputs(scores: Tensor, relevant: Tensor) -> None:
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ValueError(f"scores must be a [Q, C] tensor, got {getattr(scores, 'shape', type(scores).__name__)}")
    if not isinstance(relevant, Tensor) or tuple(relevant.shape) != tuple(scores.shape):
        shape = tuple(relevant.shape) if isinstance(relevant, Tensor) else type(relevant).__name__
        raise ValueError(f"relevant must be a bool tensor of the shape of scores {tuple(scores.shape)}, got {shape}")
    if relevant.dtype != torch.bool:
        raise ValueError(f"relevant must be a bool tensor, got dtype {relevant.dtype}")
    if scores.numel() == 0:
        raise ValueError(f"scores must be non-empty, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a float tensor, got dtype {scores.dtype}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores hold NaN or infinite values")
    empty = ~relevant.any(dim=1)
    if bool(empty.any()):
        rows = torch.nonzero(empty).flatten().tolist()
        raise ValueError(f"queries {rows[:10]} have no relevant item: every query needs at least one")


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    return ks


def best_relevant_ranks(scores: Tensor, relevant: Tensor) -> Tensor:
    """1-based rank of each query's best-ranked relevant item, ``[Q]`` float64.

    Items are ranked by descending score. A tie between relevant and irrelevant items counts
    as a random order: with ``g`` irrelevant and ``h`` relevant items tied at the best relevant
    score, the rank is ``1 + (#irrelevant scored higher) + g / (h + 1)`` (its expectation).
    Without ties this is the plain rank.
    """
    _check_retrieval_inputs(scores, relevant)
    best = scores.masked_fill(~relevant, float("-inf")).amax(dim=1, keepdim=True)
    higher = ((scores > best) & ~relevant).sum(dim=1).double()
    tied_irrelevant = ((scores == best) & ~relevant).sum(dim=1).double()
    tied_relevant = ((scores == best) & relevant).sum(dim=1).double()
    return 1.0 + higher + tied_irrelevant / (tied_relevant + 1.0)


def retrieval_metrics(scores: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (hit rate), median rank and mean rank of a retrieval.

    Args:
        scores: ``[Q, C]`` score of each corpus item for each query (higher = better).
        relevant: ``[Q, C]`` bool, True where the item is a correct answer to the query; every
            query needs at least one.
        ks: the K of R@K.

    R@K goes through ``torchmetrics.retrieval.RetrievalHitRate(top_k=K)``: a query counts as a
    hit when any correct answer is among its top K. Scores are first shifted to
    ``scores - scores.min() + 1`` (order-preserving, all > 0: torchmetrics' retrieval metrics
    must not see scores <= 0), and the ranks are computed on exactly the float32 values that
    torchmetrics sees. The median / mean rank is that of the best-ranked correct answer
    (:func:`best_relevant_ranks`), computed directly.

    Returns ``{"R@1": .., "R@5": .., "R@10": .., "median_rank": .., "mean_rank": ..}``.
    """
    _check_retrieval_inputs(scores, relevant)
    ks = _check_ks(ks)
    scores64 = scores.detach().to("cpu", torch.float64)
    shifted = (scores64 - scores64.min() + 1.0).float()
    relevant = relevant.detach().cpu()
    queries, corpus = shifted.shape
    indexes = torch.arange(queries).unsqueeze(1).expand(queries, corpus).reshape(-1)
    result: dict[str, float] = {}
    for k in ks:
        metric = RetrievalHitRate(top_k=k, empty_target_action="error")
        result[f"R@{k}"] = float(metric(shifted.reshape(-1), relevant.reshape(-1), indexes=indexes))
    ranks = best_relevant_ranks(shifted, relevant)
    result["median_rank"] = float(torch.quantile(ranks, 0.5))
    result["mean_rank"] = float(ranks.mean())
    return result


def random_ranking_hit_rate(relevant: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected R@K of a uniformly random ranking, exactly, for a relevance matrix ``[Q, C]``.

    A query with ``r`` correct answers among ``C`` items misses at K with probability
    ``binom(C - r, K) / binom(C, K)``; the result is the mean over queries of one minus that.
    """
    if not isinstance(relevant, Tensor) or relevant.dim() != 2 or relevant.dtype != torch.bool:
        raise ValueError("relevant must be a [Q, C] bool tensor")
    ks = _check_ks(ks)
    corpus = relevant.shape[1]
    counts = relevant.sum(dim=1).tolist()
    result = {}
    for k in ks:
        top = min(k, corpus)
        hits = [1.0 - math.comb(corpus - r, top) / math.comb(corpus, top) for r in counts]
        result[f"R@{k}"] = float(np.mean(hits)) if hits else float("nan")
    return result


def _query_hits(scores: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, Tensor]:
    """Per-query hit of each R@K, ``{"R@K": [Q] float64}``: 1 where a correct answer is among the
    top K, 0 where none is; their mean is the R@K of :func:`retrieval_metrics`.

    A tie at the best relevant score counts as a random order (as in :func:`best_relevant_ranks`):
    the entry is then the probability of a hit, ``1 - binom(g, m) / binom(g + h, m)`` with ``g``
    irrelevant and ``h`` relevant items tied, and ``m`` = K minus the irrelevant items scored higher.
    """
    _check_retrieval_inputs(scores, relevant)
    ks = _check_ks(ks)
    scores = scores.detach().to("cpu", torch.float64)
    relevant = relevant.detach().cpu()
    best = scores.masked_fill(~relevant, float("-inf")).amax(dim=1, keepdim=True)
    higher = ((scores > best) & ~relevant).sum(dim=1).tolist()
    tied_irrelevant = ((scores == best) & ~relevant).sum(dim=1).tolist()
    tied_relevant = ((scores == best) & relevant).sum(dim=1).tolist()
    result = {}
    for k in ks:
        hits = []
        for above, g, h in zip(higher, tied_irrelevant, tied_relevant):
            m = k - above
            hits.append(0.0 if m <= 0 else 1.0 if m > g else 1.0 - math.comb(g, m) / math.comb(g + h, m))
        result[f"R@{k}"] = torch.tensor(hits, dtype=torch.float64)
    return result


#: Resamples and seed of every bootstrap interval of :func:`evaluate`.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def bootstrap_interval(values: Tensor | Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval ``[lo, hi]`` of the mean of ``values`` (one per query or clip).

    ``resamples`` times, ``len(values)`` values are drawn with replacement (a numpy generator
    seeded with ``seed``, so the interval is reproducible) and averaged; the interval runs from
    the ``(1 - level) / 2`` to the ``(1 + level) / 2`` quantile of those means (linear
    interpolation). A single value gives ``[value, value]``.
    """
    data = np.asarray(values.tolist() if isinstance(values, Tensor) else values, dtype=np.float64).reshape(-1)
    if data.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if not np.isfinite(data).all():
        raise ValueError("bootstrap_interval: the values hold NaN or infinite entries")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive int, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    rng = np.random.default_rng(int(seed))
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return [float(low), float(high)]


def retrieval_with_intervals(scores: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """:func:`retrieval_metrics` of ``scores [Q, C]`` with the exact chance level, the query and
    corpus sizes, and ``"ci95": {"R@K": [lo, hi]}``, a bootstrap over queries."""
    result: dict[str, Any] = retrieval_metrics(scores, relevant, ks)
    hits = _query_hits(scores, relevant, ks)
    result.update(queries=int(scores.shape[0]), corpus=int(scores.shape[1]),
                  chance=random_ranking_hit_rate(relevant, ks),
                  ci95={name: bootstrap_interval(values) for name, values in hits.items()})
    return result


def attribute_relevance(query_values: Tensor, clip_values: Tensor) -> Tensor:
    """``[Q, C]`` bool: True where clip c has the attribute value of query q (one attribute only)."""
    return query_values.reshape(-1, 1) == clip_values.reshape(1, -1)


def attribute_retrieval(scores: Tensor, relevant: Tensor, attributes: dict[str, Tensor],
                        ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, Any]]:
    """Attribute-level retrieval: the same ranking, judged on one attribute at a time.

    Args:
        scores: ``[Q, C]`` scores of the caption queries against the clips.
        relevant: ``[Q, C]`` bool, the clips each caption query is a correct answer for.
        attributes: per attribute name, ``[C]`` integer value of each clip (e.g. its colour).

    The attribute value of a query is the one that all its relevant clips share; a hit at K is
    then any clip among the top K with that value, whatever its other attributes (the ranking is
    the caption's full one; only what counts as correct changes). An attribute whose value is not
    shared by every relevant clip of some query is left out (the query does not name one value).

    Returns per attribute the keys of :func:`retrieval_metrics` with ``chance``, ``queries``,
    ``corpus`` and ``ci95`` (bootstrap over queries).
    """
    _check_retrieval_inputs(scores, relevant)
    result = {}
    for name, values in attributes.items():
        values = torch.as_tensor(values).long().reshape(-1)
        if values.shape[0] != scores.shape[1]:
            raise ValueError(f"attribute {name!r} has {values.shape[0]} values for {scores.shape[1]} clips")
        low = values.unsqueeze(0).masked_fill(~relevant, torch.iinfo(torch.long).max).amin(dim=1)
        high = values.unsqueeze(0).masked_fill(~relevant, torch.iinfo(torch.long).min).amax(dim=1)
        if bool((low != high).any()):
            continue
        result[name] = retrieval_with_intervals(scores, attribute_relevance(low, values), ks)
    return result


# --------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------


def _fit_logistic(
    features: Tensor, labels: Tensor, num_classes: int, weight_decay: float, epochs: int
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS, L2 penalty ``weight_decay/2 ||W||^2``."""
    weight = torch.zeros(features.shape[1], num_classes, dtype=features.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=features.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=epochs, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weight.detach(), bias.detach()


def _check_probe_inputs(features: Tensor, labels: Tensor, name: str, num_classes: int) -> None:
    if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] == 0:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name}_features must be a non-empty [n, D] tensor, got {shape}")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name}_labels must be a [n] tensor with n = {features.shape[0]}, got {shape}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name}_labels must hold integer class ids, got dtype {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(
            f"{name}_labels must lie in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name}_features hold NaN or infinite values")


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    epochs: int = 200,
    seed: int = 0,
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    validation_fraction: float = 0.2,
) -> dict[str, Any]:
    """Linear probe: multinomial logistic regression on frozen features.

    Features are standardised with the train set's mean and standard deviation, in float64.
    The L2 weight decay is chosen from ``weight_decays`` by accuracy on a held-out
    ``validation_fraction`` of the train set (a permutation drawn from ``seed``; ties go to the
    stronger decay), then the probe is refitted on the whole train set with it. Each fit is a
    full-batch L-BFGS run of at most ``epochs`` iterations from zero weights (the problem is
    convex, so the result does not depend on an initialisation).

    Returns ``{"top1": micro top-1 accuracy on the test set (torchmetrics MulticlassAccuracy,
    average="micro"), "confusion": [[..]] (rows = true class, columns = predicted;
    torchmetrics MulticlassConfusionMatrix), "weight_decay": the chosen decay, "train_size",
    "test_size", "predicted": [the predicted class of each test clip]}``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not weight_decays or any(not (float(w) >= 0 and math.isfinite(float(w))) for w in weight_decays):
        raise ValueError(f"weight_decays must be non-negative finite numbers, got {weight_decays!r}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction!r}")
    _check_probe_inputs(train_features, train_labels, "train", num_classes)
    _check_probe_inputs(test_features, test_labels, "test", num_classes)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train_features and test_features must have the same feature size, got "
            f"{train_features.shape[1]} and {test_features.shape[1]}"
        )
    train_x = train_features.detach().cpu().double()
    test_x = test_features.detach().cpu().double()
    train_y = train_labels.detach().cpu().long()
    test_y = test_labels.detach().cpu().long()
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False).clamp_min(1e-8)
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std

    # The fits are tiny (n x D by classes): one thread is fastest, and immune to a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        chosen_decay, weight, bias = _choose_and_fit(
            train_x, train_y, num_classes, weight_decays, epochs, seed, validation_fraction
        )
    finally:
        torch.set_num_threads(threads)
    predicted = (test_x @ weight + bias).argmax(dim=1)
    accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")(predicted, test_y)
    confusion = MulticlassConfusionMatrix(num_classes=num_classes)(predicted, test_y)
    return {
        "top1": float(accuracy),
        "confusion": confusion.long().tolist(),
        "weight_decay": chosen_decay,
        "train_size": int(train_x.shape[0]),
        "test_size": int(test_x.shape[0]),
        "predicted": predicted.long().tolist(),
    }


def _choose_and_fit(
    train_x: Tensor, train_y: Tensor, num_classes: int, weight_decays: Sequence[float], epochs: int,
    seed: int, validation_fraction: float,
) -> tuple[float, Tensor, Tensor]:
    """Pick the weight decay on a held-out part of the train set, refit on all of it: (decay, W, b)."""
    decays = sorted({float(w) for w in weight_decays}, reverse=True)  # strongest first: wins ties
    chosen = decays[0]
    held_out = int(round(validation_fraction * train_x.shape[0]))
    if len(decays) > 1 and held_out >= 1 and train_x.shape[0] - held_out >= 2:
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(train_x.shape[0], generator=generator)
        fit_rows, val_rows = order[held_out:], order[:held_out]
        best_accuracy = -1.0
        for decay in decays:
            weight, bias = _fit_logistic(train_x[fit_rows], train_y[fit_rows], num_classes, decay, epochs)
            predicted = (train_x[val_rows] @ weight + bias).argmax(dim=1)
            accuracy = float((predicted == train_y[val_rows]).double().mean())
            if accuracy > best_accuracy:
                best_accuracy, chosen = accuracy, decay
    weight, bias = _fit_logistic(train_x, train_y, num_classes, chosen, epochs)
    return chosen, weight, bias


# --------------------------------------------------------------------------------------------
# Pointing
# --------------------------------------------------------------------------------------------


def cell_hit_mask(
    boxes: Tensor, visible: Tensor, grid: tuple[int, int, int], frame_size: tuple[int, int, int]
) -> Tensor:
    """For each clip and token-grid cell, would pointing at that cell be a hit? ``[C, N]`` bool.

    Cell ``(t', y', x')`` of a ``(T', H', W')`` grid over ``T x H x W`` clips has its centre at
    pixel coordinates ``((x' + 0.5) W / W', (y' + 0.5) H / H')`` and covers the frames whose
    interval ``[f, f + 1)`` overlaps ``[t' T / T', (t' + 1) T / T')``. It is a hit when that
    centre lies inside the actor's box (``x0 <= x < x1``, ``y0 <= y < y1``) in at least one
    covered frame where the actor is visible. Cells are in token order
    (:func:`fgmm_lib.models.encoders.token_to_cell`).

    Args:
        boxes: ``[C, T, 4]`` actor boxes ``(x0, y0, x1, y1)`` in pixels, exclusive ``x1`` / ``y1``.
        visible: ``[C, T]`` bool, False on frames where the actor is not shown.
        grid: ``(T', H', W')``, the model's token grid.
        frame_size: ``(T, H, W)`` of the clips.
    """

    grid_t, grid_h, grid_w = (int(v) for v in grid)
    frames, height, width = (int(v) for v in frame_size)
    if min(grid_t, grid_h, grid_w, frames, height, width) < 1:
        raise ValueError(f"grid {tuple(grid)} and frame_size {tuple(frame_size)} must hold positive sizes")
    if boxes.dim() != 3 or boxes.shape[1:] != (frames, 4):
        raise ValueError(f"boxes must have shape [C, {frames}, 4], got {tuple(boxes.shape)}")
    if tuple(visible.shape) != tuple(boxes.shape[:2]):
        raise ValueError(f"visible must have shape {tuple(boxes.shape[:2])}, got {tuple(visible.shape)}")
    boxes = boxes.double()
    centre_x = (torch.arange(grid_w, dtype=torch.float64) + 0.5) * width / grid_w  # [W']
    centre_y = (torch.arange(grid_h, dtype=torch.float64) + 0.5) * height / grid_h  # [H']
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))  # [C, T]
    inside_x = (x0.unsqueeze(-1) <= centre_x) & (centre_x < x1.unsqueeze(-1))  # [C, T, W']
    inside_y = (y0.unsqueeze(-1) <= centre_y) & (centre_y < y1.unsqueeze(-1))  # [C, T, H']
    inside = inside_y.unsqueeze(-1) & inside_x.unsqueeze(-2) & visible.bool()[..., None, None]  # [C, T, H', W']
    frame = torch.arange(frames, dtype=torch.float64)
    cell_t = torch.arange(grid_t, dtype=torch.float64)
    covers = (frame.unsqueeze(0) < (cell_t.unsqueeze(1) + 1) * frames / grid_t) & (
        frame.unsqueeze(0) + 1 > cell_t.unsqueeze(1) * frames / grid_t
    )  # [T', T]
    hit = torch.einsum("st,cthw->cshw", covers.double(), inside.double()) > 0  # [C, T', H', W']
    t, y, x = token_to_cell(torch.arange(grid_t * grid_h * grid_w), (grid_t, grid_h, grid_w))
    return hit[:, t, y, x]


def pointing_accuracy(
    loss_module: PairLoss,
    video_tokens: Tensor,
    caption_phrases: Tensor,
    caption_mask: Tensor,
    phrase_index: Tensor,
    boxes: Tensor,
    visible: Tensor,
    grid: tuple[int, int, int],
    frame_size: tuple[int, int, int],
) -> dict[str, float]:
    """Attention pointing accuracy (docs/study.md section 5, last row).

    For clip ``c``, the phrase ``phrase_index[c]`` (the one centred on the digit word of its
    clean caption) points at its most attended cell: the argmax over cells of
    ``loss_module.attention(...)["focus"][m]`` (the softmax over cells for the attention
    aggregations, the cosines for ``mean`` and ``max``). The clip is a hit when :func:`cell_hit_mask` marks that cell.

    Args:
        loss_module: the run's loss; it must have attention (``loss_module.has_attention``).
        video_tokens: ``[C, N, D]``; caption_phrases ``[C, M, D]``; caption_mask ``[C, M]`` bool.
        phrase_index: ``[C]`` long, the digit phrase of each clip (must be a valid phrase).
        boxes, visible, grid, frame_size: as in :func:`cell_hit_mask`.

    Returns ``{"accuracy": hit rate, "chance": mean over clips of the fraction of cells that
    are hits (the accuracy of a uniformly random cell), "clips": C}``.
    """
    if not loss_module.has_attention:
        raise ValueError(f"loss {loss_module.name!r} has no attention to point with "
                         f"(pointing needs one of {', '.join(AGGREGATIONS)})")
    clips = video_tokens.shape[0]
    if video_tokens.dim() != 3 or clips == 0:
        raise ValueError(f"video_tokens must be a non-empty [C, N, D] tensor, got {tuple(video_tokens.shape)}")
    if caption_phrases.dim() != 3 or caption_phrases.shape[0] != clips:
        raise ValueError(f"caption_phrases must have shape [{clips}, M, D], got {tuple(caption_phrases.shape)}")
    if tuple(caption_mask.shape) != tuple(caption_phrases.shape[:2]):
        raise ValueError(
            f"caption_mask must have shape {tuple(caption_phrases.shape[:2])}, got {tuple(caption_mask.shape)}"
        )
    if phrase_index.shape != (clips,):
        raise ValueError(f"phrase_index must have shape [{clips}], got {tuple(phrase_index.shape)}")
    phrases = caption_phrases.shape[1]
    index = phrase_index.long()
    if int(index.min()) < 0 or int(index.max()) >= phrases:
        raise ValueError(
            f"phrase_index must lie in [0, {phrases}), got values in [{int(index.min())}, {int(index.max())}]"
        )
    mask = caption_mask.bool()
    if not bool(mask[torch.arange(clips), index].all()):
        bad = torch.nonzero(~mask[torch.arange(clips), index]).flatten().tolist()
        raise ValueError(f"phrase_index points at padded phrases for clips {bad[:10]}")
    hits_possible = cell_hit_mask(boxes, visible, grid, frame_size)  # [C, N]
    if hits_possible.shape[1] != video_tokens.shape[1]:
        raise ValueError(
            f"the grid {tuple(grid)} has {hits_possible.shape[1]} cells but video_tokens have "
            f"N = {video_tokens.shape[1]}"
        )
    loss_module = loss_module.cpu()
    chosen = torch.empty(clips, dtype=torch.long)
    with torch.no_grad():
        for c in range(clips):
            focus = loss_module.attention(video_tokens[c], caption_phrases[c], text_mask=mask[c])["focus"]
            chosen[c] = int(focus[int(index[c])].argmax())
    hits = hits_possible[torch.arange(clips), chosen]
    return {
        "accuracy": float(hits.double().mean()),
        "chance": float(hits_possible.double().mean(dim=1).mean()),
        "clips": int(clips),
    }


def digit_phrase_indices(captions: Sequence[str], digits: Sequence[int] | Tensor, max_words: int) -> Tensor:
    """Position of the digit word (``DIGIT_WORDS[digit]``) among the words of each clean caption.

    Phrase index = word index, since the text encoder gives one phrase per word (M = L) and the
    vocabulary encodes one id per whitespace-separated word. The position comes from the
    caption's words, so it is defined even where the vocabulary maps the digit word to unknown.
    """

    digits = digits.tolist() if isinstance(digits, Tensor) else list(digits)
    if len(digits) != len(captions):
        raise ValueError(f"captions and digits must have the same length, got {len(captions)} and {len(digits)}")
    positions = []
    for row, (caption, digit) in enumerate(zip(captions, digits)):
        words = str(caption).lower().split()
        word = DIGIT_WORDS[int(digit)]
        if word not in words:
            raise ValueError(f"the digit word {word!r} is not in the caption {caption!r} (clip row {row})")
        position = words.index(word)
        if position >= max_words:
            raise ValueError(f"the digit word of the caption {caption!r} lies beyond max_words = {max_words}")
        positions.append(position)
    return torch.tensor(positions, dtype=torch.long)
