"""``fgmm bench-train``: samples/s of training steps, where a step's time goes, 1x2 against 2x1."""

from __future__ import annotations

import argparse

from fgmm_lib.bench.train import bench_train


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/bench", help="folder for train.csv")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the 1-process runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    table = bench_train(out_dir=args.out, steps=args.steps, threads=args.threads, quick=args.quick,
                        progress=not args.quiet)
    print(table.to_string(index=False))
    return 0
