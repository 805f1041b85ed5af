"""Options shared by the commands: booleans as DVC writes them, and one option per dataclass field."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence

from fgmm_lib.config import field_types


def parse_bool(text: str) -> bool:
    """Parse ``true``/``false`` (as DVC writes booleans) and the usual spellings."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add one ``--field-name`` option per dataclass field, typed like the field (:func:`field_types`)."""
    types = field_types(cls)
    for field in dataclasses.fields(cls):
        name = field.name
        if name in skip:
            continue
        kind = types[name]
        convert: Any = parse_bool if kind is bool else kind
        has_default = field.default is not dataclasses.MISSING
        help_text = field.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
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


def dataclass_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The parsed options that are fields of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}
