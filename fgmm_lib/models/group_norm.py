"""GroupNorm with its residual add and ReLU in one pass over channels-last CPU activations.

:func:`norm_act` computes ``act(norm(x) + residual)``. With ``fused=True``, on float32 channels-last
CPU tensors, it runs the C kernel of ``group_norm.c``: two passes over the activations forward and
two backward, where PyTorch's channels-last GroupNorm, add and ReLU take about ten, so at batch 256
the video encoder's normalisations take a fifth of their time (``fgmm bench-train``). It computes the
same function (statistics summed in double; float32 rounding differs). Anything else (float64,
CUDA, another layout, no C compiler) takes the PyTorch operators.

The kernel is compiled on first use with the system's C compiler (``cc``, or ``$CC``) into
``$FGMM_CACHE`` (default ``~/.cache/fgmm_lib``), once per source and machine. If that fails, a
warning says why and the PyTorch operators run instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SOURCE = Path(__file__).with_name("group_norm.c")
_LIBRARY: Any = None
_LIBRARY_ERROR: str | None = None
_POOL: ThreadPoolExecutor | None = None


def cache_dir() -> Path:
    """Where the compiled kernel is kept: ``$FGMM_CACHE`` or ``~/.cache/fgmm_lib``."""
    return Path(os.environ.get("FGMM_CACHE") or Path.home() / ".cache" / "fgmm_lib")


def _compile() -> Any:
    source = SOURCE.read_bytes()
    compiler = os.environ.get("CC", "cc")
    flags = ["-O3", "-march=native", "-shared", "-fPIC"]
    key = hashlib.sha256(source + " ".join([compiler, *flags, platform.machine(), platform.node()]).encode()).hexdigest()
    target = cache_dir() / f"group_norm-{key[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([compiler, *flags, "-o", str(built), str(SOURCE), "-lm"],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise OSError(f"{compiler} failed on {SOURCE}: {result.stderr.strip()[:500]}")
            os.replace(built, target)
    library = ctypes.CDLL(str(target))
    pointer, long, double, integer = ctypes.c_void_p, ctypes.c_long, ctypes.c_double, ctypes.c_int
    library.group_norm_forward.argtypes = [pointer] * 7 + [long] * 5 + [double, integer]
    library.group_norm_backward.argtypes = [pointer] * 10 + [long] * 5 + [integer]
    return library


def kernel_available() -> bool:
    """Whether the C kernel is compiled and loaded (compiling it on first call)."""
    global _LIBRARY, _LIBRARY_ERROR
    if _LIBRARY is None and _LIBRARY_ERROR is None:
        try:
            _LIBRARY = _compile()
        except (OSError, subprocess.SubprocessError) as error:
            _LIBRARY_ERROR = str(error)
            warnings.warn(f"fused GroupNorm unavailable, using PyTorch's operators: {error}", RuntimeWarning,
                          stacklevel=3)
    return _LIBRARY is not None


def _split(batch: int, function: Any, *args: Any) -> None:
    """Run ``function(first, last, *args)`` over slices of the batch on torch's thread count (ctypes
    releases the GIL, so the slices run in parallel)."""
    global _POOL
    threads = max(1, min(torch.get_num_threads(), batch))
    if threads == 1:
        function(0, batch, *args)
        return
    if _POOL is None or _POOL._max_workers < threads:  # noqa: SLF001 (a pool sized once per thread count)
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fgmm-group-norm")
    bounds = [batch * index // threads for index in range(threads + 1)]
    for future in [_POOL.submit(function, bounds[i], bounds[i + 1], *args) for i in range(threads)]:
        future.result()


def _address(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _GroupNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None, groups: int,
                eps: float, relu: bool) -> Tensor:
        batch, channels = x.shape[:2]
        positions = x[0, 0].numel()
        weight_c, bias_c = weight.detach().contiguous(), bias.detach().contiguous()
        y = torch.empty_like(x)
        mean = x.new_empty(batch, groups)
        rstd = x.new_empty(batch, groups)

        def run(first: int, last: int) -> None:
            _LIBRARY.group_norm_forward(x.data_ptr(), weight_c.data_ptr(), bias_c.data_ptr(), _address(residual),
                                        y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), first, last, positions,
                                        channels, groups, eps, int(relu))

        _split(batch, run)
        ctx.save_for_backward(x, y, weight_c, mean, rstd)
        ctx.groups, ctx.relu, ctx.has_residual = groups, relu, residual is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, y, weight, mean, rstd = ctx.saved_tensors
        batch, channels = x.shape[:2]
        positions = x[0, 0].numel()
        groups = ctx.groups
        if not _channels_last(grad_y):
            grad_y = grad_y.contiguous(memory_format=_layout(x))
        grad_x = torch.empty_like(x)
        need_residual = ctx.has_residual and ctx.needs_input_grad[3]
        grad_residual = torch.empty_like(x) if need_residual else None
        sum_dy = torch.empty(batch, channels, dtype=torch.float64)
        sum_dyx = torch.empty(batch, channels, dtype=torch.float64)

        def run(first: int, last: int) -> None:
            _LIBRARY.group_norm_backward(grad_y.data_ptr(), x.data_ptr(), y.data_ptr(), weight.data_ptr(),
                                         mean.data_ptr(), rstd.data_ptr(), grad_x.data_ptr(), _address(grad_residual),
                                         sum_dy.data_ptr(), sum_dyx.data_ptr(), first, last, positions, channels,
                                         groups, int(ctx.relu))

        _split(batch, run)
        per_group = channels // groups
        mean_c = mean.double().repeat_interleave(per_group, dim=1)
        rstd_c = rstd.double().repeat_interleave(per_group, dim=1)
        grad_weight = ((sum_dyx - mean_c * sum_dy) * rstd_c).sum(0).to(weight.dtype)
        grad_bias = sum_dy.sum(0).to(weight.dtype)
        return grad_x, grad_weight, grad_bias, grad_residual, None, None, None


def _layout(x: Tensor) -> torch.memory_format:
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` [B, C, ...] lies in memory as [B, ..., C] (what the kernel reads)."""
    return x.permute(0, *range(2, x.dim()), 1).is_contiguous()


def kernel_applies(x: Tensor, norm: nn.GroupNorm, residual: Tensor | None = None) -> bool:
    """Whether :func:`norm_act` with ``fused=True`` would run the C kernel on these inputs."""
    if x.dim() not in (4, 5) or x.device.type != "cpu" or x.dtype != torch.float32 or not norm.affine:
        return False
    if norm.weight.dtype != torch.float32 or not _channels_last(x) or x.numel() == 0:
        return False
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or not _channels_last(residual)):
        return False
    return kernel_available()


def norm_act(x: Tensor, norm: nn.GroupNorm, residual: Tensor | None = None, relu: bool = True,
             fused: bool = False) -> Tensor:
    """``relu(norm(x) + residual)`` (no add without ``residual``, no ReLU with ``relu=False``); with
    ``fused=True`` in one C kernel where :func:`kernel_applies`, else with PyTorch's operators."""
    if fused and kernel_applies(x, norm, residual):
        return _GroupNormAct.apply(x, norm.weight, norm.bias, residual, norm.num_groups, norm.eps, relu)
    out = norm(x)
    if residual is not None:
        out = out + residual
    return torch.relu(out) if relu else out
