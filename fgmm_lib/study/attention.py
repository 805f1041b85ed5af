"""The attention maps and pointing accuracy of runs (docs/study.md section 6, question 6).

:func:`attention_examples` runs a run's loss module (``attention``, with the run's temperatures)
on some clips. It arranges each clip with :func:`attention_example`, which labels the phrases with
:func:`phrase_labels`, for :func:`fgmm_lib.study.plots.plot_attention_maps`. :func:`pointing_table`
reads the runs' pointing accuracy (docs/study.md section 5) from the metrics files that evaluation
wrote. :func:`mechanism_table` measures how far each run's outer weights are from uniform
(:func:`weight_spread`): whether the down-weighting of noisy pairs is active at all.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from fgmm_lib.data.dataset import NarratedDigits
from fgmm_lib.losses.scores import ATTENTION_AGGREGATIONS
from fgmm_lib.runs.folder import load_run
from fgmm_lib.study.results import DETAILS_DIR, METRICS_DIR
from fgmm_lib.study.tables import flatten_metrics, read_record

# --------------------------------------------------------------------------------------------
# Attention maps of a run (question 6)
# --------------------------------------------------------------------------------------------


def phrase_labels(words: Sequence[str], ngram: int = 3) -> list[str]:
    """Label of each phrase: its n-gram window of words with the centre word in brackets,
    e.g. ``"the [red] seven"`` (the text encoder's phrase m is centred on word m)."""
    left = (ngram - 1) // 2
    right = ngram - 1 - left
    labels = []
    for centre, word in enumerate(words):
        before = list(words[max(0, centre - left):centre])
        after = list(words[centre + 1:centre + 1 + right])
        labels.append(" ".join(before + [f"[{word}]"] + after))
    return labels


def attention_example(video: Any, boxes: Any, visible: Any, maps: Mapping[str, Any], grid: Sequence[int],
                      words: Sequence[str], phrase_mask: Any = None, ngram: int = 3,
                      title: str = "") -> dict[str, Any]:
    """Arrange one clip's attention for :func:`fgmm_lib.study.plots.plot_attention_maps`.

    Args:
        video: float ``[3, T, H, W]`` in [0, 1] (a dataset item's ``"video"``).
        boxes: ``[T, 4]``; visible: ``[T]`` bool.
        maps: the loss module's ``attention(...)`` of the clip's tokens and its text's phrases.
        grid: ``(T', H', W')`` of the token grid (cells in token order: t-major, row, column).
        words: the text's words, one per valid phrase, in order (phrase m is centred on word m).
        phrase_mask: ``[M]`` bool, True = valid phrase (None: every phrase is valid); only valid
            phrases are drawn.
        ngram: the text encoder's phrase window (for the labels).
    """
    clip = np.asarray(video, dtype=float)
    if clip.ndim != 4 or clip.shape[0] != 3:
        raise ValueError(f"video must be [3, T, H, W], got shape {clip.shape}")
    frames = np.clip(np.round(clip.transpose(1, 2, 3, 0) * 255.0), 0, 255).astype(np.uint8)
    grid_frames, grid_height, grid_width = (int(v) for v in grid)
    phrase_weight = np.asarray(maps["phrase_weight"], dtype=float)
    valid = np.arange(len(phrase_weight)) if phrase_mask is None else np.flatnonzero(np.asarray(phrase_mask, dtype=bool))
    if len(valid) != len(words):
        raise ValueError(f"{len(words)} words for {len(valid)} valid phrases: pass one word per valid phrase")
    attention = np.asarray(maps["phrase_attention"], dtype=float)[valid]
    if attention.shape[1] != grid_frames * grid_height * grid_width:
        raise ValueError(f"phrase_attention has {attention.shape[1]} cells, the grid {tuple(grid)} "
                         f"{grid_frames * grid_height * grid_width}")
    return {
        "frames": frames,
        "boxes": np.asarray(boxes, dtype=float),
        "visible": np.asarray(visible, dtype=bool),
        "phrase_attention": attention.reshape(len(valid), grid_frames, grid_height, grid_width),
        "phrase_weight": phrase_weight[valid],
        "phrases": phrase_labels(list(words), ngram),
        "cell_weight": np.asarray(maps["cell_weight"], dtype=float).reshape(grid_frames, grid_height, grid_width),
        "text": " ".join(words),
        "title": title,
    }


def attention_examples(run: str | Path, data: str | Path, clips: Sequence[int], split: str = "test") -> dict[str, Any] | None:
    """The attention of a run's loss on some clips of ``data``, arranged for
    :func:`fgmm_lib.study.plots.plot_attention_maps`; None when the run's loss has no attention.

    Each clip's cell tokens and its narration's phrase tokens go through the run's loss module
    (``loss_module.attention``, with the run's temperatures).

    Returns ``{"run", "loss", "examples", "title"}``.

    Raises:
        ValueError: a clip position outside the split (naming the positions and the split's size).
    """
    import torch

    name = Path(run).name
    model, loss_module, config, vocab = load_run(run)
    if not loss_module.has_attention:
        return None
    dataset = NarratedDigits(data, split=split, vocab=vocab)
    outside = [clip for clip in clips if not 0 <= clip < len(dataset)]
    if outside:
        raise ValueError(f"clips {outside} are outside the {split!r} split of {data} ({len(dataset)} clips)")
    examples = []
    for clip in clips:
        item = dataset[clip]  # its narration: every phrase of it is drawn
        video = torch.as_tensor(item["video"]).float()
        grid = model.video.grid(*video.shape[1:])
        with torch.no_grad():
            cells, _ = model.encode_video(video[None])
            phrases, phrase_mask, _ = model.encode_text(item["tokens"][None], item["token_mask"][None])
            maps = loss_module.attention(cells[0], phrases[0], text_mask=phrase_mask[0])
        words = vocab.decode(item["tokens"][item["token_mask"]])
        examples.append(attention_example(video, item["boxes"], item["visible"], maps, grid, words,
                                          phrase_mask=phrase_mask[0], ngram=config.ngram, title=f"{split} clip {clip}"))
    temperatures = loss_module.logged_temperatures()
    title = (f"{name}: {config.loss} (τa = {temperatures['attn_temperature']:.3g}, "
             f"τw = {temperatures['weight_temperature']:.3g})")
    return {"run": name, "loss": config.loss, "examples": examples, "title": title}


def weight_spread(weights: Any) -> dict[str, float]:
    """How far outer weights are from uniform: for each row of ``weights`` [K, L] (zeros where
    masked, rows summing to 1), the entropy over its nonzero-support entries relative to the uniform
    entropy log(L_v) over its L_v valid entries (1 = uniform, 0 = all weight on one entry), the
    largest weight, and the uniform weight 1 / L_v; each averaged over rows. Rows with a single
    valid entry are left out of the relative entropy (it is 1 by convention there)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[0] == 0:
        raise ValueError(f"weights must be a non-empty [rows, entries] array, got shape {weights.shape}")
    valid = weights > 0
    count = valid.sum(1)
    if (count == 0).any():
        raise ValueError("every row of weights needs a positive entry")
    logs = np.where(valid, np.log(np.where(valid, weights, 1.0)), 0.0)
    entropy = -(weights * logs).sum(1)
    several = count > 1
    relative = entropy[several] / np.log(count[several]) if several.any() else np.array([1.0])
    return {"entropy_relative": float(relative.mean()), "max_weight": float(weights.max(1).mean()),
            "uniform_weight": float((1.0 / count).mean())}


def mechanism_table(runs: Sequence[str | Path], data: str | Path, split: str = "test",
                    clips: int = 256) -> pd.DataFrame:
    """Whether the down-weighting of an attention loss is active: for each run whose loss is of the
    attention form (:data:`fgmm_lib.losses.scores.ATTENTION_AGGREGATIONS`), :func:`weight_spread` of its phrase weights and of its cell weights over the matched
    (clip, narration) pairs of the first ``clips`` clips of ``split``, at the run's temperatures.
    Columns ``run, loss, weights (phrases / cells), entropy_relative, max_weight, uniform_weight``."""
    import torch

    rows = []
    for run in runs:
        model, loss_module, config, vocab = load_run(run)
        if config.loss not in ATTENTION_AGGREGATIONS:  # mean and max weigh every phrase and cell alike
            continue
        dataset = NarratedDigits(data, split=split, vocab=vocab)
        phrase_weights, cell_weights = [], []
        width = None
        for clip in range(min(clips, len(dataset))):
            item = dataset[clip]
            with torch.no_grad():
                cells, _ = model.encode_video(torch.as_tensor(item["video"]).float()[None])
                phrases, phrase_mask, _ = model.encode_text(item["tokens"][None], item["token_mask"][None])
                maps = loss_module.attention(cells[0], phrases[0], text_mask=phrase_mask[0])
            phrase_weights.append(maps["phrase_weight"].numpy())
            cell_weights.append(maps["cell_weight"].numpy())
            width = max(width or 0, len(phrase_weights[-1]))
        padded = np.zeros((len(phrase_weights), width))
        for row, values in enumerate(phrase_weights):
            padded[row, :len(values)] = values
        for what, weights in (("phrases", padded), ("cells", np.stack(cell_weights))):
            rows.append({"run": Path(run).name, "loss": config.loss, "weights": what, **weight_spread(weights)})
    return pd.DataFrame(rows, columns=["run", "loss", "weights", "entropy_relative", "max_weight", "uniform_weight"])


def pointing_table(runs: Sequence[str | Path], metrics_dir: str | Path = METRICS_DIR) -> pd.DataFrame:
    """Pointing accuracy of each run, read from the metrics files that evaluation wrote
    (``metrics_dir/<run>.json``; chance and clip count from ``metrics_dir/details/<run>.json``).
    Runs without pointing (losses without attention) are left out.

    Returns columns run, loss, pointing_accuracy, chance, clips.

    Raises:
        FileNotFoundError: a run has no metrics file (naming it: evaluate the run first).
    """
    folder = Path(metrics_dir)
    rows = []
    for run in runs:
        name = Path(run).name
        path = folder / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"run {name} has no metrics file {path}: evaluate it first")
        details_file = folder.parent / DETAILS_DIR.relative_to(METRICS_DIR.parent) / f"{name}.json"
        details = read_record(details_file) if details_file.is_file() else {}
        row = flatten_metrics(read_record(path), source=str(path), details=details)
        if math.isnan(row["pointing"]):
            continue
        pointing = details.get("pointing") or {}
        rows.append({"run": name, "loss": row["loss"], "pointing_accuracy": row["pointing"],
                     "chance": row.get("pointing_chance", math.nan), "clips": pointing.get("clips")})
    return pd.DataFrame(rows, columns=["run", "loss", "pointing_accuracy", "chance", "clips"])
