"""The loss benchmark: forward + backward time and peak memory of the pair-score backends.

``bench_loss`` times one InfoNCE step on random tokens, ``pair_scores(..., backend=b)`` then
``L = ½ [CE(S / 0.07, diag) + CE(Sᵀ / 0.07, diag)]`` and ``L.backward()``, for every backend,
aggregation and size of the grid, and writes (each file atomically):

- ``loss.csv``: one row per (backend, aggregation, B, N, M) with its status, time and peak memory;
- ``loss.png``: time and peak memory against B, one line per backend, one panel per
  aggregation and (N, M);
- ``summary.json``: the targets of the benchmark evaluated on this run, and the largest batch
  each backend fits in a fixed memory budget.

Peak memory is the extra memory one step needs above what is held before it (the inputs):

- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the step.
- CPU: the kernel's high-water mark of this process' resident memory (``VmHWM``, reset by
  writing 5 to ``/proc/self/clear_refs``) minus the resident memory before the step. It comes
  from a pass over the grid of its own, before the timed pass: per configuration, one step after
  an untimed one. For that pass glibc is told to serve every allocation of 128 KiB or more with
  its own mmap (``mallopt``) and to give freed memory back before the step (``malloc_trim``), so
  that memory freed by an earlier step cannot hide a later step's allocations. This counts pages
  really touched, allocator overhead included; it needs Linux with glibc and reports ``nan``
  elsewhere.

CPU times come from the timed pass, with glibc's steady-state setting (blocks under 32 MiB are
reused from the heap, not mapped afresh): the exact setting maps and zero-fills every freed and
reallocated block, which made the chunked backend, with its many block-sized temporaries, 2.8x
slower than it runs in training (5.6 s against 2.0 s at B = 256, N = 64, M = 16, D = 256), while
the naive backend's few large tensors are mapped afresh in either setting.

Statuses: ``ok``; ``oom`` (the step ran out of memory); ``over_budget`` (it ran, but its peak
exceeded ``memory_budget_gib``); ``skipped`` (not run: its estimated peak exceeds the budget
or, on CPU, 70 % of the available RAM; the triton backend off CUDA; the time limit; the reason
column says which); ``error`` (any other exception, its message in the reason column).

Peer: lucidrains/x-clip computes FILIP inside ``CLIP.forward`` (with its encoders and
projections), not as a function of token embeddings; its similarity step is the dense
``einsum('x t d, y i d -> x y t i')`` followed by max and mean, which is what the ``naive``
backend does for the ``max`` aggregation, so the naive ``max`` rows stand for that peer.
"""

from __future__ import annotations

import ctypes
import gc
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fgmm_lib.io import write_atomic, write_json
from fgmm_lib.losses.scores import AGGREGATIONS, CHUNK_MEMORY_BUDGET_BYTES, pair_scores

BENCH_BACKENDS = ("naive", "chunked", "triton")
#: Aggregations the benchmark times by default: those with fused kernels (the others of
#: ``AGGREGATIONS`` share the attention form and, on "triton", fall back to the chunked backend).
BENCH_AGGREGATIONS = ("mean", "max", "attention")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INFO_NCE_TEMPERATURE = 0.07
#: Peak memory of the naive backend, in multiples of one [B, B, N, M] tensor (measured on CPU for
#: attention, the largest: about 6; max about 4.6, mean about 2.7).
NAIVE_WORKING_COPIES = 6.5
#: Fixed budget for "the largest batch each backend fits" when no memory_budget_gib is given.
DEFAULT_FIT_BUDGET_GIB = {"cpu": 1.0, "cuda": 16.0}
#: CPU steps up to this many counted GFLOP get an untimed warm-up run (larger ones: none).
CPU_WARMUP_MAX_GFLOP = 50.0
#: Share of the available RAM that a CPU configuration may be estimated to need before it is skipped.
CPU_RAM_SHARE = 0.7

#: The targets the benchmark evaluates (the sizes they read).
CPU_TARGET = {"batch": 256, "cells": 64, "phrases": 16, "max_memory_ratio": 1 / 8, "max_time_ratio": 1.5}
GPU_TARGET = {"batch": 1024, "cells": 196, "phrases": 32, "dim": 256, "dtype": "bfloat16",
              "min_matmul_fraction": 0.4}

