"""Starting a pretraining run on ``TrainConfig.nproc`` processes: :func:`launch`.

On one process, or in a rank that torchrun has already started, :func:`launch` calls
:func:`fgmm_lib.training.loop.pretrain` directly. With more processes it runs ``torchrun --standalone``
on this machine (:func:`fgmm_lib.training.distributed.torchrun_command`), with ``OMP_NUM_THREADS=1``
unless it is set. ``fgmm pretrain`` and the pretrain notebook start runs through it.

The run folder is locked for the whole run (:func:`fgmm_lib.io.output_lock`): a second run on the
same folder is refused. The processes of a run end with the launcher, whatever ends it:

- torchrun gets SIGTERM when the launcher dies, even by SIGKILL (a parent-death signal), and ends
  its ranks; a rank gets SIGTERM when torchrun dies;
- Ctrl-C or SIGTERM of the launcher (KeyboardInterrupt, :class:`fgmm_lib.io.Terminated`) passes
  SIGINT to torchrun, which passes it to the ranks and waits for them; the launcher waits for
  torchrun (a second Ctrl-C, or :data:`STOP_TIMEOUT_S` seconds, kills it), then re-raises. What
  torchrun and the ranks print while they stop is dropped: the caller reports the interruption once.
  The checkpoint of the last finished epoch is kept (it is written atomically).
"""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from fgmm_lib.io import die_with_parent, output_lock, parent_death_signal
from fgmm_lib.runs.config import check_backend
from fgmm_lib.training.distributed import indivisible_message, torchrun_command, world_size_from_env
from fgmm_lib.training.loop import pretrain

#: Set for the ranks that :func:`launch` starts: the launcher's pid (it holds the run folder's lock).
LAUNCHER_ENV = "FGMM_LAUNCHER_PID"
#: Seconds the launcher waits for torchrun to stop its ranks after Ctrl-C or SIGTERM before killing it.
STOP_TIMEOUT_S = 45.0


def launch(config: Any, resume: bool = False, progress: bool = True) -> Any:
    """Pretrain on ``config.nproc`` processes; return the run folder.

    One process (or a process torchrun started already) calls :func:`fgmm_lib.training.loop.pretrain`
    here; more run ``torchrun --standalone --nproc-per-node N -m fgmm_lib pretrain <config>`` and
    raise ChildProcessError naming its exit status when it fails. A backend this machine cannot run
    is refused before anything is written (:func:`fgmm_lib.runs.config.check_backend`), and a run
    folder that another process writes with :class:`fgmm_lib.io.FolderBusyError`.
    """
    check_backend(config)
    if "TORCHELASTIC_RUN_ID" in os.environ or world_size_from_env() > 1:
        return _run_rank(config, resume, progress)
    if config.batch_size % config.nproc:
        raise ValueError(indivisible_message(config.batch_size, config.nproc))
    with output_lock(config.out) as lock:
        if config.nproc == 1:
            return pretrain(config, resume=resume, progress=progress)
        _run_torchrun(config, resume, progress, lock.descriptor)
    return Path(config.out)


def launched_rank() -> bool:
    """True in a rank that :func:`launch` started (its launcher reports for the whole run)."""
    return LAUNCHER_ENV in os.environ


def _run_rank(config: Any, resume: bool, progress: bool) -> Any:
    """One rank of a run torchrun started: it dies with torchrun; rank 0 locks the run folder unless
    :func:`launch` holds the lock already."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
        launcher = os.environ.get(LAUNCHER_ENV)
        if launcher and not _alive(int(launcher)):  # the launcher died before this rank could arm the signal
            os.kill(os.getpid(), signal.SIGTERM)
    if launched_rank() or os.environ.get("RANK", "0") != "0":
        return pretrain(config, resume=resume, progress=progress)
    with output_lock(config.out):
        return pretrain(config, resume=resume, progress=progress)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_torchrun(config: Any, resume: bool, progress: bool, lock: int | None) -> None:
    options = []
    for name, value in config.to_dict().items():
        if name == "nproc":  # torchrun's parser takes --nproc for --nproc-per-node; the ranks read WORLD_SIZE
            continue
        options += [f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    options += (["--resume"] if resume else []) + ([] if progress else ["--quiet"])
    environment = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                       **{LAUNCHER_ENV: str(os.getpid())})
    # A session of its own: Ctrl-C reaches the launcher alone, which stops torchrun (and torchrun the ranks).
    # The preexec_fn only calls prctl, through a function built before the fork.
    posix = os.name == "posix"
    process = subprocess.Popen(torchrun_command(options, config.nproc), env=environment, stderr=subprocess.PIPE,
                               start_new_session=True,
                               preexec_fn=parent_death_signal(os.getpid()) if posix else None,  # noqa: PLW1509
                               pass_fds=() if lock is None or not posix else (lock,))
    relay = _Relay(process.stderr)
    try:
        status = process.wait()
    except BaseException:
        relay.mute()
        _stop(process)
        raise
    finally:
        relay.join(10.0)
    if status != 0:
        raise ChildProcessError(f"pretraining on {config.nproc} processes (TrainConfig.nproc) failed: torchrun "
                                f"exited with status {status} (its output above says why)")


def _stop(process: subprocess.Popen) -> None:
    """Stop torchrun and its ranks: SIGINT, which torchrun passes on; SIGKILL after STOP_TIMEOUT_S or a
    second interruption (the ranks then get their parent-death SIGTERM)."""
    try:
        process.send_signal(signal.SIGINT)
        process.wait(STOP_TIMEOUT_S)
    except BaseException:  # noqa: BLE001 - a second Ctrl-C, SIGTERM or the timeout: stop at once
        process.kill()
        process.wait()


class _Relay(threading.Thread):
    """Copies torchrun's stderr (and its ranks') to ``sys.stderr`` until muted."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        super().__init__(name="torchrun-stderr", daemon=True)
        self.stream = stream
        self.muted = False
        self.start()

    def mute(self) -> None:
        self.muted = True

    def run(self) -> None:
        if self.stream is None:
            return
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        handle = self.stream.fileno()
        while True:
            try:
                data = os.read(handle, 65536)
            except OSError:
                break
            if not data:
                break
            text = decoder.decode(data)
            if text and not self.muted:
                try:
                    sys.stderr.write(text)
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
        self.stream.close()
