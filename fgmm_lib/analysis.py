"""The study's analysis of results: metrics files to tables, summaries over seeds and verdicts.

Everything here works on plain data (the metrics JSON files that :func:`fgmm_lib.evaluate.evaluate`
writes, pandas DataFrames) and draws nothing; :mod:`fgmm_lib.viz` plots what these functions
return. Notebooks and the report read every number through this module, so they read them the
same way.

Tables:
    :func:`metrics_table`, :func:`recall_at_k_table`, :func:`flatten_metrics`, :func:`load_runs`,
    :func:`summarise_over_seeds`, :func:`comparison_table`, :func:`mean_std_table`,
    :func:`best_losses`, :func:`markdown_table`.
Verdicts:
    :func:`batch_size_verdict`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from fgmm_lib.losses import LOSSES

#: Every loss of the study, in the order tables and legends list them (coarse baselines first).
LOSS_ORDER = LOSSES


@dataclass(frozen=True)
class Metric:
    """One downstream metric: where it sits in a metrics JSON and how to read it."""

    path: tuple[str, ...]
    label: str
    higher_is_better: bool = True
    unit_interval: bool = True  # a rate or an accuracy in [0, 1] (ranks are not)


#: The downstream metrics of STUDY.md section 5, by column name, in display order.
METRICS: dict[str, Metric] = {
    "action_top1": Metric(("probe", "action_top1"), "action top-1 (linear probe)"),
    "t2v_R@1": Metric(("t2v", "R@1"), "text→video R@1"),
    "t2v_R@5": Metric(("t2v", "R@5"), "text→video R@5"),
    "t2v_R@10": Metric(("t2v", "R@10"), "text→video R@10"),
    "t2v_median_rank": Metric(("t2v", "median_rank"), "text→video median rank", higher_is_better=False,
                              unit_interval=False),
    "t2i_R@1": Metric(("t2i", "R@1"), "text→image R@1"),
    "t2i_R@5": Metric(("t2i", "R@5"), "text→image R@5"),
    "t2i_R@10": Metric(("t2i", "R@10"), "text→image R@10"),
    "t2i_median_rank": Metric(("t2i", "median_rank"), "text→image median rank", higher_is_better=False,
                              unit_interval=False),
    "pointing": Metric(("pointing", "accuracy"), "pointing accuracy"),
}


#: The retrieval metrics the batch-size verdict (STUDY.md section 6, question 2) is read on.
RETRIEVAL_METRICS = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")


RUN_NAME = re.compile(r"^(?P<loss>[a-z]+)-b(?P<batch_size>\d+)-s(?P<seed>\d+)$")


def ordered_losses(losses: Sequence[str]) -> list[str]:
    """The distinct losses of ``losses`` in the study's order (unknown names last, sorted)."""
    present = list(dict.fromkeys(str(loss) for loss in losses))
    return [loss for loss in LOSS_ORDER if loss in present] + sorted(set(present) - set(LOSS_ORDER))


def metric_label(name: str) -> str:
    """Human-readable label of a metric column (the column name itself if it is not a known metric)."""
    return METRICS[name].label if name in METRICS else name.replace("_", " ")


