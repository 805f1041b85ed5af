"""Data-parallel pretraining on ``torch.distributed``: process group, global negatives, launch.

A run on K processes (``torchrun --nproc-per-node K -m fgmm_lib pretrain ...``) computes the loss
of the same global batch as a 1-process run: every rank encodes its slice of the global batch,
the embeddings are gathered with their gradients, and the contrastive loss sees every clip and
every narration of the global batch as negatives. Two ways to gather (``TrainConfig.gather``):

- ``"all"``: every rank gathers every embedding the loss uses (global embeddings for "coarse"
  and "milnce", MIL-NCE's candidates included; cell tokens, phrase tokens and phrase masks for
  the fine-grained aggregations) and computes the whole loss.
- ``"local"``: every rank scores only its own clips against every narration and its own
  narrations against every clip (``[B/K, B]`` score blocks, through the pair-score backend), as
  open_clip's ``local_loss`` does; the mean over ranks is the whole loss.

The gather's backward sums the gradients of every rank, and DistributedDataParallel averages
parameter gradients over ranks: with either variant each rank ends a step with the gradient of
the 1-process loss, so the weights agree with a 1-process run within float tolerance.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["GATHERS", "TIMEOUT_ENV", "World", "world_size_from_env", "init_world", "close_world",
           "gather_with_grad", "gathered_loss", "torchrun_command", "launch"]

#: Ways to gather embeddings across ranks (see the module docstring).
GATHERS = ("all", "local")
#: Environment variable: seconds a collective may wait for another rank before the run stops.
TIMEOUT_ENV = "FGMM_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class World:
    """The processes of a run: this one's ``rank`` among ``size`` (size 1: no process group)."""

    rank: int = 0
    size: int = 1
    #: True when :func:`init_world` created the process group (and :func:`close_world` ends it).
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on the rank that writes the run folder."""
        return self.rank == 0


def world_size_from_env() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 outside torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {value!r}") from None
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {size}")
    return size


def timeout_from_env() -> datetime.timedelta:
    """How long a collective waits for the other ranks (``FGMM_DIST_TIMEOUT_S``, default 300 s)."""
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0, got {value!r}")
    return datetime.timedelta(seconds=seconds)


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes (gloo on the CPU, NCCL on CUDA); no group for 1 process."""
    size = world_size_from_env()
    if size == 1:
        return World()
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout_from_env()}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return World(dist.get_rank(), dist.get_world_size(), owns_group)


def close_world(world: World) -> None:
    """End the process group :func:`init_world` created (nothing for 1 process or a caller's group)."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of this rank's slice."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order; gradients reach every rank's slice."""
    if not tensor.requires_grad:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)
    return _GatherWithGrad.apply(tensor)


def _gather_mask(mask: Tensor) -> Tensor:
    return gather_with_grad(mask.to(torch.uint8)).bool()


def gathered_loss(loss_module: nn.Module, outputs: dict[str, Tensor], world: World, gather: str) -> Tensor:
    """This rank's share of the global-batch loss from its encoders' ``outputs``.

    ``outputs`` holds ``video_global`` and ``text_global`` (``[b, K, D]`` candidates for MIL-NCE),
    plus ``video_tokens``, ``text_tokens`` and ``text_mask`` for the fine-grained losses. With
    ``gather="all"`` every rank returns the whole loss; with ``"local"`` the loss of its own rows,
    whose mean over ranks is the whole loss.
    """
    names = ["video_global", "text_global"]
    if getattr(loss_module, "uses_tokens", False):
        names += ["video_tokens", "text_tokens"]
    gathered = {name: gather_with_grad(outputs[name]) for name in names}
    if "text_tokens" in gathered:
        gathered["text_mask"] = _gather_mask(outputs["text_mask"])
    rows = outputs["video_global"].shape[0]
    start = world.rank * rows
    if loss_module.needs_candidates:
        if gather == "all":
            return loss_module(gathered["video_global"], gathered["text_global"])
        return loss_module.local_forward(gathered["video_global"], gathered["text_global"], start, rows)
    arguments = (gathered.get("video_tokens"), gathered["video_global"], gathered.get("text_tokens"),
                 gathered["text_global"], gathered.get("text_mask"))
    if gather == "all":
        return loss_module(*arguments)
    return loss_module.local_forward(*arguments, start=start, count=rows)


def torchrun_command(options: list[str], nproc: int) -> list[str]:
    """The command that runs ``fgmm pretrain <options>`` on ``nproc`` processes of this machine."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    runner = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    return [*runner, "--standalone", f"--nproc-per-node={nproc}", "-m", "fgmm_lib", "pretrain", *options]


def launch(config: Any, resume: bool = False, progress: bool = True) -> Any:
    """Pretrain on ``config.nproc`` processes; return the run folder.

    One process (or a process torchrun started already) calls :func:`fgmm_lib.train.pretrain`
    here; more run ``torchrun --standalone --nproc-per-node N -m fgmm_lib pretrain <config>`` and
    raise ChildProcessError naming its exit status when it fails.
    """
    from pathlib import Path

    from fgmm_lib.train import pretrain

    if config.nproc == 1 or "TORCHELASTIC_RUN_ID" in os.environ or world_size_from_env() > 1:
        return pretrain(config, resume=resume, progress=progress)
    if config.batch_size % config.nproc:
        raise ValueError(_indivisible(config.batch_size, config.nproc))
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


def _indivisible(batch_size: int, processes: int) -> str:
    return (f"TrainConfig.batch_size {batch_size} (the global batch) is not divisible by the {processes} "
            f"processes; choose a multiple of {processes}")
