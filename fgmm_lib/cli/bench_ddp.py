"""``fgmm bench-ddp``: 1 process x T threads against T processes x 1 thread, and the batch limits."""

from __future__ import annotations

import argparse

from fgmm_lib.bench.ddp import bench_ddp


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/bench", help="folder for ddp.csv")
    parser.add_argument("--threads", type=int, default=2, help="threads of the 1-process run = processes of the other")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch of both runs")
    parser.add_argument("--steps", type=int, default=6, help="steps per run (the first is not timed)")
    parser.add_argument("--memory-budget-gib", type=float, default=1.0, help="per-rank budget of the batch limits")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")


def run(args: argparse.Namespace) -> int:
    table = bench_ddp(out_dir=args.out, threads=args.threads, batch_size=args.batch_size, steps=args.steps,
                      memory_budget_gib=args.memory_budget_gib, quick=args.quick)
    print(table.to_string(index=False))
    return 0