#: The CPU sweep run by ``bench_loss_cpu`` (2 cores: a few minutes). The full grid of
#: ``bench_loss`` goes to B = 1024 and N = 196, where the naive backend needs up to ~600 GiB.
CPU_SWEEP: dict[str, Any] = {
    "batch_sizes": (32, 64, 128, 256),
    "cells": (16, 64),
    "phrases": (16,),
    "dim": 256,
    "dtype": "float32",
    "backends": BENCH_BACKENDS,
    "aggregations": BENCH_AGGREGATIONS,
    "repeats": 3,
}
#: The tiny grid of ``quick=True``.
QUICK_SWEEP: dict[str, Any] = {"batch_sizes": (8, 16), "cells": (16,), "phrases": (8,), "dim": 32, "repeats": 1}

CSV_COLUMNS = [
    "backend", "aggregation", "batch", "cells", "phrases", "dim", "dtype", "device", "status", "reason",
    "time_ms", "time_ms_min", "peak_mib", "estimated_mib", "gflop", "tflops", "repeats",
]


# --------------------------------------------------------------------------------------------
# memory measurement
# --------------------------------------------------------------------------------------------


#: glibc ``mallopt`` parameters and the settings of the two kinds of CPU run (module docstring).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_EXACT_MMAP_THRESHOLD = 128 * 1024  # every block of 128 KiB or more mapped on its own, unmapped on free
_REUSE_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest dynamic threshold (64-bit): its steady state
_REUSE_TRIM_THRESHOLD = 2 * _REUSE_MMAP_THRESHOLD  # what glibc's dynamic mode pairs with it


class _CpuMemory:
    """Peak resident memory of one step above the resident memory before it (Linux + glibc), and
    times of steps with the allocator in its steady state."""

    def __init__(self) -> None:
        self.libc: Any = None
        self.available = False
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, _EXACT_MMAP_THRESHOLD)
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.libc = libc
            self.available = self._status_bytes("VmHWM:") is not None
        except (OSError, AttributeError):
            self.available = False

    @staticmethod
    def _status_bytes(key: str) -> int | None:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def timed(self, step: Callable[[], None]) -> float:
        """Seconds of ``step`` with glibc reusing freed blocks under 32 MiB, as it does by default once
        a program has freed a large block (a training loop, a benchmark's repeats)."""
        if self.libc is not None:
            self.libc.mallopt(_M_MMAP_THRESHOLD, _REUSE_MMAP_THRESHOLD)
            self.libc.mallopt(_M_TRIM_THRESHOLD, _REUSE_TRIM_THRESHOLD)
        return _timed(step)

    def measure(self, step: Callable[[], None]) -> tuple[float, float]:
        """Run ``step``; return its seconds and its peak extra resident bytes (nan where unavailable).
        The seconds include mapping every block afresh: report times from ``timed``."""
        if not self.available:
            return _timed(step), math.nan
        self.libc.mallopt(_M_MMAP_THRESHOLD, _EXACT_MMAP_THRESHOLD)
        self.libc.mallopt(_M_TRIM_THRESHOLD, _EXACT_MMAP_THRESHOLD)
        gc.collect()
        self.libc.malloc_trim(0)
        before = self._status_bytes("VmRSS:")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        seconds = _timed(step)
        peak = self._status_bytes("VmHWM:")
        return seconds, float(max(0, peak - before)) if peak is not None and before is not None else math.nan


def _timed(step: Callable[[], None], device: torch.device | None = None) -> float:
    start = time.perf_counter()
    step()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _cuda_measure(step: Callable[[], None], device: torch.device) -> tuple[float, float]:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(step, device)
    return seconds, float(torch.cuda.max_memory_allocated(device) - before)


def available_ram_bytes() -> int | None:
    """MemAvailable of /proc/meminfo, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------------------------
# one configuration
# --------------------------------------------------------------------------------------------


def counted_flops(batch: int, cells: int, phrases: int, dim: int) -> float:
    """Forward + backward multiply-adds of the similarity, counted as the targets count them:
    2 * Bv * Bt * N * M * D forward, three times that for forward plus backward."""
    return 3.0 * 2.0 * batch * batch * cells * phrases * dim


def estimated_peak_bytes(backend: str, batch: int, cells: int, phrases: int, dim: int, element_size: int) -> float:
    """A rough upper estimate of one step's extra memory, used only to skip hopeless configurations."""
    grads = 2 * batch * (cells + phrases) * dim * 4
    pairs = batch * batch
    if backend == "naive":
        return NAIVE_WORKING_COPIES * pairs * cells * phrases * element_size + grads
    if backend == "chunked":
        dense = NAIVE_WORKING_COPIES * pairs * cells * phrases * element_size
        return min(dense, 1.5 * CHUNK_MEMORY_BUDGET_BYTES) + 8 * pairs * 4 + grads
    return pairs * (2 * phrases + 8) * 4 + 3 * grads


