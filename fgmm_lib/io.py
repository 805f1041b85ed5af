"""Safe writing: one atomic writer for files and folders, JSON and CSV helpers, the writable-output
checks, one writer per output folder, and no writer that outlives its command.

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

:func:`output_lock` lets one process at a time write an output folder (a second one fails at once,
naming the holder's pid; a lock left by a killed process is free). The processes that a command
starts die with it: :func:`parent_death_signal` / :func:`die_with_parent` (Linux's parent-death
signal) and :func:`init_worker` for worker pools, :func:`stop_processes` to end workers without
waiting for their tasks; :func:`sigterm_as_interrupt` makes SIGTERM stop a command as Ctrl-C does
(docs/reliability.md, "Interrupted runs and resume", "One writer per folder").
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: output folders are not locked
    fcntl = None  # type: ignore[assignment]


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


# ---------------------------------------------------------------- one writer per folder


class FolderBusyError(OSError):
    """Another live process holds the lock of an output folder (:func:`output_lock`)."""


@dataclasses.dataclass(frozen=True)
class HeldLock:
    """The lock :func:`output_lock` holds: its file and descriptor (None where the file system has no
    locks). A child process started with ``pass_fds=(descriptor,)`` holds the lock with its parent
    until both have ended."""

    path: Path
    descriptor: int | None


def lock_file(folder: str | Path) -> Path:
    """The lock file of the output folder ``folder``: ``.NAME.lock`` beside it (absolute)."""
    folder = Path(os.path.abspath(folder))
    if not folder.name:
        raise ValueError(f"cannot lock {folder}: it has no name (choose a folder below it)")
    return folder.parent / f".{folder.name}.lock"


def _lock_holder(handle: int) -> str:
    """'pid N' of the process that holds the lock file ``handle`` (which it writes once it holds it)."""
    for _ in range(20):
        os.lseek(handle, 0, os.SEEK_SET)
        words = os.read(handle, 200).decode(errors="replace").split()
        if words:
            pid = words[0]
            host = words[1] if len(words) > 1 else ""
            return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        time.sleep(0.01)  # the holder has just taken it and not yet written its pid
    return "a process whose pid is not written yet"


def _same_file(handle: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle), os.stat(path))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def output_lock(folder: str | Path, what: str = "output folder") -> Iterator[HeldLock]:
    """Hold the lock of the output folder ``folder`` while the block runs: one writer per folder.

    The lock is a ``flock`` on ``.NAME.lock`` beside the folder (the folder itself may be replaced by a
    rename, or not exist yet), which holds the holder's pid. While a live process holds it, a second
    writer fails at once with :class:`FolderBusyError` naming the folder and that pid; it never
    waits. The kernel releases a flock when its process dies, however it dies (SIGKILL, a crash, a
    lost machine on NFS, whose locks the server gives up): a lock file that a killed process left
    behind is free, and the next writer takes it over, without having to guess from a pid (which the
    system may have given to another process since). A child process shares the lock only if it
    inherits the descriptor (:func:`subprocess.Popen`'s ``pass_fds``). The lock file is removed when
    the block ends; a second writer that opened it just before is sent back by checking, once
    locked, that the file it locked is still the one at ``.NAME.lock``.

    On a file system without ``flock`` the block runs unlocked, with a warning. Yields the
    :class:`HeldLock`.
    """
    path = lock_file(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{what} {folder} cannot be written: {error}") from error
    handle = _take_lock(path, folder, what)
    if handle is None:
        yield HeldLock(path, None)
        return
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield HeldLock(path, handle)
    finally:
        if _same_file(handle, path):
            path.unlink(missing_ok=True)
        os.close(handle)


def _take_lock(path: Path, folder: str | Path, what: str) -> int | None:
    """The descriptor of the lock file ``path``, locked by this process (None: the file system has no locks)."""
    if fcntl is None:
        return None
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise ValueError(f"cannot create the lock file {path} of the {what} {folder}: {error}") from error
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(handle)
            os.close(handle)
            raise FolderBusyError(f"{what} {folder} is being written by another process ({holder}, lock {path}); "
                                  f"wait until it ends, or choose another folder") from None
        except OSError as error:
            os.close(handle)
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise ValueError(f"cannot lock the {what} {folder} ({path}): {error}") from error
            warnings.warn(f"{path.parent} does not support file locks ({error}); writing {folder} unlocked",
                          RuntimeWarning, stacklevel=4)
            return None
        if _same_file(handle, path):
            return handle
        os.close(handle)  # its holder removed it between our open and our lock: lock the new one


# ---------------------------------------------------------------- processes that outlive their command

#: prctl(2) option: the signal a process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt inside :func:`sigterm_as_interrupt`, so that both
    stop a command the same way."""

    signal_number = int(signal.SIGTERM)


def _raise_terminated(signal_number: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises :class:`Terminated` (a KeyboardInterrupt), so that cleanup code
    runs as for Ctrl-C; outside the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return function


def parent_death_signal(parent: int | None = None, signal_number: int = signal.SIGTERM) -> Callable[[], None]:
    """A function that makes the process calling it get ``signal_number`` when its parent dies.

    Uses Linux's ``prctl(PR_SET_PDEATHSIG)`` (elsewhere the function does nothing). It is built here,
    in the parent, so that it can run as a :class:`subprocess.Popen` ``preexec_fn`` (between fork and
    exec, where loading a library is unsafe); the setting survives exec. With ``parent`` (a pid), a
    process whose parent already died before the call signals itself. A parent-death signal fires
    when the thread that started the child ends: start children from a thread that lives as long.
    """
    prctl = _prctl()

    def arm() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, int(signal_number), 0, 0, 0)
        if parent is not None and os.getppid() != parent:
            os.kill(os.getpid(), signal_number)

    return arm


def die_with_parent(parent: int | None = None, signal_number: int = signal.SIGTERM) -> None:
    """Make this process get ``signal_number`` (default SIGTERM) when its parent dies (:func:`parent_death_signal`)."""
    parent_death_signal(parent, signal_number)()


def init_worker(parent: int) -> None:
    """Initializer of worker processes (``ProcessPoolExecutor(initializer=init_worker, initargs=(os.getpid(),))``).

    A worker ignores Ctrl-C, which the terminal sends to the whole process group: the parent stops
    the workers itself and reports once, without a traceback per worker. A worker gets SIGTERM when
    its parent dies (killed by any signal), so none is left decoding for nobody.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def stop_processes(processes: Iterable[Any], timeout: float = 5.0) -> None:
    """Terminate (SIGTERM) the ``multiprocessing`` processes ``processes``, wait up to ``timeout`` s, then kill the rest."""
    processes = [process for process in processes if process.is_alive()]
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)


# ---------------------------------------------------------------- memory

#: mallopt(3) parameters of glibc.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Keep the memory this process frees for its next allocations (glibc, process-wide, for good).

    By default glibc maps every block above 32 MiB afresh and returns it when freed, so each large
    activation of a training step is new memory whose first touch faults page by page: a third of
    a batch-256 step on this project's CPU (``fgmm bench-train``). With mmap off and trimming past
    2 GiB only, freed blocks are reused. Returns whether it applied (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
