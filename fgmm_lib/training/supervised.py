"""The supervised reference: the study's video encoder trained on one label of the clips.

How many samples does the encoder need to learn an attribute (the digit above all) when it is told
the answer? :func:`train_supervised` trains the video encoder with a linear head on ``attribute``
(``digit``, ``colour`` or ``action``) of one folder's clips and tests it every ``eval_every`` samples
on another split (the evaluation data's test split: clean clips of glyphs no training clip uses).
The head reads the final feature map pooled over its cells (``pooling``: ``mean``, as the global
embedding of pretraining does, or ``max``).

It writes ``curve.csv`` (samples, step, train loss and accuracy since the last point, test top-1)
and ``summary.json`` (the config, the final top-1, and the samples at which the test top-1 first
reached each of :data:`TARGETS`, or null).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fgmm_lib.config import config_from_dict
from fgmm_lib.data.dataset import ACTIONS, COLOURS, DIGIT_WORDS, NarratedDigits
from fgmm_lib.io import check_writable_folder, output_lock, write_csv, write_json
from fgmm_lib.models.encoders import VideoEncoder
from fgmm_lib.training.step import apply_fast_path, lr_factor

#: Attributes with a label per clip, and their class counts.
ATTRIBUTES = {"digit": len(DIGIT_WORDS), "colour": len(COLOURS), "action": len(ACTIONS)}
POOLINGS = ("mean", "max")
#: Test top-1 levels whose first crossing the summary records.
TARGETS = (0.5, 0.9)


@dataclass
class SupervisedConfig:
    """One supervised run (simple types only: CLI options and params.yaml map 1:1)."""

    data: str = field(metadata={"help": "Narrated Digits folder to train on"})
    test_data: str = field(metadata={"help": "Narrated Digits folder to test on (same clip shape)"})
    out: str = field(metadata={"help": "folder to write curve.csv and summary.json to"})
    attribute: str = field(default="digit", metadata={"help": f"label to learn, one of {', '.join(ATTRIBUTES)}"})
    train_split: str = field(default="train", metadata={"help": "split of data to train on"})
    test_split: str = field(default="test", metadata={"help": "split of test_data to test on (never train on it)"})
    pooling: str = field(default="mean", metadata={"help": f"pooling of the feature map's cells, one of {', '.join(POOLINGS)}"})
    samples: int = field(default=60000, metadata={"help": "training samples (steps = samples // batch_size)"})
    batch_size: int = field(default=64, metadata={"help": "clips per step"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate (warmup over the first 1/20 of the steps, then cosine)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    width: float = field(default=1.0, metadata={"help": "width multiplier of the video encoder"})
    depth: int = field(default=1, metadata={"help": "separable conv blocks per stage"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and shuffling"})
    eval_every: int = field(default=4000, metadata={"help": "test every this many training samples"})
    fast_path: bool = field(default=True, metadata={"help": "the encoder's fast CPU formulation (TrainConfig.fast_path)"})

    def __post_init__(self) -> None:
        if self.attribute not in ATTRIBUTES:
            raise ValueError(f"SupervisedConfig.attribute must be one of {', '.join(ATTRIBUTES)}, got {self.attribute!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"SupervisedConfig.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        for name in ("samples", "batch_size", "eval_every", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SupervisedConfig.{name} must be a positive integer, got {value!r}")
        if self.samples < self.batch_size:
            raise ValueError(f"SupervisedConfig.samples ({self.samples}) must be at least batch_size ({self.batch_size})")
        for name in ("lr", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"SupervisedConfig.{name} must be a positive number, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SupervisedConfig:
        """Build a config from a mapping; unknown or missing keys raise ValueError naming them."""
        return config_from_dict(cls, values)


class Classifier(nn.Module):
    """The video encoder's feature map, pooled over its cells, then a linear head."""

    def __init__(self, classes: int, width: float, depth: int, pooling: str) -> None:
        super().__init__()
        self.encoder = VideoEncoder(dim=8, width=width, depth=depth)
        self.head = nn.Linear(self.encoder.feature_channels, classes)
        self.pooling = pooling

    def forward(self, video: Tensor) -> Tensor:
        cells = self.encoder.features(video).flatten(2)  # [B, C, cells]
        pooled = cells.mean(dim=2) if self.pooling == "mean" else cells.amax(dim=2)
        return self.head(pooled)


