"""Has the study converged at its budget? (docs/study.md section 7, condition (c))

A cosine schedule flattens every validation curve at its end, so a flat curve says only that the
budget ended. The test is a longer run: the headline configurations trained again with
``factor`` times the study's samples (the same lr rule and factor, temperatures, warmup and seeds),
and the gain of each over the study's run on the same seed.

- :func:`longer_points` names the runs ``<loss>-b<batch>-s<seed>-x<factor>``;
- :func:`longer_table` pairs them with the study's runs: the gain, its 95% interval, and whether
  the configuration has converged (a mean gain below :data:`CONVERGED_GAIN`);
- :func:`fgmm_lib.study.report_regime.report_longer_runs` writes the answer into the study summary.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from fgmm_lib.study.stats import paired_differences
from fgmm_lib.study.sweep import SweepPoint, check_grid, number_text, study_points

#: The largest gain of the longer run over the study's run for which a configuration has converged.
CONVERGED_GAIN = 0.02


def longer_epochs(epochs: int, factor: float) -> int:
    """The epochs of a run ``factor`` times as long as a run of ``epochs``; the product must be whole."""
    [factor] = check_grid("convergence.factor", [factor], positive=True)
    longer = float(epochs) * float(factor)
    if factor <= 1 or abs(longer - round(longer)) > 1e-9:
        raise ValueError(f"convergence.factor {factor:g} times {epochs} epochs must be a whole number of "
                         f"epochs above {epochs}, got {longer:g}")
    return int(round(longer))


def longer_points(runs: Sequence[Mapping[str, Any]], seeds: Sequence[int], epochs: int, factor: float,
                  lr: float | None = None, lr_factors: Mapping[tuple[str, int], float] | None = None) -> list[SweepPoint]:
    """The study's points (:func:`fgmm_lib.study.sweep.study_points` of the ``runs`` groups, so the same
    lr) at ``longer_epochs(epochs, factor)``, named ``<run>-x<factor>`` and labelled with ``factor``."""
    longer = longer_epochs(epochs, factor)
    return [SweepPoint(name=f"{point.name}-x{number_text(float(factor))}",
                       labels={**point.labels, "factor": float(factor)},
                       train={**point.train, "epochs": longer})
            for point in study_points(runs, seeds, lr=lr, lr_factors=lr_factors)]


def longer_table(runs: pd.DataFrame, study: pd.DataFrame, metric: str = "t2v_R@10",
                 threshold: float = CONVERGED_GAIN) -> pd.DataFrame:
    """Each configuration's longer runs minus the study's runs of the same (loss, batch size, seed).

    ``runs`` has ``loss, batch_size, seed`` and ``metric`` (this stage's table), ``study`` the same
    (:func:`fgmm_lib.study.tables.load_runs`). One row per configuration: ``loss, batch_size, n,
    study_mean, longer_mean, gain, ci95_low, ci95_high, converged`` (the mean gain is below
    ``threshold``) and ``decided`` (the interval lies wholly on one side of ``threshold``).

    Raises:
        ValueError: a configuration of ``runs`` has no study run on any of its seeds.
    """
    if runs.empty:
        raise ValueError("longer_table: no runs")
    rows = []
    for (loss, batch_size), group in runs.groupby(["loss", "batch_size"], sort=False):
        base = study[(study["loss"] == loss) & (study["batch_size"] == batch_size) & study["seed"].isin(group["seed"])]
        if base.empty:
            raise ValueError(f"the study has no {loss} run at batch {batch_size} on seeds "
                             f"{sorted(group['seed'])}: the longer runs need their pairs")
        frame = pd.concat([group.assign(loss="longer"), base.assign(loss="study")], ignore_index=True)
        paired = paired_differences(frame[["loss", "batch_size", "seed", metric]], metric, ("study", batch_size))
        first = paired.iloc[0]
        gain, low, high = float(first["mean"]), float(first["ci95_low"]), float(first["ci95_high"])
        rows.append({"loss": loss, "batch_size": int(batch_size), "n": int(first["n"]),
                     "study_mean": float(base[metric].mean()), "longer_mean": float(group[metric].mean()),
                     "gain": gain, "ci95_low": low, "ci95_high": high, "converged": gain < threshold,
                     "decided": bool(high < threshold or low >= threshold)})
    return pd.DataFrame(rows)
