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
  time and samples seen.

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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from fgmm_lib.losses import BACKENDS, LOSSES, MIN_TEMPERATURE, ContrastiveLoss, mil_nce_loss
from fgmm_lib.models import DualEncoder, ModelConfig

__all__ = [
    "TrainConfig",
    "MilNceLoss",
    "pretrain",
    "load_run",
    "build_loss",
    "batch_loss",
    "lr_factor",
    "CHECKPOINT",
    "CONFIG",
    "LOG",
    "COMPUTE",
    "VOCAB",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "log.jsonl"
COMPUTE = "compute.json"
VOCAB = "vocab.json"
CHECKPOINT_FORMAT = 1

#: Fields that may differ between a run and its resumption: they change where the data is read
#: from, how it is loaded and when the run stops, not what it computes.
RESUMABLE_CHANGES = ("data", "out", "max_steps", "num_workers", "device", "backend")

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
    attn_temperature: float = field(default=0.1, metadata={"help": "tau_a of the attention aggregation"})
    weight_temperature: float = field(default=0.1, metadata={"help": "tau_w of the attention aggregation"})
    learn_attention_temperatures: bool = field(default=False, metadata={"help": "learn tau_a and tau_w (from the values above)"})
    neighbours: int = field(default=1, metadata={"help": "MIL-NCE: neighbouring narrations per side as extra candidates"})
    backend: str = field(default="auto", metadata={"help": f"pair-score backend, one of {', '.join(BACKENDS)}"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if available), cpu, cuda or cuda:N"})
    num_workers: int = field(default=0, metadata={"help": "background processes that assemble batches (0 = none)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps, schedule unchanged (0 = no limit)"})

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a mapping (params.yaml, config.json, CLI options).

        Unknown keys and missing required keys raise ValueError naming them; numbers given as
        strings (as some YAML writers produce for ``2e-3``) are converted; bad values raise
        ValueError naming the field.
        """
        if not isinstance(values, dict):
            raise ValueError(f"TrainConfig.from_dict expects a mapping, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s): {', '.join(map(repr, unknown))} "
                             f"(known keys: {', '.join(known)})")
        missing = [name for name, f in known.items()
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and name not in values]
        if missing:
            raise ValueError(f"TrainConfig is missing required key(s): {', '.join(missing)}")
        converted = {name: _convert(name, value, _field_type(known[name])) for name, value in values.items()}
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The encoders' config for a vocabulary of ``vocab_size`` words."""
        return ModelConfig(vocab_size=vocab_size, dim=self.dim, width=self.width, depth=self.depth, ngram=self.ngram)


def _field_type(f: dataclasses.Field) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool}.get(f.type, f.type)  # type: ignore[arg-type]


def _convert(name: str, value: Any, kind: type) -> Any:
    """Convert ``value`` to ``kind`` where the conversion is unambiguous; else raise naming the field."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"TrainConfig.{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"TrainConfig.{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.strip())
        raise ValueError(f"TrainConfig.{name} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"TrainConfig.{name} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value.strip())
        raise ValueError(f"TrainConfig.{name} must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        raise ValueError(f"TrainConfig.{name} must be a string, got {value!r}")
    return value


def _validate(config: TrainConfig) -> None:
    def fail(name: str, requirement: str) -> None:
        raise ValueError(f"TrainConfig.{name} must be {requirement}, got {getattr(config, name)!r}")

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = _field_type(f)
        if kind is bool and not isinstance(value, bool):
            fail(f.name, "a bool")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            fail(f.name, "an int")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
            fail(f.name, "a finite number")
        if kind is str and not isinstance(value, str):
            fail(f.name, "a string")
    if not config.data:
        fail("data", "a dataset folder")
    if not config.out:
        fail("out", "a run folder")
    if config.loss not in LOSSES:
        fail("loss", f"one of {', '.join(LOSSES)}")
    if config.backend not in BACKENDS:
        fail("backend", f"one of {', '.join(BACKENDS)}")
    if config.batch_size < 2:
        fail("batch_size", ">= 2 (contrastive losses need negatives)")
    for name in ("epochs", "dim", "depth", "ngram"):
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
    if config.device != "auto":
        try:
            torch.device(config.device)
        except (RuntimeError, ValueError):
            fail("device", "auto, cpu, cuda or cuda:N")


class MilNceLoss(nn.Module):
    """MIL-NCE (:func:`fgmm_lib.losses.mil_nce_loss`) with a learnable temperature stored as a log."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def _temperature(self) -> Tensor:
        return self.log_temperature.exp().clamp(min=MIN_TEMPERATURE)

    @property
    def temperature(self) -> float:
        """The temperature in use (clamped like ContrastiveLoss's)."""
        return float(self._temperature().detach())

    def forward(self, video_global: Tensor, text_global: Tensor, candidate_mask: Tensor | None = None) -> Tensor:
        """Loss of clips ``[B, D]`` against their K candidate narrations ``[B, K, D]``."""
        return mil_nce_loss(video_global, text_global, temperature=self._temperature(), candidate_mask=candidate_mask)


def build_loss(config: TrainConfig) -> ContrastiveLoss | MilNceLoss:
    """The loss module of a run: MilNceLoss for "milnce", else ContrastiveLoss(aggregation=config.loss)."""
    if config.loss == "milnce":
        return MilNceLoss(config.temperature)
    return ContrastiveLoss(
        aggregation=config.loss, temperature=config.temperature, attn_temperature=config.attn_temperature,
        weight_temperature=config.weight_temperature,
        learn_attention_temperatures=config.learn_attention_temperatures, backend=config.backend,
    )


def batch_loss(model: DualEncoder, loss_module: nn.Module, batch: dict[str, Tensor], loss: str,
               mixed_precision: bool = False) -> Tensor:
    """The training loss of one batch (keys of NarratedDigits.get_batch, already on the device).

    The encoders run under bf16 autocast when ``mixed_precision`` is set (CUDA); the loss is
    always computed in float32. "milnce" encodes the K candidate narrations of every clip.
    """
    device_type = batch["video"].device.type
    autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if mixed_precision
                else contextlib.nullcontext())
    with autocast:
        video_tokens, video_global = model.encode_video(batch["video"])
        if loss == "milnce":
            tokens, mask = batch["candidate_tokens"], batch["candidate_mask"]
            size, candidates, words = tokens.shape
            _, _, text_global = model.encode_text(tokens.reshape(size * candidates, words),
                                                  mask.reshape(size * candidates, words))
        else:
            phrases, phrase_mask, text_global = model.encode_text(batch["tokens"], batch["token_mask"])
    if loss == "milnce":
        return loss_module(video_global.float(), text_global.float().reshape(size, candidates, -1))
    return loss_module(video_tokens.float(), video_global.float(), phrases.float(), text_global.float(),
                       text_mask=phrase_mask)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier before optimisation step ``step`` (0-based): linear warmup, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