def _make_inputs(batch: int, cells: int, phrases: int, dim: int, dtype: torch.dtype, device: torch.device,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, cells, dim, generator=generator).to(device=device, dtype=dtype)
    text = torch.randn(batch, phrases, dim, generator=generator).to(device=device, dtype=dtype)
    lengths = torch.randint(max(1, phrases // 2), phrases + 1, (batch,), generator=generator)
    text_mask = (torch.arange(phrases)[None, :] < lengths[:, None]).to(device)
    return video.requires_grad_(), text.requires_grad_(), text_mask


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _run_config(backend: str, aggregation: str, batch: int, cells: int, phrases: int, dim: int, dtype_name: str,
                device: torch.device, repeats: int, budget_bytes: float | None, cpu_memory: _CpuMemory | None,
                seed: int, peak_run: bool = False) -> dict[str, Any]:
    """One configuration's row: ``repeats`` timed steps (on CUDA with their peak memory), or with
    ``peak_run`` the untimed CPU step that measures peak memory (``_CpuMemory.measure``)."""
    dtype = DTYPES[dtype_name]
    row: dict[str, Any] = {
        "backend": backend, "aggregation": aggregation, "batch": batch, "cells": cells, "phrases": phrases,
        "dim": dim, "dtype": dtype_name, "device": device.type, "status": "ok", "reason": "",
        "time_ms": math.nan, "time_ms_min": math.nan, "peak_mib": math.nan,
        "estimated_mib": estimated_peak_bytes(backend, batch, cells, phrases, dim, dtype.itemsize) / 2**20,
        "gflop": counted_flops(batch, cells, phrases, dim) / 1e9, "tflops": math.nan, "repeats": 0,
    }
    estimate = row["estimated_mib"] * 2**20
    if backend == "triton" and device.type != "cuda":
        row.update(status="skipped", reason="the triton backend is benchmarked on CUDA only")
        return row
    if budget_bytes is not None and estimate > budget_bytes:
        row.update(status="skipped",
                   reason=f"estimated {estimate / 2**30:.1f} GiB > budget {budget_bytes / 2**30:.1f} GiB")
        return row
    if device.type == "cpu":
        ram = available_ram_bytes()
        if ram is not None and estimate > CPU_RAM_SHARE * ram:
            row.update(status="skipped",
                       reason=f"estimated {estimate / 2**30:.1f} GiB > {CPU_RAM_SHARE:.0%} of available RAM")
            return row

    video, text, text_mask = _make_inputs(batch, cells, phrases, dim, dtype, device, seed)
    target = torch.arange(batch, device=device)

    def step() -> None:
        video.grad = None
        text.grad = None
        scores = pair_scores(video, text, text_mask, aggregation=aggregation, backend=backend).float()
        logits = scores / INFO_NCE_TEMPERATURE
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        loss.backward()

    def measure() -> tuple[float, float]:
        if device.type == "cuda":
            return _cuda_measure(step, device)
        if cpu_memory is None:
            return _timed(step), math.nan
        return cpu_memory.timed(step), math.nan

    times: list[float] = []
    peaks: list[float] = []
    try:
        if peak_run:
            assert cpu_memory is not None
            # after an untimed step: the first step of a size grows the allocator's per-thread arenas
            # (chunked attention at B = 256, N = 64: 109 MiB on a first step, 88 MiB on every later one)
            _timed(step)
            peaks.append(cpu_memory.measure(step)[1])
        else:
            if device.type == "cuda" or row["gflop"] <= CPU_WARMUP_MAX_GFLOP:
                # warm-up: kernel compilation, lazy initialisation and allocator growth stay out of
                # the numbers (on CPU only for small steps, where they would dominate)
                _timed(step, device)
            for _ in range(repeats):
                seconds, peak = measure()
                times.append(seconds)
                peaks.append(peak)
    except Exception as error:  # noqa: BLE001 - every failure becomes a row, the sweep goes on
        status = "oom" if _is_out_of_memory(error) else "error"
        row.update(status=status, reason=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                   if str(error) else type(error).__name__)
    finally:
        del video, text
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if peaks and not all(math.isnan(p) for p in peaks):
        row["peak_mib"] = float(np.nanmax(peaks)) / 2**20
    if times:
        row["time_ms"] = 1e3 * float(np.median(times))
        row["time_ms_min"] = 1e3 * float(min(times))
        row["tflops"] = row["gflop"] / 1e3 / (row["time_ms"] / 1e3)
        row["repeats"] = len(times)
    return row


def _check_budget(row: dict[str, Any], budget_bytes: float | None) -> dict[str, Any]:
    """Mark a row that ran but peaked above the budget as "over_budget"."""
    if row["status"] == "ok" and budget_bytes is not None and row["peak_mib"] * 2**20 > budget_bytes:
        row.update(status="over_budget", reason=f"peak {row['peak_mib'] / 1024:.2f} GiB > budget")
    return row


# --------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------


def matmul_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16, size: int = 8192,
                  repeats: int = 10) -> float:
    """Measured dense matmul rate (TFLOP/s) of ``size``-square matrices on ``device``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2.0 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def _check_choices(values: Iterable[Any], allowed: Sequence[Any], name: str) -> tuple[Any, ...]:
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    for value in values:
        if value not in allowed:
            raise ValueError(f"unknown {name[:-1] if name.endswith('s') else name} {value!r}; valid: {', '.join(map(str, allowed))}")
    return values


def _check_sizes(values: Iterable[int], name: str) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")
    return tuple(int(v) for v in values)


def _target_first(config: tuple[Any, ...]) -> tuple[int, ...]:
    """Sort key: the configurations the targets read first (so a time limit never drops them)."""
    backend, _, batch, cells, phrases = config
    is_target = any(batch == t["batch"] and cells == t["cells"] and phrases == t["phrases"]
                    for t in (CPU_TARGET, GPU_TARGET))
    # within the targets, the fused backend first: a slow chunked step must not use up the time limit
    return (0 if is_target else 1, 0 if backend == "triton" else 1, batch * batch * cells * phrases)


def bench_loss(
    out_dir: str | Path = "results/bench",
    device: str | torch.device | None = None,
    batch_sizes: Sequence[int] = (32, 64, 128, 256, 512, 1024),
    cells: Sequence[int] = (16, 64, 196),
    phrases: Sequence[int] = (16, 32),
    dim: int = 256,
    dtype: str = "float32",
    backends: Sequence[str] = BENCH_BACKENDS,
    aggregations: Sequence[str] = BENCH_AGGREGATIONS,
    memory_budget_gib: float | None = None,
    repeats: int = 3,
    quick: bool = False,
    progress: bool = True,
    max_seconds: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Time forward + backward of one InfoNCE step and measure its peak memory, per backend,
    aggregation, batch size B (= Bv = Bt), cells N and phrases M; write loss.csv, loss.png and
    summary.json into ``out_dir`` and return the table.

    Args:
        out_dir: folder of the outputs (created; files replaced atomically).
        device: "cpu", "cuda", ... ; None = CUDA when available, else CPU.
        batch_sizes, cells, phrases, dim: the grid (D = ``dim``).
        dtype: "float32", "bfloat16" or "float16" (inputs; accumulation as each backend does).
        backends: subset of ("naive", "chunked", "triton").
        aggregations: subset of ``AGGREGATIONS`` (default ``BENCH_AGGREGATIONS``).
        memory_budget_gib: configurations estimated above it are skipped, measured above it are
            "over_budget"; also the budget of "the largest batch each backend fits" (default
            ``DEFAULT_FIT_BUDGET_GIB`` of the device type).
        repeats: timed runs per configuration (median reported; CUDA adds one untimed warm-up, CPU
            two untimed runs for the peak memory, in a pass of its own before the timed one).
        quick: replace the grid by the tiny ``QUICK_SWEEP`` (and D by at most its dim).
        progress: show a progress bar.
        max_seconds: stop starting configurations after this long (the rest become "skipped");
            the configurations the targets read run first.
        seed: seed of the random inputs.
    """
    backends = _check_choices(backends, BENCH_BACKENDS, "backends")
    aggregations = _check_choices(aggregations, AGGREGATIONS, "aggregations")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if quick:
        batch_sizes, cells, phrases = QUICK_SWEEP["batch_sizes"], QUICK_SWEEP["cells"], QUICK_SWEEP["phrases"]
        dim, repeats = min(int(dim), QUICK_SWEEP["dim"]), QUICK_SWEEP["repeats"]
    batch_sizes = _check_sizes(batch_sizes, "batch_sizes")
    cells = _check_sizes(cells, "cells")
    phrases = _check_sizes(phrases, "phrases")
    (dim,) = _check_sizes((dim,), "dim")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if memory_budget_gib is not None and not memory_budget_gib > 0:
        raise ValueError(f"memory_budget_gib must be > 0 or None, got {memory_budget_gib!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds!r}")
    torch_device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available")
    budget_bytes = memory_budget_gib * 2**30 if memory_budget_gib is not None else None
    out = Path(out_dir)

    cpu_memory = _CpuMemory() if torch_device.type == "cpu" else None
    configs = sorted(
        ((b, a, batch, n, m) for b in backends for a in aggregations for batch in batch_sizes
         for n in cells for m in phrases),
        key=_target_first,
    )
    # On CPU, peak memory and time come from separate passes over the grid: every peak first, with
    # the exact allocator setting, then every timed run, with the steady-state one (module docstring;
    # a peak measured after timed runs sees their freed blocks still resident).
    peak_pass = cpu_memory is not None and cpu_memory.available
    passes = (True, False) if peak_pass else (False,)
    units: list[Any] = [(peak_run, index, config) for peak_run in passes for index, config in enumerate(configs)]
    iterator: Iterable[Any] = units
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(units, desc="bench-loss", unit="run")
    started = time.perf_counter()
    peak_rows: dict[int, dict[str, Any]] = {}
    rows = []
    for peak_run, index, (backend, aggregation, batch, n, m) in iterator:
        peak_row = peak_rows.get(index) if not peak_run else None
        if peak_row is not None and peak_row["status"] != "ok":
            rows.append(peak_row)  # skipped, out of memory or failed in the peak pass: not timed
            continue
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            row = {
                "backend": backend, "aggregation": aggregation, "batch": batch, "cells": n, "phrases": m,
                "dim": dim, "dtype": dtype, "device": torch_device.type, "status": "skipped",
                "reason": f"time limit of {max_seconds:.0f} s reached",
                "time_ms": math.nan, "time_ms_min": math.nan, "peak_mib": math.nan,
                "estimated_mib": estimated_peak_bytes(backend, batch, n, m, dim, DTYPES[dtype].itemsize) / 2**20,
                "gflop": counted_flops(batch, n, m, dim) / 1e9, "tflops": math.nan, "repeats": 0,
            }
        else:
            row = _run_config(backend, aggregation, batch, n, m, dim, dtype, torch_device, repeats, budget_bytes,
                              cpu_memory, seed + index, peak_run=peak_run)
        if peak_run:
            peak_rows[index] = row
            continue
        if peak_row is not None and row["status"] == "ok":
            row["peak_mib"] = peak_row["peak_mib"]
        rows.append(_check_budget(row, budget_bytes))

    table = pd.DataFrame(rows, columns=CSV_COLUMNS).sort_values(
        ["aggregation", "cells", "phrases", "backend", "batch"], kind="stable").reset_index(drop=True)
    matmul_rate = None
    if torch_device.type == "cuda":
        matmul_rate = matmul_tflops(torch_device, torch.bfloat16)
    fit_budget_gib = memory_budget_gib if memory_budget_gib is not None else DEFAULT_FIT_BUDGET_GIB.get(
        torch_device.type, DEFAULT_FIT_BUDGET_GIB["cpu"])
    device_name = (torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda"
                   else platform.processor() or platform.machine())
    summary = summarize(table, torch_device.type, device_name, dtype, matmul_rate, fit_budget_gib,
                        memory_measure=("torch.cuda.max_memory_allocated" if torch_device.type == "cuda"
                                        else "process VmHWM above VmRSS before the step"
                                        if cpu_memory is not None and cpu_memory.available else "unavailable"))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "loss.csv", lambda path: table.to_csv(path, index=False))
    write_json(out / "summary.json", summary)
    write_atomic(out / "loss.png", lambda path: plot_loss_bench(table, path))
    return table


