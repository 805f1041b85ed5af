"""The ``fgmm`` command line: generate, pretrain, evaluate, import-*, bench-loss, bench-import, bench-ddp, bench-train.

Each command lives in its own module, imported only when that command runs: ``fgmm generate``
loads the data code and nothing of training, and ``fgmm --help`` loads no command at all. Options of
``generate`` and ``pretrain`` are derived from the fields of
:class:`fgmm_lib.data.generate.GenerationConfig` and :class:`fgmm_lib.runs.config.TrainConfig`, so the
command line, ``params.yaml`` and the Python API always name the same knobs.

Ctrl-C (and SIGTERM, :func:`fgmm_lib.io.sigterm_as_interrupt`) stops a command with one line that
says what was kept and how to go on (the command module's ``interrupted(args)``, when it has one),
and exit status 130 (143 for SIGTERM), without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Sequence

from fgmm_lib import __version__
from fgmm_lib.io import Terminated, sigterm_as_interrupt

_IMPORT_HELP = {
    "import-videos": "narrated videos from a CSV / JSONL manifest (video,start,end,text[,split])",
    "import-ucf101": "UCF101 action recognition (official train / test lists)",
    "import-hmdb51": "HMDB51 action recognition (official split files)",
    "import-msrvtt": "MSR-VTT text-to-video retrieval",
    "import-youcook2": "YouCook2 text-to-video retrieval on annotated segments",
    "import-karpathy": "Flickr30k / COCO text-to-image retrieval (Karpathy split)",
}

#: Every command: name -> (module that adds its options and runs it, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("fgmm_lib.cli.generate", "write a Narrated Digits dataset folder"),
    "pretrain": ("fgmm_lib.cli.pretrain", "pretrain both encoders from scratch"),
    "evaluate": ("fgmm_lib.cli.evaluate", "every downstream task of a run, on held-out clips"),
    "supervised": ("fgmm_lib.cli.supervised", "the video encoder trained on one label, tested on held-out glyphs"),
    **{name: ("fgmm_lib.cli.imports", help_text) for name, help_text in _IMPORT_HELP.items()},
    "bench-loss": ("fgmm_lib.cli.bench_loss", "time and peak memory of the pair-score backends"),
    "bench-import": ("fgmm_lib.cli.bench_import", "import throughput and batch reading speed of imported data"),
    "bench-ddp": ("fgmm_lib.cli.bench_ddp", "1 process x T threads against T processes x 1 thread, and batch limits"),
    "bench-train": ("fgmm_lib.cli.bench_train", "samples/s of training steps, where a step's time goes, 1x2 vs 2x1"),
}


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser of the ``fgmm`` command, with the options of the command ``argv`` names
    (that command's module is imported here; the others are not)."""
    parser = argparse.ArgumentParser(prog="fgmm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fgmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = _chosen_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            if module_name.endswith(".imports"):
                module.add_options(command, name)
            else:
                module.add_options(command)
            command.set_defaults(func=module.run, interrupted=getattr(module, "interrupted", None))
    return parser


def _interrupted(args: argparse.Namespace, stop: KeyboardInterrupt) -> int:
    """Report an interruption in one line (what was kept, how to go on); the exit status 128 + signal."""
    number = stop.signal_number if isinstance(stop, Terminated) else int(signal.SIGINT)
    describe = getattr(args, "interrupted", None)
    message = describe(args) if describe is not None else "nothing is left half-written (outputs appear only complete)"
    if message:  # None: a process of a run whose launcher reports it
        name = "SIGTERM" if number == signal.SIGTERM else "Ctrl-C"
        print(f"fgmm {args.command}: stopped by {name}: {message}", file=sys.stderr)
    return 128 + number


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fgmm`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)  # imports the command's module (torch: seconds)
    except KeyboardInterrupt:
        print("fgmm: stopped by Ctrl-C before the command started: nothing was written", file=sys.stderr)
        return 130
    in_rank = "TORCHELASTIC_RUN_ID" in os.environ  # torchrun stops the ranks with SIGTERM: let it kill them
    try:
        if in_rank:
            return args.func(args)
        with sigterm_as_interrupt():
            return args.func(args)
    except KeyboardInterrupt as stop:
        return _interrupted(args, stop)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"fgmm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
