"""Encoders: a separable-3D video encoder and an n-gram text encoder (docs/study.md section 1).

The video encoder is in the S3D / R(2+1)D family: every 3D convolution is split into a
spatial ``1 x k x k`` convolution followed by a temporal ``k x 1 x 1`` one. It returns one
local token per cell of its final feature map (order: t-major, then row, then column) and a
global embedding from the mean-pooled feature map.

The text encoder embeds words, runs a 1D convolution with a window of ``ngram`` words over
them (one phrase per word position, M = L) and returns phrase tokens, the phrase mask and a
global embedding from the max over valid phrases (as MIL-NCE does).

Normalisation is GroupNorm throughout: it uses no batch statistics, so the encoders behave the
same at batch 4 and batch 256 and in train and eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fgmm_lib.models.group_norm import norm_act

# Channels of the stem and of each stage at width 1.0, and the (temporal, spatial) stride of
# each. Stem /2 spatially, stage 1 /2 spatially, stage 2 /2 spatially and temporally: an
# 8 x 32 x 32 clip gives a 4 x 4 x 4 token grid.
STEM_CHANNELS = 16
STAGE_CHANNELS = (32, 64)
STAGE_STRIDES = ((1, 2), (2, 2))
KERNEL = 3


@dataclass
class ModelConfig:
    """Sizes of the two encoders."""

    vocab_size: int = field(metadata={"help": "number of word ids (PAD = 0 and UNK = 1 included)"})
    dim: int = field(default=128, metadata={"help": "D: size of local tokens, phrases and global embeddings"})
    width: float = field(default=1.0, metadata={"help": "channel multiplier of the video encoder"})
    depth: int = field(default=1, metadata={"help": "separable conv blocks per stage of the video encoder"})
    word_dim: int = field(default=128, metadata={"help": "size of the word embeddings and phrase features"})
    ngram: int = field(default=3, metadata={"help": "phrase window of the text encoder, in words"})

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "depth", "word_dim", "ngram"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"ModelConfig.{name} must be an int, got {value!r}")
        if self.vocab_size < 2:
            raise ValueError(f"ModelConfig.vocab_size must be >= 2 (PAD and UNK), got {self.vocab_size}")
        for name in ("dim", "depth", "word_dim", "ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.width, (int, float)) or isinstance(self.width, bool):
            raise ValueError(f"ModelConfig.width must be a number, got {self.width!r}")
        if not math.isfinite(self.width) or self.width <= 0:
            raise ValueError(f"ModelConfig.width must be a positive finite number, got {self.width}")


def _scaled_channels(base: int, width: float) -> int:
    """Channels of a layer under the width multiplier (at least 4)."""
    return max(4, int(round(base * width)))


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (the largest group count <= 8 that divides ``channels``)."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class SeparableConv3d(nn.Module):
    """``1 x k x k`` spatial conv, GroupNorm, ReLU, then ``k x 1 x 1`` temporal conv.

    The spatial conv carries the spatial stride and the temporal conv the temporal stride.
    No activation after the temporal conv: the caller adds normalisation / residual / ReLU.

    ``temporal_2d`` (default False) runs the temporal conv as a 2D ``k x 1`` convolution over
    ``[B, C, T, H*W]``, a view of the channels-last clip (no copy). It computes the same function
    with the same weights (equal in float64; float32 sums differ in rounding) and, on a CPU, takes
    a third of the time of the 3D one at small batches (``fgmm bench-train`` measures both). The
    study's runs use the 3D one until their results are regenerated with the 2D one.
    """

    temporal_2d = False
    #: Normalisation and ReLU in one C kernel (:func:`fgmm_lib.models.group_norm.norm_act`).
    fused_norm = False

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        temporal_stride, spatial_stride = stride
        pad = KERNEL // 2
        # Intermediate width as in R(2+1)D: roughly the parameter count of the full 3D conv.
        full = KERNEL**3 * in_channels * out_channels
        mid = max(4, full // (KERNEL**2 * in_channels + KERNEL * out_channels))
        self.spatial = nn.Conv3d(
            in_channels, mid, (1, KERNEL, KERNEL), stride=(1, spatial_stride, spatial_stride),
            padding=(0, pad, pad), bias=False,
        )
        self.spatial_norm = _group_norm(mid)
        self.temporal = nn.Conv3d(
            mid, out_channels, (KERNEL, 1, 1), stride=(temporal_stride, 1, 1), padding=(pad, 0, 0), bias=False
        )
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = norm_act(self.spatial(x), self.spatial_norm, fused=self.fused_norm)
        return self._temporal_as_2d(x) if self.temporal_2d else self.temporal(x)

    def _temporal_as_2d(self, x: Tensor) -> Tensor:
        batch, _, frames, height, width = x.shape
        planes = x.permute(0, 2, 3, 4, 1).reshape(batch, frames, height * width, -1).permute(0, 3, 1, 2)
        out = nn.functional.conv2d(planes, self.temporal.weight.squeeze(-1), None,
                                   (self.temporal.stride[0], 1), (self.temporal.padding[0], 0))
        channels, frames_out = out.shape[1], out.shape[2]
        return out.permute(0, 2, 3, 1).reshape(batch, frames_out, height, width, channels).permute(0, 4, 1, 2, 3)

    def out_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Output (T, H, W) for an input of the given size."""
        temporal_stride, spatial_stride = self.stride
        pad = KERNEL // 2
        return (
            _conv_out(frames, KERNEL, temporal_stride, pad),
            _conv_out(height, KERNEL, spatial_stride, pad),
            _conv_out(width, KERNEL, spatial_stride, pad),
        )


