"""The study's analysis of results: metrics files to tables, summaries over seeds and verdicts.

Everything here reads files and returns plain data (the results files of :mod:`fgmm_lib.results`,
pandas DataFrames, arrays) and draws nothing; :mod:`fgmm_lib.viz` plots what these functions
return. Notebooks and the report read every number through this module, so they read them the
same way.

Tables:
    :func:`metrics_table`, :func:`recall_at_k_table`, :func:`flatten_metrics`, :func:`load_runs`,
    :func:`summarise_over_seeds`, :func:`comparison_table`, :func:`mean_std_table`,
    :func:`interval_table`, :func:`best_losses`, :func:`attribute_table`,
    :func:`evaluation_interval_table`, :func:`seed_table`, :func:`markdown_table`.
Seeds that land in different outcomes: :func:`seed_splits`, :func:`report_seed_splits`.
Intervals and paired differences (STUDY.md section 7, "Powered"):
    :func:`t_quantile_975`, :func:`t_interval`, :func:`paired_differences`,
    :func:`paired_difference_table`, :func:`tie_or_difference`.
Verdicts:
    :func:`headline_answer`.
The report (STUDY.md section 6):
    :class:`Report` and one ``report_*`` function per question, :func:`compute_table`,
    :func:`answered_questions`.
Sweeps (one CSV row per run, :data:`SWEEP_LABELS`): :func:`load_sweep`, :func:`load_sweep_if_any`,
    :func:`sweep_table`,
    :func:`noise_table`, :func:`noise_drops` (question 3), :func:`temperature_surface`,
    :func:`best_temperatures`, :func:`learnable_temperatures` (question 7), :func:`lr_rule_table`
    (the learning-rate rule of section 7), and their sections :func:`report_noise`,
    :func:`report_width`, :func:`report_temperature`, :func:`report_lr_rule`.
Convergence, compute to a target and the headline question: :func:`report_convergence`,
    :func:`report_time_to_target`, :func:`welch_interval`, :func:`headline_answer`,
    :func:`report_headline`.
Attention (question 6):
    :func:`attention_examples` (a run's attention on some clips, for
    :func:`fgmm_lib.viz.plot_attention_maps`), :func:`pointing_table` (read from the metrics files).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from fgmm_lib.losses import AGGREGATIONS, LOSSES
from fgmm_lib.curves import TIME_TO_TARGET_COLUMNS, require_columns
from fgmm_lib.sweep import LR_RULE_MARGIN, best_temperatures, chosen_factor, fixed_temperatures, lr_factors, temperature_surface
from fgmm_lib.results import (ATTRIBUTE_METRICS, COMPUTE_DIR, DETAILS_DIR, METRICS, METRICS_DIR, Metric,
                              chance_path, interval, lookup, parse_run_name)

__all__ = [
    "LOSS_ORDER", "RETRIEVAL_METRICS", "COST_LABELS", "ordered_losses", "metric_label", "metrics_table",
    "flatten_metrics", "load_runs", "summarise_over_seeds", "T_975", "t_quantile_975", "t_interval",
    "tie_or_difference", "paired_differences", "comparison_table", "comparison_batch_size", "mean_std_table",
    "best_losses", "markdown_table", "recall_at_k_table", "PAIRED_METRICS",
    "interval_table", "paired_difference_table", "evaluation_interval_table", "ATTRIBUTE_COLUMNS",
    "SEED_SPLIT_GAP", "seed_table", "seed_splits", "report_seed_splits",
    "attribute_table", "Report", "load_runs_if_any", "report_loss_comparison", "learned_attributes", "learned_attributes_sentence", "study_temperatures", "LEARNED_MARGIN",
    "report_batch_ablation", "report_paired_batch", "report_attributes", "REPORT_COSTS", "compute_table",
    "report_compute", "report_attention", "report_temperatures", "QUESTIONS", "has_evidence",
    "answered_questions", "report_status", "phrase_labels", "attention_example", "attention_examples",
    "pointing_table", "sweep_by_loss", "SWEEP_LABELS", "SWEEP_FILES", "HEADLINE_METRIC", "load_sweep",
    "load_sweep_if_any",
    "sweep_table", "noise_table", "noise_drops", "report_noise", "report_width", "temperature_surface",
    "best_temperatures", "learnable_temperatures", "report_temperature", "LR_RULE_MARGIN", "lr_rule_table",
    "report_lr_rule", "report_convergence", "time_to_target_summary", "report_time_to_target", "FINE_GRAINED_LOSSES", "HEADLINE_VERDICTS",
    "welch_interval", "headline_answer", "headline_sentence", "report_headline",
]

#: Every loss of the study, in the order tables and legends list them (coarse baselines first).
LOSS_ORDER = LOSSES

#: The retrieval metrics the batch-size verdict (STUDY.md section 6, question 2) is read on.
RETRIEVAL_METRICS = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")

#: Label of each compute column of :func:`load_runs` (``compute_<key of the compute record>``).
COST_LABELS = {
    "compute_flops_per_step": "FLOPs per training step",
    "compute_total_flops": "FLOPs of the whole run",
    "compute_wall_s": "wall time of the run (s)",
    "compute_samples_seen": "samples seen",
}


def ordered_losses(losses: Sequence[str]) -> list[str]:
    """The distinct losses of ``losses`` in the study's order (unknown names last, sorted)."""
    present = list(dict.fromkeys(str(loss) for loss in losses))
    return [loss for loss in LOSS_ORDER if loss in present] + sorted(set(present) - set(LOSS_ORDER))


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
    the attribute retrievals of :data:`fgmm_lib.results.ATTRIBUTE_METRICS` the record holds, their
    chance levels (``<metric>_chance``), the run's 95% bootstrap intervals over queries or test
    clips (``<metric>_ci95_low``, ``<metric>_ci95_high``) where evaluation stored them, the
    temperatures (``<name>_temperature``) and every number of its compute record (``compute_<key>``).

    ``metrics`` is a metrics file (flat, :func:`fgmm_lib.results.write_metrics`) or a whole
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


