"""Does down-weighting noisy pairs help? (docs/study.md section 6, question 6; issue of the regime)

At the weight temperature chosen on validation the outer weights of the attention losses can be
all but uniform, and then the study's comparison of an attention loss with ``attention_uniform``
tests nothing. This stage trains the attention loss again at the study's budget, batch size, lr
and τa, at smaller weight temperatures τw (sharper, non-uniform weights), with the study's seeds:

- :func:`weighting_points` names the runs ``<loss>-b<batch>-s<seed>-tw<τw>``;
- :func:`weighting_table` pairs every τw (and the study's own runs at its chosen τw) with the
  uniform ablation on the same seed: does down-weighting help, and how far are its weights from
  uniform (:func:`fgmm_lib.study.attention.mechanism_table`)?
- :func:`fgmm_lib.study.report_regime.report_down_weighting` writes the answer into the study summary.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from fgmm_lib.study.stats import paired_differences
from fgmm_lib.study.sweep import SweepPoint, check_grid, number_text, study_points

#: The label of the runs' loss in :func:`weighting_table`: the loss and its weight temperature.
LABEL = "{loss} τw={tau_w:g}"


def weighting_points(loss: str, weight_temperatures: Sequence[float], seeds: Sequence[int], batch_size: int,
                     lr: float | None = None, lr_factors: Mapping[tuple[str, int], float] | None = None) -> list[SweepPoint]:
    """``loss`` at ``batch_size`` with every seed, at each weight temperature: the study's points
    (:func:`fgmm_lib.study.sweep.study_points`, so the same lr) with ``weight_temperature`` set,
    named ``<loss>-b<batch>-s<seed>-tw<τw>`` and labelled with ``weight_temperature``."""
    temperatures = check_grid("down_weighting.weight_temperatures", weight_temperatures, positive=True)
    base = study_points([{"batch_size": batch_size, "losses": [loss]}], seeds, lr=lr, lr_factors=lr_factors)
    return [SweepPoint(name=f"{point.name}-tw{number_text(float(tau_w))}",
                       labels={**point.labels, "weight_temperature": float(tau_w)},
                       train={**point.train, "weight_temperature": float(tau_w)})
            for tau_w in temperatures for point in base]


def weighting_table(runs: pd.DataFrame, study: pd.DataFrame, metric: str = "t2v_R@10",
                    reference: str = "attention_uniform", margin: float = 0.03) -> pd.DataFrame:
    """Each weight temperature's runs minus the ``reference`` runs of the study at the same batch size
    and seed, with the study's own runs of the same loss at its chosen τw (on the same seeds) as one
    more row.

    ``runs`` has ``loss, batch_size, seed, weight_temperature`` and ``metric`` (this stage's table);
    ``study`` has ``loss, batch_size, seed, weight_temperature`` and ``metric``
    (:func:`fgmm_lib.study.tables.load_runs` of the study). One row per (loss, τw, source): ``loss,
    tau_w, batch_size, source`` (this stage or the study), ``seeds, mean, reference_mean``, and the
    paired ``n, difference, ci95_low, ci95_high, verdict`` (:func:`paired_differences`).

    Raises:
        ValueError: the study has no ``reference`` run at the batch size of ``runs``.
    """
    if runs.empty:
        raise ValueError("weighting_table: no runs")
    batch_sizes = sorted({int(b) for b in runs["batch_size"]})
    losses = sorted({str(loss) for loss in runs["loss"]})
    base = study[(study["batch_size"].isin(batch_sizes))]
    uniform = base[base["loss"] == reference]
    if uniform.empty:
        raise ValueError(f"the study has no {reference} run at batch size {batch_sizes}: the pairs need it")
    own = base[base["loss"].isin(losses) & base["seed"].isin(runs["seed"])]  # the stage's seeds only
    labelled = pd.concat([runs.assign(source="down_weighting"), own.assign(source="study")], ignore_index=True)
    labelled["loss"] = [LABEL.format(loss=loss, tau_w=float(tau_w)) + f" ({source})"  # a stage τw may be the study's
                        for loss, tau_w, source in zip(labelled["loss"], labelled["weight_temperature"],
                                                       labelled["source"])]
    frame = pd.concat([labelled, uniform.assign(source="study")], ignore_index=True)
    frame = frame[["loss", "batch_size", "seed", metric]]
    rows = []
    for (label, batch_size), group in labelled.groupby(["loss", "batch_size"], sort=False):
        paired = paired_differences(frame[frame["loss"].isin([label, reference])], metric, (reference, batch_size),
                                    margin=margin)
        paired = paired[paired["loss"] == label]
        row = {"loss": label.split(" ")[0], "tau_w": float(group["weight_temperature"].iloc[0]),
               "batch_size": int(batch_size), "source": group["source"].iloc[0], "seeds": len(group),
               "mean": float(group[metric].mean()), "reference_mean": float(uniform[metric].mean())}
        if paired.empty:
            row.update(n=0, difference=float("nan"), ci95_low=float("nan"), ci95_high=float("nan"),
                       verdict="no pairs")
        else:
            first = paired.iloc[0]
            row.update(n=int(first["n"]), difference=float(first["mean"]), ci95_low=float(first["ci95_low"]),
                       ci95_high=float(first["ci95_high"]), verdict=str(first["verdict"]))
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["loss", "tau_w", "source"], ignore_index=True)

