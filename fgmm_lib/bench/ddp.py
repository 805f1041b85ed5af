"""The data-parallel benchmark: one process with T threads against T processes with one thread.

``bench_ddp`` pretrains a few steps of a fixed global batch on a generated Narrated Digits set,
once with ``fgmm pretrain`` on 1 process (``OMP_NUM_THREADS=T``) and once with
``torchrun --nproc-per-node T`` (``OMP_NUM_THREADS=1``), for each loss, and writes
``ddp.csv`` (atomically) with two kinds of rows:

- ``throughput``: samples/s (median over the steps after the first, which also counts FLOPs) and
  the peak resident memory of each rank (``compute.json``'s ``peak_rss_mib_per_rank``: the whole
  process, the interpreter and torch included).
- ``max_batch``: the largest global batch whose fine-grained loss step fits ``memory_budget_gib``
  per rank, for each backend and gather, from :func:`loss_memory_bytes` (an estimate, not a probe).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from fgmm_lib.bench.loss import NAIVE_WORKING_COPIES
from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.io import write_atomic
from fgmm_lib.losses.scores import CHUNK_MEMORY_BUDGET_BYTES
from fgmm_lib.training.distributed import torchrun_command


def loss_memory_bytes(backend: str, gather: str, batch: int, nproc: int, cells: int, phrases: int, dim: int) -> float:
    """Estimated memory of one rank's fine-grained loss step (float32) for a global ``batch``.

    ``gather="all"`` scores the whole ``[B, B]`` block; ``"local"`` two ``[B/K, B]`` blocks (own
    videos against every text, own texts against every video). The naive backend holds about
    ``NAIVE_WORKING_COPIES`` ``[rows, B, N, M]`` tensors; the chunked one at most 1.5 times its
    block budget plus the score blocks. Both hold the gathered tokens and their gradients.
    """
    rows = batch if gather == "all" else 2 * batch // nproc
    pairs = rows * batch
    tokens = 2 * batch * (cells + phrases) * dim * 4
    dense = NAIVE_WORKING_COPIES * pairs * cells * phrases * 4
    if backend == "naive":
        return dense + tokens
    return min(dense, 1.5 * CHUNK_MEMORY_BUDGET_BYTES) + 8 * pairs * 4 + tokens


def largest_batch(backend: str, gather: str, nproc: int, budget_bytes: float, cells: int, phrases: int, dim: int,
                  limit: int = 1 << 20) -> int:
    """The largest global batch (a multiple of ``nproc``) whose :func:`loss_memory_bytes` fits ``budget_bytes``."""
    low, high = 0, limit // nproc
    while low < high:  # in multiples of nproc
        middle = (low + high + 1) // 2
        if loss_memory_bytes(backend, gather, middle * nproc, nproc, cells, phrases, dim) <= budget_bytes:
            low = middle
        else:
            high = middle - 1
    return low * nproc


def _train(data: Path, out: Path, loss: str, nproc: int, threads: int, batch_size: int, steps: int) -> dict[str, Any]:
    options = ["--data", str(data), "--out", str(out), "--loss", loss, "--batch-size", str(batch_size),
               "--epochs", "100", "--max-steps", str(steps), "--device", "cpu", "--backend", "chunked", "--quiet"]
    command = ([sys.executable, "-m", "fgmm_lib", "pretrain", *options] if nproc == 1
               else torchrun_command(options, nproc))
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    root = str(Path(__file__).resolve().parent.parent)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        raise ChildProcessError(f"pretraining {loss} on {nproc} process(es) failed: {finished.stderr[-2000:]}")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    compute = json.loads((out / "compute.json").read_text())
    peaks = compute["peak_rss_mib_per_rank"]
    return {"samples_per_s": statistics.median(row["samples_per_s"] for row in log[1:]),
            **{f"peak_rss_mib_rank{rank}": peak for rank, peak in enumerate(peaks)}}


def bench_ddp(out_dir: str | Path = "results/bench", losses: Sequence[str] = ("coarse", "max"), threads: int = 2,
              batch_size: int = 32, steps: int = 6, clips: int = 160, memory_budget_gib: float = 1.0,
              quick: bool = False) -> pd.DataFrame:
    """Run the benchmark and write ``out_dir/ddp.csv``; return its table (``quick``: a tiny smoke run
    of the first loss only, on 4-frame clips)."""
    if batch_size % threads:
        raise ValueError(f"batch_size {batch_size} is not divisible by threads {threads} (the processes)")

    frames, size = (4, 32) if quick else (8, 32)
    losses = tuple(losses)[:1] if quick else tuple(losses)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fgmm-bench-ddp-") as scratch:
        data = generate_dataset(GenerationConfig(clips=clips, frames=frames, size=size), Path(scratch) / "data",
                                progress=False)
        for loss in losses:
            for nproc, per_process in ((1, threads), (threads, 1)):
                measured = _train(Path(data), Path(scratch) / f"{loss}-{nproc}", loss, nproc, per_process,
                                  batch_size, steps)
                rows.append({"kind": "throughput", "loss": loss, "nproc": nproc, "threads_per_process": per_process,
                             "gather": "all", "backend": "chunked", "global_batch": batch_size, **measured})
    cells, phrases, dim = 64, 12, 128  # 8 x 32 x 32 clips, 12-word narrations, the study's dim
    budget = memory_budget_gib * 2**30
    for backend in ("naive", "chunked"):
        for gather, nproc in (("all", 1), ("all", threads), ("local", threads)):
            rows.append({"kind": "max_batch", "loss": "max", "nproc": nproc, "gather": gather, "backend": backend,
                             "global_batch": largest_batch(backend, gather, nproc, budget, cells, phrases, dim),
                             "memory_budget_gib": memory_budget_gib, "method": "estimate (loss_memory_bytes)"})
    table = pd.DataFrame(rows)
    path = Path(out_dir) / "ddp.csv"
    write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))
    return table
