"""The study's validation curves, one ``<run>.csv`` per run in a folder: convergence and compute to a target.

:func:`load_curves` reads every curve of a folder, each through :func:`fgmm_lib.runs.curves.read_curves`
(its rows must belong to the run of the file's name). Over these curves:
:func:`mean_over_seeds`, :func:`convergence_table` (which configurations have flattened, by
:func:`fgmm_lib.runs.curves.curve_gain`; docs/study.md section 7) and :func:`time_to_target`
(samples, steps, FLOPs and training time to reach a validation R@10; columns
:data:`TIME_TO_TARGET_COLUMNS`; :func:`check_target` checks the target).
:func:`fgmm_lib.study.tables.time_to_target_summary` averages :func:`time_to_target` over seeds, and
:func:`fgmm_lib.study.plots.plot_learning_curves` draws the curves.

The format of one run's ``curves.csv``, the fingerprint that ties it to its run and its checks are
in :mod:`fgmm_lib.runs.curves`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from fgmm_lib.runs.curves import curve_gain, read_curves, require_columns
from fgmm_lib.study.results import parse_run_name

#: The columns of :func:`time_to_target`, in order.
TIME_TO_TARGET_COLUMNS = ("run", "loss", "batch_size", "seed", "target", "reached", "samples_to_target",
                          "steps_to_target", "flops_to_target", "wall_s_to_target", "final_val_t2v_r10")


def load_curves(curves_dir: str | Path) -> pd.DataFrame:
    """Every ``<run>.csv`` curve of a folder, read by :func:`read_curves` (whose rows must belong to
    the run of the file's name), in one frame with the run's ``loss``, ``batch_size`` and ``seed``
    added, sorted by run and samples seen.

    Raises FileNotFoundError for a missing folder, ValueError for a folder without ``*.csv`` files,
    a file whose name is not a run name ``<loss>-b<batch>-s<seed>`` or a curve of another run.
    """

    folder = Path(curves_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"curve folder {folder} does not exist")
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise ValueError(f"curve folder {folder} holds no <run>.csv curve file")
    frames = []
    for path in files:
        parsed = parse_run_name(path.stem)
        if parsed is None:
            raise ValueError(f"{path}: {path.stem!r} is not a run name <loss>-b<batch_size>-s<seed>")
        frames.append(read_curves(path, run=path.stem).assign(**parsed))
    curves = pd.concat(frames, ignore_index=True)
    return curves.sort_values(["run", "samples_seen"], kind="stable").reset_index(drop=True)


def mean_over_seeds(curves: pd.DataFrame, metric: str = "val_t2v_r10") -> pd.DataFrame:
    """The curve of one configuration over its seeds: one row per ``samples_seen`` with the
    ``mean``, ``min`` and ``max`` of ``metric`` over the runs and their count (``seeds``).

    Every run must be validated at the same samples seen, so that each point averages all seeds;
    otherwise ValueError naming the runs.
    """
    require_columns(curves, ("run", "samples_seen", metric), "the curves")
    grids = {run: tuple(sorted(rows["samples_seen"])) for run, rows in curves.groupby("run", sort=True)}
    if len(set(grids.values())) > 1:
        raise ValueError(f"the runs {', '.join(grids)} are not validated at the same samples seen: "
                         "their mean curve would mix seeds")
    grouped = curves.groupby("samples_seen", sort=True)[metric]
    table = grouped.agg(["mean", "min", "max"]).assign(seeds=grouped.size())
    return table.reset_index()


def convergence_table(curves: pd.DataFrame, fraction: float = 0.2, threshold: float = 0.02) -> pd.DataFrame:
    """One row per (loss, batch_size) of :func:`load_curves` curves: ``seeds``, ``last_samples`` (the
    last point), ``final_val_t2v_r10`` (mean over seeds there), the gain of the mean curve over the last
    ``fraction`` of samples (:func:`curve_gain`; column ``gain_last_20pct`` for the default 0.2) and
    ``flattened`` (that gain is below ``threshold``)."""
    require_columns(curves, ("loss", "batch_size", "seed"), "the curves")
    gain_column = f"gain_last_{round(fraction * 100, 6):g}pct"
    rows = []
    for (loss, batch_size), group in curves.groupby(["loss", "batch_size"], sort=True):
        mean = mean_over_seeds(group)
        gain = curve_gain(group, fraction=fraction)
        rows.append({"loss": loss, "batch_size": int(batch_size), "seeds": int(group["seed"].nunique()),
                     "last_samples": int(mean["samples_seen"].iloc[-1]),
                     "final_val_t2v_r10": float(mean["mean"].iloc[-1]), gain_column: gain,
                     "flattened": bool(gain < threshold)})
    return pd.DataFrame(rows, columns=["loss", "batch_size", "seeds", "last_samples", "final_val_t2v_r10",
                                       gain_column, "flattened"])


def _crossing(values: np.ndarray, target: float) -> float | None:
    """Where a curve first reaches ``target``, as a fractional index between its points (None if never)."""
    above = np.flatnonzero(values >= target)
    if above.size == 0:
        return None
    first = int(above[0])
    if first == 0:
        return 0.0
    return first - 1 + (target - values[first - 1]) / (values[first] - values[first - 1])


def _at(position: float, values: np.ndarray) -> float:
    """A curve column at a fractional index, interpolated linearly between its points."""
    return float(np.interp(position, np.arange(len(values)), values))


def check_target(target: float) -> None:
    """ValueError unless ``target`` is a validation R@10 in (0, 1]."""
    if isinstance(target, bool) or not isinstance(target, (int, float, np.number)) or not 0 < target <= 1:
        raise ValueError(f"target must be a val_t2v_r10 in (0, 1], got {target!r}")


def time_to_target(curves: pd.DataFrame, compute: Mapping[str, Mapping[str, Any]], target: float) -> pd.DataFrame:
    """How long each run of :func:`load_curves` curves took to reach ``val_t2v_r10 >= target``.

    ``samples_to_target`` is the first crossing, interpolated linearly between the two validation
    points around it (the first point where the curve starts at or above the target);
    ``steps_to_target`` = samples / batch size; ``flops_to_target`` = samples * the compute record's
    ``flops_per_step`` / batch size (NaN without it); ``wall_s_to_target``, the curve's ``wall_s``
    (training time, validation excluded) interpolated at the same point. A run that never reaches the
    target has ``reached`` False and NaN in these columns. ``compute`` maps each run to its compute
    record (``results/compute/<run>.json``).

    Raises ValueError for a target outside (0, 1], a run without a compute record or whose record
    has another batch size.
    """
    check_target(target)
    require_columns(curves, ("run", "loss", "batch_size", "seed", "samples_seen", "val_t2v_r10", "wall_s"),
                     "the curves")
    rows = []
    for run, curve in curves.groupby("run", sort=True):
        if run not in compute:
            raise ValueError(f"run {run!r} has no compute record (compute holds {len(compute)} runs)")
        record = compute[run]
        batch_size = int(curve["batch_size"].iloc[0])
        if record.get("batch_size") not in (None, batch_size):
            raise ValueError(f"the compute record of run {run!r} has batch_size {record['batch_size']}, "
                             f"its name says {batch_size}")
        curve = curve.dropna(subset=["val_t2v_r10"]).sort_values("samples_seen")
        values = curve["val_t2v_r10"].to_numpy(dtype=float)
        position = _crossing(values, target)
        samples = math.nan if position is None else _at(position, curve["samples_seen"].to_numpy(dtype=float))
        wall_s = math.nan if position is None else _at(position, curve["wall_s"].to_numpy(dtype=float))
        flops_per_step = record.get("flops_per_step")
        rows.append({"run": run, "loss": curve["loss"].iloc[0], "batch_size": batch_size,
                     "seed": int(curve["seed"].iloc[0]), "target": float(target), "reached": position is not None,
                     "samples_to_target": samples, "steps_to_target": samples / batch_size,
                     "flops_to_target": math.nan if flops_per_step is None else samples * flops_per_step / batch_size,
                     "wall_s_to_target": wall_s, "final_val_t2v_r10": float(values[-1]) if len(values) else math.nan})
    return pd.DataFrame(rows, columns=TIME_TO_TARGET_COLUMNS)