def _labelled(folder: str, split: str, attribute: str, what: str) -> NarratedDigits:
    dataset = NarratedDigits(Path(folder), split=split)
    if attribute not in dataset.fields:
        raise ValueError(f"{what} {folder} has no {attribute!r} labels (its clips carry {', '.join(dataset.fields)})")
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {what} {folder} has no clips")
    return dataset


@torch.no_grad()
def _top1(model: Classifier, dataset: NarratedDigits, attribute: str, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset.get_batch(np.arange(start, min(start + batch_size, len(dataset))))
        correct += int((model(batch["video"]).argmax(1) == batch[attribute]).sum())
    model.train()
    return correct / len(dataset)


def first_crossing(curve: pd.DataFrame, level: float) -> int | None:
    """Samples at the first curve point whose test top-1 reaches ``level`` (None if none does)."""
    reached = curve[curve["test_top1"] >= level]
    return None if reached.empty else int(reached["samples"].iloc[0])


def train_supervised(config: SupervisedConfig, progress: bool = True) -> pd.DataFrame:
    """Train and test as the module docstring says; write ``out/curve.csv`` and ``out/summary.json``;
    return the curve."""
    train_set = _labelled(config.data, config.train_split, config.attribute, "training data")
    test_set = _labelled(config.test_data, config.test_split, config.attribute, "test data")
    if train_set.frames.shape[1:] != test_set.frames.shape[1:]:
        raise ValueError(f"clips of {config.data} ({train_set.frames.shape[1:]}) and {config.test_data} "
                         f"({test_set.frames.shape[1:]}) differ in shape")
    if len(train_set) < config.batch_size:
        raise ValueError(f"split {config.train_split!r} of {config.data} has {len(train_set)} clips, fewer than "
                         f"batch_size {config.batch_size}")
    out = check_writable_folder(config.out)
    with output_lock(out):
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        model = Classifier(ATTRIBUTES[config.attribute], config.width, config.depth, config.pooling)
        apply_fast_path(config.fast_path, model.encoder)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      fused=config.fast_path or None)
        steps = config.samples // config.batch_size
        warmup = max(1, round(0.05 * steps))
        rows = [{"samples": 0, "step": 0, "train_loss": math.nan, "train_top1": math.nan,
                 "test_top1": _top1(model, test_set, config.attribute), "seconds": 0.0}]
        order, cursor, losses, hits, seen, start = rng.permutation(len(train_set)), 0, [], 0, 0, time.perf_counter()
        for step in tqdm(range(steps), desc=f"supervised {config.attribute}", unit="step", disable=not progress):
            if cursor + config.batch_size > len(order):
                order, cursor = rng.permutation(len(train_set)), 0
            batch = train_set.get_batch(order[cursor:cursor + config.batch_size])
            cursor += config.batch_size
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(step, steps, warmup)
            logits = model(batch["video"])
            loss = nn.functional.cross_entropy(logits, batch[config.attribute])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            hits += int((logits.argmax(1) == batch[config.attribute]).sum())
            seen += config.batch_size
            samples = (step + 1) * config.batch_size
            if samples // config.eval_every > (samples - config.batch_size) // config.eval_every or step == steps - 1:
                rows.append({"samples": samples, "step": step + 1, "train_loss": float(np.mean(losses)),
                             "train_top1": hits / seen, "test_top1": _top1(model, test_set, config.attribute),
                             "seconds": time.perf_counter() - start})
                losses, hits, seen = [], 0, 0
        curve = pd.DataFrame(rows)
        summary = {"config": dataclasses.asdict(config), "final_test_top1": float(curve["test_top1"].iloc[-1]),
                   "best_test_top1": float(curve["test_top1"].max()), "chance": 1.0 / ATTRIBUTES[config.attribute],
                   "train_clips": len(train_set), "test_clips": len(test_set),
                   "samples_to": {str(level): first_crossing(curve, level) for level in TARGETS}}
        write_csv(out / "curve.csv", curve)
        write_json(out / "summary.json", summary)
    return curve