def _read_record(path: Path) -> Any:
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
            extra[key] = _read_record(other) if other.is_file() else None
        rows.append(flatten_metrics(_read_record(path), source=str(path), **extra))
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
    :data:`fgmm_lib.results.ATTRIBUTE_METRICS` to summarise those too); metrics a run lacks (NaN)
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


def _higher_is_better(metric: str) -> bool:
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
    higher = _higher_is_better(metric)
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


def comparison_table(summary: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """The rows of a :func:`summarise_over_seeds` table at one batch size (STUDY.md 6, question 1).

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
    table["difference [95% CI]"] = _interval_column(table, "mean", "ci95_low", "ci95_high")
    table["metric"] = [metric_label(m) for m in table["metric"]]
    return table[columns]


def evaluation_interval_table(runs: pd.DataFrame, metrics: Sequence[str] = PAIRED_METRICS) -> pd.DataFrame:
    """Per loss and batch size, the mean over seeds of each run's bootstrap half-width
    (``(ci95_high - ci95_low) / 2``, over queries or test clips) of ``metrics``: how precisely one
    run's evaluation set measures it (STUDY.md section 7 asks for about ±0.03)."""
    present = [m for m in metrics if f"{m}_ci95_low" in runs.columns]
    if runs.empty or not present:
        return pd.DataFrame(columns=["loss", "batch_size"])
    half = pd.DataFrame({metric_label(m): (runs[f"{m}_ci95_high"] - runs[f"{m}_ci95_low"]) / 2 for m in present})
    half[["loss", "batch_size"]] = runs[["loss", "batch_size"]]
    return half.groupby(["loss", "batch_size"], sort=False).mean().reset_index()


#: The attribute columns of :func:`attribute_table`: what the encoders learned (STUDY.md section 7).
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


# --------------------------------------------------------------------------------------------
# The report: each question of STUDY.md section 6 answered from the results folder
# --------------------------------------------------------------------------------------------


class Report:
    """The study summary as markdown blocks, in order; ``show`` displays each block as it is added
    (the report notebook passes IPython's display), ``show_image`` each embedded PNG.

    :meth:`markdown` is the text of ``results/report/summary.md``, whose image links are relative
    to ``results/report/``.
    """

    def __init__(self, results_dir: str | Path = "results", show: Callable[[str], Any] | None = None,
                 show_image: Callable[[Path], Any] | None = None) -> None:
        self.results = Path(results_dir)
        self.blocks: list[str] = []
        self._show = show
        self._show_image = show_image

    def add(self, text: str) -> None:
        """Add a markdown block (and show it)."""
        self.blocks.append(text)
        if self._show is not None:
            self._show(text)

    def table(self, table: pd.DataFrame, index: bool = True, float_digits: int = 3) -> None:
        """Add a table as markdown."""
        self.add(markdown_table(table, index=index, float_digits=float_digits))

    def image(self, path: str | Path, caption: str) -> None:
        """Embed a PNG of the results folder (shown here, linked from summary.md)."""
        path = Path(path)
        if self._show_image is not None:
            self._show_image(path)
        self.blocks.append(f"![{caption}](../{path.relative_to(self.results).as_posix()})")

    def markdown(self) -> str:
        """The whole summary."""
        return "\n\n".join(self.blocks) + "\n"


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
        values = _seed_values(runs, loss, batch_size, metric).sort_values()
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


def _seeds_text(seeds: Sequence[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, sorted(seeds)))


def _range_text(low: float, high: float) -> str:
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}–{high:.2f}"


def report_seed_splits(report: Report, runs: pd.DataFrame, batch_size: int, metrics: Sequence[str] = PAIRED_METRICS,
                       gap: float = SEED_SPLIT_GAP) -> pd.DataFrame:
    """Each seed's value of ``metrics`` at ``batch_size`` (:func:`seed_table`) and, per metric, the losses whose
    seeds split into groups more than ``gap`` apart (:func:`seed_splits`), with the seeds that lie low in
    every split named. Returns the splits (empty where none)."""
    report.add(f"Each seed at batch {batch_size}:")
    report.table(seed_table(runs, batch_size, metrics))
    splits = pd.concat([seed_splits(runs, batch_size, metric, gap) for metric in metrics], ignore_index=True)
    if splits.empty:
        report.add(f"No loss's seeds split by more than {gap:g} on {', '.join(map(metric_label, metrics))}.")
        return splits
    for metric, group in splits.groupby("metric", sort=False):
        parts = [f"`{row.loss}` ({_seeds_text(row.low_seeds)} at {_range_text(row.low_min, row.low_max)}, "
                 f"{_seeds_text(row.high_seeds)} at {_range_text(row.high_min, row.high_max)})"
                 for row in group.itertuples()]
        lows = set.intersection(*(set(seeds) for seeds in group["low_seeds"]))
        common = (f" {_seeds_text(sorted(lows)).capitalize()} lies in the lower group of every one of them."
                  if lows and len(group) > 1 else "")
        report.add(f"Seeds split on {metric_label(metric)} (sorted values leave a gap over {gap:g}, several times a "
                   f"run's own evaluation interval): " + "; ".join(parts) + "." + common)
    seeds = runs.loc[runs["batch_size"] == batch_size, "seed"].nunique()
    report.add(f"Where seeds split, the runs landed in different outcomes of training: the mean over seeds and its "
               f"interval say how the seeds fell, and {seeds} seeds cannot say how often each outcome occurs. More "
               f"seeds, or a longer budget (does the lower group catch up?), would.")
    return splits


