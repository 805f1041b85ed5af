"""Pretraining of both encoders from scratch (STUDY.md section 3), with checkpoints and resume.

A run folder holds:

- ``config.json``: the resolved :class:`TrainConfig`, the :class:`~fgmm_lib.models.ModelConfig`,
  the vocabulary fingerprint and the schedule (steps per epoch, total steps).
- ``vocab.json``: the vocabulary the run was trained with (a copy of the data's).
- ``log.jsonl``: one row per optimisation step (step, epoch, loss, temperatures, lr, samples/s,
  cumulative wall time).
- ``checkpoint.pt``: model, loss module, optimiser, scheduler, every RNG state and the position in
  the schedule; written atomically at the end of every epoch (and where ``max_steps`` stops).
- ``compute.json``: FLOPs of one training step (``torch.utils.flop_counter``), total FLOPs, wall
  time and samples seen, the peak learning rate and the warmup steps.
- ``curves.csv`` (with ``val_data``): text to video retrieval on the validation split at points of
  the schedule (:mod:`fgmm_lib.curves`).

The peak learning rate follows the batch size by a stated rule (``lr_scaling``): ``lr`` at
``reference_batch_size``, times the ratio of batch sizes (``linear``) or its square root
(``sqrt``). ``warmup_samples`` fixes the warmup in samples, so every batch size warms up over the
same data (``warmup_fraction`` of the steps otherwise).

Validation (``val_data``) embeds the validation split with the current weights in eval mode and
scores it exactly as :func:`fgmm_lib.evaluate.evaluate` scores the test split (the distinct clean
captions query the clips; every clip with that caption is a correct answer; R@1/5/10). It runs
before the first step and after the steps :func:`validation_steps` lists, on rank 0 only, and
leaves every random state as it found it. Its time is not counted in the training wall time. The
test split is never read during training.

On the CPU a run is bitwise reproducible from its seed, and a run resumed from a checkpoint ends
with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from fgmm_lib.config import config_from_dict, field_types
from fgmm_lib.curves import CURVE_COLUMNS, config_fingerprint
from fgmm_lib.distributed import GATHERS, World, close_world, gathered_loss, init_world, world_size_from_env
from fgmm_lib.losses import BACKENDS, LOSSES, PairLoss, build_loss
from fgmm_lib.models import DualEncoder, ModelConfig
from fgmm_lib.runs import (CHECKPOINT, CHECKPOINT_FORMAT, COMPUTE, CONFIG, CURVES, LOG, RUN_FILES, VOCAB,
                           check_writable_folder, clean_leftovers, is_run_folder, load_checkpoint, mismatches,
                           write_atomic, write_json)

__all__ = [
    "TrainConfig",
    "pretrain",
    "loss_from_config",
    "batch_loss",
    "encode_batch",
    "lr_factor",
    "peak_lr",
    "warmup_steps",
    "validation_steps",
    "complete_train_dict",
    "LR_SCALINGS",
    "CHECKPOINT",
    "CONFIG",
    "LOG",
    "COMPUTE",
    "VOCAB",
]


#: Fields that may differ between a run and its resumption: they change where the data is read
#: from, how it is loaded and when the run stops, not what it computes.
#: A run may also continue on another number of processes or with the other gather: the loss of a
#: global batch is the same, so it goes on exactly (equal within float tolerance).
#: The validation fields change only what is measured along the way, not the weights.
RESUMABLE_CHANGES = ("data", "out", "max_steps", "num_workers", "device", "backend", "nproc", "gather",
                     "val_data", "val_split", "val_points", "val_every")

#: Rules that scale the peak learning rate with the batch size: exponent of batch / reference.
LR_SCALINGS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}

#: Keys of the batch that the training step moves to the device.
_BATCH_KEYS = ("video", "tokens", "token_mask", "candidate_tokens", "candidate_mask")


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
                                                             "(attention, attention_floor, attention_gate)"})
    weight_temperature: float = field(default=0.1, metadata={"help": "tau_w of the attention aggregations "
                                                               "(attention, attention_floor, attention_gate)"})
    learn_attention_temperatures: bool = field(default=False, metadata={"help": "learn tau_a and tau_w (from the values above)"})
    neighbours: int = field(default=1, metadata={"help": "MIL-NCE: neighbouring narrations per side as extra candidates"})
    backend: str = field(default="auto", metadata={"help": f"pair-score backend, one of {', '.join(BACKENDS)}"})
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
    """The loss module of a run (:func:`fgmm_lib.losses.build_loss` with the config's values)."""
    return build_loss(config.loss, temperature=config.temperature, attn_temperature=config.attn_temperature,
                      weight_temperature=config.weight_temperature,
                      learn_attention_temperatures=config.learn_attention_temperatures, backend=config.backend)


def batch_loss(model: DualEncoder, loss_module: PairLoss, batch: dict[str, Tensor],
               mixed_precision: bool = False) -> Tensor:
    """The training loss of one batch (keys of NarratedDigits.get_batch, already on the device).

    The encoders run under bf16 autocast when ``mixed_precision`` is set (CUDA); the loss is
    always computed in float32. A loss that ``needs_candidates`` (MIL-NCE) gets the K candidate
    narrations of every clip.
    """
    return loss_of_outputs(loss_module, encode_batch(model, loss_module, batch, mixed_precision))


def loss_of_outputs(loss_module: PairLoss, outputs: dict[str, Tensor]) -> Tensor:
    """The loss of what :func:`encode_batch` returned."""
    if loss_module.needs_candidates:
        return loss_module(outputs["video_global"], outputs["text_global"])
    return loss_module(outputs["video_tokens"], outputs["video_global"], outputs["text_tokens"],
                       outputs["text_global"], text_mask=outputs["text_mask"])


def encode_batch(model: DualEncoder, loss_module: PairLoss, batch: dict[str, Tensor],
                 mixed_precision: bool = False) -> dict[str, Tensor]:
    """What the loss of a batch takes, in float32: ``video_tokens``, ``video_global``, ``text_global``
    (``[B, K, D]`` candidates when the loss ``needs_candidates``, else ``[B, D]`` with ``text_tokens``
    and ``text_mask``)."""
    device_type = batch["video"].device.type
    autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if mixed_precision
                else contextlib.nullcontext())
    with autocast:
        video_tokens, video_global = model.encode_video(batch["video"])
        if loss_module.needs_candidates:
            tokens, mask = batch["candidate_tokens"], batch["candidate_mask"]
            size, candidates, words = tokens.shape
            _, _, text_global = model.encode_text(tokens.reshape(size * candidates, words),
                                                  mask.reshape(size * candidates, words))
        else:
            phrases, phrase_mask, text_global = model.encode_text(batch["tokens"], batch["token_mask"])
    outputs = {"video_tokens": video_tokens.float(), "video_global": video_global.float()}
    if loss_module.needs_candidates:
        outputs["text_global"] = text_global.float().reshape(size, candidates, -1)
    else:
        outputs.update(text_tokens=phrases.float(), text_global=text_global.float(), text_mask=phrase_mask)
    return outputs


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier before optimisation step ``step`` (0-based): linear warmup, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def peak_lr(config: TrainConfig) -> float:
    """The peak learning rate of a run: ``lr x (batch_size / reference_batch_size) ** p`` with p of
    ``lr_scaling`` (0 for none, 0.5 for sqrt, 1 for linear)."""
    return config.lr * (config.batch_size / config.reference_batch_size) ** LR_SCALINGS[config.lr_scaling]


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """Warmup steps of a run of ``total_steps``: ``round(warmup_samples / batch_size)`` when
    ``warmup_samples`` is set (the same samples at every batch size), else
    ``round(warmup_fraction x total_steps)``; at most ``total_steps``."""
    if config.warmup_samples > 0:
        return min(total_steps, int(round(config.warmup_samples / config.batch_size)))
    return int(round(config.warmup_fraction * total_steps))


