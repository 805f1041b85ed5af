"""Data-parallel pretraining on ``torch.distributed``: the process group, global negatives and the torchrun command.

A run on K processes (``torchrun --nproc-per-node K -m fgmm_lib pretrain ...``) computes the loss
of the same global batch as a 1-process run: every rank encodes its slice of the global batch,
the embeddings are gathered with their gradients, and the contrastive loss sees every clip and
every narration of the global batch as negatives. Two ways to gather (``TrainConfig.gather``, one of
:data:`fgmm_lib.runs.config.GATHERS`):

- ``"all"``: every rank gathers every embedding the loss uses (global embeddings for "coarse"
  and "milnce", MIL-NCE's candidates included; cell tokens, phrase tokens and phrase masks for
  the fine-grained aggregations) and computes the whole loss.
- ``"local"``: every rank scores only its own clips against every narration and its own
  narrations against every clip (``[B/K, B]`` score blocks, through the pair-score backend), as
  open_clip's ``local_loss`` does; the mean over ranks is the whole loss.

The gather's backward sums the gradients of every rank, and DistributedDataParallel averages
parameter gradients over ranks: with either variant each rank ends a step with the gradient of
the 1-process loss, so the weights agree with a 1-process run within float tolerance.

This module holds the process group (:class:`World`, :func:`init_world`, :func:`close_world`; the
collectives' timeout comes from :data:`TIMEOUT_ENV`, :func:`timeout_from_env`), :func:`gather_with_grad`,
:func:`gathered_loss` and :func:`torchrun_command`. :func:`fgmm_lib.training.launch.launch` starts a
run on ``TrainConfig.nproc`` processes.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
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


def indivisible_message(batch_size: int, processes: int) -> str:
    return (f"TrainConfig.batch_size {batch_size} (the global batch) is not divisible by the {processes} "
            f"processes; choose a multiple of {processes}")