def _write_atomic(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``."""
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, value: Any) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n"))


def _prepare_run_folder(run: Path, resume: bool) -> None:
    """Check the run folder before any training: writable, and not a finished run unless resuming."""
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
    try:
        run.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"TrainConfig.out {run} cannot be written: {error}") from error


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
    _write_atomic(path, lambda tmp: tmp.write_text("".join(json.dumps(row) + "\n" for row in rows)))


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


def _load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by fgmm_lib.train (format {CHECKPOINT_FORMAT})")
    return checkpoint


def _mismatches(expected: dict[str, Any], found: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    keys = sorted((set(expected) | set(found)) - set(ignore))
    return [f"{key}: {found.get(key)!r} vs {expected.get(key)!r}" for key in keys if expected.get(key) != found.get(key)]


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


def _loss_temperatures(loss_module: nn.Module) -> dict[str, float | None]:
    return {name: (float(getattr(loss_module, name)) if hasattr(loss_module, name) else None)
            for name in ("temperature", "attn_temperature", "weight_temperature")}


def _count_flops(step: Any) -> tuple[Any, int]:
    """Run ``step()`` under FlopCounterMode; return its result and the FLOPs counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = step()
    return result, int(counter.get_total_flops())


def pretrain(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train both encoders from scratch on the "train" split of ``config.data``; return the run folder.

    AdamW with linear warmup then cosine decay (per step), bf16 autocast on CUDA, a checkpoint at
    the end of every epoch. ``resume=True`` continues the run in ``config.out`` from its
    checkpoint (the config must match the run's, except for the fields in RESUMABLE_CHANGES).
    ``config.max_steps`` stops early without changing the schedule, so a stopped run is a prefix
    of the full one and can be resumed to it.

    Raises ValueError for a batch size larger than the split, a folder that cannot be written,
    or one that holds a run already (without ``resume``); FloatingPointError for a non-finite
    loss (the last good checkpoint is kept).
    """
    from tqdm.auto import tqdm

    from fgmm_lib.data import NarratedDigits

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    run = Path(config.out)
    device = _resolve_device(config.device)
    dataset = NarratedDigits(config.data, split="train", neighbours=config.neighbours)
    clips = len(dataset)
    if config.batch_size > clips:
        raise ValueError(f"TrainConfig.batch_size {config.batch_size} is larger than the train split of "
                         f"{config.data} ({clips} clips); choose batch_size <= {clips}")
    vocab = dataset.vocab
    fingerprint = vocab.fingerprint()
    model_config = config.model_config(len(vocab))
    data_params = dataclasses.asdict(dataset.params)
    steps_per_epoch = clips // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_fraction * total_steps))

    _prepare_run_folder(run, resume)
    checkpoint = _load_checkpoint(run / CHECKPOINT) if resume else None
    if checkpoint is not None:
        saved_config = checkpoint["train_config"]
        differences = _mismatches(saved_config, config.to_dict(), ignore=RESUMABLE_CHANGES)
        if differences:
            raise ValueError(f"cannot resume {run}: the config differs from the run's in "
                             f"{'; '.join(differences)} (given vs saved)")
        if checkpoint["vocab_fingerprint"] != fingerprint:
            raise ValueError(f"cannot resume {run}: {config.data} has another vocabulary than the run "
                             f"(fingerprint {fingerprint[:12]}... vs {checkpoint['vocab_fingerprint'][:12]}...)")
        differences = _mismatches(checkpoint["data_params"], data_params)
        if differences:
            raise ValueError(f"cannot resume {run}: {config.data} was generated with other parameters than the "
                             f"run's data: {'; '.join(differences)} (given vs saved)")

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    with _deterministic(device):
        model = DualEncoder(model_config).to(device)
        loss_module = build_loss(config).to(device)
        optimizer = torch.optim.AdamW(_parameter_groups(model, loss_module, config.weight_decay), lr=config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(total_steps, warmup_steps))
        shuffle = torch.Generator().manual_seed(config.seed)
        epoch, step_in_epoch, step, wall_before = 0, 0, 0, 0.0
        epoch_shuffle_state = shuffle.get_state()
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            loss_module.load_state_dict(checkpoint["loss"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            _set_rng_states(checkpoint["rng"])
            epoch_shuffle_state = checkpoint["rng"]["shuffle"]
            epoch, step_in_epoch, step = checkpoint["epoch"], checkpoint["step_in_epoch"], checkpoint["step"]
            wall_before = float(checkpoint["wall_s"])
            _truncate_log(run / LOG, step)
        else:
            (run / LOG).unlink(missing_ok=True)
            (run / COMPUTE).unlink(missing_ok=True)

        last_checkpoint_step = step if checkpoint is not None else None
        run_info = {
            "train": config.to_dict(),
            "model": dataclasses.asdict(model_config),
            "vocab_fingerprint": fingerprint,
            "data_params": data_params,
            "device": str(device),
            "train_clips": clips,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "warmup_steps": warmup_steps,
            "torch": torch.__version__,
        }
        _write_json(run / CONFIG, run_info)
        _write_atomic(run / VOCAB, lambda tmp: vocab.save(tmp))

        def save_checkpoint(epoch_done: int, step_in_epoch_done: int, shuffle_state: Tensor, wall_s: float) -> None:
            state = {
                "format": CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "loss": loss_module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_states(shuffle_state),
                "epoch": epoch_done,
                "step_in_epoch": step_in_epoch_done,
                "step": step,
                "wall_s": wall_s,
                "vocab_fingerprint": fingerprint,
                "data_params": data_params,
                "model_config": dataclasses.asdict(model_config),
                "train_config": config.to_dict(),
            }
            _write_atomic(run / CHECKPOINT, lambda tmp: torch.save(state, tmp))
            nonlocal last_checkpoint_step
            last_checkpoint_step = step

        stop_step = total_steps if config.max_steps == 0 else min(total_steps, config.max_steps)
        mixed_precision = device.type == "cuda"
        model.train()
        flops_per_step: int | None = None
        session_start = time.perf_counter()
        bar = tqdm(total=stop_step, initial=min(step, stop_step), disable=not progress, unit="step",
                   desc=f"pretrain {config.loss}", dynamic_ncols=True)
        try:
            with open(run / LOG, "a") as log:
                while epoch < config.epochs and step < stop_step:
                    shuffle.set_state(epoch_shuffle_state)
                    order = torch.randperm(clips, generator=shuffle).numpy()
                    next_epoch_shuffle_state = shuffle.get_state()
                    batches = [order[k * config.batch_size:(k + 1) * config.batch_size]
                               for k in range(step_in_epoch, steps_per_epoch)]
                    stopped_in_epoch = False
                    step_start = time.perf_counter()
                    for raw in _iterate_batches(dataset, batches, config.num_workers, device.type == "cuda",
                                                seed=config.seed * 100003 + epoch):
                        batch = _to_device(raw, device)
                        lr = optimizer.param_groups[0]["lr"]

                        def train_step() -> Tensor:
                            optimizer.zero_grad(set_to_none=True)
                            value = batch_loss(model, loss_module, batch, config.loss, mixed_precision)
                            value.backward()
                            return value

                        if flops_per_step is None:
                            loss_value, flops_per_step = _count_flops(train_step)
                        else:
                            loss_value = train_step()
                        loss_float = float(loss_value.detach())
                        if not math.isfinite(loss_float):
                            kept = (f"the last good checkpoint {run / CHECKPOINT} (step {last_checkpoint_step}) is kept"
                                    if last_checkpoint_step is not None else "no checkpoint had been written yet")
                            raise FloatingPointError(
                                f"non-finite loss {loss_float} at step {step + 1} (epoch {epoch + 1}); {kept}"
                            )
                        optimizer.step()
                        scheduler.step()
                        step += 1
                        step_in_epoch += 1
                        now = time.perf_counter()
                        samples_per_s = config.batch_size / max(now - step_start, 1e-9)
                        step_start = now
                        row = {"step": step, "epoch": epoch + 1, "loss": loss_float, **_loss_temperatures(loss_module),
                               "lr": lr, "samples_per_s": samples_per_s,
                               "wall_s": wall_before + (now - session_start)}
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss_float:.4f}", samples_per_s=f"{samples_per_s:.0f}")
                        if step >= stop_step and step_in_epoch < steps_per_epoch:
                            stopped_in_epoch = True
                            break
                    wall_s = wall_before + (time.perf_counter() - session_start)
                    if stopped_in_epoch:
                        save_checkpoint(epoch, step_in_epoch, epoch_shuffle_state, wall_s)
                    else:
                        epoch += 1
                        step_in_epoch = 0
                        epoch_shuffle_state = next_epoch_shuffle_state
                        save_checkpoint(epoch, 0, epoch_shuffle_state, wall_s)
        finally:
            bar.close()

    wall_s = wall_before + (time.perf_counter() - session_start)
    if flops_per_step is None:  # nothing left to train (a finished run resumed): keep the old record
        previous = json.loads((run / COMPUTE).read_text()) if (run / COMPUTE).is_file() else {}
        flops_per_step = previous.get("flops_per_step")
    samples_seen = step * config.batch_size
    _write_json(run / COMPUTE, {
        "flops_per_step": flops_per_step,
        "total_flops": None if flops_per_step is None else flops_per_step * step,
        "steps": step,
        "epochs_done": epoch,
        "samples_seen": samples_seen,
        "wall_s": wall_s,
        "samples_per_s": samples_seen / wall_s if wall_s > 0 else None,
        "device": str(device),
        "batch_size": config.batch_size,
        "loss": config.loss,
    })
    return run


def load_run(run: str | Path, map_location: Any = "cpu") -> tuple[DualEncoder, ContrastiveLoss | None, TrainConfig, Any]:
    """Load a run folder written by :func:`pretrain`: (model in eval mode, loss module, config, vocabulary).

    The loss module is the trained ContrastiveLoss (its temperatures), or None for "milnce".
    Raises FileNotFoundError naming the folder when it holds no checkpoint, and ValueError when
    the checkpoint belongs to another configuration or vocabulary than the run's config.json.
    """
    from fgmm_lib.data import Vocabulary

    run = Path(run)
    checkpoint_path = run / CHECKPOINT
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"run folder {run} has no {CHECKPOINT} (is it a pretraining run that finished an epoch?)")
    for name in (CONFIG, VOCAB):
        if not (run / name).is_file():
            raise FileNotFoundError(f"run folder {run} has no {name}")
    try:
        info = json.loads((run / CONFIG).read_text())
        config = TrainConfig.from_dict(info["train"])
        model_config = ModelConfig(**info["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"cannot read {run / CONFIG}: {error}") from error
    vocab = Vocabulary.load(run / VOCAB)
    checkpoint = _load_checkpoint(checkpoint_path, map_location)

    fingerprints = {"vocab.json": vocab.fingerprint(), "config.json": info.get("vocab_fingerprint"),
                    "checkpoint.pt": checkpoint.get("vocab_fingerprint")}
    if len(set(fingerprints.values())) != 1:
        raise ValueError(f"vocabulary mismatch in {run}: fingerprints "
                         + ", ".join(f"{k} {str(v)[:12]}..." for k, v in fingerprints.items())
                         + "; the checkpoint was trained with another vocabulary")
    differences = _mismatches(dataclasses.asdict(model_config), checkpoint.get("model_config", {}))
    if differences:
        raise ValueError(f"{checkpoint_path} was written for another model configuration than {run / CONFIG}: "
                         + "; ".join(differences) + " (checkpoint vs config)")
    differences = _mismatches(config.to_dict(), checkpoint.get("train_config", {}), ignore=RESUMABLE_CHANGES)
    if differences:
        raise ValueError(f"{checkpoint_path} was written for another training configuration than {run / CONFIG}: "
                         + "; ".join(differences) + " (checkpoint vs config)")

    model = DualEncoder(model_config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise ValueError(f"{checkpoint_path} does not fit the model of {run / CONFIG}: {error}") from error
    target = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    model.to(target).eval()
    loss_module: ContrastiveLoss | None = None
    if config.loss != "milnce":
        loss_module = build_loss(config)
        try:
            loss_module.load_state_dict(checkpoint["loss"])
        except RuntimeError as error:
            raise ValueError(f"{checkpoint_path} does not fit the loss of {run / CONFIG}: {error}") from error
        loss_module.to(target).eval()
    return model, loss_module, config, vocab