def report_loss_comparison(report: Report, runs: pd.DataFrame, study_batch_size: int | None) -> pd.DataFrame:
    """Question 1: the losses at the study's batch size, mean ± std over seeds, and the best per
    metric. Returns the :func:`comparison_table` (empty without runs) and its batch size in
    ``attrs["batch_size"]``."""
    report.add("## 1. The losses compared at equal samples seen")
    if runs.empty:
        report.add(f"Not answered: `{report.results / 'metrics'}` holds no metrics file.")
        return pd.DataFrame()
    summary = summarise_over_seeds(runs)
    batch = comparison_batch_size(runs["batch_size"], study_batch_size)
    comparison = comparison_table(summary, batch)
    inventory = ", ".join(f"`{loss}` ({count} runs)" for loss, count in runs["loss"].value_counts(sort=False).items())
    seeds = sorted(runs.loc[runs["batch_size"] == batch, "seed"].unique())
    headline = comparison[comparison["metric"].isin(list(METRICS))]
    report.add(f"{len(runs)} evaluated runs: {inventory}. At batch size {batch} "
               f"(seeds {', '.join(map(str, seeds))}), mean ± std over seeds:")
    report.table(mean_std_table(headline))
    report.add("Mean and 95% t-interval over seeds:")
    report.table(interval_table(headline))
    report.add("The best loss on each metric:")
    report.table(best_losses(headline))
    if "coarse" in set(runs.loc[runs["batch_size"] == batch, "loss"]):
        paired = paired_difference_table(runs[runs["batch_size"] == batch], ("coarse", batch))
        if not paired.empty:
            report.add(f"Paired differences against `coarse` at batch {batch} (same seed, same data; mean and 95% "
                       f"t-interval over seeds). A tie means the interval lies within ±0.03, better or worse that "
                       f"it excludes 0, undecided neither:")
            report.table(paired, index=False)
    precision = evaluation_interval_table(runs[runs["batch_size"] == batch])
    if not precision.empty:
        report.add("Precision of one run's evaluation: mean half-width of its 95% bootstrap interval (over queries "
                   "for retrieval, over test clips for the probe):")
        report.table(precision, index=False)
    report_seed_splits(report, runs, batch)
    comparison.attrs["batch_size"] = batch
    return comparison


