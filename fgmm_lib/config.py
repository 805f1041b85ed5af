"""Dataclass configs from plain values: the one place that turns a field into its type.

The ``fgmm`` command line, ``params.yaml`` and ``config.json`` all name the fields of
:class:`fgmm_lib.data.generate.GenerationConfig` and :class:`fgmm_lib.runs.config.TrainConfig`. Both build
themselves through :func:`config_from_dict`, and the CLI types its options with
:func:`field_types`, so a value is read the same way wherever it comes from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")
SIMPLE_TYPES = (bool, int, float, str)


def field_types(cls: type) -> dict[str, type]:
    """``{field name: type}`` of a dataclass whose fields are bool, int, float or str."""
    hints = typing.get_type_hints(cls)
    types = {}
    for spec in dataclasses.fields(cls):
        kind = hints[spec.name]
        if kind not in SIMPLE_TYPES:
            raise TypeError(f"{cls.__name__}.{spec.name}: unsupported field type {kind!r}")
        types[spec.name] = kind
    return types


def convert_value(owner: str, name: str, value: Any, kind: type) -> Any:
    """Convert ``value`` to ``kind`` where that is unambiguous (``"2e-3"`` to 0.002, ``"true"`` to True,
    ``4.0`` to 4); else raise ValueError naming ``owner.name``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return int(value)
        if hasattr(value, "is_integer") and not isinstance(value, str):
            with contextlib.suppress(TypeError, ValueError, OverflowError):
                if float(value).is_integer():
                    return int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.strip())
        with contextlib.suppress(TypeError):
            import numpy as np

            if isinstance(value, np.integer):
                return int(value)
        raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"{owner}.{name} must be a number, got {value!r}")
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value.strip())
            raise ValueError(f"{owner}.{name} must be a number, got {value!r}")
        with contextlib.suppress(TypeError, ValueError):
            return float(value)
        raise ValueError(f"{owner}.{name} must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        raise ValueError(f"{owner}.{name} must be a string, got {value!r}")
    return value


def config_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build the dataclass ``cls`` from a mapping: unknown or missing keys raise ValueError naming
    them, and every value goes through :func:`convert_value`."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{cls.__name__}.from_dict expects a mapping, got {type(values).__name__}")
    types = field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s): {', '.join(map(repr, unknown))} "
                         f"(known keys: {', '.join(types)})")
    missing = [spec.name for spec in dataclasses.fields(cls)
               if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
               and spec.name not in values]
    if missing:
        raise ValueError(f"{cls.__name__} is missing required key(s): {', '.join(missing)}")
    converted = {name: convert_value(cls.__name__, name, value, types[name]) for name, value in values.items()}
    return cls(**converted)
