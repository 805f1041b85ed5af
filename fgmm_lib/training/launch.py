"""Starting a pretraining run on ``TrainConfig.nproc`` processes: :func:`launch`.

On one process, or in a rank that torchrun has already started, :func:`launch` calls
:func:`fgmm_lib.training.loop.pretrain` directly. With more processes it runs ``torchrun --standalone``
on this machine (:func:`fgmm_lib.training.distributed.torchrun_command`), with ``OMP_NUM_THREADS=1``
unless it is set. ``fgmm pretrain`` and the pretrain notebook start runs through it.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from fgmm_lib.training.distributed import indivisible_message, torchrun_command, world_size_from_env
from fgmm_lib.training.loop import pretrain


def launch(config: Any, resume: bool = False, progress: bool = True) -> Any:
    """Pretrain on ``config.nproc`` processes; return the run folder.

    One process (or a process torchrun started already) calls :func:`fgmm_lib.training.loop.pretrain`
    here; more run ``torchrun --standalone --nproc-per-node N -m fgmm_lib pretrain <config>`` and
    raise ChildProcessError naming its exit status when it fails.
    """
    from pathlib import Path


    if config.nproc == 1 or "TORCHELASTIC_RUN_ID" in os.environ or world_size_from_env() > 1:
        return pretrain(config, resume=resume, progress=progress)
    if config.batch_size % config.nproc:
        raise ValueError(indivisible_message(config.batch_size, config.nproc))
    options = []
    for name, value in config.to_dict().items():
        if name == "nproc":  # torchrun's parser takes --nproc for --nproc-per-node; the ranks read WORLD_SIZE
            continue
        options += [f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    options += (["--resume"] if resume else []) + ([] if progress else ["--quiet"])
    environment = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    finished = subprocess.run(torchrun_command(options, config.nproc), env=environment)
    if finished.returncode != 0:
        raise ChildProcessError(f"pretraining on {config.nproc} processes (TrainConfig.nproc) failed: torchrun "
                                f"exited with status {finished.returncode} (its output above says why)")
    return Path(config.out)
