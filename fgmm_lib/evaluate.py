"""Downstream evaluation with frozen encoders (STUDY.md section 5).

Four tasks, all on held-out clips of a clean evaluation set (every noise knob at 0, the
pretraining vocabulary):

- action recognition: a linear probe (multinomial logistic regression) on the clips' global
  video embeddings, trained on the probe split and reported on the evaluation split as top-1
  accuracy (micro: the fraction of clips classified correctly);
- text to video retrieval, zero-shot: the distinct clean captions of the split query its clips;
  every clip whose clean caption equals the query is a correct answer;
- text to image retrieval: "the <colour> <digit>" queries a corpus of still clips (one frame
  where the actor is visible, repeated over the clip's length); every still of that colour and
  digit is a correct answer;
- attention pointing: does the cell that the digit word's phrase attends to most fall inside
  the actor's box.

Retrieval scores are the run's own pair score (STUDY.md section 2): the cosine of the global
embeddings for ``coarse`` and ``milnce``, and the fine-grained aggregation with the run's
(possibly learned) temperatures for the fine-grained losses (``mean``, ``max``, ``attention`` and
the other attention aggregations of ``fgmm_lib.losses.AGGREGATIONS``).

The linear probe uses the global video embedding (not the mean of the local tokens): it is the
pooled feature every loss trains (``coarse`` and ``milnce`` only ever see it), so all runs are
probed on the same kind of feature.

Public API: :func:`embed_dataset`, :func:`pair_score_matrix`, :func:`retrieval_metrics`,
:func:`best_relevant_ranks`, :func:`random_ranking_hit_rate`, :func:`bootstrap_interval`,
:func:`attribute_relevance`, :func:`attribute_retrieval`, :func:`linear_probe`,
:func:`cell_hit_mask`, :func:`pointing_accuracy`, :func:`digit_phrase_indices`,
:func:`still_frame_indices` and :func:`evaluate` (what ``fgmm evaluate`` runs).

Baselines: every retrieval result carries ``"chance"``, the exact R@K of a random ranking for
its relevance matrix; the probe and pointing carry their uniform chance levels. A randomly
initialised encoder already beats the latter two (random convolutional features carry motion,
and the actor's cells stand out from a plain background), so compare trained runs with an
untrained one as well.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.retrieval import RetrievalHitRate
from tqdm.auto import tqdm

from fgmm_lib.losses import AGGREGATIONS, PairLoss
from fgmm_lib.runs import COMPUTE, check_writable_file, load_run, read_json, write_json

__all__ = [
    "embed_dataset",
    "pair_score_matrix",
    "retrieval_metrics",
    "best_relevant_ranks",
    "random_ranking_hit_rate",
    "bootstrap_interval",
    "attribute_relevance",
    "attribute_retrieval",
    "linear_probe",
    "cell_hit_mask",
    "pointing_accuracy",
    "digit_phrase_indices",
    "still_frame_indices",
    "evaluate",
]



# --------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------


def still_frame_indices(visible: Tensor) -> Tensor:
    """Index of the frame used as each clip's still image: the middle one of its visible frames.

    ``visible`` is ``[C, T]`` bool. A clip with no visible frame uses its middle frame.
    """
    if visible.dim() != 2:
        raise ValueError(f"visible must have shape [C, T], got {tuple(visible.shape)}")
    frames = visible.shape[1]
    visible = visible.bool()
    counts = visible.sum(dim=1)
    # Position (0-based) of the wanted visible frame among the visible ones.
    wanted = torch.div(counts - 1, 2, rounding_mode="floor").clamp(min=0)
    order = torch.cumsum(visible.long(), dim=1) - 1  # rank of each visible frame among visible ones
    is_wanted = visible & (order == wanted.unsqueeze(1))
    index = torch.where(
        counts > 0, is_wanted.long().argmax(dim=1), torch.full_like(counts, frames // 2)
    )
    return index


def _model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def embed_dataset(
    model: torch.nn.Module,
    dataset: Any,
    batch_size: int = 256,
    progress: bool = True,
    stills: bool = True,
) -> dict[str, Tensor]:
    """Embed every clip of a :class:`fgmm_lib.data.NarratedDigits` split with frozen encoders.

    The model runs in eval mode under ``torch.no_grad`` (its previous mode is restored after);
    batches go to the model's device and the results come back as float32 CPU tensors.

    Returns a dict (C = clips of the split):

    - ``"video_tokens"`` ``[C, N, D]``, ``"video_global"`` ``[C, D]``: the clips;
    - ``"caption_phrases"`` ``[C, M, D]``, ``"caption_mask"`` ``[C, M]`` (bool),
      ``"caption_global"`` ``[C, D]``: the clean captions;
    - ``"still_tokens"`` ``[C, N, D]``, ``"still_global"`` ``[C, D]``, ``"still_frame"`` ``[C]``:
      still clips (the frame :func:`still_frame_indices` picks, repeated T times), only if
      ``stills``;
    - ``"caption_tokens"`` ``[C, L]``, ``"action"``, ``"digit"``, ``"colour"``, ``"index"`` ``[C]``,
      ``"boxes"`` ``[C, T, 4]``, ``"visible"`` ``[C, T]``: the clips' labels, for the tasks.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    count = len(dataset)
    if count == 0:
        raise ValueError(f"the dataset split {getattr(dataset, 'split', '?')!r} has no clips to embed")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {}

    def keep(name: str, value: Tensor) -> None:
        parts.setdefault(name, []).append(value.detach().to("cpu"))

    starts = range(0, count, batch_size)
    try:
        with torch.no_grad():
            for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
                positions = np.arange(start, min(start + batch_size, count))
                batch = dataset.get_batch(positions)
                video = batch["video"].to(device=device, dtype=torch.float32)
                tokens, global_embedding = model.encode_video(video)
                keep("video_tokens", tokens.float())
                keep("video_global", global_embedding.float())
                caption_tokens = batch["caption_tokens"].to(device)
                caption_mask = batch["caption_mask"].to(device).bool()
                phrases, phrase_mask, caption_global = model.encode_text(caption_tokens, caption_mask)
                keep("caption_phrases", phrases.float())
                keep("caption_mask", phrase_mask.bool())
                keep("caption_global", caption_global.float())
                visible = torch.as_tensor(batch["visible"]).bool()
                if stills:
                    frame = still_frame_indices(visible).to(device)
                    frames = video.shape[2]
                    gather = frame.view(-1, 1, 1, 1, 1).expand(-1, video.shape[1], 1, *video.shape[3:])
                    still = torch.gather(video, 2, gather).expand(-1, -1, frames, -1, -1).contiguous()
                    still_tokens, still_global = model.encode_video(still)
                    keep("still_tokens", still_tokens.float())
                    keep("still_global", still_global.float())
                    keep("still_frame", frame)
                keep("caption_tokens", torch.as_tensor(batch["caption_tokens"]))
                for name in ("action", "digit", "colour", "index"):
                    keep(name, torch.as_tensor(batch[name]).long().reshape(-1))
                keep("boxes", torch.as_tensor(batch["boxes"]).float())
                keep("visible", visible)
    finally:
        model.train(was_training)
    return {name: torch.cat(values, dim=0) for name, values in parts.items()}


