"""The regime map: at which budget does the study's comparison mean something?

The study compares losses at a fixed number of samples. That comparison tests the paper's claim
only in a regime where (docs/study.md section 7)

(a) the premise holds: ``coarse`` at the large batch beats ``coarse`` at the small batch on text->video
    R@10 (a paired 95% interval over seeds above 0);
(b) the fine-grained attribute is learned: the digit probe's top-1 reaches ``digit_floor`` at the low
    end of its interval for the best configuration;
(c) the headline curves have converged: 1.5x the budget gains less than ``max_gain`` R@10.

:func:`regime_points` builds the runs of the map (each ``{batch_size, losses}`` group at each budget,
a multiple of the study's epochs, with every seed), :func:`regime_map` joins the per-budget tables
and :func:`regime_checks` reads the three conditions at one budget.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from fgmm_lib.runs.curves import read_curves
from fgmm_lib.runs.folder import CURVES
from fgmm_lib.study.stats import mean_interval, paired_differences, seed_values
from fgmm_lib.study.sweep import SweepPoint, batch_groups, check_grid, number_text

#: The label columns of a regime table's rows.
LABELS = ("loss", "batch_size", "budget", "seed")


def budget_epochs(budget: float, epochs: int) -> int:
    """The epochs of a run at ``budget`` times the study's ``epochs``; ValueError unless positive and whole."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"regime budget must be a positive number (a multiple of the study's epochs), got {budget!r}")
    total = budget * epochs
    if abs(total - round(total)) > 1e-9 or round(total) < 1:
        raise ValueError(f"regime budget {budget:g} x {epochs} epochs = {total:g} is not a whole number of epochs")
    return int(round(total))


def regime_points(runs: Sequence[Mapping[str, Any]], budget: float, seeds: Sequence[int], epochs: int,
                  lr: float | None = None) -> list[SweepPoint]:
    """The runs of the map at one ``budget`` (a multiple of ``epochs``): every loss of every
    ``{batch_size, losses}`` group with every seed, named ``<loss>-b<batch>-s<seed>-x<budget>``.
    With ``lr``, every run trains at that base learning rate (the rule then scales it with the batch)."""
    total = budget_epochs(budget, epochs)
    seeds = check_grid("regime.seeds", seeds)
    points = []
    for batch_size, losses in batch_groups("regime.runs", runs):
        for loss in losses:
            for seed in seeds:
                train = {"loss": loss, "batch_size": batch_size, "seed": int(seed), "epochs": total}
                if lr is not None:
                    train["lr"] = float(lr)
                points.append(SweepPoint(
                    name=f"{loss}-b{batch_size}-s{seed}-x{number_text(float(budget))}",
                    labels={"loss": loss, "batch_size": batch_size, "budget": float(budget), "seed": int(seed),
                            "epochs": total},
                    train=train))
    return points


def budget_folder(root: str | Path, budget: float) -> Path:
    """Where one budget's tables of the map live: ``<root>/runs/x<budget>`` (``x1``, ``x1.5``, ``x10``)."""
    return Path(root) / "runs" / f"x{number_text(float(budget))}"