def bench_loss_cpu(out_dir: str | Path = "results/bench", progress: bool = True) -> pd.DataFrame:
    """The CPU sweep (``CPU_SWEEP``: B up to 256, N in (16, 64), M = 16, D = 256, float32, 2
    repeats): the sizes whose naive step fits a few GiB and runs in seconds on 2 cores, the
    CPU target's B = 256, N = 64, M = 16 included. A few minutes on 2 cores."""
    return bench_loss(out_dir=out_dir, device="cpu", progress=progress, **CPU_SWEEP)


# --------------------------------------------------------------------------------------------
# summary and plot
# --------------------------------------------------------------------------------------------


def _row(table: pd.DataFrame, **where: Any) -> pd.Series | None:
    mask = np.ones(len(table), dtype=bool)
    for key, value in where.items():
        mask &= (table[key] == value).to_numpy()
    rows = table[mask]
    return rows.iloc[0] if len(rows) else None


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summarize(table: pd.DataFrame, device_type: str, device_name: str, dtype: str, matmul_rate: float | None,
              fit_budget_gib: float, memory_measure: str) -> dict[str, Any]:
    """The targets evaluated on ``table`` (CPU target on a CPU run, GPU target on a CUDA run) and the
    largest batch each backend fits in ``fit_budget_gib`` (status ok and measured peak within it)."""
    summary: dict[str, Any] = {
        "device": device_type,
        "device_name": device_name,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": dtype,
        "memory_measure": memory_measure,
        "matmul_bf16_tflops": matmul_rate,
        "targets": {},
    }
    try:
        import triton

        summary["triton"] = triton.__version__
    except ImportError:
        summary["triton"] = None

    cpu_checks = []
    for aggregation in sorted(set(table["aggregation"])):
        where = {"aggregation": aggregation, "batch": CPU_TARGET["batch"], "cells": CPU_TARGET["cells"],
                 "phrases": CPU_TARGET["phrases"]}
        naive, chunked = _row(table, backend="naive", **where), _row(table, backend="chunked", **where)
        if naive is None or chunked is None or device_type != "cpu":
            continue
        check: dict[str, Any] = {"aggregation": aggregation, "naive_status": naive["status"],
                                 "chunked_status": chunked["status"]}
        if naive["status"] == "ok" and chunked["status"] == "ok":
            memory_ratio = chunked["peak_mib"] / naive["peak_mib"]
            # the fastest of each backend's repeats: a step of seconds on a shared CPU is slowed by
            # whatever else runs, never sped up, so the best run is the stable estimate of each
            time_ratio = chunked["time_ms_min"] / naive["time_ms_min"]
            check.update(naive_peak_mib=_number(naive["peak_mib"]), chunked_peak_mib=_number(chunked["peak_mib"]),
                         memory_ratio=_number(memory_ratio), naive_time_ms=_number(naive["time_ms_min"]),
                         chunked_time_ms=_number(chunked["time_ms_min"]), time_ratio=_number(time_ratio),
                         memory_ok=bool(memory_ratio <= CPU_TARGET["max_memory_ratio"]),
                         time_ok=bool(time_ratio <= CPU_TARGET["max_time_ratio"]))
            check["passed"] = check["memory_ok"] and check["time_ok"]
        else:
            check["passed"] = None
        cpu_checks.append(check)
    if cpu_checks:
        summary["targets"]["cpu_chunked_vs_naive"] = {
            "rule": "at B=256, N=64, M=16: chunked peak <= 1/8 of naive's and time <= 1.5x naive's "
                    "(times: the fastest of each backend's repeats)",
            "dim": int(table["dim"].iloc[0]),
            "per_aggregation": cpu_checks,
            "passed": all(c["passed"] for c in cpu_checks) if all(c["passed"] is not None for c in cpu_checks)
            else None,
        }

    gpu_checks = []
    for aggregation in sorted(set(table["aggregation"])):
        where = {"aggregation": aggregation, "batch": GPU_TARGET["batch"], "cells": GPU_TARGET["cells"],
                 "phrases": GPU_TARGET["phrases"], "dim": GPU_TARGET["dim"]}
        triton_row = _row(table, backend="triton", **where)
        if triton_row is None or device_type != "cuda":
            continue
        naive = _row(table, backend="naive", **where)
        fraction = (triton_row["tflops"] / matmul_rate) if matmul_rate and triton_row["status"] == "ok" else None
        check = {
            "aggregation": aggregation,
            "naive_status": None if naive is None else naive["status"],
            "triton_status": triton_row["status"],
            "triton_time_ms": _number(triton_row["time_ms"]),
            "triton_peak_mib": _number(triton_row["peak_mib"]),
            "triton_tflops": _number(triton_row["tflops"]),
            "matmul_fraction": _number(fraction),
            "triton_runs_where_naive_does_not": bool(triton_row["status"] == "ok" and naive is not None
                                                     and naive["status"] in ("oom", "skipped", "over_budget")),
            "rate_ok": None if fraction is None else bool(fraction >= GPU_TARGET["min_matmul_fraction"]),
        }
        check["passed"] = bool(check["triton_runs_where_naive_does_not"] and check["rate_ok"])
        gpu_checks.append(check)
    if gpu_checks:
        summary["targets"]["gpu_triton"] = {
            "rule": "at B=1024, N=196, M=32, D=256 in bfloat16: triton runs where naive runs out of memory and "
                    "reaches >= 40% of the measured bf16 matmul rate (3 x 2*B*B*N*M*D flops per step)",
            "dtype": dtype,
            "per_aggregation": gpu_checks,
            "passed": all(c["passed"] for c in gpu_checks) and dtype == GPU_TARGET["dtype"],
        }

    largest = []
    fits = table[(table["status"] == "ok") & (table["peak_mib"] <= fit_budget_gib * 1024)]
    for (backend, aggregation, n, m), group in table.groupby(["backend", "aggregation", "cells", "phrases"]):
        fitting = fits[(fits["backend"] == backend) & (fits["aggregation"] == aggregation)
                       & (fits["cells"] == n) & (fits["phrases"] == m)]
        largest.append({"backend": backend, "aggregation": aggregation, "cells": int(n), "phrases": int(m),
                        "largest_batch": int(fitting["batch"].max()) if len(fitting) else None,
                        "largest_batch_tried": int(group["batch"].max())})
    summary["largest_batch_within_budget"] = {"budget_gib": fit_budget_gib, "rows": largest}
    return summary


