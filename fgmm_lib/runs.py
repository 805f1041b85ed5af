"""The run folder and safe writing: file names, one atomic writer for files and folders, the
writable-output checks, and :func:`load_run`.

Every module that writes goes through :func:`write_atomic` (files) or :func:`partial_folder` plus
:func:`replace_folder` (folders): a reader sees either the previous complete output or the new
complete output, never half of one. A process killed mid-write leaves a hidden temporary beside
the target (``.NAME.*.tmp*`` or ``.NAME.*.partial``); :func:`clean_leftovers` removes those of a
target, and the writers call it before they start.

Files are created with the permissions of an ordinary ``open()`` (0666 less the umask), so a
shared results folder stays readable to colleagues.

A run folder (written by :func:`fgmm_lib.train.pretrain`) holds:

- ``config.json`` (:data:`CONFIG`): the resolved training config, the model config, the
  vocabulary fingerprint, the data parameters and the schedule;
- ``vocab.json`` (:data:`VOCAB`): the vocabulary the run was trained with;
- ``log.jsonl`` (:data:`LOG`): one row per optimisation step;
- ``checkpoint.pt`` (:data:`CHECKPOINT`): everything needed to resume, written every epoch;
- ``compute.json`` (:data:`COMPUTE`): FLOPs, wall time and samples seen;
- ``curves.csv`` (:data:`CURVES`): validation retrieval at points of the schedule (only for a run
  with validation data, see :mod:`fgmm_lib.curves`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "LOG",
    "COMPUTE",
    "VOCAB",
    "CURVES",
    "RUN_FILES",
    "CHECKPOINT_FORMAT",
    "write_atomic",
    "write_json",
    "write_csv",
    "read_json",
    "partial_folder",
    "replace_folder",
    "clean_leftovers",
    "check_writable_file",
    "check_writable_folder",
    "is_run_folder",
    "load_checkpoint",
    "load_run",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "log.jsonl"
COMPUTE = "compute.json"
VOCAB = "vocab.json"
CURVES = "curves.csv"
RUN_FILES = (CONFIG, VOCAB, LOG, CHECKPOINT, COMPUTE, CURVES)
CHECKPOINT_FORMAT = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _hidden(path: Path, suffix: str) -> tuple[str, str]:
    """(prefix, suffix) of a hidden temporary beside ``path``: ``.NAME.<random><suffix>``."""
    return f".{path.name}.", suffix


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(temporary)`` on a hidden file beside ``path``, then rename it over ``path``.

    The temporary keeps ``path``'s extension (so writers that infer a format from it, like
    matplotlib, work). The parent folder is created. On any failure the temporary is removed and
    ``path`` keeps its previous content. Returns ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _hidden(target, ".tmp" + target.suffix)
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented, key-sorted JSON, atomically."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    return write_atomic(path, lambda temporary: temporary.write_text(text))


def write_csv(path: str | Path, frame: Any, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda temporary: frame.to_csv(temporary, index=index))


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file; a missing or unreadable file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def partial_folder(out: str | Path) -> Path:
    """A new hidden folder beside ``out`` to build a replacement of ``out`` in (mode 0755 less umask).

    Leftovers of killed earlier attempts for the same ``out`` are removed first.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    folder.chmod(0o777 & ~_umask())
    return folder


def replace_folder(partial: Path, out: str | Path) -> Path:
    """Rename the complete folder ``partial`` to ``out``, replacing an existing ``out``.

    The old folder is first renamed aside and removed only after the new one is in place, so a
    kill at any moment leaves either the old or the new complete folder at ``out`` (plus a hidden
    leftover that :func:`clean_leftovers` removes).
    """
    out = Path(out)
    if not out.exists():
        partial.rename(out)
        return out
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        partial.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def clean_leftovers(target: str | Path) -> list[Path]:
    """Remove the hidden temporaries that killed writers of ``target`` left beside it; return them.

    Inside a folder ``target`` the temporaries of its files are removed too.
    """
    target = Path(target)
    removed: list[Path] = []
    places = [(target.parent, target.name)]
    if target.is_dir():
        places += [(target, "*")]
    for folder, name in places:
        if not folder.is_dir():
            continue
        for pattern in (f".{name}.*.partial", f".{name}.*.old", f".{name}.*.tmp*"):
            for leftover in folder.glob(pattern):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                removed.append(leftover)
    return removed


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """Fail now, before any work, if the file ``path`` cannot be written (naming it and why)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write the {what} {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write the {what} {path}: {error}") from error
    return path


def check_writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and fail now if files cannot be written in it (naming it and why)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test.", suffix=".tmp"):
            pass
    except OSError as error:
        raise ValueError(f"{what} {folder} cannot be written: {error}") from error
    return folder


def is_run_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds files of a pretraining run (config.json with a ``train`` section)."""
    config = Path(folder) / CONFIG
    if not config.is_file():
        return False
    try:
        return "train" in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`fgmm_lib.train.pretrain`; a bad file raises ValueError naming it."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by fgmm_lib.train (format {CHECKPOINT_FORMAT})")
    return checkpoint


def mismatches(expected: dict[str, Any], found: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """``"key: found vs expected"`` for every key whose values differ (keys in ``ignore`` skipped)."""
    keys = sorted((set(expected) | set(found)) - set(ignore))
    return [f"{key}: {found.get(key)!r} vs {expected.get(key)!r}" for key in keys if expected.get(key) != found.get(key)]


def load_run(run: str | Path, map_location: Any = "cpu") -> tuple[Any, Any, Any, Any]:
    """Load a run folder written by :func:`fgmm_lib.train.pretrain`.

    Returns ``(model, loss_module, config, vocabulary)``: the :class:`~fgmm_lib.models.DualEncoder`
    in eval mode, the trained loss module (:func:`fgmm_lib.losses.build_loss`, with its learned
    temperatures), the :class:`~fgmm_lib.train.TrainConfig` and the
    :class:`~fgmm_lib.data.Vocabulary`. Raises FileNotFoundError naming the folder when it holds
    no checkpoint, and ValueError when the checkpoint belongs to another configuration or
    vocabulary than the run's config.json.
    """
    from fgmm_lib.data import Vocabulary
    from fgmm_lib.models import DualEncoder, ModelConfig
    from fgmm_lib.train import RESUMABLE_CHANGES, TrainConfig, complete_train_dict, loss_from_config

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