def report_batch_ablation(report: Report, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Question 2: the batch-size sweep (``ablation/batch_size.csv`` and its PNG) and, given the
    ``runs`` (:func:`load_runs`), every loss at every batch size against `coarse` at its largest by
    paired differences with 95% intervals (:func:`report_paired_batch`; the headline question is
    :func:`report_headline`). Returns the paired table (empty if none)."""
    report.add("## 2. Batch-size ablation")
    ablation_csv = report.results / "ablation" / "batch_size.csv"
    ablation_png = ablation_csv.with_suffix(".png")
    if not ablation_csv.is_file():
        report.add(f"Not answered: `{ablation_csv}` does not exist.")
        return pd.DataFrame()
    ablation = pd.read_csv(ablation_csv)
    sizes = sorted(int(b) for b in ablation["batch_size"].unique())
    report.add(f"Batch sizes: {', '.join(map(str, sizes))}; every metric against the batch size, one line per loss:")
    if ablation_png.is_file():
        report.image(ablation_png, "every metric against the batch size")
    if runs is None or runs.empty:
        return pd.DataFrame()
    return report_paired_batch(report, runs)


def report_paired_batch(report: Report, runs: pd.DataFrame, metrics: Sequence[str] = PAIRED_METRICS,
                        margin: float = 0.03) -> pd.DataFrame:
    """Question 2 by paired differences: every loss at every batch size against `coarse` at its
    largest batch size (same seed, same data), on ``metrics``, with the verdict of
    :func:`tie_or_difference`. Returns the :func:`paired_difference_table` (empty without coarse)."""
    coarse = runs[runs["loss"] == "coarse"] if not runs.empty else runs
    if coarse.empty:
        report.add("No paired differences: there is no `coarse` run to compare with.")
        return pd.DataFrame()
    large = int(coarse["batch_size"].max())
    table = paired_difference_table(runs, ("coarse", large), metrics=metrics, margin=margin)
    if table.empty:
        report.add(f"No paired differences: no run shares a seed with `coarse` at batch {large}.")
        return table
    report.add(f"Paired differences against `coarse` at batch {large} (same seed, same data; mean and 95% "
               f"t-interval over seeds; tie: within ±{margin:g}; better / worse: excludes 0; else undecided):")
    report.table(table, index=False)
    return table


def report_attributes(report: Report, runs: pd.DataFrame, study_batch_size: int | None = None) -> pd.DataFrame:
    """What the encoders learned, per attribute (STUDY.md section 7, "Honest about the regime"): the
    :func:`attribute_table` at the study's batch size. Returns it (empty without attribute metrics)."""
    report.add("## What the encoders learned, per attribute")
    table = pd.DataFrame() if runs.empty else attribute_table(
        runs, comparison_batch_size(runs["batch_size"], study_batch_size))
    if table.empty:
        report.add("Not measured: the metrics hold no per-attribute probe or retrieval (evaluate again).")
        return table
    batch = comparison_batch_size(runs["batch_size"], study_batch_size)
    report.add(f"At batch size {batch}, mean and 95% t-interval over seeds. Probes: linear probe top-1 of each "
               f"attribute on the global video embedding. Retrieval: the caption queries' R@1 where any clip with "
               f"the caption's value of that one attribute counts as a hit. An encoder that learned only colour "
               f"is far above chance on colour and near it on digit and action.")
    report.table(table)
    report.add(learned_attributes_sentence(runs[runs["batch_size"] == batch]))
    return table


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


def learned_attributes_sentence(runs: pd.DataFrame, margin: float = LEARNED_MARGIN) -> str:
    """One sentence naming, per attribute, the losses that learned it (:func:`learned_attributes`)."""
    learned = learned_attributes(runs, margin)
    if not learned:
        return ""
    total = runs["loss"].nunique()
    parts = [f"{attribute}: " + ("no loss" if not losses else "every loss" if len(losses) == total
                                 else ", ".join(f"`{loss}`" for loss in losses))
             for attribute, losses in learned.items()]
    unlearned = [attribute for attribute, losses in learned.items() if not losses]
    tail = (f" No loss learned {' or '.join(unlearned)} at this budget: the comparisons above say nothing about "
            f"{'it' if len(unlearned) == 1 else 'them'}." if unlearned else "")
    return (f"**Learned** (probe top-1 more than {margin:g} above chance at the low end of its 95% interval): "
            + "; ".join(parts) + "." + tail)


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


def report_compute(report: Report, runs: pd.DataFrame) -> list[str]:
    """Question 5: the compute record of each loss and batch size. Returns the cost columns present."""
    report.add("## 5. Compute")
    costs = [c for c in REPORT_COSTS if c in runs.columns]
    if runs.empty or not costs:
        report.add("Not answered: no compute record (results/compute) beside the metrics files.")
        return []
    report.add("Mean over seeds per loss and batch size:")
    report.table(compute_table(runs), index=False, float_digits=3)
    return costs


def report_attention(report: Report) -> None:
    """Question 6: pointing accuracy (``attention/pointing.csv``) and the attention figures."""
    report.add("## 6. Attention maps and pointing")
    folder = report.results / "attention"
    pointing_csv = folder / "pointing.csv"
    if pointing_csv.is_file():
        pointing = pd.read_csv(pointing_csv)
        report.add("Pointing accuracy over the test split (does the digit's phrase attend most to a cell in the "
                   "actor's box):")
        if pointing.empty:
            report.add("No run with attention was drawn.")
        else:
            report.table(pointing, index=False)
    else:
        report.add(f"Not answered: `{pointing_csv}` does not exist.")
    for png in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        report.image(png, f"attention maps of {png.stem}")


def report_temperatures(report: Report, runs: pd.DataFrame) -> pd.DataFrame:
    """Question 7: the attention temperatures the fine-grained runs were evaluated with."""
    report.add("## 7. Temperatures")
    columns = [c for c in ("attn_temperature", "weight_temperature") if c in runs.columns]
    fine = runs[runs["loss"].isin(AGGREGATIONS)] if not runs.empty else runs
    if fine.empty or not columns:
        report.add("No run with an attention aggregation was evaluated.")
        return pd.DataFrame()
    temperatures = fine.groupby(["loss", "batch_size"], sort=False)[columns].mean().reset_index()
    report.add("The attention temperatures τa and τw the runs were evaluated with (their final values where they "
               "were learned), mean over seeds:")
    report.table(temperatures, index=False, float_digits=4)
    return temperatures


#: Each question of STUDY.md section 6 and the results (relative to the results folder) that answer it.
QUESTIONS = (
    ("1. loss comparison (mean ± std over seeds)", ("ablation/comparison.csv",)),
    ("2. batch-size ablation", ("ablation/batch_size.csv",)),
    ("3. noise ablation", ("noise/noise.csv",)),
    ("4. model-size ablation", ("width/width.csv",)),
    ("5. compute: FLOPs and wall time per run", ("compute",)),
    ("5. compute: time to reach a fixed retrieval target", ("compute/time_to_target.csv",)),
    ("6. attention maps and pointing", ("attention/pointing.csv",)),
    ("7. temperature sweep (τa, τw surface)", ("temperature/surface.csv",)),
    ("7b/§7 learning rate per batch size (the rule checked and the factor chosen on validation)", ("lr/lr.csv",)),
)


def has_evidence(path: str | Path) -> bool:
    """Whether a piece of evidence exists and is not empty: a folder with a file in it, a CSV with a
    row under its header, any other file with some content."""
    path = Path(path)
    if path.is_dir():
        return any(child.is_file() for child in path.iterdir())
    if not path.is_file() or path.stat().st_size == 0:
        return False
    if path.suffix == ".csv":
        with path.open() as lines:
            return sum(1 for line in lines if line.strip()) >= 2
    return True


def answered_questions(results_dir: str | Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Per question of :data:`QUESTIONS`: answered yes (its evidence exists and is not empty,
    :func:`has_evidence`) / no / partly (the loss comparison has a single seed, so no spread), and
    its evidence, each marked missing or empty where it is."""
    results = Path(results_dir)
    rows = []
    for question, evidence in QUESTIONS:
        paths = [results / name for name in evidence]
        notes = {path: "" if has_evidence(path) else " (empty)" if path.exists() else " (missing)" for path in paths}
        rows.append({"question": question, "answered": "no" if any(notes.values()) else "yes",
                     "evidence": ", ".join(f"`{path.as_posix()}`{note}" for path, note in notes.items())})
    status = pd.DataFrame(rows).set_index("question")
    first = QUESTIONS[0][0]
    if (not runs.empty and status.loc[first, "answered"] == "yes"
            and runs.groupby(["loss", "batch_size"])["seed"].nunique().max() < 2):
        status.loc[first, "answered"] = "partly: one seed, no spread"
    return status


def report_status(report: Report, runs: pd.DataFrame) -> pd.DataFrame:
    """What the current pipeline answers (:func:`answered_questions`), and what it does not."""
    status = answered_questions(report.results, runs)
    report.add("## What the current pipeline answers")
    report.table(status)
    unanswered = [question for question, row in status.iterrows() if row["answered"] != "yes"]
    if unanswered:
        report.add("Not answered by the current pipeline: " + "; ".join(unanswered) + ".")
    return status


# --------------------------------------------------------------------------------------------
# Attention maps of a run (question 6)
# --------------------------------------------------------------------------------------------


def phrase_labels(words: Sequence[str], ngram: int = 3) -> list[str]:
    """Label of each phrase: its n-gram window of words with the centre word in brackets,
    e.g. ``"the [red] seven"`` (the text encoder's phrase m is centred on word m)."""
    left = (ngram - 1) // 2
    right = ngram - 1 - left
    labels = []
    for centre, word in enumerate(words):
        before = list(words[max(0, centre - left):centre])
        after = list(words[centre + 1:centre + 1 + right])
        labels.append(" ".join(before + [f"[{word}]"] + after))
    return labels


def attention_example(video: Any, boxes: Any, visible: Any, maps: Mapping[str, Any], grid: Sequence[int],
                      words: Sequence[str], phrase_mask: Any = None, ngram: int = 3,
                      title: str = "") -> dict[str, Any]:
    """Arrange one clip's attention for :func:`fgmm_lib.viz.plot_attention_maps`.

    Args:
        video: float ``[3, T, H, W]`` in [0, 1] (a dataset item's ``"video"``).
        boxes: ``[T, 4]``; visible: ``[T]`` bool.
        maps: the loss module's ``attention(...)`` of the clip's tokens and its text's phrases.
        grid: ``(T', H', W')`` of the token grid (cells in token order: t-major, row, column).
        words: the text's words, one per valid phrase, in order (phrase m is centred on word m).
        phrase_mask: ``[M]`` bool, True = valid phrase (None: every phrase is valid); only valid
            phrases are drawn.
        ngram: the text encoder's phrase window (for the labels).
    """
    clip = np.asarray(video, dtype=float)
    if clip.ndim != 4 or clip.shape[0] != 3:
        raise ValueError(f"video must be [3, T, H, W], got shape {clip.shape}")
    frames = np.clip(np.round(clip.transpose(1, 2, 3, 0) * 255.0), 0, 255).astype(np.uint8)
    grid_frames, grid_height, grid_width = (int(v) for v in grid)
    phrase_weight = np.asarray(maps["phrase_weight"], dtype=float)
    valid = np.arange(len(phrase_weight)) if phrase_mask is None else np.flatnonzero(np.asarray(phrase_mask, dtype=bool))
    if len(valid) != len(words):
        raise ValueError(f"{len(words)} words for {len(valid)} valid phrases: pass one word per valid phrase")
    attention = np.asarray(maps["phrase_attention"], dtype=float)[valid]
    if attention.shape[1] != grid_frames * grid_height * grid_width:
        raise ValueError(f"phrase_attention has {attention.shape[1]} cells, the grid {tuple(grid)} "
                         f"{grid_frames * grid_height * grid_width}")
    return {
        "frames": frames,
        "boxes": np.asarray(boxes, dtype=float),
        "visible": np.asarray(visible, dtype=bool),
        "phrase_attention": attention.reshape(len(valid), grid_frames, grid_height, grid_width),
        "phrase_weight": phrase_weight[valid],
        "phrases": phrase_labels(list(words), ngram),
        "cell_weight": np.asarray(maps["cell_weight"], dtype=float).reshape(grid_frames, grid_height, grid_width),
        "text": " ".join(words),
        "title": title,
    }


def attention_examples(run: str | Path, data: str | Path, clips: Sequence[int], split: str = "test") -> dict[str, Any] | None:
    """The attention of a run's loss on some clips of ``data``, arranged for
    :func:`fgmm_lib.viz.plot_attention_maps`; None when the run's loss has no attention.

    Each clip's cell tokens and its narration's phrase tokens go through the run's loss module
    (``loss_module.attention``, with the run's temperatures).

    Returns ``{"run", "loss", "examples", "title"}``.

    Raises:
        ValueError: a clip position outside the split (naming the positions and the split's size).
    """
    import torch

    from fgmm_lib.data import NarratedDigits
    from fgmm_lib.runs import load_run

    name = Path(run).name
    model, loss_module, config, vocab = load_run(run)
    if not loss_module.has_attention:
        return None
    dataset = NarratedDigits(data, split=split, vocab=vocab)
    outside = [clip for clip in clips if not 0 <= clip < len(dataset)]
    if outside:
        raise ValueError(f"clips {outside} are outside the {split!r} split of {data} ({len(dataset)} clips)")
    examples = []
    for clip in clips:
        item = dataset[clip]  # its narration: every phrase of it is drawn
        video = torch.as_tensor(item["video"]).float()
        grid = model.video.grid(*video.shape[1:])
        with torch.no_grad():
            cells, _ = model.encode_video(video[None])
            phrases, phrase_mask, _ = model.encode_text(item["tokens"][None], item["token_mask"][None])
            maps = loss_module.attention(cells[0], phrases[0], text_mask=phrase_mask[0])
        words = vocab.decode(item["tokens"][item["token_mask"]])
        examples.append(attention_example(video, item["boxes"], item["visible"], maps, grid, words,
                                          phrase_mask=phrase_mask[0], ngram=config.ngram, title=f"{split} clip {clip}"))
    temperatures = loss_module.logged_temperatures()
    title = (f"{name}: {config.loss} (τa = {temperatures['attn_temperature']:.3g}, "
             f"τw = {temperatures['weight_temperature']:.3g})")
    return {"run": name, "loss": config.loss, "examples": examples, "title": title}


def pointing_table(runs: Sequence[str | Path], metrics_dir: str | Path = METRICS_DIR) -> pd.DataFrame:
    """Pointing accuracy of each run, read from the metrics files that evaluation wrote
    (``metrics_dir/<run>.json``; chance and clip count from ``metrics_dir/details/<run>.json``).
    Runs without pointing (losses without attention) are left out.

    Returns columns run, loss, pointing_accuracy, chance, clips.

    Raises:
        FileNotFoundError: a run has no metrics file (naming it: evaluate the run first).
    """
    folder = Path(metrics_dir)
    rows = []
    for run in runs:
        name = Path(run).name
        path = folder / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"run {name} has no metrics file {path}: evaluate it first")
        details_file = folder.parent / DETAILS_DIR.relative_to(METRICS_DIR.parent) / f"{name}.json"
        details = _read_record(details_file) if details_file.is_file() else {}
        row = flatten_metrics(_read_record(path), source=str(path), details=details)
        if math.isnan(row["pointing"]):
            continue
        pointing = details.get("pointing") or {}
        rows.append({"run": name, "loss": row["loss"], "pointing_accuracy": row["pointing"],
                     "chance": row.get("pointing_chance", math.nan), "clips": pointing.get("clips")})
    return pd.DataFrame(rows, columns=["run", "loss", "pointing_accuracy", "chance", "clips"])


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


def _sweep_ends(frame: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
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
    parts = [_sweep_ends(rows, "level", metric).assign(knob=knob) for knob, rows in frame.groupby("knob", sort=True)]
    table = pd.concat(parts, ignore_index=True) if parts else _sweep_ends(frame.iloc[:0], "level", metric)
    return table[["knob", *[c for c in table.columns if c != "knob"]]]


def _change_text(change: float) -> str:
    if round(change, 3) == 0:
        return "stays within 0.001"
    return f"drops by {-change:.3f}" if change < 0 else f"rises by {change:.3f}"


def _not_answered(report: Report, frame: pd.DataFrame | None, name: str) -> bool:
    """Add "Not answered" and return True when a sweep table is missing or empty."""
    if frame is None or frame.empty:
        report.add(f"Not answered: `{report.results / SWEEP_FILES[name]}` is missing or holds no run.")
        return True
    return False


def report_noise(report: Report, frame: pd.DataFrame | None, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Question 3: :func:`noise_table` and, per loss, how far ``metric`` drops from the lowest to the
    highest level of each knob (:func:`noise_drops`). Returns the drops (empty without runs)."""
    report.add("## 3. Noise ablation")
    if _not_answered(report, frame, "noise"):
        return pd.DataFrame()
    report.add(f"{metric_label(metric)} on the test split, mean over seeds, per knob and level (one column per loss):")
    report.table(noise_table(frame, metric).reset_index(), index=False)
    drops = noise_drops(frame, metric)
    for loss, rows in drops.groupby("loss", sort=False):
        parts = [f"{_change_text(r.change)} from {r.knob} {r.low:g} to {r.high:g} ({r.at_low:.3f} → {r.at_high:.3f})"
                 for r in rows.itertuples()]
        report.add(f"`{loss}`: {metric_label(metric)} " + "; ".join(parts) + ".")
    return drops


def report_width(report: Report, frame: pd.DataFrame | None, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Question 4: ``metric`` per encoder width and loss, and per loss its change from the narrowest
    to the widest encoder. Returns the :func:`sweep_table` (empty without runs)."""
    report.add("## 4. Model-size ablation")
    if _not_answered(report, frame, "width"):
        return pd.DataFrame()
    table = sweep_table(frame, ("width",), metric)
    report.add(f"{metric_label(metric)} on the test split, mean over seeds, per width multiplier of the video "
               f"encoder (one column per loss):")
    report.table(table.reset_index(), index=False)
    for row in _sweep_ends(frame, "width", metric).itertuples():
        best = table[row.loss].idxmax()
        report.add(f"`{row.loss}`: from width {row.low:g} to {row.high:g}, {metric_label(metric)} "
                   f"{_change_text(row.change)} ({row.at_low:.3f} → {row.at_high:.3f}); best at width {best:g} "
                   f"({table[row.loss].max():.3f}).")
    return table


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


def report_temperature(report: Report, frame: pd.DataFrame | None, chosen: tuple[float, float] | None = None,
                       metric: str = HEADLINE_METRIC) -> tuple[float, float, float] | None:
    """Question 7: the (τa, τw) surface on validation, its best pair, the learnable runs (start and
    end values) and whether the study's temperatures ``chosen`` are the best pair. Returns the best
    pair (None without runs)."""
    report.add("## 7. Temperature sensitivity: the (τa, τw) surface")
    if _not_answered(report, frame, "temperature"):
        return None
    surface = temperature_surface(frame, metric)
    tau_a, tau_w, value = best_temperatures(frame, metric)
    report.add(f"Validation {metric_label(metric)} of `{fixed_temperatures(frame)['loss'].iloc[0]}` with fixed "
               f"temperatures, mean over seeds (rows τa, columns τw):")
    report.table(surface.rename_axis(index="τa \\ τw", columns=None), float_digits=3)
    report.add(f"The best fixed pair on validation: τa = {tau_a:g}, τw = {tau_w:g} ({value:.3f}).")
    learnable = learnable_temperatures(frame, metric)
    if not learnable.empty:
        report.add("Learnable temperatures, from each initial pair to where training left them:")
        report.table(learnable, index=False, float_digits=4)
    report.add(_chosen_sentence(surface, (tau_a, tau_w), chosen))
    return tau_a, tau_w, value


def _chosen_sentence(surface: pd.DataFrame, best: tuple[float, float], chosen: tuple[float, float] | None) -> str:
    """Whether the study's temperatures ``chosen`` are the ``best`` pair of ``surface``."""
    if chosen is None:
        return "The study's temperatures were not given: no check against the surface."
    text = f"τa = {chosen[0]:g}, τw = {chosen[1]:g}"
    if np.allclose(chosen, best):
        return f"The study's temperatures ({text}) are the best pair of the surface."
    on_grid = [a for a in surface.index if math.isclose(a, chosen[0])], \
        [w for w in surface.columns if math.isclose(w, chosen[1])]
    where = (f"they give {surface.loc[on_grid[0][0], on_grid[1][0]]:.3f} there" if all(on_grid)
             else "they are not on the grid")
    return f"The study's temperatures ({text}) are not the best pair of the surface: {where}."


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


def report_lr_rule(report: Report, frame: pd.DataFrame | None, metric: str = HEADLINE_METRIC,
                   margin: float = LR_RULE_MARGIN) -> pd.DataFrame:
    """The learning-rate rule of STUDY.md section 7 (peak lr = lr * sqrt(batch / 64)) checked on
    validation: :func:`lr_rule_table` and a sentence on where it holds. Returns the table."""
    report.add("## 7b. Learning rate per batch size: the rule checked, and the factor chosen, on validation")
    if _not_answered(report, frame, "lr"):
        return pd.DataFrame()
    table = lr_rule_table(frame, metric, margin)
    report.add(f"Validation {metric_label(metric)}, mean over seeds, at multiples of the rule's peak learning rate "
               f"(lr * sqrt(batch / 64)); the rule is confirmed where factor 1 is best or within {margin:g} of "
               f"the best:")
    report.table(table, index=False)
    failed = table[table["verdict"] != "the rule is confirmed"]
    if failed.empty:
        report.add(f"The rule is confirmed for every loss and batch size ({len(table)}).")
    else:
        report.add(f"The rule is confirmed for {len(table) - len(failed)} of {len(table)}; not for "
                   + "; ".join(f"`{r.loss}` b{r.batch_size} ({r.verdict})" for r in failed.itertuples()) + ".")
    chosen = lr_factors(frame, metric, margin)
    report.add("The study trains every loss of a batch size at the factor this grid chose for that batch size (the "
               "rule's factor 1 wherever it comes within the margin; mean over the batch size's losses): "
               + ", ".join(f"b{batch} × {factor:g}" for batch, factor in sorted(chosen.items()))
               + "; batch sizes outside the grid follow the rule.")
    return table


# --------------------------------------------------------------------------------------------
# Convergence, time to target and the headline question (STUDY.md sections 6 and 7)
# --------------------------------------------------------------------------------------------


def _configurations(table: pd.DataFrame) -> str:
    return ", ".join(f"`{row.loss}` b{row.batch_size}" for row in table.itertuples())


def report_convergence(report: Report, curves: pd.DataFrame | None, threshold: float = 0.02) -> pd.DataFrame:
    """STUDY.md section 7, "Converged": :func:`fgmm_lib.curves.convergence_table` of the validation
    curves and which (loss, batch size) have not flattened (gain over the last 20% of samples
    >= ``threshold``). Returns the table (empty without curves)."""
    from fgmm_lib.curves import convergence_table

    report.add("## Convergence of the validation curves")
    if curves is None or curves.empty:
        report.add(f"Not answered: `{report.results / 'curves'}` holds no curve.")
        return pd.DataFrame()
    table = convergence_table(curves, threshold=threshold)
    report.add(f"Validation text→video R@10 per loss and batch size, mean over seeds; a curve has flattened when "
               f"it gains less than {threshold:g} over its last 20% of samples:")
    report.table(table, index=False)
    open_curves = table[~table["flattened"]]
    if open_curves.empty:
        report.add("Every configuration has flattened.")
    else:
        report.add(f"Not flattened (gain >= {threshold:g}): {_configurations(open_curves)}; the comparisons "
                   f"that involve them do not count yet.")
    report.add("Read flattening with the schedule in mind: the learning rate decays to 0 along a cosine over each "
               "run's budget, so every curve slows at its end whether or not a longer run would gain more. A flat "
               "end says this budget is spent, not that the model has converged; only a run with a longer "
               "budget shows that.")
    return table


def report_time_to_target(report: Report, table: pd.DataFrame | None) -> pd.DataFrame:
    """Question 5: samples and FLOPs to a fixed validation R@10 (a
    :func:`fgmm_lib.curves.time_to_target` table), summarised over seeds by
    :func:`time_to_target_summary`. Returns the summary (empty without runs)."""

    report.add("## 5. Compute to reach a fixed retrieval target")
    if table is None or table.empty:
        report.add(f"Not answered: `{report.results / 'compute' / 'time_to_target.csv'}` is missing or empty.")
        return pd.DataFrame()
    summary = time_to_target_summary(table)
    report.add(f"Samples and FLOPs until validation text→video R@10 reaches {summary['target'].iloc[0]:g}, mean and "
               f"95% t-interval over the seeds that reached it:")
    report.table(summary, index=False, float_digits=3)
    never = summary[summary["reached"] == 0]
    if not never.empty:
        report.add(f"Never reached the target: {_configurations(never)}.")
    reached = summary[summary["reached"] == summary["seeds"]].dropna(subset=["samples_to_target_mean"])
    if not reached.empty:
        fastest = reached.loc[reached["samples_to_target_mean"].idxmin()]
        report.add(f"Fewest samples to the target, over the configurations where every seed reached it: "
                   f"`{fastest['loss']}` at batch {fastest['batch_size']} "
                   f"({fastest['samples_to_target_mean']:.0f} samples).")
    return summary


#: The fine-grained losses the headline question asks about, in order.
FINE_GRAINED_LOSSES = ("mean", "max", "attention", "attention_floor", "attention_gate")

#: The headline verdict of each :func:`tie_or_difference` verdict (fine-grained minus coarse).
HEADLINE_VERDICTS = {"tie": "reaches", "better": "exceeds", "worse": "falls short", "undecided": "undecided"}


def _seed_values(runs: pd.DataFrame, loss: str, batch_size: int, metric: str) -> pd.Series:
    rows = runs[(runs["loss"] == loss) & (runs["batch_size"] == batch_size)].dropna(subset=[metric])
    return rows.set_index("seed")[metric].astype(float)


def _mean_interval(values: pd.Series) -> tuple[float, float, float]:
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


def headline_answer(runs: pd.DataFrame, small_batch: int = 8, large: Sequence[Any] = ("coarse", 256),
                    metric: str = HEADLINE_METRIC, margin: float = 0.03) -> pd.DataFrame:
    """Does each fine-grained loss at ``small_batch`` reach ``large`` (loss, batch size) on ``metric``?

    One row per loss of :data:`FINE_GRAINED_LOSSES` with runs at ``small_batch``: its mean and 95%
    t-interval over seeds and those of the reference, the difference of the means with a Welch 95%
    interval (:func:`welch_interval`), the paired difference over the seeds both have
    (:func:`paired_differences`) and ``verdict`` (:data:`HEADLINE_VERDICTS` of
    :func:`tie_or_difference`), read on the paired interval where 2 or more seeds pair (the study
    compares paired differences), else on the Welch one (``verdict_on``). Empty without reference runs.
    """
    reference_loss, large_batch = str(large[0]), int(large[1])
    base = _seed_values(runs, reference_loss, large_batch, metric) if not runs.empty else pd.Series(dtype=float)
    rows = []
    for loss in [loss for loss in FINE_GRAINED_LOSSES if not base.empty]:
        values = _seed_values(runs, loss, small_batch, metric)
        if values.empty:
            continue
        paired = paired_differences(runs[runs["loss"].isin([loss, reference_loss])], metric,
                                    (reference_loss, large_batch), margin=margin)
        paired = paired[(paired["loss"] == loss) & (paired["batch_size"] == small_batch)]
        pn, pmean, plow, phigh = ((int(paired["n"].iloc[0]), *paired[["mean", "ci95_low", "ci95_high"]].iloc[0])
                                  if not paired.empty else (0, math.nan, math.nan, math.nan))
        difference, wlow, whigh = welch_interval(values, base)
        on_pairs = pn >= 2
        verdict = tie_or_difference((plow, phigh) if on_pairs else (wlow, whigh), margin, _higher_is_better(metric))
        rows.append({"loss": loss, "batch_size": small_batch, "seeds": len(values),
                     **dict(zip(("mean", "ci95_low", "ci95_high"), _mean_interval(values))),
                     "reference": f"{reference_loss} b{large_batch}", "reference_seeds": len(base),
                     **dict(zip(("reference_mean", "reference_low", "reference_high"), _mean_interval(base))),
                     "difference": difference, "welch_low": wlow, "welch_high": whigh, "pairs": pn,
                     "paired_mean": pmean, "paired_low": plow, "paired_high": phigh,
                     "verdict": HEADLINE_VERDICTS[verdict], "verdict_on": "paired" if on_pairs else "Welch"})
    return pd.DataFrame(rows)


def headline_sentence(answer: pd.DataFrame) -> str:
    """"yes" when some loss of a :func:`headline_answer` reaches or exceeds the reference, "no" when
    every one falls short, else "undecided", with the losses of each verdict."""
    verdicts = dict(zip(answer["loss"], answer["verdict"]))
    if any(v in ("reaches", "exceeds") for v in verdicts.values()):
        word = "yes"
    else:
        word = "no" if all(v == "falls short" for v in verdicts.values()) else "undecided"
    parts = [f"{', '.join(f'`{loss}`' for loss, v in verdicts.items() if v == verdict)} {verdict}"
             for verdict in HEADLINE_VERDICTS.values() if verdict in verdicts.values()]
    return f"{word}**: " + "; ".join(parts) + "."


def report_headline(report: Report, runs: pd.DataFrame, small_batch: int = 8, large: Sequence[Any] = ("coarse", 256),
                    metric: str = HEADLINE_METRIC, margin: float = 0.03) -> pd.DataFrame:
    """The headline question (STUDY.md section 6, question 2): :func:`headline_answer` as a table and
    one sentence answering yes / no / undecided, naming the losses. Returns the answer."""
    reference = f"`{large[0]}` at batch {large[1]}"
    question = (f"At equal samples seen, does a fine-grained loss at batch {small_batch} reach {reference} on "
                f"{metric_label(metric)}, within the intervals?")
    report.add("## The headline: a fine-grained loss at a small batch against coarse at a large one")
    answer = headline_answer(runs, small_batch, large, metric, margin)
    if answer.empty:
        report.add(f"Not answered: it needs runs of {reference} and of a fine-grained loss at batch {small_batch}.")
        return answer
    shown = pd.DataFrame({"loss": answer["loss"], "seeds": answer["seeds"],
                          "mean [95% CI]": _interval_column(answer, "mean", "ci95_low", "ci95_high"),
                          f"{large[0]} b{large[1]} [95% CI]": _interval_column(
                              answer, "reference_mean", "reference_low", "reference_high"),
                          "difference [Welch 95% CI]": _interval_column(answer, "difference", "welch_low",
                                                                        "welch_high"),
                          "pairs": answer["pairs"],
                          "paired difference [95% CI]": _interval_column(answer, "paired_mean", "paired_low",
                                                                         "paired_high"),
                          "verdict": answer["verdict"], "read on": answer["verdict_on"]})
    report.add(f"{metric_label(metric)} at batch {small_batch} against {reference}: mean and 95% t-interval over "
               f"seeds, the difference of the means (Welch), the paired difference over the seeds both have; "
               f"reaches: the interval lies within ±{margin:g}, exceeds / falls short: it excludes 0.")
    report.table(shown, index=False)
    report.add(f"**{question} {headline_sentence(answer)}")
    report.add(_samples_note(runs, answer, small_batch, large))
    return answer


def _samples_note(runs: pd.DataFrame, answer: pd.DataFrame, small_batch: int, large: Sequence[Any]) -> str:
    """Whether the runs of the headline saw the same number of samples (their compute records)."""
    if "compute_samples_seen" not in runs.columns:
        return "Samples seen: no compute record, so equal samples seen is not checked."
    compared = runs[((runs["loss"].isin(answer["loss"])) & (runs["batch_size"] == small_batch))
                    | ((runs["loss"] == large[0]) & (runs["batch_size"] == int(large[1])))]
    seen = sorted({int(value) for value in compared["compute_samples_seen"].dropna()})
    if len(seen) == 1:
        return f"Every compared run saw {seen[0]} samples."
    spread = (seen[-1] - seen[0]) / seen[-1]
    return (f"Samples seen by the compared runs: {', '.join(map(str, seen))} ({spread:.1%} apart: each epoch drops "
            f"its incomplete last batch, which is larger at a larger batch size).")

def _interval_column(table: pd.DataFrame, mean: str, low: str, high: str) -> list[str]:
    return [_interval_text(m, lo, hi) for m, lo, hi in zip(table[mean], table[low], table[high])]


def time_to_target_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (loss, batch_size) of a :func:`time_to_target` table: ``seeds``, ``reached`` (how many
    reached the target) and, over the seeds that reached it, the mean and 95% t-interval
    (:func:`fgmm_lib.analysis.t_interval`; NaN under 2 seeds) of ``samples_to_target`` and
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
