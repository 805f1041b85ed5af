"""``fgmm bench-import``: import throughput and batch reading speed of imported data."""

from __future__ import annotations

import argparse

from fgmm_lib.bench.imports import bench_import


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/bench", help="folder for import.csv")
    parser.add_argument("--videos", type=int, default=8, help="synthetic 10 s videos, 8 clips each (default: 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    table = bench_import(out_dir=args.out, videos=args.videos, workers=tuple(args.workers), progress=not args.quiet)
    print(table.to_string(index=False))
    return 0
