"""Safe writing: one atomic writer for files and folders, JSON and CSV helpers, and the writable-output checks.

Every module that writes goes through :func:`write_atomic` (files; :func:`write_json` and
:func:`write_csv` build on it) or :func:`partial_folder` plus :func:`replace_folder` (folders). A
reader sees either the previous complete output or the new complete output, never half of one. A
process killed mid-write leaves a hidden temporary beside the target (``.NAME.*.tmp*``,
``.NAME.*.partial`` or ``.NAME.*.old``). :func:`clean_leftovers` removes a target's temporaries,
and :func:`partial_folder` calls it before it starts.

Files are created with the permissions of an ordinary ``open()`` (0666 less the umask), so a
shared results folder stays readable to colleagues.

:func:`check_writable_file` and :func:`check_writable_folder` fail before any work starts when an
output cannot be written. :func:`read_json` reads a JSON file, with errors that name it. See
docs/reliability.md, "Atomic writes".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


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
