"""The ``fgmm`` command line: generate, pretrain, evaluate, import-*, bench-loss, bench-import, bench-ddp, bench-train.

Options of ``generate`` and ``pretrain`` are derived from the fields of
:class:`fgmm_lib.generate.GenerationConfig` and :class:`fgmm_lib.train.TrainConfig`, so the command
line, ``params.yaml`` and the Python API always name the same knobs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from fgmm_lib import __version__
from fgmm_lib.config import field_types


def parse_bool(text: str) -> bool:
    """Parse ``true``/``false`` (as DVC writes booleans) and the usual spellings."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add one ``--field-name`` option per dataclass field, typed like the field (:func:`field_types`)."""
    types = field_types(cls)
    for field in dataclasses.fields(cls):
        name = field.name
        if name in skip:
            continue
        kind = types[name]
        convert: Any = parse_bool if kind is bool else kind
        has_default = field.default is not dataclasses.MISSING
        help_text = field.metadata.get("help", "")
        if has_default:
            help_text = f"{help_text} (default: {field.default})".strip()
        flags = ["--" + name.replace("_", "-")] + (["--" + name] if "_" in name else [])
        parser.add_argument(
            *flags,
            dest=name,
            type=convert,
            required=not has_default,
            default=argparse.SUPPRESS,
            metavar=kind.__name__.upper(),
            help=help_text,
        )


def _options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def _cmd_generate(args: argparse.Namespace) -> int:
    from fgmm_lib.generate import GenerationConfig, generate_dataset

    config = GenerationConfig.from_dict(_options(args, GenerationConfig))
    out = generate_dataset(config, args.out, vocab=args.vocab, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from fgmm_lib.distributed import launch
    from fgmm_lib.train import TrainConfig

    import torch.distributed

    config = TrainConfig.from_dict(_options(args, TrainConfig))
    try:
        run = launch(config, resume=args.resume, progress=not args.quiet)
    except torch.distributed.DistError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"fgmm pretrain: error: another process of the run stopped or did not answer in time "
              f"(FGMM_DIST_TIMEOUT_S): {first_line}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {run}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fgmm_lib.evaluate import evaluate

    metrics = evaluate(args.run, args.data, split=args.split, out=args.out, probe_split=args.probe_split,
                       progress=not args.quiet)
    printable = {k: v for k, v in metrics.items() if k != "probe"}
    printable["probe"] = {k: v for k, v in (metrics.get("probe") or {}).items() if k != "confusion"} or None
    print(json.dumps(printable, indent=2))
    for task, reason in metrics.get("skipped", {}).items():
        print(f"fgmm evaluate: {task} skipped: {reason}", file=sys.stderr)
    return 0


def _import_clips(args: argparse.Namespace) -> tuple[list[Any], list[str] | None]:
    """The clips (and class names) that an ``import-*`` command lists."""
    from fgmm_lib import importers

    if args.command == "import-videos":
        return importers.read_manifest(args.manifest), None
    if args.command == "import-ucf101":
        return importers.ucf101_clips(args.videos, args.splits, fold=args.fold)
    if args.command == "import-hmdb51":
        return importers.hmdb51_clips(args.videos, args.splits, fold=args.fold)
    if args.command == "import-msrvtt":
        return importers.msrvtt_clips(args.annotations, args.videos), None
    if args.command == "import-youcook2":
        return importers.youcook2_clips(args.annotations, args.videos), None
    return importers.karpathy_clips(args.annotations, args.images), None


def _cmd_import(args: argparse.Namespace) -> int:
    from fgmm_lib.importers import SKIPPED_FILE, import_clips

    clips, classes = _import_clips(args)
    result = import_clips(
        clips, args.out, source=args.command.removeprefix("import-"), frames=args.frames, size=args.size,
        workers=args.workers, vocab=args.vocab, min_count=args.min_count, max_vocab=args.max_vocab,
        max_words=args.max_words, classes=classes, progress=not args.quiet,
    )
    print(f"wrote {result.out}: {result.imported} clips in {result.seconds:.1f} s "
          f"({result.imported / max(result.seconds, 1e-9):.1f} clips/s)")
    if result.skipped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in result.skipped_reasons.items())
        print(f"skipped {result.skipped} clips ({reasons}): see {result.out / SKIPPED_FILE}", file=sys.stderr)
    return 0


