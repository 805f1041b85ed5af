"""The training benchmark: samples per second of pretraining steps, their rate against this
machine's matrix-multiply rate, where a step's time goes, the speed-up of the fast formulation, and
whether two 1-thread processes side by side beat one 2-thread process on this machine.

:func:`bench_train` writes ``train.csv`` (one row per measurement) with the columns of
:data:`COLUMNS`:

- ``measure="peak"``: the float32 matrix-multiply rate (``gflops``) of this CPU at 1 and at
  ``threads`` threads (a 2048 x 2048 product), the practical peak that ``peak_share`` divides by;
- ``measure="step"``: the median time of whole training steps (batch assembly, both encoders,
  the loss, backward, AdamW) for each loss and batch size at 1 and at ``threads`` threads, in
  the fast formulation (:attr:`fgmm_lib.runs.config.TrainConfig.fast_path`), as ``samples_per_s``,
  ``gflops`` (the step's counted floating-point work over its time) and ``peak_share``;
- ``measure="phase"``: the same steps cut into phases (``batch`` assembly, the forward pass of both
  ``encoders``, the ``loss``, the ``backward`` pass through loss and encoders, the ``optimizer``),
  each phase's median milliseconds and its share of the step;
- ``measure="parallel"``: total samples per second of ``1x2`` (one process, two threads) and
  ``2x1`` (two processes with one thread each, side by side, each training its own run);
- ``measure="formulation"``: one thread, whole steps in the formulation ``before`` the speed-up work
  (3D temporal convs, PyTorch's GroupNorm and ReLU, the for-loop AdamW, the chunked loss recomputing
  its one block in backward, glibc's default memory reuse) and ``after`` it (``fast_path``). Each is
  timed in fresh processes that take turns (the memory setting is process-wide), and ``speedup`` is
  each one's rate over ``before``.

:func:`profile_ops` writes ``train_profile.csv``: where one thread's steps of the fast formulation
spend their time, per operator (``torch.profiler``, self time, the top operators of each loss and
batch size).

The steps are those of :func:`fgmm_lib.training.loop.pretrain` (same model, loss module, optimiser and
batch assembly), on a temporary Narrated Digits folder of the study's clip shape.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from fgmm_lib.data.dataset import NarratedDigits
from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.io import write_atomic
from fgmm_lib.models.encoders import DualEncoder
from fgmm_lib.runs.config import TrainConfig, loss_from_config
from fgmm_lib.training.step import BATCH_KEYS, apply_fast_path, encode_batch, loss_of_outputs, parameter_groups

COLUMNS = ["measure", "loss", "batch_size", "threads", "processes", "phase", "ms", "share", "samples_per_s",
           "gflops", "peak_share", "speedup", "steps", "cpu"]
PROFILE_COLUMNS = ["loss", "batch_size", "threads", "operator", "self_ms_per_step", "share", "calls_per_step"]
#: Formulations timed side by side: name -> TrainConfig.fast_path.
FORMULATIONS = {"before": False, "after": True}
PHASES = ("batch", "encoders", "loss", "backward", "optimizer")


def _setup(data: Path, loss: str, batch_size: int, seed: int = 0,
           fast_path: bool = False) -> tuple[Any, Any, Any, Any]:
    """What :func:`fgmm_lib.training.loop.pretrain` builds for a step; ``fast_path=False`` is the
    formulation before the speed-up work."""
    torch.manual_seed(seed)
    config = TrainConfig(data=str(data), out="unused", loss=loss, batch_size=batch_size, device="cpu",
                         backend="chunked", fast_path=fast_path)
    dataset = NarratedDigits(data, split="train", neighbours=config.neighbours)
    model = DualEncoder(config.model_config(len(dataset.vocab)))
    loss_module = loss_from_config(config)
    apply_fast_path(fast_path, model.video, loss_module)
    optimizer = torch.optim.AdamW(parameter_groups(model, loss_module, config.weight_decay), lr=config.lr,
                                  fused=config.fast_path or None)
    return dataset, model, loss_module, optimizer


def _positions(count: int, batch_size: int, step: int) -> np.ndarray:
    return np.random.default_rng(step).choice(count, size=batch_size, replace=False)


def _timed_phases(dataset: Any, model: Any, loss_module: Any, optimizer: Any, batch_size: int,
                  step: int) -> dict[str, float]:
    """One training step with a clock between its phases (the CPU runs them synchronously)."""

    times = {}
    start = time.perf_counter()
    raw = dataset.get_batch(_positions(len(dataset), batch_size, step))
    batch = {key: torch.as_tensor(raw[key]) for key in BATCH_KEYS if key in raw}
    times["batch"] = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    outputs = encode_batch(model, loss_module, batch)
    times["encoders"] = time.perf_counter()
    value = loss_of_outputs(loss_module, outputs)
    times["loss"] = time.perf_counter()
    value.backward()
    times["backward"] = time.perf_counter()
    optimizer.step()
    loss_module.clamp_temperatures_()
    times["optimizer"] = time.perf_counter()
    previous, spans = start, {}
    for phase in PHASES:
        spans[phase] = times[phase] - previous
        previous = times[phase]
    return spans


def measure_steps(data: Path, loss: str, batch_size: int, steps: int, threads: int,
                  fast_path: bool = False) -> dict[str, Any]:
    """Median phase times (seconds) and samples per second over ``steps`` steps after one warm-up."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dataset, model, loss_module, optimizer = _setup(data, loss, batch_size, fast_path=fast_path)
        _timed_phases(dataset, model, loss_module, optimizer, batch_size, step=10**6)  # warm-up
        spans = [_timed_phases(dataset, model, loss_module, optimizer, batch_size, step) for step in range(steps)]
    finally:
        torch.set_num_threads(previous)
    phases = {phase: statistics.median(span[phase] for span in spans) for phase in PHASES}
    step_seconds = [sum(span.values()) for span in spans]
    step_s = statistics.median(step_seconds)
    return {"phases": phases, "step_s": step_s, "samples_per_s": batch_size / step_s, "step_seconds": step_seconds}


