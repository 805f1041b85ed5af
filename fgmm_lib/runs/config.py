"""The configuration of a pretraining run: :class:`TrainConfig` and what is derived from it.

- :class:`TrainConfig`: every field of a run in simple types, checked when it is built. CLI options
  and ``params.yaml``'s ``train`` section map to it 1:1.
- :data:`RESUMABLE_CHANGES`: the fields that a resumed run may change. :func:`complete_train_dict`
  adds to a saved config the defaults of fields added since it was written.
- :data:`LR_SCALINGS` and :func:`peak_lr`: the peak learning rate, scaled with the batch size
  (``lr_scaling``).
- :data:`GATHERS`: the ways to gather embeddings across ranks (:mod:`fgmm_lib.training.distributed`).
- :func:`loss_from_config`: the run's loss module (:func:`fgmm_lib.losses.modules.build_loss`).
- :func:`check_backend`: refuses, before a run writes anything, a backend this machine cannot run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from fgmm_lib.config import config_from_dict, field_types
from fgmm_lib.losses.modules import PairLoss, build_loss
from fgmm_lib.losses.scores import BACKENDS, LOSSES
from fgmm_lib.models.encoders import ModelConfig

#: Fields that may differ between a run and its resumption: they change where the data is read
#: from, how it is loaded and when the run stops, not what it computes.
#: A run may also continue on another number of processes or with the other gather: the loss of a
#: global batch is the same, so it goes on exactly (equal within float tolerance).
#: The validation fields change only what is measured along the way, not the weights.
RESUMABLE_CHANGES = ("data", "out", "max_steps", "num_workers", "device", "backend", "fast_path", "nproc",
                     "gather", "val_data", "val_split", "val_points", "val_every")

#: Rules that scale the peak learning rate with the batch size: exponent of batch / reference.
LR_SCALINGS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}

#: Ways to gather embeddings across ranks (:mod:`fgmm_lib.training.distributed`).
GATHERS = ("all", "local")


@dataclass
class TrainConfig:
    """Everything that defines a pretraining run (simple types only: CLI options and params.yaml map 1:1)."""

    data: str = field(metadata={"help": "Narrated Digits folder; its 'train' split is used"})
    out: str = field(metadata={"help": "run folder to write (config, log, checkpoint, compute)"})
    loss: str = field(default="attention", metadata={"help": f"pretraining loss, one of {', '.join(LOSSES)}"})
    batch_size: int = field(default=64, metadata={"help": "clips per step (incomplete last batch dropped)"})
    epochs: int = field(default=10, metadata={"help": "passes over the train split"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and shuffling"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (weights only, not biases, norms or temperatures)"})
    warmup_fraction: float = field(default=0.1, metadata={"help": "fraction of all steps with linear warmup, then cosine decay"})
    dim: int = field(default=128, metadata={"help": "embedding size D of tokens, phrases and globals"})
    width: float = field(default=1.0, metadata={"help": "width multiplier of the video encoder"})
    depth: int = field(default=1, metadata={"help": "separable conv blocks per stage of the video encoder"})
    ngram: int = field(default=3, metadata={"help": "phrase window of the text encoder, in words"})
    temperature: float = field(default=0.07, metadata={"help": "initial InfoNCE / MIL-NCE temperature (learned)"})
    attn_temperature: float = field(default=0.1, metadata={"help": "tau_a of the attention aggregations "
                                                             "(attention, attention_floor, attention_gate, attention_uniform)"})
    weight_temperature: float = field(default=0.1, metadata={"help": "tau_w of the attention aggregations "
                                                               "(attention, attention_floor, attention_gate, attention_uniform)"})
    learn_attention_temperatures: bool = field(default=False, metadata={"help": "learn tau_a and tau_w (from the values above)"})
    neighbours: int = field(default=1, metadata={"help": "MIL-NCE: neighbouring narrations per side as extra candidates"})
    backend: str = field(default="auto", metadata={"help": f"pair-score backend, one of {', '.join(BACKENDS)}"})
    fast_path: bool = field(default=False, metadata={"help": "the same function, faster on a CPU: temporal convs as 2D "
                                                   "convs, GroupNorm+ReLU in one C kernel, the fused AdamW, the loss's "
                                                   "single block kept, freed memory kept for reuse (float32 rounding "
                                                   "differs; docs/benchmarks.md)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if available), cpu, cuda or cuda:N"})
    num_workers: int = field(default=0, metadata={"help": "background processes that assemble batches (0 = none)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps, schedule unchanged (0 = no limit)"})
    nproc: int = field(default=1, metadata={"help": "data-parallel processes (torchrun on this machine); batch_size is the global batch"})
    gather: str = field(default="all", metadata={"help": f"global negatives across processes, one of {', '.join(GATHERS)} (local: each scores its own rows)"})
    lr_scaling: str = field(default="none", metadata={"help": f"peak lr = lr x (batch_size / reference_batch_size)^p, one of {', '.join(LR_SCALINGS)} (p = 0, 0.5, 1)"})
    reference_batch_size: int = field(default=64, metadata={"help": "the batch size at which lr is the peak learning rate (lr_scaling)"})
    warmup_samples: int = field(default=0, metadata={"help": "warmup over this many samples, round(warmup_samples / batch_size) steps (0 = warmup_fraction)"})
    val_data: str = field(default="", metadata={"help": "clean dataset folder with the run's vocabulary to validate on during training (empty = none)"})
    val_split: str = field(default="val", metadata={"help": "split of val_data to validate on (never test)"})
    val_points: int = field(default=10, metadata={"help": "validations evenly spaced over the schedule, besides the one before training"})
    val_every: int = field(default=0, metadata={"help": "validate every this many samples instead of at val_points points (0 = val_points)"})

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a mapping (params.yaml, config.json, CLI options).

        Unknown keys and missing required keys raise ValueError naming them; numbers given as
        strings (as some YAML writers produce for ``2e-3``) are converted; bad values raise
        ValueError naming the field (see :mod:`fgmm_lib.config`).
        """
        return config_from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The encoders' config for a vocabulary of ``vocab_size`` words."""
        return ModelConfig(vocab_size=vocab_size, dim=self.dim, width=self.width, depth=self.depth, ngram=self.ngram)