#: The import commands: (name, help, [(option, help)] of the inputs they read).
_IMPORTS = (
    ("import-videos", "narrated videos from a CSV / JSONL manifest (video,start,end,text[,split])",
     [("--manifest", "CSV or JSONL manifest; video paths relative to its folder")]),
    ("import-ucf101", "UCF101 action recognition (official train / test lists)",
     [("--videos", "folder of <Class>/*.avi"), ("--splits", "folder of classInd.txt, trainlist0N.txt, testlist0N.txt")]),
    ("import-hmdb51", "HMDB51 action recognition (official split files)",
     [("--videos", "folder of <class>/*.avi"), ("--splits", "folder of <class>_test_splitN.txt")]),
    ("import-msrvtt", "MSR-VTT text-to-video retrieval",
     [("--annotations", "caption JSON (videos + sentences) or CSV video,caption[,split]"),
      ("--videos", "folder of <video_id>.mp4 (any depth)")]),
    ("import-youcook2", "YouCook2 text-to-video retrieval on annotated segments",
     [("--annotations", "youcookii_annotations_*.json"), ("--videos", "folder of <youtube_id>.<ext> (any depth)")]),
    ("import-karpathy", "Flickr30k / COCO text-to-image retrieval (Karpathy split)",
     [("--annotations", "dataset_flickr30k.json or dataset_coco.json"), ("--images", "folder of the images")]),
)


def _add_import_parsers(sub: Any) -> None:
    for name, help_text, inputs in _IMPORTS:
        command = sub.add_parser(name, help=help_text)
        for option, option_help in inputs:
            command.add_argument(option, required=True, help=option_help)
        if name in ("import-ucf101", "import-hmdb51"):
            command.add_argument("--fold", type=int, default=1, help="official split number (default: 1)")
        command.add_argument("--out", required=True, help="dataset folder to write (appears complete at the end)")
        command.add_argument("--frames", type=int, default=8, help="frames per clip, sampled evenly over it (default: 8)")
        command.add_argument("--size", type=int, default=32, help="frame side after resize and centre crop (default: 32)")
        command.add_argument("--workers", type=int, default=1, help="decoding processes (default: 1)")
        command.add_argument("--vocab", default=None, help="reuse this vocab.json (evaluation folders: the pretraining one)")
        command.add_argument("--min-count", type=int, default=1, help="keep words seen this often in train narrations")
        command.add_argument("--max-vocab", type=int, default=0, help="most words in the vocabulary (0 = no cap)")
        command.add_argument("--max-words", type=int, default=16, help="narrations are padded / truncated to this length")
        command.add_argument("--quiet", action="store_true", help="no progress bar")
        command.set_defaults(func=_cmd_import)


def _cmd_bench_import(args: argparse.Namespace) -> int:
    from fgmm_lib.bench_import import bench_import

    table = bench_import(out_dir=args.out, videos=args.videos, workers=tuple(args.workers), progress=not args.quiet)
    print(table.to_string(index=False))
    return 0


def _cmd_bench_loss(args: argparse.Namespace) -> int:
    from fgmm_lib.bench import bench_loss

    if args.compile_only:
        from fgmm_lib.kernel_report import check_rows, compile_report

        rows = compile_report(out_dir=args.out, arch=args.arch, progress=not args.quiet)
        problems = check_rows(rows)
        from fgmm_lib.triton_scores import MAX_PHRASES

        print(f"texts of more than {MAX_PHRASES} phrases run on the chunked backend (no kernel rows)")
        print(f"wrote {len(rows)} rows to {args.out}/kernels.json; " + (
            f"{len(problems)} break a limit:\n" + "\n".join(problems) if problems else "all within the limits"))
        return 1 if problems else 0
    if args.cpu_sweep:
        from fgmm_lib.bench import bench_loss_cpu

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
    table = bench_loss(**kwargs)
    print(table.to_string(index=False))
    return 0


def _cmd_bench_ddp(args: argparse.Namespace) -> int:
    from fgmm_lib.bench_ddp import bench_ddp

    table = bench_ddp(out_dir=args.out, threads=args.threads, batch_size=args.batch_size, steps=args.steps,
                      memory_budget_gib=args.memory_budget_gib, quick=args.quick)
    print(table.to_string(index=False))
    return 0


