"""The study's tables: metrics files to tables, summaries over seeds, and the sweeps' tables.

Everything here reads files and returns plain data (the results files of :mod:`fgmm_lib.study.results`,
pandas DataFrames) and draws nothing. :mod:`fgmm_lib.study.plots` plots what these functions return,
and :mod:`fgmm_lib.study.report` puts them in the report. Notebooks and the report read every
number through these functions, so they all read the numbers the same way.

Runs and their metrics:
    :func:`metrics_table`, :func:`recall_at_k_table`, :func:`flatten_metrics`, :func:`read_record`,
    :func:`load_runs`, :func:`load_runs_if_any`, :func:`metric_label`.
Summaries over seeds:
    :func:`summarise_over_seeds`, :func:`comparison_table`, :func:`comparison_batch_size`,
    :func:`mean_std_table`, :func:`interval_table`, :func:`best_losses`, :func:`attribute_table`,
    :func:`evaluation_interval_table`, :func:`paired_difference_table`, :func:`seed_table`,
    :func:`compute_table`, :func:`sweep_by_loss`, :func:`markdown_table`.
Seeds that land in different outcomes: :func:`seed_splits`, :func:`seed_outcomes`. Attributes learned: :func:`learned_attributes`.
Sweeps (one CSV row per run, :data:`SWEEP_LABELS`, :data:`SWEEP_FILES`):
    :func:`load_sweep`, :func:`load_sweep_if_any`, :func:`sweep_table`, :func:`sweep_ends`,
    :func:`noise_table`, :func:`noise_drops` (question 3), :func:`learnable_temperatures`,
    :func:`study_temperatures` (question 7), :func:`lr_rule_table` (the learning-rate rule of
    docs/study.md section 7).
Compute to a target: :func:`time_to_target_summary`, which averages
    :func:`fgmm_lib.study.curves.time_to_target` over seeds.

Other modules hold the rest. :mod:`fgmm_lib.study.stats` has the intervals and verdicts
(:func:`fgmm_lib.study.stats.t_interval`, :func:`fgmm_lib.study.stats.paired_differences`,
:func:`fgmm_lib.study.stats.tie_or_difference`, :func:`fgmm_lib.study.stats.welch_interval`).
:mod:`fgmm_lib.study.report` has the report's sections and :func:`fgmm_lib.study.report.headline_answer`.
:mod:`fgmm_lib.study.selection` has the choice of temperatures and learning rate
(:func:`fgmm_lib.study.selection.temperature_surface`, :func:`fgmm_lib.study.selection.best_temperatures`).
:mod:`fgmm_lib.study.attention` has the attention examples and
:func:`fgmm_lib.study.attention.pointing_table`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from fgmm_lib.runs.curves import require_columns
from fgmm_lib.study.curves import TIME_TO_TARGET_COLUMNS
from fgmm_lib.study.results import (
    ATTRIBUTE_METRICS,
    COMPUTE_DIR,
    DETAILS_DIR,
    METRICS,
    METRICS_DIR,
    Metric,
    chance_path,
    interval,
    lookup,
    ordered_losses,
    parse_run_name,
)
from fgmm_lib.study.selection import LR_RULE_MARGIN, chosen_factor, fixed_temperatures
from fgmm_lib.study.stats import paired_differences, seed_values, t_interval

#: The retrieval metrics the batch-size verdict (docs/study.md section 6, question 2) is read on.
RETRIEVAL_METRICS = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")

#: Label of each compute column of :func:`load_runs` (``compute_<key of the compute record>``).
COST_LABELS = {
    "compute_flops_per_step": "FLOPs per training step",
    "compute_total_flops": "FLOPs of the whole run",
    "compute_wall_s": "wall time of the run (s)",
    "compute_samples_seen": "samples seen",
}


def metric_label(name: str) -> str:
    """Human-readable label of a metric column (the column name itself if it is not a known metric)."""
    known = {**METRICS, **ATTRIBUTE_METRICS}
    return known[name].label if name in known else name.replace("_", " ")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


_chance_path = chance_path


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Every downstream metric of one run as a table: metric (label), value, chance level.

    Metrics the run does not have (pointing for ``coarse`` and ``milnce``) are left out.
    """
    rows = []
    for name, metric in METRICS.items():
        value = _number(lookup(metrics, metric.path))
        if math.isnan(value):
            continue
        rows.append({"metric": metric.label, "value": value,
                     "chance": _number(lookup(metrics, _chance_path(metric.path)))})
    if not rows:
        raise ValueError("the metrics hold none of the downstream metrics")
    return pd.DataFrame(rows).set_index("metric")


