"""``fgmm bench-loss``: time and peak memory of the pair-score backends, or (``--compile-only``) the
compiled fused kernels' resources and ceilings."""

from __future__ import annotations

import argparse
from typing import Any

from fgmm_lib.bench.kernel_report import check_rows, compile_report
from fgmm_lib.bench.loss import bench_loss, bench_loss_cpu
from fgmm_lib.kernels.triton_scores import MAX_PHRASES


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/bench", help="folder for loss.csv and loss.png")
    parser.add_argument("--quick", action="store_true", help="a few small sizes only")
    parser.add_argument("--cpu-sweep", "--cpu_sweep", action="store_true",
                        help="the documented CPU sweep (B up to 256, N 16 and 64, M 16, D 256); other size options are ignored")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop starting new configurations after this long")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--memory-budget-gib", type=float, default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--cells", type=int, nargs="+", default=None)
    parser.add_argument("--phrases", type=int, nargs="+", default=None)
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--aggregations", nargs="+", default=None)
    parser.add_argument("--compile-only", "--compile_only", action="store_true",
                        help="no timing: compile every fused kernel configuration for --arch and write kernels.json")
    parser.add_argument("--arch", default="sm90", choices=("sm90", "sm80"), help="target of --compile-only")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.compile_only:
        rows = compile_report(out_dir=args.out, arch=args.arch, progress=not args.quiet)
        problems = check_rows(rows)
        print(f"texts of more than {MAX_PHRASES} phrases run on the chunked backend (no kernel rows)")
        print(f"wrote {len(rows)} rows to {args.out}/kernels.json; " + (
            f"{len(problems)} break a limit:\n" + "\n".join(problems) if problems else "all within the limits"))
        return 1 if problems else 0
    if args.cpu_sweep:
        print(bench_loss_cpu(out_dir=args.out, progress=not args.quiet).to_string(index=False))
        return 0
    kwargs: dict[str, Any] = {"out_dir": args.out, "quick": args.quick, "progress": not args.quiet}
    for name in ("device", "dtype", "repeats", "memory_budget_gib", "dim", "max_seconds", "seed"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    for name in ("batch_sizes", "cells", "phrases", "backends", "aggregations"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = tuple(value)
    print(bench_loss(**kwargs).to_string(index=False))
    return 0