def _cmd_bench_train(args: argparse.Namespace) -> int:
    from fgmm_lib.bench_train import bench_train

    table = bench_train(out_dir=args.out, steps=args.steps, threads=args.threads, quick=args.quick,
                        progress=not args.quiet)
    print(table.to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fgmm`` command."""
    from fgmm_lib.generate import GenerationConfig
    from fgmm_lib.train import TrainConfig

    parser = argparse.ArgumentParser(prog="fgmm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fgmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write a Narrated Digits dataset folder")
    gen.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    gen.add_argument("--vocab", default=None, help="reuse this vocab.json instead of building one")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_dataclass_options(gen, GenerationConfig)
    gen.set_defaults(func=_cmd_generate)

    pre = sub.add_parser("pretrain", help="pretrain both encoders from scratch")
    pre.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_dataclass_options(pre, TrainConfig)
    pre.set_defaults(func=_cmd_pretrain)

    ev = sub.add_parser("evaluate", help="every downstream task of a run, on held-out clips")
    ev.add_argument("--run", required=True, help="run folder written by 'fgmm pretrain'")
    ev.add_argument("--data", required=True, help="evaluation dataset folder (same vocabulary as the run)")
    ev.add_argument("--out", default=None, help="metrics JSON to write")
    ev.add_argument("--split", default="test", help="split to evaluate on (default: test)")
    ev.add_argument("--probe-split", default="train", help="split the linear probe is trained on (default: train)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_cmd_evaluate)

    bench = sub.add_parser("bench-loss", help="time and peak memory of the pair-score backends")
    bench.add_argument("--out", default="results/bench", help="folder for loss.csv and loss.png")
    bench.add_argument("--quick", action="store_true", help="a few small sizes only")
    bench.add_argument("--cpu-sweep", "--cpu_sweep", action="store_true",
                       help="the documented CPU sweep (B up to 256, N 16 and 64, M 16, D 256); other size options are ignored")
    bench.add_argument("--max-seconds", type=float, default=None, help="stop starting new configurations after this long")
    bench.add_argument("--seed", type=int, default=None)
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    bench.add_argument("--repeats", type=int, default=None)
    bench.add_argument("--dim", type=int, default=None)
    bench.add_argument("--memory-budget-gib", type=float, default=None)
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    bench.add_argument("--cells", type=int, nargs="+", default=None)
    bench.add_argument("--phrases", type=int, nargs="+", default=None)
    bench.add_argument("--backends", nargs="+", default=None)
    bench.add_argument("--aggregations", nargs="+", default=None)
    bench.add_argument("--compile-only", "--compile_only", action="store_true",
                       help="no timing: compile every fused kernel configuration for --arch and write kernels.json")
    bench.add_argument("--arch", default="sm90", choices=("sm90", "sm80"), help="target of --compile-only")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(func=_cmd_bench_loss)
    _add_import_parsers(sub)
    bench_import = sub.add_parser("bench-import", help="import throughput and batch reading speed of imported data")
    bench_import.add_argument("--out", default="results/bench", help="folder for import.csv")
    bench_import.add_argument("--videos", type=int, default=8, help="synthetic 10 s videos, 8 clips each (default: 8)")
    bench_import.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    bench_import.add_argument("--quiet", action="store_true", help="no progress bar")
    bench_import.set_defaults(func=_cmd_bench_import)

    ddp = sub.add_parser("bench-ddp", help="1 process x T threads against T processes x 1 thread, and batch limits")
    ddp.add_argument("--out", default="results/bench", help="folder for ddp.csv")
    ddp.add_argument("--threads", type=int, default=2, help="threads of the 1-process run = processes of the other")
    ddp.add_argument("--batch-size", type=int, default=32, help="global batch of both runs")
    ddp.add_argument("--steps", type=int, default=6, help="steps per run (the first is not timed)")
    ddp.add_argument("--memory-budget-gib", type=float, default=1.0, help="per-rank budget of the batch limits")
    ddp.add_argument("--quick", action="store_true", help="a tiny smoke run")
    ddp.set_defaults(func=_cmd_bench_ddp)

    bench_train = sub.add_parser("bench-train", help="samples/s of training steps, where a step's time goes, 1x2 vs 2x1")
    bench_train.add_argument("--out", default="results/bench", help="folder for train.csv")
    bench_train.add_argument("--steps", type=int, default=6, help="timed steps per configuration (after one warm-up)")
    bench_train.add_argument("--threads", type=int, default=2, help="threads of the 1-process runs")
    bench_train.add_argument("--quick", action="store_true", help="a tiny smoke run")
    bench_train.add_argument("--quiet", action="store_true", help="no progress bar")
    bench_train.set_defaults(func=_cmd_bench_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fgmm`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"fgmm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