def regime_map(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The per-budget tables as one, sorted by configuration, budget and seed; ValueError when a
    table lacks a label column or two tables hold the same run."""
    if not tables:
        raise ValueError("the regime map needs at least one budget's table")
    for table in tables:
        missing = [column for column in LABELS if column not in table.columns]
        if missing:
            raise ValueError(f"a regime table lacks the column(s) {missing}; it has {list(table.columns)}")
    joined = pd.concat(list(tables), ignore_index=True)
    repeated = joined[joined.duplicated(list(LABELS), keep=False)]
    if not repeated.empty:
        raise ValueError(f"the regime tables repeat run(s): {sorted(set(repeated['run']))}")
    return joined.sort_values(["batch_size", "loss", "budget", "seed"]).reset_index(drop=True)


def regime_summary(table: pd.DataFrame, metrics: Sequence[str] = ("t2v_R@10", "digit_top1", "action_top1",
                                                                   "colour_top1")) -> pd.DataFrame:
    """Per (loss, batch size, budget): seeds, samples, optimizer steps, and each metric's mean with its
    95% t-interval over seeds (``<metric>``, ``<metric>_low``, ``<metric>_high``)."""
    rows = []
    for (loss, batch_size, budget), group in table.groupby(["loss", "batch_size", "budget"], sort=False):
        row: dict[str, Any] = {"loss": loss, "batch_size": batch_size, "budget": budget, "seeds": len(group)}
        for column in ("samples_seen", "steps"):
            if column in group:
                row[column] = group[column].iloc[0]
        for metric in metrics:
            mean, low, high = mean_interval(group[metric].dropna().astype(float))
            row.update({metric: mean, f"{metric}_low": low, f"{metric}_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def _require(table: pd.DataFrame, budget: float, config: Sequence[Any], what: str) -> None:
    loss, batch_size = config
    present = table[(table["budget"] == budget)][["loss", "batch_size"]].drop_duplicates()
    if not ((present["loss"] == loss) & (present["batch_size"] == batch_size)).any():
        known = ", ".join(f"{row.loss} b{row.batch_size}" for row in present.itertuples()) or "none"
        raise ValueError(f"the regime choice's {what} {loss} b{batch_size} has no run at budget {budget:g} in the "
                         f"map (it has: {known})")


def regime_checks(table: pd.DataFrame, budget: float, small: Sequence[Any] = ("coarse", 8),
                  large: Sequence[Any] = ("coarse", 256), headline: Sequence[Sequence[Any]] = (),
                  metric: str = "t2v_R@10", digit_floor: float = 0.5, max_gain: float = 0.02) -> pd.DataFrame:
    """The three conditions at ``budget`` of a regime ``table`` (:func:`regime_map`): one row each with
    ``condition``, ``holds`` (True, False, or None when the map cannot tell), ``value`` and its interval,
    and ``detail`` in words.

    - ``premise``: ``large`` minus ``small`` on ``metric``, paired over seeds; holds when the interval's
      low end is above 0.
    - ``digit learned``: the configuration with the highest low end of its digit probe interval; holds
      when that low end is at least ``digit_floor``.
    - ``converged``: for each ``headline`` configuration (default ``small``, ``large``), the mean gain in
      ``metric`` of the map's budget 1.5 x ``budget`` over ``budget``; holds when every gain is below
      ``max_gain``; None when the map has no such budget.

    Raises:
        ValueError: ``budget`` is not a budget of the map, or a configuration has no run there.
    """
    budgets = sorted(set(table["budget"]))
    if budget not in budgets:
        raise ValueError(f"the regime choice's budget {budget:g} is not in the map (it has {budgets})")
    headline = [tuple(config) for config in headline] or [tuple(small), tuple(large)]
    for config, what in [(small, "small-batch reference"), (large, "large-batch reference"),
                         *((config, "headline configuration") for config in headline)]:
        _require(table, budget, config, what)
    at = table[table["budget"] == budget]
    rows = []

    pairs = at[at.apply(lambda row: (row["loss"], row["batch_size"]) in (tuple(small), tuple(large)), axis=1)]
    difference = paired_differences(pairs, metric, reference=tuple(small))
    if difference.empty:
        rows.append({"condition": "premise", "holds": None, "value": math.nan, "ci95_low": math.nan,
                     "ci95_high": math.nan, "detail": "no seed is shared by the two references"})
    else:
        first = difference.iloc[0]
        rows.append({"condition": "premise", "holds": bool(first["ci95_low"] > 0), "value": first["mean"],
                     "ci95_low": first["ci95_low"], "ci95_high": first["ci95_high"],
                     "detail": f"{large[0]} b{large[1]} - {small[0]} b{small[1]}, {metric}, {int(first['n'])} paired seeds"})

    digits = []
    for (loss, batch_size), _ in at.groupby(["loss", "batch_size"]):
        mean, low, high = mean_interval(seed_values(at, loss, batch_size, "digit_top1"))
        digits.append((low if not math.isnan(low) else -math.inf, mean, low, high, loss, batch_size))
    _, mean, low, high, loss, batch_size = max(digits)
    rows.append({"condition": "digit learned", "holds": bool(low >= digit_floor), "value": mean, "ci95_low": low,
                 "ci95_high": high, "detail": f"best: {loss} b{batch_size} (floor {digit_floor:g})"})

    later = [b for b in budgets if math.isclose(b, 1.5 * budget)]
    if not later:
        rows.append({"condition": "converged", "holds": None, "value": math.nan, "ci95_low": math.nan,
                     "ci95_high": math.nan, "detail": f"the map has no budget {1.5 * budget:g} (1.5x)"})
    else:
        after = table[table["budget"] == later[0]]
        gains = []
        for loss, batch_size in headline:
            before_mean = seed_values(at, loss, batch_size, metric).mean()
            after_mean = seed_values(after, loss, batch_size, metric).mean()
            gains.append((after_mean - before_mean, f"{loss} b{batch_size}"))
        worst, name = max(gains)
        rows.append({"condition": "converged", "holds": bool(worst < max_gain) if not math.isnan(worst) else None,
                     "value": worst, "ci95_low": math.nan, "ci95_high": math.nan,
                     "detail": f"largest gain at 1.5x: {name} (limit {max_gain:g})"})
    return pd.DataFrame(rows)


def regime_curves(points: Sequence[SweepPoint], runs_dir: str | Path) -> pd.DataFrame:
    """Every point's validation curve (its run folder's ``curves.csv``) with the point's labels."""
    frames = []
    for point in points:
        curve = read_curves(Path(runs_dir) / point.name / CURVES, run=point.name)
        frames.append(curve.assign(**{key: value for key, value in point.labels.items()}))
    return pd.concat(frames, ignore_index=True)
