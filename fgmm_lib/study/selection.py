"""The study's choices made on validation: the learning-rate factor for each batch size and the attention temperatures.

- Learning rate (docs/study.md section 7; docs/pipeline.md, "How the study's choices are made"):
  :func:`lr_factors` keeps the rule's learning rate (factor 1) for each loss and batch size of the
  lr sweep unless another factor beats it by more than :data:`LR_RULE_MARGIN` (:func:`chosen_factor`);
  :func:`fgmm_lib.study.sweep.factor_for` gives a loss the grid lacks its family's or ``coarse``'s.
- Temperatures (docs/study.md section 6, question 7): :func:`fixed_temperatures` (the fixed-grid
  rows of a temperature sweep), :func:`temperature_surface` (the metric over (tau_a, tau_w)) and
  :func:`best_temperatures` (the surface's best pair).
"""

from __future__ import annotations

import pandas as pd

from fgmm_lib.study.results import METRICS

#: How close to the best validation R@10 the rule's learning rate (factor 1) must come to be kept.
LR_RULE_MARGIN = 0.03


def lr_factors(frame: pd.DataFrame, metric: str = "t2v_R@10",
               margin: float = LR_RULE_MARGIN) -> dict[tuple[str, int], float]:
    """The learning rate per loss and batch size, chosen on the validation grid of the lr sweep (its
    rows: ``loss``, ``batch_size``, ``lr_factor``, ``metric``): the factor of the rule's lr with the
    best ``metric`` (mean over seeds), or 1 (the rule) where 1 comes within ``margin``. Keys are
    ``(loss, batch_size)``; :func:`fgmm_lib.study.sweep.factor_for` reads them.

    Raises:
        ValueError: a column is missing or a loss and batch size have no run at factor 1.
    """
    missing = {"loss", "batch_size", "lr_factor", metric} - set(frame.columns)
    if missing:
        raise ValueError(f"the lr sweep table lacks the columns {sorted(missing)}")
    chosen = {}
    for (loss, batch_size), group in frame.groupby(["loss", "batch_size"]):
        means = group.groupby("lr_factor")[metric].mean()
        if 1.0 not in means.index:
            raise ValueError(f"the lr sweep has no run at factor 1 for {loss} at batch size {batch_size}")
        chosen[(str(loss), int(batch_size))] = chosen_factor(means, margin)
    return chosen


def chosen_factor(means: pd.Series, margin: float = LR_RULE_MARGIN) -> float:
    """The lr factor to keep, given the validation metric per factor (``means``, indexed by factor,
    with a value at 1): 1 (the rule) where it comes within ``margin`` of the best, else the best."""
    means = means.dropna()
    return 1.0 if means.max() - means[1.0] <= margin else float(means.idxmax())


def fixed_temperatures(frame: pd.DataFrame) -> pd.DataFrame:
    """The fixed-grid rows of a temperature sweep (``learnable`` false, read as text or bool)."""
    learnable = frame["learnable"].astype(str).str.strip().str.lower().isin(["true", "1", "yes"])
    return frame[~learnable.to_numpy()]


def temperature_surface(frame: pd.DataFrame, metric: str = "t2v_R@10") -> pd.DataFrame:
    """Question 7: ``metric`` (mean over seeds) of the fixed-grid runs, rows τa
    (``attn_temperature``), columns τw (``weight_temperature``).

    Raises:
        ValueError: the sweep mixes losses, or has no fixed-grid run.
    """
    fixed = fixed_temperatures(frame)
    if fixed.empty:
        raise ValueError("the temperature sweep has no fixed-grid run (learnable false)")
    if fixed["loss"].nunique() > 1:
        raise ValueError(f"the temperature sweep mixes losses {sorted(fixed['loss'].unique())}: pass one loss's rows")
    surface = fixed.pivot_table(index="attn_temperature", columns="weight_temperature", values=metric, aggfunc="mean")
    return surface.sort_index().sort_index(axis=1)


def best_temperatures(frame: pd.DataFrame, metric: str = "t2v_R@10") -> tuple[float, float, float]:
    """(τa, τw, value) of the best fixed pair of :func:`temperature_surface` on validation (highest
    ``metric``, or lowest for a rank)."""
    stacked = temperature_surface(frame, metric).stack().dropna()
    best = stacked.idxmax() if METRICS[metric].higher_is_better else stacked.idxmin()
    return float(best[0]), float(best[1]), float(stacked[best])