def measure_formulations(data: Path, loss: str, batch_size: int, steps: int, rounds: int = 2) -> dict[str, float]:
    """Samples per second of each of :data:`FORMULATIONS` at one thread: ``rounds`` rounds in which
    each formulation runs ``steps`` steps (after a warm-up) in a fresh process, the formulations taking
    turns so that a slow patch of the machine falls on both; medians over all steps of a formulation."""
    seconds: dict[str, list[float]] = {name: [] for name in FORMULATIONS}
    for _ in range(rounds):
        for name, flag in FORMULATIONS.items():
            seconds[name] += _in_process(data, loss, batch_size, steps, 1, flag)["step_seconds"]
    return {name: batch_size / statistics.median(values) for name, values in seconds.items()}


def _in_process(data: Path, loss: str, batch_size: int, steps: int, threads: int, fast_path: bool) -> dict[str, Any]:
    """:func:`measure_steps` in a fresh Python process with ``threads`` threads."""
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    result = subprocess.run(_worker_command(data, loss, batch_size, steps, threads, fast_path), capture_output=True,
                            text=True, env=environment, timeout=3600)
    if result.returncode != 0:
        raise ChildProcessError(f"a benchmark process failed with status {result.returncode}: "
                                f"{result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def step_flops(data: Path, loss: str, batch_size: int) -> float:
    """Floating-point operations of one training step (forward and backward), as
    ``torch.utils.flop_counter`` counts them (matrix products and convolutions)."""
    dataset, model, loss_module, optimizer = _setup(data, loss, batch_size)
    with FlopCounterMode(display=False) as counter:
        _timed_phases(dataset, model, loss_module, optimizer, batch_size, step=0)
    return float(counter.get_total_flops())


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """This CPU's float32 matrix-multiply rate at ``threads`` threads (GFLOP/s, best of ``repeats``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        left, right = torch.randn(size, size), torch.randn(size, size)
        left @ right
        best = min(_timed(lambda: left @ right) for _ in range(repeats))
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def _timed(function: Any) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _worker_command(data: Path, loss: str, batch_size: int, steps: int, threads: int,
                    fast_path: bool = True) -> list[str]:
    code = ("import json, sys; from pathlib import Path; from fgmm_lib.bench.train import measure_steps; "
            "print(json.dumps(measure_steps(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "
            "int(sys.argv[5]), fast_path=sys.argv[6] == '1')))")
    return [sys.executable, "-c", code, str(data), loss, str(batch_size), str(steps), str(threads),
            "1" if fast_path else "0"]


def measure_parallel(data: Path, loss: str, batch_size: int, steps: int, processes: int) -> float:
    """Total samples per second of ``processes`` 1-thread processes training side by side."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = [subprocess.Popen(_worker_command(data, loss, batch_size, steps, 1), stdout=subprocess.PIPE,
                                text=True, env=environment) for _ in range(processes)]
    rates = []
    for process in started:
        out, _ = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise ChildProcessError(f"a benchmark process failed with status {process.returncode}")
        rates.append(json.loads(out.strip().splitlines()[-1])["samples_per_s"])
    return float(sum(rates))