def validation_steps(config: TrainConfig, total_steps: int) -> list[int]:
    """The steps after which a run validates (0 = before the first step), in order.

    With ``val_every`` samples: the first step at or past every multiple of ``val_every`` samples,
    and the last step. Else ``val_points`` points evenly spaced over the schedule:
    ``round(k x total_steps / val_points)`` for k = 1..val_points. Empty without ``val_data``. The
    points depend on the schedule only (not on ``max_steps``), so a stopped run is a prefix of the
    full one.
    """
    if not config.val_data:
        return []
    if config.val_every > 0:
        samples = range(config.val_every, total_steps * config.batch_size + 1, config.val_every)
        points = {-(-sample // config.batch_size) for sample in samples}
    else:
        points = {int(round(k * total_steps / config.val_points)) for k in range(1, config.val_points + 1)}
    return sorted({0, total_steps} | {point for point in points if 0 < point <= total_steps})


def complete_train_dict(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved training config (config.json, a checkpoint) with the defaults of the fields added
    since it was written, so that a run of an older version compares equal to its own config."""
    defaults = {spec.name: spec.default for spec in dataclasses.fields(TrainConfig)
                if spec.default is not dataclasses.MISSING}
    return {**defaults, **saved}


class _Schedule:
    """The LR lambda as an object, so that the scheduler's state_dict records its parameters."""

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps)


def _parameter_groups(model: nn.Module, loss_module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear / embedding weights only; none on biases, norms, temperatures."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            is_weight = name == "weight" and not isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm3d))
            (decay if is_weight else no_decay).append(parameter)
    no_decay.extend(loss_module.parameters())
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device is {name!r} but CUDA is not available")
    return device


# ---------------------------------------------------------------- files


def _prepare_run_folder(run: Path, resume: bool) -> None:
    """Check the run folder before any training: a new or empty folder, or (with ``resume``) a run
    folder with a checkpoint; writable. Leftovers of a killed earlier write are removed."""
    if run.exists() and not run.is_dir():
        raise ValueError(f"TrainConfig.out {run} exists and is not a folder")
    checkpoint = run / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise FileNotFoundError(
            f"cannot resume: run folder {run} has no {CHECKPOINT}; start it without resume "
            f"(it is written at the end of every epoch)"
        )
    if not resume and checkpoint.is_file():
        raise ValueError(
            f"run folder {run} already holds a run ({checkpoint}); resume it with resume=True "
            f"(fgmm pretrain --resume) or choose another folder for TrainConfig.out"
        )
    if run.is_dir():
        clean_leftovers(run)
        foreign = sorted(entry.name for entry in run.iterdir() if entry.name not in RUN_FILES)
        if foreign and not resume:
            raise ValueError(
                f"TrainConfig.out {run} is not empty and is not a run folder (it holds {', '.join(foreign[:5])}); "
                f"a run is written only into a new or empty folder, or resumed in its own folder")
        if resume and not is_run_folder(run):
            raise ValueError(f"cannot resume: {run} has a {CHECKPOINT} but no run {CONFIG}")
    check_writable_folder(run, "TrainConfig.out")


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything after it is dropped too
    return rows


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the rows of steps <= ``last_step`` (those the checkpoint covers)."""
    rows = [row for row in _read_log(path) if int(row.get("step", 0)) <= last_step]
    write_atomic(path, lambda tmp: tmp.write_text("".join(json.dumps(row) + "\n" for row in rows)))


def _rng_states(shuffle_state: Tensor) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]), "cached": float(numpy_state[4])},
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "shuffle": shuffle_state,
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------- training


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on the CPU (cheap there), restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.benchmark = previous_benchmark


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    non_blocking = device.type == "cuda"
    return {key: torch.as_tensor(batch[key]).to(device, non_blocking=non_blocking)
            for key in _BATCH_KEYS if key in batch}


class _Batches(torch.utils.data.Dataset):
    """One item per batch of positions, assembled with the dataset's vectorised get_batch."""

    def __init__(self, dataset: Any, batches: list[np.ndarray]) -> None:
        self.dataset = dataset
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.dataset.get_batch(self.batches[index])
        return {key: batch[key] for key in _BATCH_KEYS if key in batch}


def _iterate_batches(dataset: Any, batches: list[np.ndarray], num_workers: int, pin_memory: bool,
                     seed: int) -> Iterator[dict[str, Any]]:
    if num_workers == 0:
        for positions in batches:
            yield dataset.get_batch(positions)
        return
    loader = torch.utils.data.DataLoader(
        _Batches(dataset, batches), batch_size=None, shuffle=False, num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
    )
    yield from loader


def _count_flops(step: Any) -> tuple[Any, int]:
    """Run ``step()`` under FlopCounterMode; return its result and the FLOPs counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = step()
    return result, int(counter.get_total_flops())


@dataclass
class _Plan:
    clips: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    stop_step: int
    peak_lr: float


@dataclass
class _Validation:
    """The validation split of a run and what its retrieval needs; ``rows`` is the curve so far."""

    dataset: Any
    vocab: Any
    caption_lists: list[list[str]]
    several: bool
    max_words: int
    steps: frozenset[int]
    run: str
    fingerprint: str
    steps_per_epoch: int
    batch_size: int
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _State:
    """Everything a run carries from step to step (what a checkpoint saves)."""

    model: DualEncoder
    loss_module: PairLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    shuffle: torch.Generator
    epoch_shuffle_state: Tensor
    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    wall_before: float = 0.0
    #: Seconds spent validating before this session (not part of wall_before).
    val_wall_before: float = 0.0
    last_checkpoint_step: int | None = None
    world: World = field(default_factory=World)
    #: The loss of this rank's slice of a batch, under DistributedDataParallel (None on one process).
    parallel: nn.Module | None = None


class _RankLoss(nn.Module):
    """This rank's share of the global-batch loss, as one module that DistributedDataParallel wraps."""

    def __init__(self, model: DualEncoder, loss_module: PairLoss, world: World, gather: str,
                 mixed_precision: bool) -> None:
        super().__init__()
        self.model, self.loss_module = model, loss_module
        self.world, self.gather, self.mixed_precision = world, gather, mixed_precision

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        outputs = encode_batch(self.model, self.loss_module, batch, self.mixed_precision)
        return gathered_loss(self.loss_module, outputs, self.world, self.gather)


def _open_data(config: TrainConfig) -> Any:
    """The train split of ``config.data``; a vocabulary that lacks words of its narrations or a batch
    larger than the split raises ValueError."""
    from fgmm_lib.data import NarratedDigits

    dataset = NarratedDigits(config.data, split="train", neighbours=config.neighbours)
    unknown = dataset.unknown_words("narration")
    if unknown:
        raise ValueError(f"{Path(config.data) / VOCAB} lacks {len(unknown)} word(s) of the train narrations of "
                         f"{config.data} ({', '.join(unknown[:8])}): they would all train as <unk>; the vocabulary "
                         f"does not belong to this data (regenerate it, or build it from the train narrations)")
    if config.batch_size > len(dataset):
        raise ValueError(f"TrainConfig.batch_size {config.batch_size} is larger than the train split of "
                         f"{config.data} ({len(dataset)} clips); choose batch_size <= {len(dataset)}")
    return dataset


def _plan_schedule(config: TrainConfig, clips: int) -> _Plan:
    steps_per_epoch = clips // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    stop_step = total_steps if config.max_steps == 0 else min(total_steps, config.max_steps)
    return _Plan(clips, steps_per_epoch, total_steps, warmup_steps(config, total_steps), stop_step, peak_lr(config))


def _open_validation(config: TrainConfig, train_set: Any, plan: _Plan, fingerprint: str) -> _Validation | None:
    """The validation split of ``config.val_data``, checked against the training data (same
    vocabulary, same clip shape, clean captions, not empty); None without ``val_data``."""
    if not config.val_data:
        return None
    from fgmm_lib.data import NarratedDigits, Vocabulary

    data = Path(config.val_data)
    vocab_path = data / VOCAB
    if not data.is_dir():
        raise FileNotFoundError(f"TrainConfig.val_data {data} does not exist")
    if not vocab_path.is_file():
        raise FileNotFoundError(f"TrainConfig.val_data {data} has no vocabulary file {vocab_path}")
    found, expected = Vocabulary.load(vocab_path).fingerprint(), train_set.vocab.fingerprint()
    if found != expected:
        raise ValueError(f"{vocab_path} is another vocabulary than that of the training data {config.data} "
                         f"(fingerprints {found[:12]}... vs {expected[:12]}...); generate the validation data with "
                         f"--vocab {Path(config.data) / VOCAB}")
    dataset = NarratedDigits(data, split=config.val_split, vocab=train_set.vocab)
    for key in ("frames", "size"):
        given, trained = dataset.params.to_dict().get(key), train_set.params.to_dict().get(key)
        if given != trained:
            raise ValueError(f"{data / 'params.json'}: {key}={given} but the training data {config.data} has "
                             f"{key}={trained}; validate on clips of the same shape")
    if len(dataset) == 0:
        raise ValueError(f"split {config.val_split!r} of {data} has no clips to validate on")
    fields = dataset.fields
    if "captions" in fields:
        caption_lists = [[str(c) for c in texts] for texts in dataset.meta["captions"]]
    elif "caption" in fields:
        caption_lists = [[str(c)] for c in dataset.meta["caption"]]
    else:
        raise ValueError(f"split {config.val_split!r} of {data} has no clean captions to query its clips with")
    return _Validation(dataset, train_set.vocab, caption_lists, "captions" in fields, int(dataset.params.max_words),
                       frozenset(validation_steps(config, plan.total_steps)), Path(config.out).name,
                       config_fingerprint(config.to_dict(), fingerprint, ignore=RESUMABLE_CHANGES),
                       plan.steps_per_epoch, config.batch_size)


def _validation_row(validation: _Validation, state: _State, device: torch.device, wall_s: float) -> dict[str, Any]:
    """Text to video retrieval on the validation split with the current weights, as the test
    evaluation scores it; every random state is left as it was. Returns the curve row."""
    from fgmm_lib.evaluate import _caption_retrieval, embed_dataset

    saved = _rng_states(torch.empty(0))
    try:
        embedded = embed_dataset(state.model, validation.dataset, progress=False, stills=False)
        metrics = _caption_retrieval(state.model, state.loss_module, validation.vocab, embedded,
                                     validation.caption_lists, validation.several, validation.max_words, str(device))
    finally:
        _set_rng_states(saved)
    return {"run": validation.run, "config_fingerprint": validation.fingerprint,
            "samples_seen": state.step * validation.batch_size, "step": state.step,
            "epoch": state.step / validation.steps_per_epoch, "val_t2v_r1": metrics["R@1"],
            "val_t2v_r5": metrics["R@5"], "val_t2v_r10": metrics["R@10"], "wall_s": wall_s}


def _write_curves(run: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(CURVE_COLUMNS))
    write_atomic(run / CURVES, lambda tmp: frame.to_csv(tmp, index=False))


def _kept_curve_rows(run: Path, last_step: int) -> list[dict[str, Any]]:
    """The curve rows of steps <= ``last_step`` (those the checkpoint covers)."""
    import pandas as pd

    if not (run / CURVES).is_file():
        return []
    frame = pd.read_csv(run / CURVES, dtype={"run": str, "config_fingerprint": str})
    return frame[frame["step"] <= last_step].to_dict("records")


def _checkpoint_to_resume(run: Path, config: TrainConfig, fingerprint: str, data_params: dict[str, Any]) -> dict[str, Any]:
    """The run's checkpoint, after checking that the config, vocabulary and data are the run's."""
    checkpoint = load_checkpoint(run / CHECKPOINT)
    differences = mismatches(complete_train_dict(checkpoint["train_config"]), config.to_dict(),
                             ignore=RESUMABLE_CHANGES)
    if differences:
        raise ValueError(f"cannot resume {run}: the config differs from the run's in "
                         f"{'; '.join(differences)} (given vs saved)")
    if checkpoint["vocab_fingerprint"] != fingerprint:
        raise ValueError(f"cannot resume {run}: {config.data} has another vocabulary than the run "
                         f"(fingerprint {fingerprint[:12]}... vs {checkpoint['vocab_fingerprint'][:12]}...)")
    differences = mismatches(checkpoint["data_params"], data_params)
    if differences:
        raise ValueError(f"cannot resume {run}: {config.data} was generated with other parameters than the "
                         f"run's data: {'; '.join(differences)} (given vs saved)")
    return checkpoint


def _build_state(config: TrainConfig, model_config: ModelConfig, plan: _Plan, device: torch.device,
                 checkpoint: dict[str, Any] | None, world: World) -> _State:
    """Model, loss, optimiser and schedule from the seed, or restored from ``checkpoint``; on more
    than one process, wrapped in DistributedDataParallel."""
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = DualEncoder(model_config).to(device)
    loss_module = loss_from_config(config).to(device)
    optimizer = torch.optim.AdamW(_parameter_groups(model, loss_module, config.weight_decay), lr=plan.peak_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(plan.total_steps, plan.warmup_steps))
    shuffle = torch.Generator().manual_seed(config.seed)
    state = _State(model, loss_module, optimizer, scheduler, shuffle, shuffle.get_state())
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        loss_module.load_state_dict(checkpoint["loss"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_states(checkpoint["rng"])
        state.epoch_shuffle_state = checkpoint["rng"]["shuffle"]
        state.epoch, state.step_in_epoch, state.step = (checkpoint["epoch"], checkpoint["step_in_epoch"],
                                                        checkpoint["step"])
        state.wall_before = float(checkpoint["wall_s"])
        state.val_wall_before = float(checkpoint.get("val_wall_s", 0.0))
        state.last_checkpoint_step = state.step
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        state.world = world
        rank_loss = _RankLoss(model, loss_module, world, config.gather, mixed_precision=device.type == "cuda")
        # find_unused_parameters: a loss leaves some heads unused (the global projections of "max")
        state.parallel = DistributedDataParallel(rank_loss, device_ids=[device] if device.type == "cuda" else None,
                                                 find_unused_parameters=True)
    return state


def _save_checkpoint(run: Path, state: _State, run_info: dict[str, Any], shuffle_state: Tensor, wall_s: float,
                     val_wall_s: float = 0.0) -> None:
    """Write the checkpoint atomically: a kill at any moment leaves the previous one whole."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": state.model.state_dict(),
        "loss": state.loss_module.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": _rng_states(shuffle_state),
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "step": state.step,
        "wall_s": wall_s,
        "val_wall_s": val_wall_s,
        "vocab_fingerprint": run_info["vocab_fingerprint"],
        "data_params": run_info["data_params"],
        "model_config": run_info["model"],
        "train_config": run_info["train"],
    }
    write_atomic(run / CHECKPOINT, lambda tmp: torch.save(payload, tmp))
    state.last_checkpoint_step = state.step


def _train_step(state: _State, batch: dict[str, Tensor], mixed_precision: bool, count_flops: bool) -> tuple[float, int | None]:
    """One optimisation step: (loss value, FLOPs counted or None)."""
    def forward_backward() -> Tensor:
        state.optimizer.zero_grad(set_to_none=True)
        if state.parallel is None:
            value = batch_loss(state.model, state.loss_module, batch, mixed_precision)
        else:
            value = state.parallel(batch)
        value.backward()
        return value

    flops = None
    if count_flops:
        value, flops = _count_flops(forward_backward)
    else:
        value = forward_backward()
    value = value.detach()
    if state.world.size > 1:  # the mean of the ranks' shares: the loss of the global batch
        value = value.clone()
        torch.distributed.all_reduce(value)
        value = value / state.world.size
    loss_float = float(value)
    if not math.isfinite(loss_float):
        return loss_float, flops
    state.optimizer.step()
    state.loss_module.clamp_temperatures_()
    state.scheduler.step()
    return loss_float, flops


def _run_epochs(run: Path, config: TrainConfig, dataset: Any, plan: _Plan, state: _State,
                run_info: dict[str, Any], device: torch.device, progress: bool,
                validation: _Validation | None = None) -> tuple[int | None, float, float]:
    """Train from ``state`` until ``plan.stop_step``, logging every step, validating at the
    validation steps and checkpointing every epoch; return (FLOPs of one step or None, training
    wall seconds of this session, validation wall seconds of this session)."""
    from tqdm.auto import tqdm

    mixed_precision = device.type == "cuda"
    state.model.train()
    flops_per_step: int | None = None
    session_start = time.perf_counter()
    world = state.world
    validating = {"s": 0.0}

    def train_wall() -> float:
        return state.wall_before + (time.perf_counter() - session_start - validating["s"])

    def maybe_validate() -> None:
        """Rank 0 validates and writes the curve; the other ranks wait for it at a barrier."""
        if validation is None or state.step not in validation.steps:
            return
        start = time.perf_counter()
        if world.is_main:
            validation.rows.append(_validation_row(validation, state, device, train_wall()))
            _write_curves(run, validation.rows)
        if world.size > 1:
            torch.distributed.barrier()
        validating["s"] += time.perf_counter() - start

    bar = tqdm(total=plan.stop_step, initial=min(state.step, plan.stop_step), disable=not progress or not world.is_main,
               unit="step", desc=f"pretrain {config.loss}", dynamic_ncols=True)
    share = config.batch_size // world.size
    try:
        if state.step == 0:
            maybe_validate()
        with open(run / LOG, "a") if world.is_main else contextlib.nullcontext(None) as log:
            while state.epoch < config.epochs and state.step < plan.stop_step:
                state.shuffle.set_state(state.epoch_shuffle_state)
                order = torch.randperm(plan.clips, generator=state.shuffle).numpy()
                next_epoch_shuffle_state = state.shuffle.get_state()
                batches = [order[k * config.batch_size:(k + 1) * config.batch_size][world.rank * share:
                                                                                   (world.rank + 1) * share]
                           for k in range(state.step_in_epoch, plan.steps_per_epoch)]
                stopped_in_epoch = False
                step_start = time.perf_counter()
                for raw in _iterate_batches(dataset, batches, config.num_workers, device.type == "cuda",
                                            seed=config.seed * 100003 + state.epoch):
                    lr = state.optimizer.param_groups[0]["lr"]
                    loss_float, flops = _train_step(state, _to_device(raw, device), mixed_precision,
                                                     count_flops=flops_per_step is None)
                    flops_per_step = flops if flops_per_step is None else flops_per_step
                    if not math.isfinite(loss_float):
                        kept = (f"the last good checkpoint {run / CHECKPOINT} (step {state.last_checkpoint_step}) is kept"
                                if state.last_checkpoint_step is not None else "no checkpoint had been written yet")
                        raise FloatingPointError(
                            f"non-finite loss {loss_float} at step {state.step + 1} (epoch {state.epoch + 1}); {kept}")
                    state.step += 1
                    state.step_in_epoch += 1
                    now = time.perf_counter()
                    samples_per_s = config.batch_size / max(now - step_start, 1e-9)
                    step_start = now
                    row = {"step": state.step, "epoch": state.epoch + 1, "loss": loss_float,
                           **state.loss_module.logged_temperatures(), "lr": lr, "samples_per_s": samples_per_s,
                           "wall_s": train_wall()}
                    if log is not None:
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_float:.4f}", samples_per_s=f"{samples_per_s:.0f}")
                    maybe_validate()
                    step_start = time.perf_counter()
                    if state.step >= plan.stop_step and state.step_in_epoch < plan.steps_per_epoch:
                        stopped_in_epoch = True
                        break
                wall_s = train_wall()
                if not stopped_in_epoch:
                    state.epoch += 1
                    state.step_in_epoch = 0
                    state.epoch_shuffle_state = next_epoch_shuffle_state
                if world.is_main:
                    _save_checkpoint(run, state, run_info, state.epoch_shuffle_state, wall_s,
                                     state.val_wall_before + validating["s"])
                else:
                    state.last_checkpoint_step = state.step
    finally:
        bar.close()
    return flops_per_step, train_wall() - state.wall_before, validating["s"]


def _peak_rss_mib(world: World) -> list[float | None]:
    """The peak resident memory of every rank so far, in MiB (None where the platform cannot tell)."""
    try:
        import resource

        peak: float | None = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:
        peak = None
    if world.size == 1:
        return [peak]
    peaks: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(peaks, peak)
    return peaks


def _write_compute(run: Path, config: TrainConfig, plan: _Plan, state: _State, flops_per_step: int | None,
                   wall_s: float, val_wall_s: float, device: torch.device, peak_rss_mib: list[float | None]) -> None:
    if flops_per_step is None:  # nothing left to train (a finished run resumed): keep the old record
        previous = json.loads((run / COMPUTE).read_text()) if (run / COMPUTE).is_file() else {}
        flops_per_step = previous.get("flops_per_step")
    samples_seen = state.step * config.batch_size
    write_json(run / COMPUTE, {
        "flops_per_step": flops_per_step,
        "total_flops": None if flops_per_step is None else flops_per_step * state.step,
        "steps": state.step,
        "epochs_done": state.epoch,
        "samples_seen": samples_seen,
        "wall_s": wall_s,
        "samples_per_s": samples_seen / wall_s if wall_s > 0 else None,
        "val_wall_s": val_wall_s,
        "peak_lr": plan.peak_lr,
        "warmup_steps": plan.warmup_steps,
        "device": str(device),
        "batch_size": config.batch_size,
        "nproc": state.world.size,
        "gather": config.gather,
        "peak_rss_mib_per_rank": peak_rss_mib,
        "loss": config.loss,
    })


def pretrain(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train both encoders from scratch on the "train" split of ``config.data``; return the run folder.

    AdamW with linear warmup then cosine decay (per step), bf16 autocast on CUDA, a checkpoint at
    the end of every epoch. ``resume=True`` continues the run in ``config.out`` from its
    checkpoint (the config must match the run's, except for the fields in RESUMABLE_CHANGES).
    ``config.max_steps`` stops early without changing the schedule, so a stopped run is a prefix
    of the full one and can be resumed to it.

    In a process that torchrun started (``WORLD_SIZE`` > 1) this is one rank of a data-parallel
    run (:mod:`fgmm_lib.distributed`): ``batch_size`` is the global batch, each rank encodes its
    slice of it, and rank 0 alone writes the run folder. :func:`fgmm_lib.distributed.launch`
    starts such a run from ``config.nproc``.

    Writes only into a new or empty folder, or (resuming) into the run's own folder. Raises
    ValueError for a batch size larger than the split or not divisible by the processes, a folder
    that cannot be written, that holds other files, or that holds a run already (without
    ``resume``); FloatingPointError for a non-finite loss (the last good checkpoint is kept).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    processes = world_size_from_env()
    if config.batch_size % processes:
        from fgmm_lib.distributed import _indivisible

        raise ValueError(_indivisible(config.batch_size, processes))
    config = dataclasses.replace(config, nproc=processes)
    run = Path(config.out)
    device = _rank_device(_resolve_device(config.device))
    dataset = _open_data(config)
    plan = _plan_schedule(config, len(dataset))
    fingerprint = dataset.vocab.fingerprint()
    data_params = dataset.params.to_dict()
    model_config = config.model_config(len(dataset.vocab))

    world = init_world(device)
    try:
        _on_main(world, lambda: _prepare_run_folder(run, resume))
        checkpoint = _checkpoint_to_resume(run, config, fingerprint, data_params) if resume else None
        validation = _open_validation(config, dataset, plan, fingerprint)
        run_info = {
            "train": config.to_dict(),
            "model": dataclasses.asdict(model_config),
            "vocab_fingerprint": fingerprint,
            "data_params": data_params,
            "device": str(device),
            "nproc": world.size,
            "train_clips": plan.clips,
            "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps,
            "warmup_steps": plan.warmup_steps,
            "peak_lr": plan.peak_lr,
            "validation_steps": validation_steps(config, plan.total_steps),
            "torch": torch.__version__,
        }
        with _deterministic(device):
            state = _build_state(config, model_config, plan, device, checkpoint, world)
            if world.is_main:
                if checkpoint is not None:
                    _truncate_log(run / LOG, state.step)
                    if validation is not None:
                        validation.rows = _kept_curve_rows(run, state.step)
                        _write_curves(run, validation.rows)
                else:
                    for name in (LOG, COMPUTE, CURVES):
                        (run / name).unlink(missing_ok=True)
                write_json(run / CONFIG, run_info)
                write_atomic(run / VOCAB, lambda tmp: dataset.vocab.save(tmp))
            flops_per_step, session_s, val_s = _run_epochs(run, config, dataset, plan, state, run_info, device,
                                                           progress, validation)
        peak_rss_mib = _peak_rss_mib(world)
        if world.is_main:
            _write_compute(run, config, plan, state, flops_per_step, state.wall_before + session_s,
                           state.val_wall_before + val_s, device, peak_rss_mib)
    finally:
        close_world(world)
    return run


def _rank_device(device: torch.device) -> torch.device:
    """This rank's device: CUDA device ``LOCAL_RANK`` when torchrun starts several processes on CUDA."""
    if device.type == "cuda" and device.index is None and world_size_from_env() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _on_main(world: World, check: Any) -> None:
    """Run ``check()`` on rank 0 only; an error it raises is raised on every rank, so all stop together."""
    if world.size == 1:
        check()
        return
    message: list[Any] = [None]
    error: BaseException | None = None
    if world.is_main:
        try:
            check()
        except (ValueError, OSError) as caught:
            error, message = caught, [f"{type(caught).__name__}: {caught}"]
    torch.distributed.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise ValueError(f"rank 0 refused the run: {message[0]}")
