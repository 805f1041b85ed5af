"""``fgmm supervised``: the video encoder trained on one label of the clips, tested on held-out glyphs."""

from __future__ import annotations

import argparse

from fgmm_lib.cli.options import add_dataclass_options, dataclass_options
from fgmm_lib.training.supervised import SupervisedConfig, train_supervised


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_options(parser, SupervisedConfig)


def run(args: argparse.Namespace) -> int:
    config = SupervisedConfig.from_dict(dataclass_options(args, SupervisedConfig))
    curve = train_supervised(config, progress=not args.quiet)
    last = curve.iloc[-1]
    print(f"wrote {config.out}: {config.attribute} test top-1 {last['test_top1']:.3f} after {int(last['samples'])} samples")
    return 0
