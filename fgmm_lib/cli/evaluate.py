"""``fgmm evaluate``: every downstream task of a run, on held-out clips."""

from __future__ import annotations

import argparse
import json
import sys

from fgmm_lib.evaluation.protocol import evaluate


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder written by 'fgmm pretrain'")
    parser.add_argument("--data", required=True, help="evaluation dataset folder (same vocabulary as the run)")
    parser.add_argument("--out", default=None, help="metrics JSON to write")
    parser.add_argument("--split", default="test", help="split to evaluate on (default: test)")
    parser.add_argument("--probe-split", default="train", help="split the linear probe is trained on (default: train)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    metrics = evaluate(args.run, args.data, split=args.split, out=args.out, probe_split=args.probe_split,
                       progress=not args.quiet)
    printable = {k: v for k, v in metrics.items() if k != "probe"}
    printable["probe"] = {k: v for k, v in (metrics.get("probe") or {}).items() if k != "confusion"} or None
    print(json.dumps(printable, indent=2))
    for task, reason in metrics.get("skipped", {}).items():
        print(f"fgmm evaluate: {task} skipped: {reason}", file=sys.stderr)
    return 0
