"""``fgmm generate``: write a Narrated Digits dataset folder."""

from __future__ import annotations

import argparse

from fgmm_lib.cli.options import add_dataclass_options, dataclass_options
from fgmm_lib.data.generate import GenerationConfig, generate_dataset


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    parser.add_argument("--vocab", default=None, help="reuse this vocab.json instead of building one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_options(parser, GenerationConfig)


def run(args: argparse.Namespace) -> int:
    config = GenerationConfig.from_dict(dataclass_options(args, GenerationConfig))
    out = generate_dataset(config, args.out, vocab=args.vocab, progress=not args.quiet)
    print(f"wrote {out}")
    return 0