class ResidualBlock(nn.Module):
    """One (2+1)D block: separable conv, GroupNorm, plus a shortcut, then ReLU."""

    fused_norm = False

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.conv = SeparableConv3d(in_channels, out_channels, stride)
        self.norm = _group_norm(out_channels)
        if in_channels == out_channels and stride == (1, 1):
            self.shortcut: nn.Module = nn.Identity()
        else:
            temporal_stride, spatial_stride = stride
            # kernel 1, so the output size is ceil(n / stride): the same as the padded k=3 conv.
            self.shortcut = nn.Sequential(
                nn.Conv3d(
                    in_channels, out_channels, 1, stride=(temporal_stride, spatial_stride, spatial_stride), bias=False
                ),
                _group_norm(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        if isinstance(self.shortcut, nn.Sequential):
            shortcut = norm_act(self.shortcut[0](x), self.shortcut[1], relu=False, fused=self.fused_norm)
        else:
            shortcut = x
        return norm_act(out, self.norm, shortcut, fused=self.fused_norm)

    def out_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return self.conv.out_size(frames, height, width)


class VideoEncoder(nn.Module):
    """S(2+1)D-style video encoder: clip ``[B, 3, T, H, W]`` in [0, 1] -> local tokens and global.

    Args:
        dim: D, the size of the local tokens and of the global embedding.
        width: channel multiplier (1.0 = 16 stem channels, then 32 and 64).
        depth: residual separable blocks per stage (>= 1).

    The stem halves H and W; stage 1 halves H and W; stage 2 halves T, H and W. For the
    default 8 x 32 x 32 clips the token grid is (4, 4, 4), N = 64.
    """

    def __init__(self, dim: int = 128, width: float = 1.0, depth: int = 1) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        stem_channels = _scaled_channels(STEM_CHANNELS, width)
        self.stem = SeparableConv3d(3, stem_channels, stride=(1, 2))
        self.stem_norm = _group_norm(stem_channels)
        blocks: list[ResidualBlock] = []
        in_channels = stem_channels
        for base, stride in zip(STAGE_CHANNELS, STAGE_STRIDES):
            out_channels = _scaled_channels(base, width)
            for block_index in range(depth):
                blocks.append(ResidualBlock(in_channels, out_channels, stride if block_index == 0 else (1, 1)))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.feature_channels = in_channels
        self.local_projection = nn.Conv3d(in_channels, dim, 1)
        self.global_projection = nn.Linear(in_channels, dim)
        self.dim = dim

    def features(self, video: Tensor) -> Tensor:
        """Final feature map ``[B, C, T', H', W']`` (before the projections)."""
        _check_video(video)
        # channels-last: the CPU convolutions run about 1.4x faster fwd+bwd in that layout.
        x = (video * 2.0 - 1.0).contiguous(memory_format=torch.channels_last_3d)
        x = norm_act(self.stem(x), self.stem_norm, fused=self.fused_norm)
        return self.blocks(x)

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Return local tokens ``[B, N, D]`` (t-major, then row, then column) and global ``[B, D]``."""
        feature_map = self.features(video)
        local = self.local_projection(feature_map).flatten(2).transpose(1, 2)
        global_embedding = self.global_projection(feature_map.mean(dim=(2, 3, 4)))
        return local, global_embedding

    fused_norm = False

    def use_fast_path(self, enabled: bool = True) -> VideoEncoder:
        """Temporal convs as 2D convs (:meth:`use_temporal_2d`) and every GroupNorm with its residual
        and ReLU in one C kernel (:mod:`fgmm_lib.models.group_norm`): the same function, faster on a CPU."""
        self.use_temporal_2d(enabled)
        for module in self.modules():
            if isinstance(module, (SeparableConv3d, ResidualBlock, VideoEncoder)):
                module.fused_norm = bool(enabled)
        return self

    def use_temporal_2d(self, enabled: bool = True) -> VideoEncoder:
        """Run every temporal conv as a 2D conv (:attr:`SeparableConv3d.temporal_2d`); same weights."""
        for module in self.modules():
            if isinstance(module, SeparableConv3d):
                module.temporal_2d = bool(enabled)
        return self

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', H', W') of the token grid for clips of ``frames`` x ``height`` x ``width``."""
        for name, value in (("frames", frames), ("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        size = self.stem.out_size(frames, height, width)
        for block in self.blocks:
            size = block.out_size(*size)
        return size


def _check_video(video: Tensor) -> None:
    if not isinstance(video, Tensor):
        raise TypeError(f"video must be a torch.Tensor [B, 3, T, H, W], got {type(video).__name__}")
    if video.dim() != 5:
        raise ValueError(f"video must have shape [B, 3, T, H, W], got {tuple(video.shape)}")
    if video.shape[1] != 3:
        raise ValueError(f"video must have 3 colour channels in dim 1 ([B, 3, T, H, W]), got shape {tuple(video.shape)}")
    if not video.is_floating_point():
        raise ValueError(f"video must be a float tensor in [0, 1], got dtype {video.dtype}")
    if video.shape[0] == 0 or min(video.shape[2:]) < 1:
        raise ValueError(f"video must have a non-empty batch, frames, height and width, got shape {tuple(video.shape)}")


def token_to_cell(index: int | Tensor, grid: tuple[int, int, int]) -> tuple:
    """Map a local-token index (or a tensor of them) to its (t, y, x) cell on the token grid.

    Tokens are ordered t-major, then row, then column: ``index = (t * H' + y) * W' + x``.
    """
    frames, height, width = (int(v) for v in grid)
    if min(frames, height, width) < 1:
        raise ValueError(f"grid must hold three positive sizes, got {tuple(grid)}")
    count = frames * height * width
    if isinstance(index, Tensor):
        if index.is_floating_point() or index.is_complex():
            raise ValueError(f"index must hold integers, got dtype {index.dtype}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= count):
            raise ValueError(f"index must lie in [0, {count}) for grid {tuple(grid)}, got values outside it")
        return index // (height * width), (index // width) % height, index % width
    index = int(index)
    if not 0 <= index < count:
        raise ValueError(f"index must lie in [0, {count}) for grid {tuple(grid)}, got {index}")
    return index // (height * width), (index // width) % height, index % width


class TextEncoder(nn.Module):
    """n-gram text encoder: token ids ``[B, L]`` + mask -> phrases ``[B, L, D]``, phrase mask, global.

    Word embeddings (PAD = 0 embeds to zero, and every padded position is zeroed before the
    convolution), then a 1D convolution with a window of ``ngram`` words and "same" padding,
    ReLU: one phrase feature per word position. Phrases = linear projection of those features
    (zero at padded positions); global = linear projection of their max over valid positions.
    """

    def __init__(self, vocab_size: int, dim: int = 128, word_dim: int = 128, ngram: int = 3) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        # "same" padding, done by hand so that even windows work too: (ngram - 1) // 2 words of
        # left context, the rest on the right.
        self.phrase_padding = ((ngram - 1) // 2, ngram - 1 - (ngram - 1) // 2)
        self.phrase_conv = nn.Conv1d(word_dim, word_dim, ngram)
        self.phrase_projection = nn.Linear(word_dim, dim)
        self.global_projection = nn.Linear(word_dim, dim)

    def forward(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return phrases ``[B, M, D]`` (M = L), phrase mask ``[B, M]`` (bool) and global ``[B, D]``."""
        _check_text(tokens, mask, self.vocab_size)
        mask = mask.bool()
        words = self.embedding(tokens) * mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        padded = nn.functional.pad(words.transpose(1, 2), self.phrase_padding)
        features = torch.relu(self.phrase_conv(padded)).transpose(1, 2)  # [B, L, word_dim]
        phrases = self.phrase_projection(features) * mask.unsqueeze(-1).to(features.dtype)
        pooled = features.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        return phrases, mask, self.global_projection(pooled)


def _check_text(tokens: Tensor, mask: Tensor, vocab_size: int) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must have shape [B, L], got {shape}")
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must hold integer word ids, got dtype {tokens.dtype}")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(tokens.shape):
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must have the shape of tokens {tuple(tokens.shape)}, got {shape}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be non-empty, got shape {tuple(tokens.shape)}")
    empty = ~mask.bool().any(dim=1)
    if bool(empty.any()):
        rows = torch.nonzero(empty).flatten().tolist()
        raise ValueError(f"mask leaves text(s) {rows[:10]} with no valid word")
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        raise ValueError(
            f"tokens must lie in [0, {vocab_size}) (the vocabulary size), got values in "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )


class DualEncoder(nn.Module):
    """The video and text encoders of one model, built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.video = VideoEncoder(dim=config.dim, width=config.width, depth=config.depth)
        self.text = TextEncoder(config.vocab_size, dim=config.dim, word_dim=config.word_dim, ngram=config.ngram)

    def encode_video(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Local tokens ``[B, N, D]`` and global ``[B, D]`` of a clip batch ``[B, 3, T, H, W]``."""
        return self.video(video)

    def encode_text(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Phrases ``[B, M, D]``, phrase mask ``[B, M]`` and global ``[B, D]`` of token ids ``[B, L]``."""
        return self.text(tokens, mask)