def _lookup(payload: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = payload
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _chance_path(path: tuple[str, ...]) -> tuple[str, ...]:
    """Where a metric's chance level sits: ``t2v.chance.R@1``, ``probe.chance``, ``pointing.chance``."""
    task, key = path[0], path[-1]
    return (task, "chance", key) if key.startswith("R@") else (task, "chance")


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Every downstream metric of one run as a table: metric (label), value, chance level.

    Metrics the run does not have (pointing for ``coarse`` and ``milnce``) are left out.
    """
    rows = []
    for name, metric in METRICS.items():
        value = _number(_lookup(metrics, metric.path))
        if math.isnan(value):
            continue
        rows.append({"metric": metric.label, "value": value,
                     "chance": _number(_lookup(metrics, _chance_path(metric.path)))})
    if not rows:
        raise ValueError("the metrics hold none of the downstream metrics")
    return pd.DataFrame(rows).set_index("metric")


def flatten_metrics(metrics: Mapping[str, Any], source: str = "metrics") -> dict[str, Any]:
    """One flat row of a metrics dict: run, loss, batch_size, seed, every metric of :data:`METRICS`,
    their chance levels (``<metric>_chance``), the temperatures and every number of its
    ``compute`` record (as ``compute_<key>``).

    ``batch_size`` and ``seed`` come from ``metrics["config"]`` (the run's TrainConfig), or,
    for a record without it, from the run's folder name ``<loss>-b<batch_size>-s<seed>``; a
    metric the run does not have (pointing for ``coarse``) is NaN.

    Raises:
        ValueError: ``loss`` is missing, or batch size and seed are found in neither place
            (``source`` names the file in the message).
    """
    if not isinstance(metrics, Mapping) or "loss" not in metrics:
        raise ValueError(f"{source}: not a metrics record of fgmm_lib.evaluate.evaluate (no 'loss' key)")
    config = metrics.get("config")
    run = metrics.get("run")
    if not isinstance(config, Mapping) or "batch_size" not in config or "seed" not in config:
        # a record without the run's config: read batch size and seed from the run's name
        named = RUN_NAME.match(Path(str(run)).name) if run else None
        if named is None or named.group("loss") != str(metrics["loss"]):
            raise ValueError(f"{source}: has no 'config' with the run's batch_size and seed, and its run "
                             f"{run!r} is not named <loss>-b<batch_size>-s<seed>")
        config = {"batch_size": int(named.group("batch_size")), "seed": int(named.group("seed"))}
    row: dict[str, Any] = {
        "run": Path(str(run)).name if run else f"{metrics['loss']}-b{config['batch_size']}-s{config['seed']}",
        "loss": str(metrics["loss"]),
        "batch_size": int(config["batch_size"]),
        "seed": int(config["seed"]),
        "learned_attention_temperatures": bool(config.get("learn_attention_temperatures", False)),
    }
    for name, metric in METRICS.items():
        row[name] = _number(_lookup(metrics, metric.path))
    for name, metric in METRICS.items():
        chance = _number(_lookup(metrics, _chance_path(metric.path)))
        if not math.isnan(chance):
            row[f"{name}_chance"] = chance
    temperatures = metrics.get("temperatures")
    if isinstance(temperatures, Mapping):
        for key, value in temperatures.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"{key}_temperature"] = float(value)
    compute = metrics.get("compute")
    if isinstance(compute, Mapping):
        for key, value in compute.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"compute_{key}"] = float(value)
    return row


def load_runs(metrics_dir: str | Path) -> pd.DataFrame:
    """One row per ``*.json`` metrics file in ``metrics_dir`` (see :func:`flatten_metrics`),
    sorted by loss (study order), batch size and seed.

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
    rows = []
    for path in files:
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"metrics file {path} is not valid JSON: {error}") from error
        rows.append(flatten_metrics(payload, source=str(path)))
    table = pd.DataFrame(rows)
    order = {loss: position for position, loss in enumerate(ordered_losses(table["loss"]))}
    table = table.sort_values(["loss", "batch_size", "seed"], key=lambda column: column.map(order)
                              if column.name == "loss" else column)
    return table.reset_index(drop=True)


def summarise_over_seeds(runs: pd.DataFrame, by: Sequence[str] = ("loss", "batch_size"),
                         metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, sample standard deviation (NaN for a single seed) and count over seeds, long format.

    Returns columns ``*by, metric, mean, std, n``; metrics a run lacks (NaN) are left out of
    its group, and a (group, metric) with no value at all is dropped.
    """
    by = list(by)
    missing = [column for column in by if column not in runs.columns]
    if missing:
        raise ValueError(f"runs table has no column(s) {missing}; it has {list(runs.columns)}")
    names = [m for m in (metrics if metrics is not None else METRICS) if m in runs.columns]
    long = runs.melt(id_vars=by, value_vars=names, var_name="metric", value_name="value").dropna(subset=["value"])
    summary = (long.groupby(by + ["metric"], sort=False)["value"]
               .agg(mean="mean", std="std", n="count").reset_index())
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


def mean_std_table(summary: pd.DataFrame, index: str = "loss", digits: int = 3) -> pd.DataFrame:
    """Wide table of "mean ± std" strings: one row per ``index`` value, one column per metric label."""
    cells = summary.assign(value=[_mean_std(m, s, digits) for m, s in zip(summary["mean"], summary["std"])])
    wide = cells.pivot(index=index, columns="metric", values="value")
    metric_columns = [m for m in METRICS if m in wide.columns] + sorted(set(wide.columns) - set(METRICS))
    rows = ordered_losses(wide.index) if index == "loss" else sorted(wide.index)
    wide = wide.loc[rows, metric_columns].fillna("–")
    wide.columns = [metric_label(m) for m in metric_columns]
    wide.columns.name = None
    return wide


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


def batch_size_verdict(summary: pd.DataFrame, small_loss: str = "attention", large_loss: str = "coarse",
                       metrics: Sequence[str] = RETRIEVAL_METRICS) -> pd.DataFrame:
    """Does ``small_loss`` at its smallest batch size match ``large_loss`` at its largest one?

    Per metric: the two means and standard deviations over seeds, and ``matches`` = True when
    the small-batch mean is at least the large-batch mean minus the larger of the two standard
    deviations (0 for a single seed), i.e. not worse beyond seed noise (for a metric where lower
    is better, the comparison is mirrored). The paper's claim holds where it matches.

    Returns an empty table when either loss or a second batch size is missing.
    """
    columns = ["metric", f"{small_loss} batch", f"{small_loss} mean", f"{small_loss} std",
               f"{large_loss} batch", f"{large_loss} mean", f"{large_loss} std", "matches"]
    small = summary[summary["loss"] == small_loss]
    large = summary[summary["loss"] == large_loss]
    if small.empty or large.empty:
        return pd.DataFrame(columns=columns)
    small_batch, large_batch = int(small["batch_size"].min()), int(large["batch_size"].max())
    if small_batch >= large_batch:
        return pd.DataFrame(columns=columns)
    rows = []
    for name in metrics:
        a = small[(small["batch_size"] == small_batch) & (small["metric"] == name)]
        b = large[(large["batch_size"] == large_batch) & (large["metric"] == name)]
        if a.empty or b.empty:
            continue
        a_mean, a_std = float(a["mean"].iloc[0]), float(a["std"].fillna(0.0).iloc[0])
        b_mean, b_std = float(b["mean"].iloc[0]), float(b["std"].fillna(0.0).iloc[0])
        tolerance = max(a_std, b_std)
        higher = METRICS[name].higher_is_better if name in METRICS else True
        matches = a_mean >= b_mean - tolerance if higher else a_mean <= b_mean + tolerance
        rows.append([name, small_batch, a_mean, a_std, large_batch, b_mean, b_std, bool(matches)])
    return pd.DataFrame(rows, columns=columns)


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


COST_LABELS = {
    "compute_flops_per_step": "FLOPs per training step",
    "compute_total_flops": "FLOPs of the whole run",
    "compute_wall_s": "wall time of the run (s)",
    "compute_samples_seen": "samples seen",
}
