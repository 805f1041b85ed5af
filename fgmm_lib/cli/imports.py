"""``fgmm import-*``: import real videos, narrations and downstream sets into a dataset folder."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from fgmm_lib.data import datasets, importers

#: The inputs each import command reads: name -> [(option, help)] (their one-line help is in
#: :data:`fgmm_lib.cli.main.COMMANDS`, which lists every command without importing this module).
INPUTS = {
    "import-videos": [("--manifest", "CSV or JSONL manifest; video paths relative to its folder")],
    "import-ucf101": [("--videos", "folder of <Class>/*.avi"),
                      ("--splits", "folder of classInd.txt, trainlist0N.txt, testlist0N.txt")],
    "import-hmdb51": [("--videos", "folder of <class>/*.avi"), ("--splits", "folder of <class>_test_splitN.txt")],
    "import-msrvtt": [("--annotations", "caption JSON (videos + sentences) or CSV video,caption[,split]"),
                      ("--videos", "folder of <video_id>.mp4 (any depth)")],
    "import-youcook2": [("--annotations", "youcookii_annotations_*.json"),
                        ("--videos", "folder of <youtube_id>.<ext> (any depth)")],
    "import-karpathy": [("--annotations", "dataset_flickr30k.json or dataset_coco.json"),
                        ("--images", "folder of the images")],
}


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``, else a one-line error naming the option."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {value}")
        return value

    return integer


def add_options(parser: argparse.ArgumentParser, name: str) -> None:
    for option, option_help in INPUTS[name]:
        parser.add_argument(option, required=True, help=option_help)
    if name in ("import-ucf101", "import-hmdb51"):
        parser.add_argument("--fold", type=int, default=1, help="official split number (default: 1)")
    parser.add_argument("--out", required=True, help="dataset folder to write (appears complete at the end)")
    low, high = importers.FRAMES_RANGE
    parser.add_argument("--frames", type=_bounded(low, high), default=8,
                        help=f"frames per clip, sampled evenly over it, {low} to {high} (default: 8)")
    low, high = importers.SIZE_RANGE
    parser.add_argument("--size", type=_bounded(low, high), default=32,
                        help=f"frame side in pixels after resize and centre crop, {low} to {high} (default: 32)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (default: 1)")
    parser.add_argument("--vocab", default=None, help="reuse this vocab.json (evaluation folders: the pretraining one)")
    parser.add_argument("--min-count", type=int, default=1, help="keep words seen this often in train narrations")
    parser.add_argument("--max-vocab", type=int, default=0, help="most words in the vocabulary (0 = no cap)")
    parser.add_argument("--max-words", type=int, default=16, help="narrations are padded / truncated to this length")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def listed_clips(args: argparse.Namespace) -> tuple[list[Any], list[str] | None]:
    """The clips (and class names) that an ``import-*`` command lists."""
    if args.command == "import-videos":
        return importers.read_manifest(args.manifest), None
    if args.command == "import-ucf101":
        return datasets.ucf101_clips(args.videos, args.splits, fold=args.fold)
    if args.command == "import-hmdb51":
        return datasets.hmdb51_clips(args.videos, args.splits, fold=args.fold)
    if args.command == "import-msrvtt":
        return datasets.msrvtt_clips(args.annotations, args.videos), None
    if args.command == "import-youcook2":
        return datasets.youcook2_clips(args.annotations, args.videos), None
    return datasets.karpathy_clips(args.annotations, args.images), None


def run(args: argparse.Namespace) -> int:
    clips, classes = listed_clips(args)
    result = importers.import_clips(
        clips, args.out, source=args.command.removeprefix("import-"), frames=args.frames, size=args.size,
        workers=args.workers, vocab=args.vocab, min_count=args.min_count, max_vocab=args.max_vocab,
        max_words=args.max_words, classes=classes, progress=not args.quiet,
    )
    print(f"wrote {result.out}: {result.imported} clips in {result.seconds:.1f} s "
          f"({result.imported / max(result.seconds, 1e-9):.1f} clips/s)")
    if result.skipped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in result.skipped_reasons.items())
        print(f"skipped {result.skipped} clips ({reasons}): see {result.out / importers.SKIPPED_FILE}", file=sys.stderr)
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted import kept, and how to go on."""
    work = importers.work_folder(args.out)
    if work.is_dir():
        return (f"the clips decoded so far are kept in {work}; run the same command again to carry on "
                f"({args.out} appears only when the import is complete)")
    return f"{args.out} was not changed; run the same command again"