def bench_train(out_dir: str | Path = "results/bench", losses: Sequence[str] = ("coarse", "max", "attention"),
                batch_sizes: Sequence[int] = (8, 64, 256), steps: int = 6, threads: int = 2,
                parallel_losses: Sequence[str] = ("coarse", "max"), parallel_batch_size: int = 64,
                clips: int = 1200, quick: bool = False, progress: bool = True) -> pd.DataFrame:
    """Measure training speed (see the module docstring); write ``out_dir/train.csv`` and
    ``out_dir/train_profile.csv``; return the first table. ``quick``: ``coarse`` at batch 8, two
    steps, one thread and one round (a smoke run)."""
    if quick:
        losses, batch_sizes, steps, parallel_losses, parallel_batch_size, clips = ("coarse",), (8,), 2, \
            ("coarse",), 8, 80
    for name, value in (("steps", steps), ("threads", threads), ("parallel_batch_size", parallel_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"bench_train: {name} must be a positive integer, got {value!r}")
    cpu = platform.processor() or platform.machine()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fgmm-bench-train-") as tmp:
        data = generate_dataset(GenerationConfig(clips=clips, seed=0), Path(tmp) / "data", progress=False)
        jobs = [(loss, batch) for loss in losses for batch in batch_sizes]
        counts = [1] if quick else sorted({1, threads})
        peaks = {count: matmul_gflops(count) for count in counts}
        for count, rate in peaks.items():
            rows.append({"measure": "peak", "threads": count, "processes": 1, "phase": "matmul", "gflops": rate,
                         "peak_share": 1.0, "cpu": cpu})
        for loss, batch in tqdm(jobs, desc="training steps", unit="config", disable=not progress):
            flops = step_flops(data, loss, batch)
            for count in counts:
                result = measure_steps(data, loss, batch, steps, count, fast_path=True)
                gflops = flops / result["step_s"] / 1e9
                base = {"loss": loss, "batch_size": batch, "threads": count, "processes": 1, "steps": steps, "cpu": cpu}
                rows.append({**base, "measure": "step", "phase": "step", "ms": 1000 * result["step_s"], "share": 1.0,
                             "samples_per_s": result["samples_per_s"], "gflops": gflops,
                             "peak_share": gflops / peaks[count]})
                for phase, seconds in result["phases"].items():
                    rows.append({**base, "measure": "phase", "phase": phase, "ms": 1000 * seconds,
                                 "share": seconds / result["step_s"]})
        for loss in tqdm(parallel_losses, desc="1x2 against 2x1", unit="loss", disable=not progress):
            together = measure_steps(data, loss, parallel_batch_size, steps, threads, fast_path=True)["samples_per_s"]
            apart = measure_parallel(data, loss, parallel_batch_size, steps, threads)
            for label, processes, per_process, rate in (("1x2", 1, threads, together), ("2x1", threads, 1, apart)):
                rows.append({"measure": "parallel", "loss": loss, "batch_size": parallel_batch_size,
                             "threads": per_process, "processes": processes, "phase": label, "samples_per_s": rate,
                             "steps": steps, "cpu": cpu})
        for loss, batch in tqdm(jobs, desc="before against after", unit="config", disable=not progress):
            rates = measure_formulations(data, loss, batch, steps, rounds=1 if quick else 2)
            for name, rate in rates.items():
                rows.append({"measure": "formulation", "loss": loss, "batch_size": batch, "threads": 1,
                             "processes": 1, "phase": name, "samples_per_s": rate,
                             "speedup": rate / rates["before"], "steps": (1 if quick else 2) * steps,
                             "cpu": cpu})
        profile = pd.concat([profile_ops(data, loss, batch, max(2, steps // 2), 1)
                             for loss, batch in tqdm(jobs, desc="operator profile", unit="config", disable=not progress)],
                            ignore_index=True)
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_atomic(Path(out_dir) / "train.csv", lambda path: table.to_csv(path, index=False))
    write_atomic(Path(out_dir) / "train_profile.csv", lambda path: profile.to_csv(path, index=False))
    return table


def profile_ops(data: Path, loss: str, batch_size: int, steps: int, threads: int, top: int = 12) -> pd.DataFrame:
    """The ``top`` operators by self CPU time of ``steps`` training steps (after one warm-up), per step,
    with their share of the profiled time and the rest summed as ``(other)``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dataset, model, loss_module, optimizer = _setup(data, loss, batch_size, fast_path=True)
        _timed_phases(dataset, model, loss_module, optimizer, batch_size, step=10**6)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for step in range(steps):
                _timed_phases(dataset, model, loss_module, optimizer, batch_size, step)
    finally:
        torch.set_num_threads(previous)
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    rows = [{"operator": event.key, "self_us": event.self_cpu_time_total, "calls": event.count} for event in events[:top]]
    rest = events[top:]
    rows.append({"operator": "(other)", "self_us": sum(e.self_cpu_time_total for e in rest),
                 "calls": sum(e.count for e in rest)})
    return pd.DataFrame([{"loss": loss, "batch_size": batch_size, "threads": threads, "operator": row["operator"],
                          "self_ms_per_step": row["self_us"] / 1000 / steps, "share": row["self_us"] / total,
                          "calls_per_step": row["calls"] / steps} for row in rows], columns=PROFILE_COLUMNS)