# --------------------------------------------------------------------------------------------
# Pair scores
# --------------------------------------------------------------------------------------------


def pair_score_matrix(
    loss_module: PairLoss,
    video_tokens: Tensor,
    video_global: Tensor,
    text_phrases: Tensor,
    text_mask: Tensor,
    text_global: Tensor,
    block_size: int = 256,
    device: str | torch.device | None = None,
) -> Tensor:
    """Pair scores ``S [Cv, Ct]`` between videos and texts, as the run's loss scores them.

    ``loss_module.scores`` (:class:`fgmm_lib.losses.PairLoss`): the cosine of the global embeddings
    for ``coarse`` / ``milnce``, the fine-grained aggregation with the run's (possibly learned)
    temperatures for the others; computed in blocks of ``block_size`` videos (bounded memory) on
    ``device`` (default: the device of ``video_tokens``). Returned as a float32 CPU tensor.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    device = torch.device(device) if device is not None else video_tokens.device
    loss_module = loss_module.to(device)
    text = text_phrases.to(device).float()
    mask = text_mask.to(device).bool()
    text_global = text_global.to(device).float()
    rows = []
    with torch.no_grad():
        for start in range(0, video_tokens.shape[0], block_size):
            rows.append(loss_module.scores(
                video_tokens[start:start + block_size].to(device).float(),
                video_global[start:start + block_size].to(device).float(),
                text, text_global, text_mask=mask,
            ).float().cpu())
    return torch.cat(rows, dim=0)


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


def _retrieval_with_intervals(scores: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
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
        result[name] = _retrieval_with_intervals(scores, attribute_relevance(low, values), ks)
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
    (:func:`fgmm_lib.models.token_to_cell`).

    Args:
        boxes: ``[C, T, 4]`` actor boxes ``(x0, y0, x1, y1)`` in pixels, exclusive ``x1`` / ``y1``.
        visible: ``[C, T]`` bool, False on frames where the actor is not shown.
        grid: ``(T', H', W')``, the model's token grid.
        frame_size: ``(T, H, W)`` of the clips.
    """
    from fgmm_lib.models import token_to_cell

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
    """Attention pointing accuracy (STUDY.md section 5, last row).

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
    from fgmm_lib.data import DIGIT_WORDS

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


# --------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------


def _clean_probe_rows(meta: Any) -> np.ndarray:
    """Bool mask of the clean single-actor clips: no distractor and the actor visible in every frame."""
    no_distractor = np.array([len(list(g)) == 0 for g in meta["distractor_glyphs"]], dtype=bool)
    all_visible = np.array([bool(np.all(np.asarray(v, dtype=bool))) for v in meta["visible"]], dtype=bool)
    return no_distractor & all_visible


def _unique_first(values: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """Distinct values in order of first appearance and the row of each first appearance."""
    seen: dict[Any, int] = {}
    for row, value in enumerate(values):
        seen.setdefault(value, row)
    return list(seen), list(seen.values())


def _open_eval_data(data: Path, run: Path, vocab: Any, run_data: dict[str, Any], split: str,
                    probe_split: str) -> tuple[Any, Any]:
    """The evaluation and probe splits of ``data``, checked against the run: same vocabulary, same
    clip shape (frames and size) as the run's pretraining data, and neither split empty. The probe
    split is None when the folder has no action labels; a folder of images (one frame per clip)
    passes the frames check, its frame being repeated to the run's clip length."""
    from fgmm_lib.data import NarratedDigits, Vocabulary

    if not data.is_dir():
        raise FileNotFoundError(f"data folder {data} does not exist")
    data_vocab_path = data / "vocab.json"
    if not data_vocab_path.is_file():
        raise FileNotFoundError(f"data folder {data} has no vocabulary file {data_vocab_path}")
    data_fingerprint = Vocabulary.load(data_vocab_path).fingerprint()
    if data_fingerprint != vocab.fingerprint():
        raise ValueError(
            f"the data folder {data} was generated with another vocabulary than the run {run} was "
            f"trained with (vocabulary fingerprints {data_fingerprint[:12]}... vs {vocab.fingerprint()[:12]}...); "
            f"generate the evaluation data with the run's vocabulary (fgmm generate --vocab <the "
            f"pretraining data's vocab.json>, or fgmm import-* --vocab)"
        )
    test_set = NarratedDigits(data, split=split, vocab=vocab)
    for key in ("frames", "size"):
        trained, given = run_data.get(key), test_set.params.to_dict().get(key)
        if trained is not None and trained != given and not (key == "frames" and given == 1):
            raise ValueError(f"{data / 'params.json'}: {key}={given} but the run {run} was trained on clips with "
                             f"{key}={trained}; evaluate on data of the same clip shape")
    if len(test_set) == 0:
        raise ValueError(f"split {split!r} of {data} has no clips")
    if "action" not in test_set.fields:
        return test_set, None
    probe_set = NarratedDigits(data, split=probe_split, vocab=vocab)
    if len(probe_set) == 0:
        raise ValueError(f"probe split {probe_split!r} of {data} has no clips")
    return test_set, probe_set


