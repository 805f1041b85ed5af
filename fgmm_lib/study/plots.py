"""Every plot the study notebooks show, as functions of plain data.

Plots take pandas DataFrames, numpy arrays or dicts (never models or files) and return a
:class:`matplotlib.figure.Figure`, styled with seaborn; the notebooks save and show them. The
tables they draw come from :mod:`fgmm_lib.study.tables`, :mod:`fgmm_lib.study.curves` (the learning
curves) and :mod:`fgmm_lib.study.selection` (the temperature surface). Each loss keeps one colour in
every plot (:data:`LOSS_COLOURS`, in the order of :data:`fgmm_lib.study.results.LOSS_ORDER`).

Plots:
    :func:`plot_training_curves`, :func:`plot_recall_at_k`, :func:`plot_confusion_matrix`,
    :func:`plot_metric_sweep` (and :func:`plot_batch_ablation`), :func:`plot_comparison`,
    :func:`plot_compute`, :func:`plot_learning_curves`, :func:`plot_noise`, :func:`plot_width`,
    :func:`plot_temperature_surface`, :func:`plot_regime`, :func:`plot_down_weighting`,
    :func:`plot_attention_maps` (data from
    :func:`fgmm_lib.study.attention.attention_examples`).
Output:
    :func:`show`, :func:`save_figure`, :func:`save_table`, :func:`save_text` (atomic writes).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from fgmm_lib.io import write_atomic, write_csv
from fgmm_lib.study.curves import check_target, mean_over_seeds
from fgmm_lib.study.results import LOSS_ORDER, METRICS, ordered_losses
from fgmm_lib.study.tables import COST_LABELS, metric_label

#: One colour per loss, the same in every plot.
LOSS_COLOURS = dict(zip(LOSS_ORDER, sns.color_palette("colorblind", len(LOSS_ORDER))))


def set_style() -> None:
    """The seaborn theme every plot of the study uses."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def _loss_colour(loss: str) -> Any:
    return LOSS_COLOURS.get(loss, "grey")


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def save_figure(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure (format from the suffix, tight bounding box) atomically; return the path."""
    return write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=dpi, bbox_inches="tight"))


def save_table(table: pd.DataFrame, path: str | Path, index: bool = False) -> Path:
    """Write a DataFrame as CSV atomically; return the path."""
    return write_csv(path, table, index=index)


def save_text(text: str, path: str | Path) -> Path:
    """Write a text file (e.g. a markdown summary) atomically; return the path."""
    return write_atomic(path, lambda temporary: temporary.write_text(text))


def show(figure: Figure, dpi: int = 90) -> None:
    """Display a figure in the notebook's output as a PNG, and close it.

    The PNG is rendered here, so that figures appear in executed notebooks (and their HTML
    export) whatever matplotlib backend the kernel runs (inline, or Agg as under
    ``MPLBACKEND=Agg``, where displaying a Figure object shows only its text).
    """
    from IPython.display import Image, display

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    display(Image(data=buffer.getvalue(), format="png"))


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _smooth(values: pd.Series, points: int) -> pd.Series:
    window = max(1, points // 20)
    return values.rolling(window, min_periods=1).mean()


def plot_training_curves(log: pd.DataFrame, step: str = "step", loss: str = "loss",
                         temperatures: Sequence[str] = ("temperature", "attn_temperature", "weight_temperature"),
                         learning_rate: str = "lr", title: str | None = None) -> Figure:
    """Loss, temperatures and learning rate over training steps (one panel each).

    ``log`` holds one row per step (the run's ``log.jsonl``); temperature columns it lacks are
    skipped. The loss panel shows the raw loss and a moving average (window = 5% of the steps).
    """
    for column in (step, loss, learning_rate):
        if column not in log.columns:
            raise ValueError(f"training log has no column {column!r}; it has {list(log.columns)}")
    set_style()
    figure, (loss_axes, temperature_axes, lr_axes) = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    steps = log[step]
    loss_axes.plot(steps, log[loss], alpha=0.35, linewidth=1, label="per step")
    loss_axes.plot(steps, _smooth(log[loss], len(log)), linewidth=2, label="moving average")
    loss_axes.set(xlabel="step", ylabel="loss", title="contrastive loss")
    loss_axes.legend(loc="upper right", fontsize="small")
    drawn = [name for name in temperatures if name in log.columns and log[name].notna().any()]
    for name, style in zip(drawn, ("-", "--", ":", "-.")):  # distinct styles: equal temperatures overlap
        temperature_axes.plot(steps, log[name], linewidth=2, linestyle=style, label=name.replace("_", " "))
    temperature_axes.set(xlabel="step", ylabel="value", title="temperatures")
    if drawn:
        values = log[drawn].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size and values.min() > 0 and values.max() / values.min() > 5:
            temperature_axes.set_yscale("log")
        temperature_axes.legend(loc="best", fontsize="small")
    else:
        temperature_axes.text(0.5, 0.5, "no temperature logged", ha="center", va="center",
                              transform=temperature_axes.transAxes)
    lr_axes.plot(steps, log[learning_rate], linewidth=2, color="tab:green")
    lr_axes.set(xlabel="step", ylabel="learning rate", title="learning rate (warmup, cosine)")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if title:
        figure.suptitle(title)
    return figure


TASK_LABELS = {"t2v": "text → video", "t2i": "text → image"}


def plot_recall_at_k(recall: pd.DataFrame, title: str | None = None) -> Figure:
    """Recall-at-K curves (hit rate against K), one line per task, chance dashed in the same colour.

    ``recall`` is a :func:`fgmm_lib.study.tables.recall_at_k_table` (columns task, K, recall, chance).
    """
    set_style()
    figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
    palette = sns.color_palette("deep", len(recall["task"].unique()))
    for colour, (task, rows) in zip(palette, recall.groupby("task", sort=False)):
        label = TASK_LABELS.get(task, task)
        axes.plot(rows["K"], rows["recall"], marker="o", linewidth=2, color=colour, label=label)
        if rows["chance"].notna().any():
            axes.plot(rows["K"], rows["chance"], linestyle="--", color=colour, alpha=0.7, label=f"{label}, chance")
    axes.set(xlabel="K", ylabel="R@K (hit rate)", ylim=(0, 1.02), xticks=sorted(recall["K"].unique()))
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title(title or "zero-shot retrieval, recall at K")
    return figure


#: Largest number of classes whose confusion-matrix cells are annotated with their counts.
CONFUSION_ANNOTATED = 20


def plot_confusion_matrix(confusion: Sequence[Sequence[int]] | np.ndarray, labels: Sequence[str],
                          normalise: bool = True, title: str | None = None) -> Figure:
    """Confusion matrix heat map (rows = true class, columns = predicted), counts annotated.

    With ``normalise`` the colours are row-normalised (the fraction of each true class), so
    classes of different sizes read alike; the annotations stay counts. Above
    ``CONFUSION_ANNOTATED`` classes (UCF101 has 101) the cells are not annotated and the figure
    stops growing.
    """
    counts = np.asarray(confusion, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(labels):
        raise ValueError(f"confusion must be a square [{len(labels)}, {len(labels)}] matrix, got shape {counts.shape}")
    set_style()
    totals = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0) if normalise else counts
    annotated = len(labels) <= CONFUSION_ANNOTATED
    side = 1.0 + 0.65 * len(labels) if annotated else 12.0
    figure, axes = plt.subplots(figsize=(side + 1.5, side), layout="constrained")
    sns.heatmap(shown, annot=counts.astype(int) if annotated else False, fmt="d", cmap="Blues", vmin=0,
                vmax=1 if normalise else None, xticklabels=list(labels), yticklabels=list(labels), square=True,
                linewidths=0.5 if annotated else 0.0,
                cbar_kws={"label": "fraction of the true class" if normalise else "clips"}, ax=axes)
    if not annotated:
        axes.tick_params(labelsize=max(3.0, 400.0 / len(labels)))
    axes.set(xlabel="predicted", ylabel="true")
    axes.tick_params(axis="x", labelrotation=45)
    axes.tick_params(axis="y", labelrotation=0)
    for label in axes.get_xticklabels():
        label.set_horizontalalignment("right")
    total = int(counts.sum())
    accuracy = float(np.trace(counts) / total) if total else math.nan
    axes.set_title(title or f"linear probe, action recognition (top-1 {accuracy:.3f}, {total} clips)")
    return figure


def plot_metric_sweep(summary: pd.DataFrame, x: str = "batch_size", metrics: Sequence[str] | None = None,
                      log2: bool = True, columns: int = 4, title: str | None = None,
                      chance: Mapping[str, float] | None = None) -> Figure:
    """Every metric against a swept knob: one facet per metric, one line per loss, error bars =
    standard deviation over seeds (none for a single seed).

    ``summary`` is a :func:`summarise_over_seeds` table grouped by ``loss`` and ``x``;
    ``chance`` optionally maps metrics to a chance level drawn as a grey dashed line.
    """
    for column in ("loss", x, "metric", "mean", "std"):
        if column not in summary.columns:
            raise ValueError(f"summary has no column {column!r}; it has {list(summary.columns)}")
    names = [m for m in (metrics or list(dict.fromkeys(summary["metric"]))) if m in set(summary["metric"])]
    if not names:
        raise ValueError("summary holds none of the metrics to plot")
    set_style()
    columns = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / columns)
    figure, axes_grid = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows + 0.6),
                                     squeeze=False, layout="constrained")
    losses = ordered_losses(summary["loss"])
    values = sorted(summary[x].unique())
    for axes, name in zip(axes_grid.flat, names):
        for position, loss in enumerate(losses):
            rows_of_loss = summary[(summary["metric"] == name) & (summary["loss"] == loss)].sort_values(x)
            if rows_of_loss.empty:
                continue
            # dodge the losses a little along x so that equal values and their error bars stay visible
            dodge = (position - (len(losses) - 1) / 2) * 0.015
            if log2:
                xs = rows_of_loss[x] * 2.0 ** (dodge * max(1.0, math.log2(values[-1] / values[0])))
            else:
                xs = rows_of_loss[x] + dodge * (values[-1] - values[0] or 1)
            axes.errorbar(xs, rows_of_loss["mean"], yerr=rows_of_loss["std"].fillna(0.0),
                          marker="o", markersize=4, linewidth=1.8, capsize=3, color=_loss_colour(loss), label=loss)
        if chance and name in chance:
            axes.axhline(chance[name], color="grey", linestyle="--", linewidth=1)
        if name in METRICS and METRICS[name].unit_interval:
            axes.set_ylim(-0.03, 1.03)
        if log2:
            axes.set_xscale("log", base=2)
        axes.set_xticks(values)
        axes.set_xticklabels([str(v) for v in values])
        axes.minorticks_off()
        axes.set_title(metric_label(name), fontsize="medium")
        axes.set_xlabel(x.replace("_", " "))
        if name in METRICS and not METRICS[name].higher_is_better:
            axes.set_ylabel("lower is better", fontsize="small")
    for axes in list(axes_grid.flat)[len(names):]:
        axes.set_visible(False)
    handles = [plt.Line2D([], [], color=_loss_colour(loss), marker="o", linewidth=1.8) for loss in losses]
    legend_labels = losses + (["chance"] if chance else [])
    if chance:
        handles.append(plt.Line2D([], [], color="grey", linestyle="--", linewidth=1))
    figure.legend(handles, legend_labels, loc="outside lower center", ncols=len(legend_labels), frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def plot_batch_ablation(summary: pd.DataFrame, metrics: Sequence[str] | None = None,
                        chance: Mapping[str, float] | None = None) -> Figure:
    """:func:`plot_metric_sweep` over batch size (log2 axis): docs/study.md section 6, question 2."""
    return plot_metric_sweep(summary, x="batch_size", metrics=metrics, log2=True, chance=chance,
                             title="every metric against the batch size (mean ± std over seeds)")


def plot_comparison(summary: pd.DataFrame, metrics: Sequence[str] | None = None, columns: int = 5,
                    title: str | None = None, runs: pd.DataFrame | None = None) -> Figure:
    """Bar chart per metric, one bar per loss (mean over seeds, error bar = std): question 1.

    ``summary`` holds one batch size (:func:`comparison_table`). Given ``runs`` (one row per run,
    :func:`fgmm_lib.study.tables.load_runs`), each seed's value at that batch size is a dot on its loss's
    bar, so seeds that split into groups show as such, not only as a long error bar.
    """
    names = [m for m in (metrics or list(dict.fromkeys(summary["metric"]))) if m in set(summary["metric"])]
    if not names:
        raise ValueError("summary holds none of the metrics to plot")
    set_style()
    columns = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / columns)
    figure, axes_grid = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.9 * rows + 0.3),
                                     squeeze=False, layout="constrained")
    losses = ordered_losses(summary["loss"])
    for axes, name in zip(axes_grid.flat, names):
        rows_of_metric = summary[summary["metric"] == name].set_index("loss")
        present = [loss for loss in losses if loss in rows_of_metric.index]
        means = rows_of_metric.loc[present, "mean"].to_numpy(dtype=float)
        stds = rows_of_metric.loc[present, "std"].fillna(0.0).to_numpy(dtype=float)
        axes.bar(range(len(present)), means, yerr=stds, capsize=3, color=[_loss_colour(loss) for loss in present])
        if runs is not None and name in runs.columns:
            batch = runs["batch_size"] == summary["batch_size"].iloc[0]
            for position, loss in enumerate(present):
                seeds = runs.loc[batch & (runs["loss"] == loss), name].dropna().to_numpy(dtype=float)
                offsets = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else np.zeros(len(seeds))
                axes.scatter(position + offsets, seeds, s=10, color="black", zorder=3)
        axes.set_xticks(range(len(present)))
        axes.set_xticklabels(present, rotation=45, ha="right")
        axes.set_title(metric_label(name), fontsize="medium")
    for axes in list(axes_grid.flat)[len(names):]:
        axes.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure


def plot_compute(runs: pd.DataFrame, cost_columns: Sequence[str], metric: str = "t2v_R@1",
                 title: str | None = None) -> Figure:
    """A retrieval metric against each compute cost (one panel per cost column), one point per run,
    coloured by loss; a cost axis spanning a decade or more is logarithmic (question 5)."""
    missing = [c for c in [metric, "loss", *cost_columns] if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table has no column(s) {missing}")
    if not cost_columns:
        raise ValueError("cost_columns is empty: nothing to plot against")
    set_style()
    figure, axes_row = plt.subplots(1, len(cost_columns), figsize=(4.6 * len(cost_columns), 3.8),
                                    squeeze=False, layout="constrained")
    losses = ordered_losses(runs["loss"])
    for axes, cost in zip(axes_row[0], cost_columns):
        for loss in losses:
            rows = runs[runs["loss"] == loss]
            axes.scatter(rows[cost], rows[metric], color=_loss_colour(loss), label=loss, s=40, alpha=0.85)
        costs = runs[cost].to_numpy(dtype=float)
        if (costs > 0).all() and costs.max() / costs.min() >= 10:  # log only over a decade or more
            axes.set_xscale("log")
            axes.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis overlap
        axes.set(xlabel=COST_LABELS.get(cost, cost.replace("compute_", "").replace("_", " ")),
                 ylabel=metric_label(metric))
    figure.legend(*axes_row[0][0].get_legend_handles_labels(), loc="outside right center", title="loss",
                  fontsize="small", frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def plot_learning_curves(curves: pd.DataFrame, target: float | None = None, fraction: float = 0.2,
                         title: str | None = None) -> Figure:
    """Validation text→video R@10 against samples seen (:func:`fgmm_lib.study.curves.load_curves` curves):
    one panel per batch size, one line per loss (mean over seeds) in a min–max band over seeds, the
    last ``fraction`` of samples shaded (where :func:`fgmm_lib.runs.curves.curve_gain` is read), and
    ``target`` as a dashed grey line."""
    missing = [c for c in ("loss", "batch_size", "samples_seen", "val_t2v_r10", "run") if c not in curves.columns]
    if missing:
        raise ValueError(f"curves have no column(s) {missing}")
    if curves.empty:
        raise ValueError("curves hold no rows: nothing to plot")
    if target is not None:
        check_target(target)
    set_style()
    batch_sizes = sorted(curves["batch_size"].unique())
    figure, axes_row = plt.subplots(1, len(batch_sizes), figsize=(4.6 * len(batch_sizes), 3.8), squeeze=False,
                                    sharey=True, layout="constrained")
    losses = ordered_losses(curves["loss"])
    for axes, batch_size in zip(axes_row[0], batch_sizes):
        of_batch = curves[curves["batch_size"] == batch_size]
        last = float(of_batch["samples_seen"].max())
        axes.axvspan((1.0 - fraction) * last, last, color="grey", alpha=0.12, linewidth=0)
        for loss in losses:
            rows = of_batch[of_batch["loss"] == loss]
            if rows.empty:
                continue
            mean = mean_over_seeds(rows)
            colour = _loss_colour(loss)
            axes.fill_between(mean["samples_seen"], mean["min"], mean["max"], color=colour, alpha=0.2, linewidth=0)
            axes.plot(mean["samples_seen"], mean["mean"], color=colour, linewidth=1.8, label=loss)
        if target is not None:
            axes.axhline(target, color="grey", linestyle="--", linewidth=1)
        axes.set(xlabel="samples seen", title=f"batch size {batch_size}")
    axes_row[0][0].set_ylabel("validation text→video R@10")
    handles = [plt.Line2D([], [], color=_loss_colour(loss), linewidth=1.8) for loss in losses]
    labels = list(losses)
    if target is not None:
        handles.append(plt.Line2D([], [], color="grey", linestyle="--", linewidth=1))
        labels.append(f"target {target:g}")
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def _sweep_lines(axes: Any, frame: pd.DataFrame, x: str, metric: str, losses: Sequence[str]) -> None:
    """One line per loss of ``metric`` against ``x`` (mean over seeds, error bars = std over seeds)."""
    for loss in losses:
        grouped = frame[frame["loss"] == loss].groupby(x)[metric]
        means = grouped.mean().dropna()
        stds = grouped.std().reindex(means.index).fillna(0.0)
        if not means.empty:
            axes.errorbar(means.index, means, yerr=stds, marker="o", markersize=4, linewidth=1.8, capsize=3,
                          color=_loss_colour(loss), label=loss)
    if metric in METRICS and METRICS[metric].unit_interval:
        axes.set_ylim(-0.03, 1.03)


def _loss_legend(figure: Figure, losses: Sequence[str]) -> None:
    handles = [plt.Line2D([], [], color=_loss_colour(loss), marker="o", linewidth=1.8) for loss in losses]
    figure.legend(handles, list(losses), loc="outside lower center", ncols=len(losses), frameon=False)


def _check_sweep(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the sweep table has no column(s) {missing}")
    if frame.empty:
        raise ValueError("the sweep table holds no run: nothing to plot")


def plot_noise(frame: pd.DataFrame, metrics: Sequence[str] = ("t2v_R@10", "digit_top1"),
               title: str | None = None) -> Figure:
    """Question 3: one panel per noise knob (columns) and metric (rows), the metric against the
    knob's level, one line per loss (mean ± std over seeds) of a noise sweep table."""
    _check_sweep(frame, ("knob", "level", "loss", *metrics))
    set_style()
    knobs = sorted(frame["knob"].unique())
    figure, axes_grid = plt.subplots(len(metrics), len(knobs), figsize=(3.6 * len(knobs), 3.0 * len(metrics) + 0.6),
                                     squeeze=False, layout="constrained")
    losses = ordered_losses(frame["loss"])
    for row, metric in enumerate(metrics):
        for axes, knob in zip(axes_grid[row], knobs):
            _sweep_lines(axes, frame[frame["knob"] == knob], "level", metric, losses)
            axes.set(title=f"{knob.replace('_', ' ')}", xlabel="level", ylabel=metric_label(metric))
    _loss_legend(figure, losses)
    if title:
        figure.suptitle(title)
    return figure


def plot_width(frame: pd.DataFrame, metrics: Sequence[str] = ("t2v_R@10", "digit_top1"),
               title: str | None = None) -> Figure:
    """Question 4: one panel per metric against the video encoder's width multiplier, one line per
    loss (mean ± std over seeds) of a width sweep table."""
    _check_sweep(frame, ("width", "loss", *metrics))
    set_style()
    figure, axes_row = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False,
                                    layout="constrained")
    losses = ordered_losses(frame["loss"])
    for axes, metric in zip(axes_row[0], metrics):
        _sweep_lines(axes, frame, "width", metric, losses)
        axes.set(title=metric_label(metric), xlabel="width multiplier")
    _loss_legend(figure, losses)
    if title:
        figure.suptitle(title)
    return figure


def plot_regime(summary: pd.DataFrame, metrics: Sequence[str] = ("t2v_R@10", "digit_top1")) -> Figure:
    """The regime map (:func:`fgmm_lib.study.regime.regime_summary`): each metric against samples seen
    (log scale), one line per (loss, batch size) with its 95% interval over seeds as faint error bars;
    each batch size its own line style and marker (solid circles for the smallest)."""
    _check_sweep(summary, ["loss", "batch_size", "samples_seen", *metrics])
    set_style()
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    styles = dict(zip(sorted(summary["batch_size"].unique()), [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")] * 4))
    for axis, metric in zip(axes[0], metrics):
        for (loss, batch_size), group in summary.groupby(["loss", "batch_size"], sort=True):
            group = group.sort_values("samples_seen")
            low, high = group.get(f"{metric}_low"), group.get(f"{metric}_high")
            error = None if low is None else np.vstack([group[metric] - low, high - group[metric]]).clip(min=0)
            linestyle, marker = styles[batch_size]
            lines = axis.errorbar(group["samples_seen"], group[metric], yerr=error, marker=marker, capsize=3,
                                  color=_loss_colour(loss), linestyle=linestyle, label=f"{loss} b{batch_size}")
            for bar in lines[2]:
                bar.set_alpha(0.3)
        axis.set_xscale("log")
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("samples seen")
        axis.set_ylabel(metric_label(metric))
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_temperature_surface(surface: pd.DataFrame, best: tuple[float, float] | None = None,
                             title: str | None = None) -> Figure:
    """Question 7: a :func:`fgmm_lib.study.selection.temperature_surface` as an annotated heatmap (rows τa,
    columns τw), the ``best`` (τa, τw) cell outlined (default: the highest value)."""
    if surface.empty:
        raise ValueError("the temperature surface is empty: nothing to plot")
    set_style()
    figure, axes = plt.subplots(figsize=(1.1 * surface.shape[1] + 2.4, 0.8 * surface.shape[0] + 1.6),
                                layout="constrained")
    sns.heatmap(surface, annot=True, fmt=".3f", cmap="viridis", ax=axes, cbar_kws={"label": "validation value"},
                xticklabels=[f"{v:g}" for v in surface.columns], yticklabels=[f"{v:g}" for v in surface.index])
    if best is None:
        best = surface.stack().idxmax()
    row = [i for i, v in enumerate(surface.index) if math.isclose(v, best[0])]
    column = [j for j, v in enumerate(surface.columns) if math.isclose(v, best[1])]
    if row and column:
        axes.add_patch(Rectangle((column[0], row[0]), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    axes.set(xlabel="τw (weight temperature)", ylabel="τa (attention temperature)")
    axes.set_title(title or "validation text→video R@10 (best pair outlined)")
    return figure


def plot_down_weighting(table: pd.DataFrame, mechanism: pd.DataFrame | None = None) -> Figure:
    """Question 6: each weight temperature's paired difference against uniform weights with its 95%
    interval (:func:`fgmm_lib.study.down_weighting.weighting_table`), and beside it how far the
    weights are from uniform at that τw (``mechanism``: ``weight_temperature, weights,
    entropy_relative`` rows of :func:`fgmm_lib.study.attention.mechanism_table`)."""
    _check_sweep(table, ["loss", "tau_w", "difference", "ci95_low", "ci95_high"])
    set_style()
    panels = 2 if mechanism is not None and not mechanism.empty else 1
    figure, axes = plt.subplots(1, panels, figsize=(5.0 * panels, 3.6), squeeze=False)
    axis = axes[0][0]
    for loss, group in table.groupby("loss", sort=False):
        group = group.sort_values("tau_w")
        error = np.vstack([group["difference"] - group["ci95_low"], group["ci95_high"] - group["difference"]])
        axis.errorbar(group["tau_w"], group["difference"], yerr=error.clip(min=0), marker="o", capsize=4,
                      color=_loss_colour(loss), label=loss)
    axis.axhline(0.0, color="black", linewidth=1)
    axis.set_xscale("log")
    axis.set(xlabel="τw (smaller: sharper weights)", ylabel="R@10 minus uniform weights")
    axis.set_title("paired over seeds, 95% interval", fontsize="medium")
    axis.legend(fontsize="small")
    if panels == 2:
        axis = axes[0][1]
        spread = mechanism.groupby(["weights", "weight_temperature"])["entropy_relative"].mean().reset_index()
        for what, group in spread.groupby("weights"):
            axis.plot(group["weight_temperature"], group["entropy_relative"], marker="o", label=what)
        axis.set_xscale("log")
        axis.set_ylim(0, 1.05)
        axis.set(xlabel="τw", ylabel="entropy relative to uniform")
        axis.set_title("1 = uniform weights", fontsize="medium")
        axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _frame_cell(frame: int, frames: int, grid_frames: int) -> int:
    """The token-grid time index whose span covers the middle of ``frame``."""
    return min(grid_frames - 1, int((frame + 0.5) * grid_frames / frames))


def plot_attention_maps(examples: Sequence[Mapping[str, Any]], title: str | None = None,
                        cmap: str = "plasma", alpha: float = 0.85) -> Figure:
    """Where each phrase looks, frame by frame, for one or more clips (question 6).

    Each example is a dict of plain arrays:

    - ``"frames"``: uint8 ``[T, H, W, 3]``; ``"boxes"``: ``[T, 4]`` actor box (x0, y0, x1, y1,
      pixels, exclusive ends); ``"visible"``: ``[T]`` bool (no box on frames without the actor);
    - ``"phrase_attention"``: ``[P, T', H', W']`` each phrase's attention over cells;
    - ``"phrase_weight"``: ``[P]``; ``"phrases"``: ``P`` labels;
    - ``"cell_weight"``: ``[T', H', W']`` the video-to-text weight of each cell;
    - ``"text"``: the narration; optional ``"title"`` (e.g. clip index and pointing hit).

    One block per clip: one row per phrase and a last row of cell weights, one column per
    frame (the cell map upsampled to the frame, nearest cell, overlaid with an opacity that grows
    with the value, so the frame shows through where there is no attention; each row shares one
    colour scale), and on the right the phrase weights as a bar chart level with their rows.
    """
    if not examples:
        raise ValueError("examples is empty: nothing to draw")
    set_style()
    blocks = []
    for position, example in enumerate(examples):
        missing = [key for key in ("frames", "boxes", "visible", "phrase_attention", "phrase_weight", "phrases",
                                   "cell_weight", "text") if key not in example]
        if missing:
            raise ValueError(f"example {position} lacks {missing}")
        frames = np.asarray(example["frames"])
        attention = np.asarray(example["phrase_attention"], dtype=float)
        weights = np.asarray(example["phrase_weight"], dtype=float)
        cell_weight = np.asarray(example["cell_weight"], dtype=float)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"example {position}: frames must be [T, H, W, 3], got {frames.shape}")
        if attention.ndim != 4 or attention.shape[0] != len(example["phrases"]) or weights.shape != (attention.shape[0],):
            raise ValueError(
                f"example {position}: phrase_attention must be [P, T', H', W'] and phrase_weight [P] with "
                f"P = {len(example['phrases'])} phrases, got {attention.shape} and {weights.shape}"
            )
        if cell_weight.shape != attention.shape[1:]:
            raise ValueError(f"example {position}: cell_weight must have the grid shape {attention.shape[1:]}, "
                             f"got {cell_weight.shape}")
        blocks.append((frames, attention, weights, cell_weight))

    frame_count = max(block[0].shape[0] for block in blocks)
    rows_per_block = [block[1].shape[0] + 1 for block in blocks]
    label_width, bar_width = 2.1, 2.0
    width = label_width + TILE_INCHES * frame_count + bar_width
    heights = [TILE_INCHES * rows + 0.55 for rows in rows_per_block]
    figure = plt.figure(figsize=(width, sum(heights) + 0.7), layout="constrained")
    subfigures = figure.subfigures(len(blocks), 1, height_ratios=heights, squeeze=False)[:, 0]
    for subfigure, example, (frames, attention, weights, cell_weight) in zip(subfigures, examples, blocks):
        _draw_attention_block(subfigure, example, frames, attention, weights, cell_weight, cmap, alpha,
                              frame_count, bar_width / TILE_INCHES)
    heading = f"{title}\n" if title else ""
    figure.suptitle(f"{heading}overlay: attention over the cells, each row scaled to its maximum "
                    f"(transparent = none); green: the actor's box", fontsize="medium")
    return figure


TILE_INCHES = 1.0  # side of one frame tile in the attention figure


def _overlay(values: np.ndarray, top: float, cmap: str, alpha: float) -> np.ndarray:
    """RGBA image of a cell map: colour from ``cmap``, opacity growing with the value (0 = clear)."""
    scaled = np.clip(values / top, 0.0, 1.0)
    rgba = plt.get_cmap(cmap)(scaled)
    rgba[..., 3] = alpha * scaled
    return rgba


def _draw_attention_block(subfigure: Any, example: Mapping[str, Any], frames: np.ndarray, attention: np.ndarray,
                          weights: np.ndarray, cell_weight: np.ndarray, cmap: str, alpha: float,
                          frame_columns: int, bar_ratio: float) -> None:
    phrase_count, grid_frames = attention.shape[0], attention.shape[1]
    frame_count, height, width = frames.shape[:3]
    boxes = np.asarray(example["boxes"], dtype=float)
    visible = np.asarray(example["visible"], dtype=bool)
    grid = subfigure.add_gridspec(phrase_count + 1, frame_columns + 1,
                                  width_ratios=[1.0] * frame_columns + [bar_ratio])
    maps = list(attention) + [cell_weight]
    row_labels = list(example["phrases"]) + ["cell weight\n(video→text)"]
    extent = (0, width, height, 0)
    for row, (grid_map, row_label) in enumerate(zip(maps, row_labels)):
        top = float(grid_map.max()) if grid_map.size and grid_map.max() > 0 else 1.0
        for frame in range(frame_count):
            axes = subfigure.add_subplot(grid[row, frame])
            axes.imshow(frames[frame], extent=extent, interpolation="nearest")
            axes.imshow(_overlay(grid_map[_frame_cell(frame, frame_count, grid_frames)], top, cmap, alpha),
                        extent=extent, interpolation="nearest")
            if frame < len(visible) and visible[frame]:
                x0, y0, x1, y1 = boxes[frame]
                axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.2))
            axes.set_xticks([])
            axes.set_yticks([])
            axes.grid(False)
            if row == 0:
                axes.set_title(f"frame {frame}", fontsize="small")
            if frame == 0:
                axes.set_ylabel(row_label, rotation=0, ha="right", va="center", fontsize="small")
    bars = subfigure.add_subplot(grid[:phrase_count, frame_columns])
    positions = np.arange(phrase_count)
    bars.barh(positions, weights, height=0.5, color=sns.color_palette("colorblind")[0])
    bars.set_ylim(phrase_count - 0.5, -0.5)  # one bar level with each phrase's row of frames
    bars.set_yticks(positions)
    bars.set_yticklabels([])
    bars.set_xlim(0, 1.35)
    bars.set_xticks([0, 0.5, 1.0])
    for position, weight in zip(positions, weights):
        bars.text(float(weight) + 0.03, position, f"{weight:.2f}", va="center", fontsize="small")
    bars.set_title("phrase weight\n(text→video)", fontsize="small")
    bars.tick_params(axis="x", labelsize="x-small")
    heading = example.get("title") or ""
    subfigure.suptitle(f"{heading}: “{example['text']}”" if heading else f"“{example['text']}”",
                       fontsize="medium", x=0.01, ha="left")