def plot_loss_bench(table: pd.DataFrame, path: str | Path) -> None:
    """Time and peak memory against B, one line per backend; a column per (N, M), two rows
    (time, memory) per aggregation. Configurations that did not run are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(int(n), int(m)) for n, m in zip(table["cells"], table["phrases"])})
    aggregations = [a for a in AGGREGATIONS if a in set(table["aggregation"])]
    rows = 2 * len(aggregations)
    figure, axes = plt.subplots(rows, len(shapes), figsize=(max(6.0, 3.2 * len(shapes)), 2.4 * rows + 1.0),
                                squeeze=False, sharex=True)
    colours = {"naive": "tab:red", "chunked": "tab:blue", "triton": "tab:green"}
    ran = table[table["status"].isin(["ok", "over_budget"])]
    for a_index, aggregation in enumerate(aggregations):
        for s_index, (n, m) in enumerate(shapes):
            for metric_index, (metric, label) in enumerate((("time_ms", "fwd+bwd time (ms)"),
                                                           ("peak_mib", "peak memory (MiB)"))):
                axis = axes[2 * a_index + metric_index, s_index]
                for backend, group in ran[(ran["aggregation"] == aggregation) & (ran["cells"] == n)
                                          & (ran["phrases"] == m)].groupby("backend"):
                    group = group.sort_values("batch")
                    axis.plot(group["batch"], group[metric], marker="o", label=backend,
                              color=colours.get(backend))
                axis.set_xscale("log", base=2)
                if (ran[metric] > 0).any():
                    axis.set_yscale("log")
                axis.set_title(f"{aggregation}, N={n}, M={m}", fontsize=9)
                axis.grid(True, which="both", alpha=0.3)
                if s_index == 0:
                    axis.set_ylabel(label)
                if 2 * a_index + metric_index == rows - 1:
                    axis.set_xlabel("batch B")
    handles, labels = [], []
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        figure.legend(handles, labels, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1 - 0.45 / (2.4 * rows + 1.0)),
                      frameon=False)
    first = table.iloc[0] if len(table) else None
    title = "pair-score loss: forward + backward" + (
        f" ({first['device']}, {first['dtype']}, D={first['dim']})" if first is not None else "")
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.8 / (2.4 * rows + 1.0)))
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