def _probe_rows(probe_set: Any, test_set: Any, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the clips the linear probe uses (checked before any work): on Narrated Digits the
    clean single-actor clips, elsewhere every clip."""
    if "distractor_glyphs" not in test_set.meta:
        return np.ones(len(probe_set), dtype=bool), np.ones(len(test_set), dtype=bool)
    train_keep = _clean_probe_rows(probe_set.meta)
    test_keep = _clean_probe_rows(test_set.meta)
    dropped_train, dropped_test = int((~train_keep).sum()), int((~test_keep).sum())
    if dropped_train or dropped_test:
        warnings.warn(
            f"linear probe: dropped {dropped_train} of {len(train_keep)} {probe_set.split!r} clips and "
            f"{dropped_test} of {len(test_keep)} {test_set.split!r} clips of {data} that have distractors or "
            f"misaligned frames (the probe uses clean single-actor clips)",
            stacklevel=3,
        )
    if not train_keep.any() or not test_keep.any():
        raise ValueError(
            f"no clean single-actor clips left for the linear probe in {data} "
            f"({int(train_keep.sum())} {probe_set.split!r}, {int(test_keep.sum())} {test_set.split!r}); "
            f"evaluate on data generated with distractors=0 and misaligned_frames=0"
        )
    return train_keep, test_keep


#: The attributes of a Narrated Digits clip that the linear probes read, each with its class count.
PROBE_ATTRIBUTES = ("action", "colour", "digit")


def _attribute_classes() -> dict[str, int]:
    from fgmm_lib.data import ACTIONS, COLOURS, DIGIT_WORDS

    return {"action": len(ACTIONS), "colour": len(COLOURS), "digit": len(DIGIT_WORDS)}


def _one_probe(probe_train: dict[str, Tensor], test: dict[str, Tensor], train_rows: Tensor, test_rows: Tensor,
               attribute: str, classes: int) -> dict[str, Any]:
    """A linear probe of ``attribute`` on the global video embeddings, with the chance level and a
    bootstrap interval over the test clips of its top-1."""
    probe = linear_probe(
        probe_train["video_global"][train_rows], probe_train[attribute][train_rows],
        test["video_global"][test_rows], test[attribute][test_rows], num_classes=classes,
    )
    correct = torch.tensor(probe["predicted"]) == test[attribute][test_rows]
    return {**{key: value for key, value in probe.items() if key != "predicted"},
            "chance": 1.0 / classes, "ci95": bootstrap_interval(correct.double())}


def _probe_task(probe_train: dict[str, Tensor], test: dict[str, Tensor], train_keep: np.ndarray,
                test_keep: np.ndarray, classes: int, fields: frozenset[str] | set[str] = frozenset()
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The action probe (``probe``) and one probe per attribute the folder has (``probe_attributes``)."""
    train_rows = torch.from_numpy(np.nonzero(train_keep)[0])
    test_rows = torch.from_numpy(np.nonzero(test_keep)[0])
    action = _one_probe(probe_train, test, train_rows, test_rows, "action", classes)
    probe = {
        "action_top1": action["top1"],
        "chance": 1.0 / classes,
        "ci95": {"action_top1": action["ci95"]},
        "confusion": action["confusion"],
        "weight_decay": action["weight_decay"],
        "train_clips": action["train_size"],
        "test_clips": action["test_size"],
        "dropped_train_clips": int((~train_keep).sum()),
        "dropped_test_clips": int((~test_keep).sum()),
    }
    attributes = {"action": {key: action[key] for key in ("top1", "chance", "ci95", "weight_decay")}}
    for attribute, count in _attribute_classes().items():
        if attribute == "action" or attribute not in fields:
            continue
        result = _one_probe(probe_train, test, train_rows, test_rows, attribute, count)
        attributes[attribute] = {key: result[key] for key in ("top1", "chance", "ci95", "weight_decay")}
    return probe, attributes


def _encode_texts(model: Any, vocab: Any, texts: Sequence[str], max_words: int, device: str,
                  batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Phrases ``[Q, M, D]``, phrase mask ``[Q, M]`` and global embeddings ``[Q, D]`` of ``texts`` (CPU)."""
    ids, mask = vocab.encode_batch(list(texts), max_words)
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                phrases, phrase_mask, embedding = model.encode_text(
                    ids[start:start + batch_size].to(device), mask[start:start + batch_size].to(device))
                parts.append((phrases.float().cpu(), phrase_mask.bool().cpu(), embedding.float().cpu()))
    finally:
        model.train(was_training)
    phrases, phrase_mask, embedding = (torch.cat(values, dim=0) for values in zip(*parts))
    return phrases, phrase_mask, embedding


def _caption_retrieval(model: Any, loss_module: PairLoss, vocab: Any, test: dict[str, Tensor],
                       caption_lists: list[list[str]], several: bool, max_words: int,
                       device: str, fields: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The distinct clean captions query the split's clips; a clip answers every caption it has.

    With one caption per clip (``several`` False) the queries are the embeddings of the clips'
    own captions; with several, the distinct captions are encoded as queries. The same ranking
    is also judged per attribute of ``fields`` (:func:`attribute_retrieval`).
    """
    if several:
        queries, _ = _unique_first([c for texts in caption_lists for c in texts])
        embedded = _encode_texts(model, vocab, queries, max_words, device)
    else:
        queries, first_rows = _unique_first([texts[0] for texts in caption_lists])
        rows = torch.tensor(first_rows, dtype=torch.long)
        embedded = (test["caption_phrases"][rows], test["caption_mask"][rows], test["caption_global"][rows])
    scores = pair_score_matrix(
        loss_module, test["video_tokens"], test["video_global"], *embedded, device=device,
    )  # [clips, queries]
    relevant = torch.tensor([[q in texts for texts in caption_lists] for q in queries], dtype=torch.bool)
    result = _retrieval_with_intervals(scores.T.contiguous(), relevant)
    present = [a for a in PROBE_ATTRIBUTES if a in fields]
    result["attributes"] = attribute_retrieval(scores.T.contiguous(), relevant, {a: test[a] for a in present})
    return result


def _text_to_image(model: Any, loss_module: PairLoss, vocab: Any, test: dict[str, Tensor], max_words: int,
                   device: str) -> dict[str, Any]:
    """"the <colour> <digit>" queries the still clips."""
    from fgmm_lib.data import COLOURS, DIGIT_WORDS

    colours, digits = test["colour"].tolist(), test["digit"].tolist()
    pairs, _ = _unique_first(list(zip(colours, digits)))
    pairs.sort()
    queries = [f"the {COLOURS[c]} {DIGIT_WORDS[d]}" for c, d in pairs]
    scores = pair_score_matrix(
        loss_module, test["still_tokens"], test["still_global"],
        *_encode_texts(model, vocab, queries, max_words, device), device=device,
    )  # [clips, queries]
    relevant = torch.stack([(test["colour"] == c) & (test["digit"] == d) for c, d in pairs])
    return _retrieval_with_intervals(scores.T.contiguous(), relevant)


def _pointing_task(model: Any, loss_module: PairLoss, test: dict[str, Tensor], captions: list[str],
                   params: Any) -> dict[str, Any]:
    """Where the digit word's phrase looks, against the actor's box."""
    frames, size = int(params.frames), int(params.size)
    return pointing_accuracy(
        loss_module, test["video_tokens"], test["caption_phrases"], test["caption_mask"],
        digit_phrase_indices(captions, test["digit"], int(params.max_words)),
        test["boxes"], test["visible"], model.video.grid(frames, size, size), (frames, size, size),
    )


def _skipped_tasks(test_set: Any, loss_module: PairLoss) -> dict[str, str]:
    """The tasks that ``test_set`` lacks the fields for, each with the reason."""
    fields = test_set.fields
    images = int(test_set.params.frames) == 1
    skipped = {}
    if "action" not in fields:
        skipped["probe"] = "needs action labels ('action' in meta.jsonl: fgmm import-ucf101 / import-hmdb51)"
    if "caption" not in fields:
        skipped["t2i" if images else "t2v"] = "needs clean captions ('caption' in meta.jsonl)"
    if images:
        skipped["t2v"] = "needs clips of several frames: this folder holds images (its caption retrieval is t2i)"
    elif not {"digit", "colour"} <= fields:
        skipped["t2i"] = "needs images (a one-frame folder: fgmm import-karpathy) or digit and colour labels"
    if not loss_module.has_attention:
        skipped["pointing"] = "needs attention maps, which the run's loss does not have"
    elif not {"boxes", "digit"} <= fields:
        skipped["pointing"] = "needs boxes and the word that names the boxed object ('boxes' and 'digit' in meta.jsonl)"
    return skipped


class _RepeatFrames:
    """A dataset whose one-frame clips (images) are repeated to ``frames`` frames, as stills are."""

    def __init__(self, dataset: Any, frames: int) -> None:
        self.dataset, self.frames, self.split = dataset, frames, dataset.split

    def __len__(self) -> int:
        return len(self.dataset)

    def get_batch(self, positions: Any) -> dict[str, Tensor]:
        batch = self.dataset.get_batch(positions)
        if self.frames > 1 and batch["video"].shape[2] == 1:
            batch["video"] = batch["video"].expand(-1, -1, self.frames, -1, -1).contiguous()
            batch["boxes"] = batch["boxes"].expand(-1, self.frames, -1)
            batch["visible"] = batch["visible"].expand(-1, self.frames)
        return batch


def _run_compute(run: Path, config: Any) -> tuple[dict[str, Any] | None, bool]:
    """The run's compute record and whether the run finished its epochs (warns when it did not)."""
    compute = read_json(run / COMPUTE) if (run / COMPUTE).is_file() else None
    finished = bool(compute) and compute.get("epochs_done") == config.epochs
    if not finished:
        warnings.warn(f"run {run} did not finish its {config.epochs} epochs (no complete {COMPUTE}): "
                      f"these metrics describe a partial run; resume it with fgmm pretrain --resume", stacklevel=3)
    return compute, finished


def evaluate(
    run: str | Path,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    probe_split: str = "train",
    progress: bool = True,
    batch_size: int = 256,
    device: str | None = None,
    compute_out: str | Path | None = None,
) -> dict[str, Any]:
    """Run every downstream task of STUDY.md section 5 for the run folder ``run`` on ``data``.

    Args:
        run: a pretraining run folder (read with :func:`fgmm_lib.runs.load_run`).
        data: a dataset folder with the run's vocabulary and clip shape: a clean Narrated Digits
            folder (every noise knob at 0) or an imported one (``fgmm import-* --vocab``).
        split: the held-out split that retrieval, pointing and the probe's test use.
        out: if given, the metrics are also written there as JSON (atomically; checked for
            writability before any work). It holds metrics only.
        probe_split: the split the linear probe is trained on; it must differ from ``split``.
        progress: show progress bars.
        batch_size: clips per forward pass.
        device: where the encoders run (default: CUDA if available, else CPU).
        compute_out: if given, the run's compute record (FLOPs, wall time, samples seen) with its
            loss, batch size and seed is written there as JSON, beside the metrics.

    Returns a dict::

        {"run", "data", "loss", "split", "probe_split", "clips", "finished",
         "temperatures": {"attn", "weight"} (the run's tau_a and tau_w, as used for scoring),
         "probe": {"action_top1", "chance", "ci95": {"action_top1": [lo, hi]}, "confusion",
                   "weight_decay", "train_clips", "test_clips", "dropped_train_clips",
                   "dropped_test_clips"},
         "probe_attributes": {"action" | "colour" | "digit": {"top1", "chance", "ci95": [lo, hi],
                                                             "weight_decay"}},
         "t2v": {"R@1", "R@5", "R@10", "median_rank", "mean_rank", "queries", "corpus", "chance": {R@K},
                 "ci95": {R@K: [lo, hi]},
                 "attributes": {"action" | "colour" | "digit": {the same keys but "attributes"}}},
         "t2i": {the keys of t2v but "attributes"},
         "pointing": {"accuracy", "chance", "clips"},
         "skipped": {task: why it did not run}}

    What the encoders learned, per attribute (STUDY.md section 7, "Honest about the regime"):

    - ``probe_attributes``: one linear probe per attribute the folder labels (``action`` always
      with the probe, ``colour`` and ``digit`` where ``meta.jsonl`` has them), the protocol of the
      action probe (:func:`linear_probe` on the global video embeddings, trained on
      ``probe_split``, micro top-1 on the same clean clips of ``split``); chance is 1 / classes
      (8 actions, 8 colours, 10 digits);
    - ``t2v["attributes"]``: the caption queries' ranking of the clips judged on one attribute at
      a time (:func:`attribute_retrieval`): a hit at K for attribute ``a`` is any clip among the
      caption's top K with the caption's value of ``a`` ("the red seven moves left" is answered,
      for ``colour``, by every red clip). R@1 is then the fraction of queries whose best clip has
      the right value; chance is the exact hit rate of a random ranking for that relevance.

    Intervals: ``ci95`` are 95% percentile bootstrap intervals (:func:`bootstrap_interval`,
    :data:`BOOTSTRAP_RESAMPLES` resamples, seed :data:`BOOTSTRAP_SEED`) over the queries for
    retrieval, over the test clips for the probes. They hold the evaluation set's sampling error
    for this one run, not the spread over seeds.

    A task whose fields the folder lacks is None and listed in ``"skipped"`` (pointing needs
    boxes, the probe action labels, ...). Caption retrieval is ``t2v`` on a folder of clips and
    ``t2i`` on a folder of images (one frame per clip, repeated to the run's clip length); every
    caption of a clip (``captions``) is a query it answers. On Narrated Digits, ``t2i`` queries
    "the <colour> <digit>" stills.
    """
    from fgmm_lib.data import ACTIONS, SPLITS

    for name, value in (("split", split), ("probe_split", probe_split)):
        if value not in SPLITS:
            raise ValueError(f"{name} must be one of {SPLITS}, got {value!r}")
    if split == probe_split:
        raise ValueError(f"probe_split and split are both {split!r}: a linear probe trained and tested on the "
                         f"same clips measures memorisation; train it on another split (e.g. train)")
    run, data = Path(run), Path(data)
    out_path = check_writable_file(out, "metrics file") if out is not None else None
    compute_path = check_writable_file(compute_out, "compute file") if compute_out is not None else None
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    model, loss_module, config, vocab = load_run(run)
    run_data = read_json(run / "config.json").get("data_params", {})
    test_set, probe_set = _open_eval_data(data, run, vocab, run_data, split, probe_split)
    skipped = _skipped_tasks(test_set, loss_module)
    if probe_set is not None:
        train_keep, test_keep = _probe_rows(probe_set, test_set, data)
    fields = test_set.fields
    captions = [str(c) for c in test_set.meta["caption"]] if "caption" in fields else []
    caption_lists = [list(c) for c in test_set.meta["captions"]] if "captions" in fields else [[c] for c in captions]
    unknown = sorted({w for texts in caption_lists for c in texts for w in c.lower().split()} - set(vocab.words))
    if unknown:
        warnings.warn(f"the clean captions of {data} use words that the vocabulary of {run} does not know "
                      f"(encoded as unknown): {unknown[:50]}; its pretraining data did not cover them", stacklevel=2)
    compute, finished = _run_compute(run, config)

    device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device_name)
    images = int(test_set.params.frames) == 1
    clip_frames = int(run_data.get("frames") or 1) if images else 0
    stills = "t2i" not in skipped and not images
    test = embed_dataset(model, _RepeatFrames(test_set, clip_frames), batch_size=batch_size, progress=progress,
                         stills=stills)
    max_words = int(test_set.params.max_words)
    temperatures = loss_module.logged_temperatures()
    tasks: dict[str, Any] = {"probe": None, "probe_attributes": None, "t2v": None, "t2i": None, "pointing": None}
    if probe_set is not None:
        probe_train = embed_dataset(model, _RepeatFrames(probe_set, clip_frames), batch_size=batch_size,
                                    progress=progress, stills=False)
        classes = (len(ACTIONS) if "digit" in fields
                   else len(test_set.params.extra.get("classes") or ())
                   or int(max(probe_train["action"].max(), test["action"].max())) + 1)
        tasks["probe"], tasks["probe_attributes"] = _probe_task(probe_train, test, train_keep, test_keep, classes,
                                                                fields)
    caption_task = "t2i" if images else "t2v"
    if caption_task not in skipped:
        tasks[caption_task] = _caption_retrieval(model, loss_module, vocab, test, caption_lists,
                                                 "captions" in fields, max_words, device_name, fields)
    if stills:
        tasks["t2i"] = _text_to_image(model, loss_module, vocab, test, max_words, device_name)
    if "pointing" not in skipped:
        tasks["pointing"] = _pointing_task(model, loss_module, test, captions, test_set.params)
    result: dict[str, Any] = {
        "run": str(run),
        "data": str(data),
        "loss": config.loss,
        "split": split,
        "probe_split": probe_split,
        "clips": len(test_set),
        "finished": finished,
        "temperatures": {"attn": temperatures["attn_temperature"], "weight": temperatures["weight_temperature"]},
        **tasks,
        "skipped": skipped,
    }
    if out_path is not None:
        write_json(out_path, result)
    if compute_path is not None:
        write_json(compute_path, {**(compute or {}), "loss": config.loss, "batch_size": config.batch_size,
                                  "seed": config.seed, "finished": finished})
    return result
