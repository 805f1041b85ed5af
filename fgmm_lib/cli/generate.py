"""``fgmm generate``: write a Narrated Digits dataset folder."""

from __future__ import annotations

import argparse

from fgmm_lib.cli.options import add_dataclass_options, dataclass_options
from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.io import output_lock


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    parser.add_argument("--vocab", default=None, help="reuse this vocab.json instead of building one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_options(parser, GenerationConfig)


def run(args: argparse.Namespace) -> int:
    config = GenerationConfig.from_dict(dataclass_options(args, GenerationConfig))
    with output_lock(args.out):  # one writer per folder: a second command on --out is refused
        out = generate_dataset(config, args.out, vocab=args.vocab, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted ``fgmm generate`` kept."""
    return f"{args.out} was not changed (a dataset folder appears only complete); run the same command again"
