"""A run's validation curve, ``curves.csv``: its columns, the fingerprint that ties it to its run,
reading with checks, and :func:`curve_gain` (has a curve flattened?).

A run trained with ``TrainConfig.val_data`` evaluates text to video retrieval on the validation
split at several points of its schedule (:func:`fgmm_lib.training.loop.pretrain`) and writes one
row per point, with the columns of :data:`CURVE_COLUMNS`. Every row carries the run's folder name
(``run``) and the :func:`config_fingerprint` of its training config (``config_fingerprint``), so a
curve copied elsewhere can still be checked against the run it claims to belong to
(:func:`read_curves`). :func:`curve_gain` is the flattening test of docs/study.md section 7.
:func:`require_columns` is the column check that the curve tables share.

The study's tables over the curves of many runs are in :mod:`fgmm_lib.study.curves`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: The columns of ``curves.csv``, in order.
CURVE_COLUMNS = ("run", "config_fingerprint", "samples_seen", "step", "epoch", "val_t2v_r1", "val_t2v_r5",
                 "val_t2v_r10", "wall_s")


def config_fingerprint(train_config: dict[str, Any], vocab_fingerprint: str, ignore: tuple[str, ...] = ()) -> str:
    """A short hash of what a run computes: its training config (less the keys in ``ignore``, those
    that may change on resume) and its vocabulary fingerprint."""
    kept = {key: value for key, value in sorted(train_config.items()) if key not in ignore}
    text = json.dumps({"train": kept, "vocab": vocab_fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_curves(path: str | Path, run: str | None = None, fingerprint: str | None = None) -> pd.DataFrame:
    """Read a ``curves.csv`` and check it: every column of :data:`CURVE_COLUMNS`, one run and one
    fingerprint in it, and (when given) that ``run`` and ``fingerprint`` are those of its rows.

    Raises FileNotFoundError for a missing file and ValueError naming the file for a curve of
    another run, a missing column or an empty curve.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"curve file {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype={"run": str, "config_fingerprint": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a curve file: {error}") from error
    missing = [column for column in CURVE_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a curve file: it lacks the column(s) {', '.join(missing)}")
    if frame.empty:
        raise ValueError(f"{path} holds no curve rows")
    for column, expected in (("run", run), ("config_fingerprint", fingerprint)):
        found = sorted(set(frame[column]))
        if len(found) != 1:
            raise ValueError(f"{path} mixes the rows of several runs ({column} {', '.join(found[:4])})")
        if expected is not None and found[0] != expected:
            raise ValueError(f"{path} belongs to another run: its {column} is {found[0]!r}, expected {expected!r}")
    return frame


def curve_gain(curve: pd.DataFrame, fraction: float = 0.2, metric: str = "val_t2v_r10") -> float:
    """The gain of ``metric`` over the last ``fraction`` of samples seen: its value at the last point
    minus its value at ``(1 - fraction)`` of the last point's samples, read off the curve by linear
    interpolation between its points.

    Several curves in one frame (seeds of one configuration, evaluated at the same samples) are first
    averaged at every ``samples_seen``: the gain is then that of the mean curve. A curve has flattened
    (docs/study.md section 7) when this gain is below 0.02 R@10.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    for column in ("samples_seen", metric):
        if column not in curve.columns:
            raise ValueError(f"the curve has no column {column!r} (columns: {', '.join(map(str, curve.columns))})")
    mean = curve.groupby("samples_seen", sort=True)[metric].mean()
    if len(mean) < 2:
        raise ValueError(f"a curve needs at least 2 points of distinct samples_seen to measure a gain, got {len(mean)}")
    samples = mean.index.to_numpy(dtype=float)
    values = mean.to_numpy(dtype=float)
    last = samples[-1]
    start = (1.0 - fraction) * last
    if start < samples[0]:
        raise ValueError(f"the curve starts at {samples[0]:g} samples, after the start of its last {fraction:g} "
                         f"({start:g} samples): validate earlier in the run")
    return float(values[-1] - np.interp(start, samples, values))


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Raise ValueError naming ``what`` and the ``columns`` that ``frame`` lacks."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {', '.join(missing)} "
                         f"(it has {', '.join(map(str, frame.columns))})")
