"""The parts of one training step, used by :func:`fgmm_lib.training.loop.pretrain` and :mod:`fgmm_lib.bench.train`.

- The loss of a batch: :func:`encode_batch` (both encoders, under bf16 autocast when asked, with
  outputs in float32), :func:`loss_of_outputs` and :func:`batch_loss`. :class:`RankLoss` is one
  rank's share of the global-batch loss, with the embeddings gathered across ranks
  (:func:`fgmm_lib.training.distributed.gathered_loss`), as one module for DistributedDataParallel.
- The schedule: :func:`lr_factor` (linear warmup, then cosine to 0), :class:`Schedule` (that factor
  as an object the scheduler's state_dict records), :func:`warmup_steps` and :func:`validation_steps`.
- :func:`parameter_groups` (weight decay on weights only), :func:`to_device` (the
  :data:`BATCH_KEYS` of a batch) and :func:`count_step_flops`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from fgmm_lib.io import reuse_freed_memory
from fgmm_lib.losses.modules import PairLoss
from fgmm_lib.models.encoders import DualEncoder, VideoEncoder
from fgmm_lib.runs.config import TrainConfig
from fgmm_lib.training.distributed import World, gathered_loss

#: Keys of the batch that the training step moves to the device.
BATCH_KEYS = ("video", "tokens", "token_mask", "candidate_tokens", "candidate_mask")


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


class Schedule:
    """The LR lambda as an object, so that the scheduler's state_dict records its parameters."""

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps)


def apply_fast_path(enabled: bool, video: VideoEncoder, loss_module: nn.Module | None = None) -> None:
    """Switch the parts of :attr:`~fgmm_lib.runs.config.TrainConfig.fast_path` outside the optimiser
    (whose part is ``AdamW(fused=True)``): the video encoder's formulation, the loss's single block,
    and, when enabled, freed memory kept for reuse (process-wide)."""
    video.use_fast_path(enabled)
    if hasattr(loss_module, "keep_single_block"):
        loss_module.keep_single_block = enabled
    if enabled:
        reuse_freed_memory()


def parameter_groups(model: nn.Module, loss_module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear / embedding weights only; none on biases, norms, temperatures."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            is_weight = name == "weight" and not isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm3d))
            (decay if is_weight else no_decay).append(parameter)
    no_decay.extend(loss_module.parameters())
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    non_blocking = device.type == "cuda"
    return {key: torch.as_tensor(batch[key]).to(device, non_blocking=non_blocking)
            for key in BATCH_KEYS if key in batch}


def count_step_flops(step: Any) -> tuple[Any, int]:
    """Run ``step()`` under FlopCounterMode; return its result and the FLOPs counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = step()
    return result, int(counter.get_total_flops())


class RankLoss(nn.Module):
    """This rank's share of the global-batch loss, as one module that DistributedDataParallel wraps."""

    def __init__(self, model: DualEncoder, loss_module: PairLoss, world: World, gather: str,
                 mixed_precision: bool) -> None:
        super().__init__()
        self.model, self.loss_module = model, loss_module
        self.world, self.gather, self.mixed_precision = world, gather, mixed_precision

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        outputs = encode_batch(self.model, self.loss_module, batch, self.mixed_precision)
        return gathered_loss(self.loss_module, outputs, self.world, self.gather)