def _validate(config: TrainConfig) -> None:
    def fail(name: str, requirement: str) -> None:
        raise ValueError(f"TrainConfig.{name} must be {requirement}, got {getattr(config, name)!r}")

    for name, kind in field_types(TrainConfig).items():
        value = getattr(config, name)
        if kind is bool and not isinstance(value, bool):
            fail(name, "a bool")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            fail(name, "an int")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
            fail(name, "a finite number")
        if kind is str and not isinstance(value, str):
            fail(name, "a string")
    if not config.data:
        fail("data", "a dataset folder")
    if not config.out:
        fail("out", "a run folder")
    if config.loss not in LOSSES:
        fail("loss", f"one of {', '.join(LOSSES)}")
    if config.backend not in BACKENDS:
        fail("backend", f"one of {', '.join(BACKENDS)}")
    if config.gather not in GATHERS:
        fail("gather", f"one of {', '.join(GATHERS)}")
    if config.batch_size < 2:
        fail("batch_size", ">= 2 (contrastive losses need negatives)")
    for name in ("epochs", "dim", "depth", "ngram", "nproc"):
        if getattr(config, name) < 1:
            fail(name, ">= 1")
    for name in ("seed", "neighbours", "num_workers", "max_steps"):
        if getattr(config, name) < 0:
            fail(name, ">= 0")
    for name in ("lr", "width", "temperature", "attn_temperature", "weight_temperature"):
        if not getattr(config, name) > 0:
            fail(name, "> 0")
    if config.weight_decay < 0:
        fail("weight_decay", ">= 0")
    if not 0 <= config.warmup_fraction < 1:
        fail("warmup_fraction", "in [0, 1)")
    if config.lr_scaling not in LR_SCALINGS:
        fail("lr_scaling", f"one of {', '.join(LR_SCALINGS)}")
    if config.reference_batch_size < 1:
        fail("reference_batch_size", ">= 1")
    for name in ("warmup_samples", "val_every"):
        if getattr(config, name) < 0:
            fail(name, ">= 0")
    if config.val_points < 1:
        fail("val_points", ">= 1")
    if config.val_split == "test":
        fail("val_split", "a split other than 'test' (the test split is read only by the final evaluation)")
    if config.val_split not in ("train", "val"):
        fail("val_split", "'val' or 'train'")
    if config.device != "auto":
        try:
            torch.device(config.device)
        except (RuntimeError, ValueError):
            fail("device", "auto, cpu, cuda or cuda:N")


def loss_from_config(config: TrainConfig) -> PairLoss:
    """The loss module of a run (:func:`fgmm_lib.losses.modules.build_loss` with the config's values)."""
    return build_loss(config.loss, temperature=config.temperature, attn_temperature=config.attn_temperature,
                      weight_temperature=config.weight_temperature,
                      learn_attention_temperatures=config.learn_attention_temperatures, backend=config.backend)


def check_backend(config: TrainConfig) -> None:
    """Refuse (ValueError, one line) a pair-score backend that cannot run here, before any work.

    ``"triton"`` needs the ``triton`` package and a CUDA device: ``device`` cuda, or auto on a machine
    with CUDA (on the CPU, only with ``TRITON_INTERPRET=1``, Triton's interpreter, which the tests use).
    A config is not refused when it is only read (a run trained on a GPU is evaluated anywhere).
    """
    if config.backend != "triton":
        return
    if importlib.util.find_spec("triton") is None:
        raise ValueError("TrainConfig.backend 'triton' needs the triton package (pip install 'fgmm_lib[triton]'); "
                         "use backend auto or chunked")
    wants_cuda = config.device == "auto" or torch.device(config.device).type == "cuda"
    interpreted = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    if not (wants_cuda and torch.cuda.is_available()) and not interpreted:
        where = ("this machine has no CUDA device" if not torch.cuda.is_available()
                 else f"TrainConfig.device is {config.device!r}")
        raise ValueError(f"TrainConfig.backend 'triton' needs a CUDA device, but {where}; "
                         f"use backend auto or chunked (auto picks the fused kernel on CUDA)")


def peak_lr(config: TrainConfig) -> float:
    """The peak learning rate of a run: ``lr x (batch_size / reference_batch_size) ** p`` with p of
    ``lr_scaling`` (0 for none, 0.5 for sqrt, 1 for linear)."""
    return config.lr * (config.batch_size / config.reference_batch_size) ** LR_SCALINGS[config.lr_scaling]


def complete_train_dict(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved training config (config.json, a checkpoint) with the defaults of the fields added
    since it was written, so that a run of an older version compares equal to its own config."""
    defaults = {spec.name: spec.default for spec in dataclasses.fields(TrainConfig)
                if spec.default is not dataclasses.MISSING}
    return {**defaults, **saved}
