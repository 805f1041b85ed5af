"""Intervals and verdicts over seeds (docs/study.md section 7, "Powered").

- :func:`t_quantile_975` (from :data:`T_975` up to 30 degrees of freedom, without scipy),
  :func:`t_interval` and :func:`mean_interval`: 95% t-intervals of a mean over seeds.
- :func:`paired_differences`: each group's differences from a reference on the same seeds and
  data, with an interval and a verdict. :func:`welch_interval` gives the difference of the means
  of two independent samples.
- :func:`tie_or_difference`: the verdict of an interval (``tie`` when it lies within ±margin,
  ``better`` or ``worse`` when it excludes 0, else ``undecided``). :func:`metric_higher_is_better`
  gives the direction of a metric.
- :func:`seed_values`: one metric's value for each seed of a (loss, batch size).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fgmm_lib.study.results import ATTRIBUTE_METRICS, METRICS, ordered_losses

#: The 0.975 quantile of Student's t distribution for 1 to 30 degrees of freedom (the two-sided 95%
#: interval); scipy is not a dependency and ``torch.distributions.StudentT`` has no ``icdf``.
T_975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)

_Z_975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom: :data:`T_975` up to 30,
    beyond it the Cornish-Fisher expansion in 1/df around the normal quantile (error < 1e-6)."""
    if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"degrees of freedom must be a positive int, got {df!r}")
    if df <= len(T_975):
        return T_975[int(df) - 1]
    z = _Z_975
    terms = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
             (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
             (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(term / df ** power for power, term in enumerate(terms, start=1))


def t_interval(mean: float, std: float, n: int) -> tuple[float, float]:
    """95% t-interval of a mean over ``n`` values with sample standard deviation ``std``:
    ``mean ± t_quantile_975(n - 1) * std / sqrt(n)``; (NaN, NaN) for fewer than 2 values."""
    if n < 2 or not (math.isfinite(mean) and math.isfinite(std)):
        return math.nan, math.nan
    half = t_quantile_975(int(n) - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def metric_higher_is_better(metric: str) -> bool:
    known = {**METRICS, **ATTRIBUTE_METRICS}
    return known[metric].higher_is_better if metric in known else True


def tie_or_difference(interval: Sequence[float], margin: float = 0.03, higher_is_better: bool = True) -> str:
    """The verdict of a 95% interval of a difference (this minus the reference).

    ``"tie"`` when the whole interval lies within ``[-margin, margin]`` (an equivalence: checked
    first, so a tight interval that excludes 0 by less than the margin is a tie); else
    ``"better"`` or ``"worse"`` when it excludes 0 (mirrored where lower is better, as for ranks);
    else ``"undecided"`` (too wide to tell, or NaN: fewer than two pairs).
    """
    low, high = (float(value) for value in interval)
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a non-negative number, got {margin!r}")
    if math.isnan(low) or math.isnan(high):
        return "undecided"
    if low > high:
        raise ValueError(f"the interval must be [low, high] with low <= high, got {list(interval)}")
    if -margin <= low and high <= margin:
        return "tie"
    if low > 0 or high < 0:
        return "better" if (low > 0) == higher_is_better else "worse"
    return "undecided"


def paired_differences(runs: pd.DataFrame, metric: str, reference: Sequence[Any] = ("coarse", 256),
                       by: Sequence[str] = ("loss", "batch_size"), pair_on: str = "seed",
                       margin: float = 0.03) -> pd.DataFrame:
    """Paired differences of ``metric`` against a reference group: same seed, same data.

    For each group of ``by`` other than ``reference`` (its values of ``by``, e.g.
    ``("coarse", 256)``), the runs are paired with the reference's runs on ``pair_on`` (the seed:
    the same initial weights draw and batch order on the same data); the differences
    ``run - reference run`` give ``n`` (pairs), ``mean``, ``std`` and a 95% t-interval
    (:func:`t_interval`), and ``verdict`` is :func:`tie_or_difference` of that interval (for a
    metric where lower is better, "better" means a lower value). Runs without a partner, or
    where either side lacks the metric, are left out.

    Returns columns ``*by, metric, reference, n, mean, std, ci95_low, ci95_high, verdict, seeds``
    (``reference`` as text such as ``"coarse b256"``); empty when the reference has no run.

    Raises:
        ValueError: ``runs`` lacks a column of ``by``, ``pair_on`` or ``metric``, or
            ``reference`` does not have one value per column of ``by``.
    """
    by = list(by)
    missing = [column for column in (*by, pair_on, metric) if column not in runs.columns]
    if missing:
        raise ValueError(f"runs table has no column(s) {missing}; it has {list(runs.columns)}")
    reference = tuple(reference)
    if len(reference) != len(by):
        raise ValueError(f"reference {reference!r} must give one value per column of {by}")
    columns = [*by, "metric", "reference", "n", "mean", "std", "ci95_low", "ci95_high", "verdict", "seeds"]
    label = " ".join(f"b{value}" if column == "batch_size" else str(value) for column, value in zip(by, reference))
    valid = runs.dropna(subset=[metric])
    is_reference = np.logical_and.reduce([valid[column] == value for column, value in zip(by, reference)])
    base = valid[is_reference].set_index(pair_on)[metric]
    if base.empty:
        return pd.DataFrame(columns=columns)
    if base.index.duplicated().any():
        raise ValueError(f"the reference {label} has several runs with the same {pair_on}: cannot pair them")
    higher = metric_higher_is_better(metric)
    rows = []
    for key, group in valid[~is_reference].groupby(by, sort=False):
        values = group.set_index(pair_on)[metric]
        common = [seed for seed in values.index if seed in base.index]
        if not common:
            continue
        differences = np.array([float(values[seed]) - float(base[seed]) for seed in common])
        mean = float(differences.mean())
        std = float(differences.std(ddof=1)) if len(differences) > 1 else math.nan
        low, high = t_interval(mean, std, len(differences))
        key = key if isinstance(key, tuple) else (key,)
        rows.append([*key, metric, label, len(differences), mean, std, low, high,
                     tie_or_difference((low, high), margin, higher), ",".join(str(seed) for seed in sorted(common))])
    table = pd.DataFrame(rows, columns=columns)
    if "loss" in by and not table.empty:
        order = {loss: position for position, loss in enumerate(ordered_losses(table["loss"]))}
        table = table.sort_values(by, key=lambda column: column.map(order) if column.name == "loss" else column)
    return table.reset_index(drop=True)


def seed_values(runs: pd.DataFrame, loss: str, batch_size: int, metric: str) -> pd.Series:
    rows = runs[(runs["loss"] == loss) & (runs["batch_size"] == batch_size)].dropna(subset=[metric])
    return rows.set_index("seed")[metric].astype(float)


def mean_interval(values: pd.Series) -> tuple[float, float, float]:
    mean = float(values.mean()) if len(values) else math.nan
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return (mean, *t_interval(mean, std, len(values)))


def welch_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """The difference of the means ``mean(a) - mean(b)`` of two independent samples and its Welch
    95% interval (Welch-Satterthwaite degrees of freedom, rounded down); NaN bounds under 2 values
    on a side or with no spread at all."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return difference, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return difference, math.nan, math.nan
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile_975(max(1, int(math.floor(df)))) * math.sqrt(va + vb)
    return difference, difference - half, difference + half