def _metric_value(metrics: Mapping[str, Any], name: str, metric: Metric) -> float:
    """A metric of a flat metrics file (key ``name``) or of a whole evaluation record (``metric.path``)."""
    value = metrics.get(name)
    return _number(lookup(metrics, metric.path) if value is None or isinstance(value, Mapping) else value)


def flatten_metrics(metrics: Mapping[str, Any], source: str = "metrics", details: Mapping[str, Any] | None = None,
                    compute: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One flat row of a run's results: run, loss, batch_size, seed, every metric of :data:`METRICS`,
    the attribute retrievals of :data:`fgmm_lib.study.results.ATTRIBUTE_METRICS` the record holds, their
    chance levels (``<metric>_chance``), the run's 95% bootstrap intervals over queries or test
    clips (``<metric>_ci95_low``, ``<metric>_ci95_high``) where evaluation stored them, the
    temperatures (``<name>_temperature``) and every number of its compute record (``compute_<key>``).

    ``metrics`` is a metrics file (flat, :func:`fgmm_lib.study.results.write_metrics`) or a whole
    evaluation record; chance levels and temperatures come from ``details`` (the whole record)
    or from ``metrics`` itself when it is one. Loss, batch size and seed come from ``compute``
    (``evaluate(..., compute_out=...)``), else from the run's name ``<loss>-b<batch_size>-s<seed>``
    (the record's ``run``, else ``source``'s file name). A metric the run does not have (pointing
    for ``coarse``) is NaN.

    Raises:
        ValueError: ``metrics`` is not a mapping, or loss, batch size and seed are found nowhere
            (``source`` names the file in the message).
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{source}: not a metrics record (a JSON object), got {type(metrics).__name__}")
    record = details if isinstance(details, Mapping) else metrics
    run = record.get("run") or metrics.get("run")
    name = Path(str(run)).name if run else Path(str(source)).stem
    identity = {key: compute[key] for key in ("loss", "batch_size", "seed")} \
        if isinstance(compute, Mapping) and all(key in compute for key in ("loss", "batch_size", "seed")) else None
    if identity is None:
        identity = parse_run_name(name)
    if identity is None:
        raise ValueError(f"{source}: no compute record with the run's loss, batch_size and seed, and its run "
                         f"{name!r} is not named <loss>-b<batch_size>-s<seed>")
    loss = str(record.get("loss") or identity["loss"])
    row: dict[str, Any] = {"run": name, "loss": loss, "batch_size": int(identity["batch_size"]),
                           "seed": int(identity["seed"])}
    for key, metric in METRICS.items():
        row[key] = _metric_value(metrics, key, metric)
    for key, metric in ATTRIBUTE_METRICS.items():
        value = _number(lookup(record, metric.path))
        if not math.isnan(value):
            row[key] = value
    for key, metric in {**METRICS, **ATTRIBUTE_METRICS}.items():
        chance = _number(lookup(record, _chance_path(metric.path)))
        if not math.isnan(chance):
            row[f"{key}_chance"] = chance
        bounds = interval(record, metric.path)
        if bounds is not None:
            row[f"{key}_ci95_low"], row[f"{key}_ci95_high"] = bounds
    temperatures = record.get("temperatures")
    if isinstance(temperatures, Mapping):
        for key, value in temperatures.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"{key}_temperature"] = float(value)
    if isinstance(compute, Mapping):
        for key, value in compute.items():
            if key not in ("batch_size", "seed") and isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"compute_{key}"] = float(value)
    return row


def read_record(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"metrics file {path} is not valid JSON: {error}") from error


