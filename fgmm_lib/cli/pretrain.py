"""``fgmm pretrain``: pretrain both encoders from scratch (or resume), on one or several processes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch.distributed

from fgmm_lib.cli.options import add_dataclass_options, dataclass_options
from fgmm_lib.runs.config import TrainConfig
from fgmm_lib.runs.folder import CHECKPOINT
from fgmm_lib.training.launch import launch, launched_rank


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_options(parser, TrainConfig)


def _reports() -> bool:
    """True in the process that reports for the run: the launcher, or rank 0 of a run torchrun started."""
    return not launched_rank() and os.environ.get("RANK", "0") == "0"


def run(args: argparse.Namespace) -> int:
    config = TrainConfig.from_dict(dataclass_options(args, TrainConfig))
    try:
        folder = launch(config, resume=args.resume, progress=not args.quiet)
    except torch.distributed.DistError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"fgmm pretrain: error: another process of the run stopped or did not answer in time "
              f"(FGMM_DIST_TIMEOUT_S): {first_line}", file=sys.stderr)
        return 1
    if _reports():
        print(f"wrote {folder}")
    return 0


def interrupted(args: argparse.Namespace) -> str | None:
    """What an interrupted run kept and how to go on (None in the ranks: their launcher says it)."""
    if not _reports():
        return None
    run = Path(args.out)
    if (run / CHECKPOINT).is_file():
        return (f"{run} keeps the checkpoint of its last finished epoch; continue the run with the same "
                f"command and --resume")
    return f"{run} has no checkpoint yet (one is written at the end of every epoch); run the same command again"
