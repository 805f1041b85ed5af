"""The run folder: its file names, and reading a run back (:func:`load_run`, :func:`load_checkpoint`).

A run folder (written by :func:`fgmm_lib.training.loop.pretrain`) holds the files of :data:`RUN_FILES`:

- ``config.json`` (:data:`CONFIG`): the resolved :class:`fgmm_lib.runs.config.TrainConfig`, the
  :class:`fgmm_lib.models.encoders.ModelConfig`, the vocabulary fingerprint, the data parameters and
  the schedule (steps per epoch, total steps);
- ``vocab.json`` (:data:`VOCAB`): the vocabulary the run was trained with (a copy of the data's);
- ``log.jsonl`` (:data:`LOG`): one row per optimisation step (step, epoch, loss, temperatures, lr,
  samples/s, cumulative wall time);
- ``checkpoint.pt`` (:data:`CHECKPOINT`): everything needed to resume (model, loss module,
  optimiser, scheduler, every RNG state and the position in the schedule; format
  :data:`CHECKPOINT_FORMAT`), written atomically at the end of every epoch (and where ``max_steps``
  stops);
- ``compute.json`` (:data:`COMPUTE`): FLOPs of one training step (``torch.utils.flop_counter``),
  total FLOPs, wall time and samples seen, the peak learning rate and the warmup steps;
- ``curves.csv`` (:data:`CURVES`): validation retrieval at points of the schedule, only for a run
  with validation data (its format: :mod:`fgmm_lib.runs.curves`).

:func:`is_run_folder` says whether a folder holds a run (:func:`run_config_problem`: why not). :func:`load_checkpoint` reads a checkpoint
and fails clearly on a bad file. :func:`load_run` rebuilds a run's model, loss module, config and
vocabulary. :func:`mismatches` names the keys where two configs differ. The files are written through
:mod:`fgmm_lib.io` (atomic writers, leftovers of killed writers, writable-output checks).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from fgmm_lib.data.vocab import Vocabulary
from fgmm_lib.models.encoders import DualEncoder, ModelConfig
from fgmm_lib.runs.config import RESUMABLE_CHANGES, TrainConfig, complete_train_dict, loss_from_config

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "log.jsonl"
COMPUTE = "compute.json"
VOCAB = "vocab.json"
CURVES = "curves.csv"
RUN_FILES = (CONFIG, VOCAB, LOG, CHECKPOINT, COMPUTE, CURVES)
CHECKPOINT_FORMAT = 1


def is_run_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds files of a pretraining run (config.json with a ``train`` section)."""
    config = Path(folder) / CONFIG
    if not config.is_file():
        return False
    try:
        return "train" in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False


def run_config_problem(folder: str | Path) -> str | None:
    """What keeps ``folder``'s config.json from being a run's (missing, corrupt, no ``train`` section), or None."""
    config = Path(folder) / CONFIG
    if not config.is_file():
        return f"has no run {CONFIG}"
    try:
        info = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"has a corrupt {CONFIG} ({config} is not valid JSON: {error})"
    if not isinstance(info, dict) or "train" not in info:
        return f"has a {CONFIG} that is not a run's (no 'train' section in {config})"
    return None


def _unreadable_reason(error: BaseException) -> str:
    """One line for torch.load's error on a file that is not a checkpoint (its own messages run to
    several lines of advice about weights_only that do not apply here)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first.split(". ")[0].rstrip(".")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`fgmm_lib.training.loop.pretrain`; a bad file raises ValueError
    naming it, in one line."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"cannot read checkpoint {path}: it is corrupt or not a checkpoint "
                         f"({_unreadable_reason(error)})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by fgmm_lib.training.loop (format {CHECKPOINT_FORMAT})")
    return checkpoint


def mismatches(expected: dict[str, Any], found: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """``"key: found vs expected"`` for every key whose values differ (keys in ``ignore`` skipped)."""
    keys = sorted((set(expected) | set(found)) - set(ignore))
    return [f"{key}: {found.get(key)!r} vs {expected.get(key)!r}" for key in keys if expected.get(key) != found.get(key)]


def load_run(run: str | Path, map_location: Any = "cpu") -> tuple[Any, Any, Any, Any]:
    """Load a run folder written by :func:`fgmm_lib.training.loop.pretrain`.

    Returns ``(model, loss_module, config, vocabulary)``: the :class:`~fgmm_lib.models.encoders.DualEncoder`
    in eval mode, the trained loss module (:func:`fgmm_lib.losses.modules.build_loss`, with its learned
    temperatures), the :class:`~fgmm_lib.runs.config.TrainConfig` and the
    :class:`~fgmm_lib.data.vocab.Vocabulary`. Raises FileNotFoundError naming the folder when it holds
    no checkpoint, and ValueError when the checkpoint belongs to another configuration or
    vocabulary than the run's config.json.
    """

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
    checkpoint = load_checkpoint(checkpoint_path, map_location)

    fingerprints = {VOCAB: vocab.fingerprint(), CONFIG: info.get("vocab_fingerprint"),
                    CHECKPOINT: checkpoint.get("vocab_fingerprint")}
    if len(set(fingerprints.values())) != 1:
        raise ValueError(f"vocabulary mismatch in {run}: fingerprints "
                         + ", ".join(f"{k} {str(v)[:12]}..." for k, v in fingerprints.items())
                         + "; the checkpoint was trained with another vocabulary")
    differences = mismatches(dataclasses.asdict(model_config), checkpoint.get("model_config", {}))
    if differences:
        raise ValueError(f"{checkpoint_path} was written for another model configuration than {run / CONFIG}: "
                         + "; ".join(differences) + " (checkpoint vs config)")
    differences = mismatches(config.to_dict(), complete_train_dict(checkpoint.get("train_config", {})),
                             ignore=RESUMABLE_CHANGES)
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
    loss_module = loss_from_config(config)
    try:
        loss_module.load_state_dict(checkpoint["loss"])
    except RuntimeError as error:
        raise ValueError(f"{checkpoint_path} does not fit the loss of {run / CONFIG}: {error}") from error
    loss_module.to(target).eval()
    return model, loss_module, config, vocab