def load_runs(metrics_dir: str | Path = METRICS_DIR, compute_dir: str | Path | None = None,
              details_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per ``*.json`` metrics file in ``metrics_dir`` (see :func:`flatten_metrics`), sorted
    by loss (study order), batch size and seed.

    Each run's details (chance levels, temperatures) are read from ``details_dir/<run>.json``
    (default: ``metrics_dir/details``) and its compute record from ``compute_dir/<run>.json``
    (default: ``results/compute`` beside ``metrics_dir``), where they exist.

    Raises:
        FileNotFoundError: the folder does not exist or holds no ``*.json`` file.
        ValueError: a file is not valid JSON or not a metrics record (naming the file).
    """
    folder = Path(metrics_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"metrics folder {folder} does not exist")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"metrics folder {folder} holds no *.json metrics file")
    details_folder = Path(details_dir) if details_dir is not None else folder.parent / DETAILS_DIR.relative_to(METRICS_DIR.parent)
    compute_folder = Path(compute_dir) if compute_dir is not None else folder.parent / COMPUTE_DIR.name
    rows = []
    for path in files:
        extra = {}
        for key, other in (("details", details_folder / path.name), ("compute", compute_folder / path.name)):
            extra[key] = read_record(other) if other.is_file() else None
        rows.append(flatten_metrics(read_record(path), source=str(path), **extra))
    table = pd.DataFrame(rows)
    order = {loss: position for position, loss in enumerate(ordered_losses(table["loss"]))}
    table = table.sort_values(["loss", "batch_size", "seed"], key=lambda column: column.map(order)
                              if column.name == "loss" else column)
    return table.reset_index(drop=True)


def summarise_over_seeds(runs: pd.DataFrame, by: Sequence[str] = ("loss", "batch_size"),
                         metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, sample standard deviation (NaN for a single seed), count and 95% t-interval of the
    mean over seeds, long format.

    Returns columns ``*by, metric, mean, std, n, ci95_low, ci95_high``; the interval is
    ``mean ± t(0.975, n - 1) std / sqrt(n)`` (:func:`t_interval`, NaN for a single seed).
    ``metrics`` defaults to :data:`METRICS` (pass the attribute retrievals of
    :data:`fgmm_lib.study.results.ATTRIBUTE_METRICS` to summarise those too); metrics a run lacks (NaN)
    are left out of its group, and a (group, metric) with no value at all is dropped.
    """
    by = list(by)
    missing = [column for column in by if column not in runs.columns]
    if missing:
        raise ValueError(f"runs table has no column(s) {missing}; it has {list(runs.columns)}")
    names = [m for m in (metrics if metrics is not None else METRICS) if m in runs.columns]
    long = runs.melt(id_vars=by, value_vars=names, var_name="metric", value_name="value").dropna(subset=["value"])
    summary = (long.groupby(by + ["metric"], sort=False)["value"]
               .agg(mean="mean", std="std", n="count").reset_index())
    bounds = [t_interval(m, s, int(n)) for m, s, n in zip(summary["mean"], summary["std"], summary["n"])]
    summary["ci95_low"] = [low for low, _ in bounds]
    summary["ci95_high"] = [high for _, high in bounds]
    metric_order = {name: position for position, name in enumerate(names)}
    loss_order = {loss: position for position, loss in enumerate(ordered_losses(summary["loss"]))} \
        if "loss" in by else {}

    def sort_key(column: pd.Series) -> pd.Series:
        if column.name == "metric":
            return column.map(metric_order)
        if column.name == "loss":
            return column.map(loss_order)
        return column

    return summary.sort_values(["metric"] + by, key=sort_key).reset_index(drop=True)


def comparison_table(summary: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """The rows of a :func:`summarise_over_seeds` table at one batch size (docs/study.md 6, question 1).

    Raises:
        ValueError: no run at that batch size (naming the ones there are).
    """
    rows = summary[summary["batch_size"] == batch_size]
    if rows.empty:
        raise ValueError(
            f"no run at batch size {batch_size}; the runs have batch sizes {sorted(summary['batch_size'].unique())}"
        )
    return rows.reset_index(drop=True)


def comparison_batch_size(batch_sizes: Sequence[int], preferred: int | None = None) -> int:
    """The batch size of the loss comparison: ``preferred`` (the study's) if some run has it,
    else the middle of the distinct batch sizes (the lower one of the two middles).

    Raises:
        ValueError: ``batch_sizes`` is empty.
    """
    distinct = sorted({int(b) for b in batch_sizes})
    if not distinct:
        raise ValueError("no batch sizes: there are no runs")
    if preferred is not None and int(preferred) in distinct:
        return int(preferred)
    return distinct[(len(distinct) - 1) // 2]


def _mean_std(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _wide_cells(cells: pd.DataFrame, index: str) -> pd.DataFrame:
    """The text cells (column ``value``) of a long table, one row per ``index`` value (losses in
    the study's order) and one column per metric label (known metrics first, in their order)."""
    wide = cells.pivot(index=index, columns="metric", values="value")
    known = [*METRICS, *ATTRIBUTE_METRICS]
    metric_columns = [m for m in known if m in wide.columns] + sorted(set(wide.columns) - set(known))
    rows = ordered_losses(wide.index) if index == "loss" else sorted(wide.index)
    wide = wide.loc[rows, metric_columns].fillna("–")
    wide.columns = [metric_label(m) for m in metric_columns]
    wide.columns.name = None
    return wide


def mean_std_table(summary: pd.DataFrame, index: str = "loss", digits: int = 3) -> pd.DataFrame:
    """Wide table of "mean ± std" strings: one row per ``index`` value, one column per metric label."""
    cells = summary.assign(value=[_mean_std(m, s, digits) for m, s in zip(summary["mean"], summary["std"])])
    return _wide_cells(cells, index)


def best_losses(summary: pd.DataFrame) -> pd.DataFrame:
    """Per metric, the loss with the best mean (highest, or lowest for ranks) and the runner-up.

    ``summary`` holds one batch size (:func:`comparison_table`); returns one row per metric
    label with columns ``best``, ``best mean ± std``, ``runner-up``, ``runner-up mean ± std``.
    """
    rows = []
    for name in dict.fromkeys(summary["metric"]):
        rows_of_metric = summary[summary["metric"] == name]
        higher = METRICS[name].higher_is_better if name in METRICS else True
        ranked = rows_of_metric.sort_values("mean", ascending=not higher)
        first = ranked.iloc[0]
        row = {"metric": metric_label(name), "best": first["loss"],
               "best mean ± std": _mean_std(float(first["mean"]), float(first["std"]), 3),
               "runner-up": "–", "runner-up mean ± std": "–"}
        if len(ranked) > 1:
            second = ranked.iloc[1]
            row.update({"runner-up": second["loss"],
                        "runner-up mean ± std": _mean_std(float(second["mean"]), float(second["std"]), 3)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")


def markdown_table(table: pd.DataFrame, index: bool = True, float_digits: int = 3) -> str:
    """A GitHub-flavoured markdown table of a DataFrame (floats with ``float_digits`` decimals)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if math.isnan(value) else f"{value:.{float_digits}f}"
        return str(value).replace("|", "\\|")

    headers = ([str(table.index.name or "")] if index else []) + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for label, row in table.iterrows():
        cells = ([cell(label)] if index else []) + [cell(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def recall_at_k_table(metrics: Mapping[str, Any], tasks: Sequence[str] = ("t2v", "t2i")) -> pd.DataFrame:
    """Long table ``task, K, recall, chance`` of the R@K values stored in a metrics dict."""
    rows = []
    for task in tasks:
        values = metrics.get(task) or {}
        chance = values.get("chance") or {}
        for key, value in values.items():
            found = re.fullmatch(r"R@(\d+)", str(key))
            if found:
                rows.append({"task": task, "K": int(found.group(1)), "recall": float(value),
                             "chance": float(chance[key]) if key in chance else math.nan})
    if not rows:
        raise ValueError(f"the metrics hold no R@K values for tasks {list(tasks)}")
    return pd.DataFrame(rows).sort_values(["task", "K"]).reset_index(drop=True)


#: The metrics on which the report compares losses by paired differences (questions 1 and 2).
PAIRED_METRICS = ("t2v_R@10", "t2v_R@1", "action_top1")


def _interval_text(mean: float, low: float, high: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "–"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def interval_table(summary: pd.DataFrame, index: str = "loss", digits: int = 3,
                   metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Wide table of "mean [95% t-interval over seeds]" strings of a :func:`summarise_over_seeds`
    table: one row per ``index`` value, one column per metric label (``metrics``: all of them)."""
    if metrics is not None:
        summary = summary[summary["metric"].isin(list(metrics))]
    cells = summary.assign(value=[_interval_text(m, lo, hi, digits) for m, lo, hi
                                  in zip(summary["mean"], summary["ci95_low"], summary["ci95_high"])])
    return _wide_cells(cells, index)


def paired_difference_table(runs: pd.DataFrame, reference: Sequence[Any], metrics: Sequence[str] = PAIRED_METRICS,
                            by: Sequence[str] = ("loss", "batch_size"), margin: float = 0.03) -> pd.DataFrame:
    """:func:`paired_differences` of several metrics against one reference, one row per group and
    metric: ``*by, metric (label), n, difference [95% interval], verdict``."""
    parts = [paired_differences(runs, metric, reference, by=by, margin=margin)
             for metric in metrics if metric in runs.columns]
    parts = [part for part in parts if not part.empty]
    columns = [*by, "metric", "n", "difference [95% CI]", "verdict"]
    if not parts:
        return pd.DataFrame(columns=columns)
    table = pd.concat(parts, ignore_index=True)
    table["difference [95% CI]"] = interval_column(table, "mean", "ci95_low", "ci95_high")
    table["metric"] = [metric_label(m) for m in table["metric"]]
    return table[columns]


def evaluation_interval_table(runs: pd.DataFrame, metrics: Sequence[str] = PAIRED_METRICS) -> pd.DataFrame:
    """Per loss and batch size, the mean over seeds of each run's bootstrap half-width
    (``(ci95_high - ci95_low) / 2``, over queries or test clips) of ``metrics``: how precisely one
    run's evaluation set measures it (docs/study.md section 7 asks for about ±0.03)."""
    present = [m for m in metrics if f"{m}_ci95_low" in runs.columns]
    if runs.empty or not present:
        return pd.DataFrame(columns=["loss", "batch_size"])
    half = pd.DataFrame({metric_label(m): (runs[f"{m}_ci95_high"] - runs[f"{m}_ci95_low"]) / 2 for m in present})
    half[["loss", "batch_size"]] = runs[["loss", "batch_size"]]
    return half.groupby(["loss", "batch_size"], sort=False).mean().reset_index()


#: The attribute columns of :func:`attribute_table`: what the encoders learned (docs/study.md section 7).
ATTRIBUTE_COLUMNS = ("action_top1", "colour_top1", "digit_top1",
                     "t2v_colour_R@1", "t2v_digit_R@1", "t2v_action_R@1")


def attribute_table(runs: pd.DataFrame, batch_size: int | None = None) -> pd.DataFrame:
    """Per loss (at ``batch_size``, else every batch size), the probe top-1 and the attribute-level
    text→video R@1 of each attribute as "mean [95% t-interval over seeds]", with a last row of
    chance levels (mean over the runs)."""
    present = [m for m in ATTRIBUTE_COLUMNS if m in runs.columns and runs[m].notna().any()]
    if runs.empty or not present:
        return pd.DataFrame()
    rows = runs if batch_size is None else runs[runs["batch_size"] == batch_size]
    by = ["loss"] if batch_size is not None else ["loss", "batch_size"]
    summary = summarise_over_seeds(rows, by=by, metrics=present)
    if batch_size is None:
        summary = summary.assign(loss=[f"{loss} b{batch}" for loss, batch in zip(summary["loss"], summary["batch_size"])])
    table = interval_table(summary, metrics=present)
    chance = {metric_label(m): f"{rows[f'{m}_chance'].mean():.3f}" for m in present if f"{m}_chance" in rows.columns}
    table.loc["chance"] = [chance.get(column, "–") for column in table.columns]
    return table


def load_runs_if_any(metrics_dir: str | Path) -> pd.DataFrame:
    """:func:`load_runs`, or an empty table when the folder is missing or holds no metrics file."""
    folder = Path(metrics_dir)
    if not folder.is_dir() or not any(folder.glob("*.json")):
        return pd.DataFrame()
    return load_runs(folder)


#: Seeds of one configuration "split" on a metric where their sorted values leave a gap wider than this:
#: several times a run's own 95% evaluation interval (about ±0.03, the study's power), so the groups are
#: different outcomes of training, not evaluation noise.
SEED_SPLIT_GAP = 0.10


def seed_table(runs: pd.DataFrame, batch_size: int, metrics: Sequence[str] = PAIRED_METRICS) -> pd.DataFrame:
    """One row per loss at ``batch_size``: each seed's value of each metric (columns ``METRIC s<seed>``)."""
    rows = runs[runs["batch_size"] == batch_size]
    table = rows.pivot_table(index="loss", columns="seed", values=list(metrics), aggfunc="first")
    table.columns = [f"{metric_label(metric)} s{seed}" for metric, seed in table.columns]
    ordered = [f"{metric_label(metric)} s{seed}" for metric in metrics for seed in sorted(rows["seed"].unique())]
    table = table.reindex(columns=[c for c in ordered if c in table.columns])
    return table.reindex(ordered_losses(table.index))


def seed_splits(runs: pd.DataFrame, batch_size: int, metric: str, gap: float = SEED_SPLIT_GAP) -> pd.DataFrame:
    """The losses at ``batch_size`` whose seeds split on ``metric``: sorted, their values leave a gap wider
    than ``gap``. One row per such loss with the seeds and value ranges below and above the widest gap."""
    rows = []
    for loss in ordered_losses(runs.loc[runs["batch_size"] == batch_size, "loss"].unique()):
        values = seed_values(runs, loss, batch_size, metric).sort_values()
        if len(values) < 2:
            continue
        gaps = np.diff(values.to_numpy())
        cut = int(np.argmax(gaps))
        if gaps[cut] <= gap:
            continue
        low, high = values.iloc[:cut + 1], values.iloc[cut + 1:]
        rows.append({"loss": loss, "metric": metric, "gap": float(gaps[cut]),
                     "low_seeds": [int(seed) for seed in low.index], "low_min": float(low.min()),
                     "low_max": float(low.max()), "high_seeds": [int(seed) for seed in high.index],
                     "high_min": float(high.min()), "high_max": float(high.max())})
    return pd.DataFrame(rows, columns=["loss", "metric", "gap", "low_seeds", "low_min", "low_max", "high_seeds",
                                       "high_min", "high_max"])


def seed_outcomes(runs: pd.DataFrame, reference: Sequence[Any], batch_size: int, metric: str) -> pd.DataFrame:
    """How often each loss at ``batch_size`` beats ``reference`` (``(loss, batch_size)``) seed by seed:
    one row per loss with ``n`` paired seeds, ``wins`` (the run above the reference run of its seed),
    ``losses`` (below it) and each seed's difference (``differences``, run minus reference)."""
    require_columns(runs, ("loss", "batch_size", "seed", metric), "the runs")
    reference = (str(reference[0]), int(reference[1]))
    base = seed_values(runs, *reference, metric)
    rows = []
    for loss in ordered_losses(runs.loc[runs["batch_size"] == batch_size, "loss"].unique()):
        if (loss, batch_size) == reference:
            continue
        differences = (seed_values(runs, loss, batch_size, metric) - base).dropna().sort_index()
        if differences.empty:
            continue
        rows.append({"loss": loss, "batch_size": batch_size, "reference": f"{reference[0]} b{reference[1]}",
                     "metric": metric, "n": len(differences), "wins": int((differences > 0).sum()),
                     "losses": int((differences < 0).sum()),
                     "differences": ", ".join(f"s{int(seed)} {value:+.3f}" for seed, value in differences.items())})
    return pd.DataFrame(rows, columns=["loss", "batch_size", "reference", "metric", "n", "wins", "losses",
                                       "differences"])


#: How far above chance (in accuracy) a linear probe must be, in the lower end of its 95% interval over
#: seeds, for an attribute to count as learned.
LEARNED_MARGIN = 0.10


def learned_attributes(runs: pd.DataFrame, margin: float = LEARNED_MARGIN) -> dict[str, list[str]]:
    """Per probed attribute (action, colour, digit), the losses whose probe top-1 lies more than
    ``margin`` above chance at the low end of its 95% t-interval over seeds."""
    learned: dict[str, list[str]] = {}
    for metric in ("action_top1", "colour_top1", "digit_top1"):
        if metric not in runs.columns or runs[metric].isna().all():
            continue
        chance_column = f"{metric}_chance"
        chance = float(runs[chance_column].mean()) if chance_column in runs.columns else math.nan
        losses = []
        for loss in ordered_losses(runs["loss"].unique()):
            values = runs.loc[runs["loss"] == loss, metric].dropna()
            if values.empty:
                continue
            low, _ = t_interval(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                                len(values))
            low = float(values.mean()) if math.isnan(low) else low
            if not math.isnan(chance) and low > chance + margin:
                losses.append(loss)
        learned[metric.removesuffix("_top1")] = losses
    return learned


#: The compute columns the report tabulates and plots against (question 5).
REPORT_COSTS = ("compute_flops_per_step", "compute_wall_s")


def compute_table(runs: pd.DataFrame, metric: str = "t2v_R@1") -> pd.DataFrame:
    """Mean over seeds per loss and batch size of the compute columns and ``metric``, labelled
    with :data:`COST_LABELS` (FLOPs in GFLOPs)."""
    present = [c for c in (*REPORT_COSTS, "compute_samples_seen", metric) if c in runs.columns]
    cost = runs.groupby(["loss", "batch_size"], sort=False)[present].mean().reset_index()
    labels = {}
    for column in present:
        label = COST_LABELS.get(column, metric_label(column))
        if "FLOPs" in label:
            cost[column] = cost[column] / 1e9
            label = label.replace("FLOPs", "GFLOPs")
        labels[column] = label
    return cost.rename(columns=labels)


def sweep_by_loss(summary: pd.DataFrame, x: str = "batch_size") -> dict[str, pd.DataFrame]:
    """Per loss, a wide table of a :func:`summarise_over_seeds` sweep: one row per value of ``x``,
    one column per metric (mean over seeds). Written one CSV per loss, these are the data of the
    pipeline's DVC plots (one line per loss)."""
    tables = {}
    for loss in ordered_losses(summary["loss"]):
        rows = summary[summary["loss"] == loss]
        wide = rows.pivot(index=x, columns="metric", values="mean")
        metric_columns = [m for m in METRICS if m in wide.columns] + sorted(set(wide.columns) - set(METRICS))
        tables[loss] = wide[metric_columns].sort_index().reset_index().rename_axis(columns=None)
    return tables


# --------------------------------------------------------------------------------------------
# Sweeps (questions 3, 4 and 7, and the learning-rate rule of section 7): one CSV row per run
# --------------------------------------------------------------------------------------------

#: The label columns of each sweep table of the pipeline (before ``run`` and the metrics).
SWEEP_LABELS = {
    "noise": ("knob", "level", "loss", "batch_size", "seed"),
    "width": ("width", "loss", "batch_size", "seed"),
    "temperature": ("loss", "attn_temperature", "weight_temperature", "learnable", "batch_size", "seed"),
    "lr": ("loss", "batch_size", "lr_factor", "seed"),
}

#: Where each sweep table lies in the results folder.
SWEEP_FILES = {"noise": "noise/noise.csv", "width": "width/width.csv", "temperature": "temperature/surface.csv",
               "lr": "lr/lr.csv"}

#: The headline metric of the sweeps and of the batch-size question.
HEADLINE_METRIC = "t2v_R@10"


def load_sweep(path: str | Path, labels: Sequence[str]) -> pd.DataFrame:
    """A sweep table (one row per run), checked: its ``labels`` columns and ``t2v_R@10`` must exist.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a CSV, or lacks columns (naming the file and the columns).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep table {path} does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a sweep table: {error}") from error
    missing = [column for column in (*labels, HEADLINE_METRIC) if column not in frame.columns]
    if missing:
        raise ValueError(f"sweep table {path} lacks the column(s) {', '.join(missing)}")
    return frame


def load_sweep_if_any(results_dir: str | Path, name: str) -> pd.DataFrame | None:
    """The sweep ``name`` of :data:`SWEEP_FILES` in the results folder (:func:`load_sweep`), or None
    where the pipeline has not written it or it holds no run (so that a partial pipeline renders)."""
    path = Path(results_dir) / SWEEP_FILES[name]
    if not path.is_file() or path.stat().st_size == 0:
        return None
    frame = load_sweep(path, SWEEP_LABELS[name])
    return None if frame.empty else frame


def sweep_table(frame: pd.DataFrame, index: Sequence[str], metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """``metric`` of a sweep, mean over seeds: one row per value of ``index``, one column per loss
    (the study's order)."""
    table = frame.pivot_table(index=list(index), columns="loss", values=metric, aggfunc="mean")
    table = table[ordered_losses(table.columns)]
    table.columns.name = None
    return table


def noise_table(frame: pd.DataFrame, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Question 3: ``metric`` (mean over seeds) per noise knob and level (rows) and loss (columns)."""
    return sweep_table(frame, ("knob", "level"), metric)


def sweep_ends(frame: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """Per loss, ``metric`` (mean over seeds) at the lowest and the highest value of ``x``, and the
    change between them (highest minus lowest)."""
    rows = []
    for loss in ordered_losses(frame["loss"]):
        means = frame[frame["loss"] == loss].groupby(x)[metric].mean().dropna().sort_index()
        if len(means) < 2:
            continue
        rows.append({"loss": loss, "low": means.index[0], "at_low": float(means.iloc[0]), "high": means.index[-1],
                     "at_high": float(means.iloc[-1]), "change": float(means.iloc[-1] - means.iloc[0])})
    return pd.DataFrame(rows, columns=["loss", "low", "at_low", "high", "at_high", "change"])


def noise_drops(frame: pd.DataFrame, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Per knob and loss, how ``metric`` changes from the knob's lowest level to its highest (mean
    over seeds; columns knob, loss, low, at_low, high, at_high, change: negative where it drops)."""
    parts = [sweep_ends(rows, "level", metric).assign(knob=knob) for knob, rows in frame.groupby("knob", sort=True)]
    table = pd.concat(parts, ignore_index=True) if parts else sweep_ends(frame.iloc[:0], "level", metric)
    return table[["knob", *[c for c in table.columns if c != "knob"]]]


def learnable_temperatures(frame: pd.DataFrame, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """The learnable rows of a temperature sweep: where τa and τw started and ended, and ``metric``."""
    rows = frame.drop(index=fixed_temperatures(frame).index)
    columns = {"attn_temperature": "τa start", "final_attn_temperature": "τa end",
               "weight_temperature": "τw start", "final_weight_temperature": "τw end", metric: metric_label(metric)}
    present = ["loss", "seed", *[c for c in columns if c in rows.columns]]
    return rows[present].rename(columns=columns).reset_index(drop=True)


def study_temperatures(runs: pd.DataFrame, loss: str = "attention") -> tuple[float, float] | None:
    """The (τa, τw) the study's ``loss`` runs were evaluated with (None without such runs; ValueError
    if they used several pairs)."""
    if runs.empty or "attn_temperature" not in runs.columns:
        return None
    rows = runs[runs["loss"] == loss]
    pairs = sorted({(round(float(a), 6), round(float(w), 6))
                    for a, w in zip(rows["attn_temperature"], rows["weight_temperature"])})
    if not pairs:
        return None
    if len(pairs) > 1:
        raise ValueError(f"the {loss} runs used several temperature pairs: {pairs}")
    return pairs[0]


def lr_rule_table(frame: pd.DataFrame, metric: str = HEADLINE_METRIC, margin: float = LR_RULE_MARGIN) -> pd.DataFrame:
    """Per (loss, batch_size) of the learning-rate sweep: validation ``metric`` (mean over seeds) at
    each ``lr_factor`` (one column ``× <factor>`` each), the best factor and the verdict: "the rule is
    confirmed" when factor 1 is best or within ``margin`` of the best, else which factor is better."""
    wide = frame.pivot_table(index=["loss", "batch_size"], columns="lr_factor", values=metric, aggfunc="mean")
    factors = sorted(wide.columns)
    rows = []
    for (loss, batch_size), values in wide.iterrows():
        values = values.dropna()
        best = float(values.idxmax())
        if 1.0 not in values.index:
            verdict = "not tested: no run at factor 1"
        elif chosen_factor(values, margin) == 1.0:
            verdict = "the rule is confirmed"
        else:
            verdict = f"factor {best:g} is better by {values.max() - values[1.0]:.3f}"
        rows.append({"loss": loss, "batch_size": int(batch_size), **{f"× {f:g}": values.get(f, math.nan)
                                                                      for f in factors},
                     "best factor": best, "verdict": verdict})
    table = pd.DataFrame(rows)
    order = {loss: position for position, loss in enumerate(ordered_losses(table["loss"]))}
    return table.sort_values(["loss", "batch_size"], key=lambda c: c.map(order) if c.name == "loss" else c,
                             ignore_index=True)


#: The fine-grained losses the headline question asks about, in order.
FINE_GRAINED_LOSSES = ("mean", "max", "attention", "attention_floor", "attention_gate", "attention_uniform")


def interval_column(table: pd.DataFrame, mean: str, low: str, high: str) -> list[str]:
    return [_interval_text(m, lo, hi) for m, lo, hi in zip(table[mean], table[low], table[high])]


def time_to_target_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (loss, batch_size) of a :func:`time_to_target` table: ``seeds``, ``reached`` (how many
    reached the target) and, over the seeds that reached it, the mean and 95% t-interval
    (:func:`fgmm_lib.study.stats.t_interval`; NaN under 2 seeds) of ``samples_to_target`` and
    ``flops_to_target`` (columns ``<name>_mean``, ``<name>_low``, ``<name>_high``)."""

    require_columns(table, TIME_TO_TARGET_COLUMNS, "the time-to-target table")
    rows = []
    for (loss, batch_size), group in table.groupby(["loss", "batch_size"], sort=True):
        row = {"loss": loss, "batch_size": int(batch_size), "target": float(group["target"].iloc[0]),
               "seeds": len(group), "reached": int(group["reached"].sum())}
        for name in ("samples_to_target", "flops_to_target"):
            values = group.loc[group["reached"], name].dropna().to_numpy(dtype=float)
            mean = float(values.mean()) if len(values) else math.nan
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{name}_mean"] = mean
            row[f"{name}_low"], row[f"{name}_high"] = t_interval(mean, std, len(values))
        rows.append(row)
    return pd.DataFrame(rows)
