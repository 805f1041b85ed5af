"""The study report: each question of docs/study.md section 6 answered from the results folder, in markdown.

:class:`Report` collects the markdown blocks of ``results/report/summary.md`` and shows each one as
it is added. Each section is a ``report_*`` function that adds its text and tables (most return
the table they show):

- the runs: :func:`report_seed_splits` (with :func:`split_profile`, :func:`wilson_interval`),
  :func:`report_loss_comparison`,
  :func:`report_batch_ablation`, :func:`report_paired_batch`, :func:`report_attributes` (with
  :func:`learned_attributes_sentence`), :func:`report_compute`, :func:`report_attention`,
  :func:`report_temperatures`;
- the sweeps: :func:`report_noise`, :func:`report_width`, :func:`report_temperature`,
  :func:`report_lr_rule`;
- convergence and compute to a target: :func:`report_convergence`, :func:`report_time_to_target`;
- the headline question (a fine-grained loss at a small batch against coarse at a large one):
  :func:`headline_answer` (its verdicts, :data:`HEADLINE_VERDICTS`), :func:`headline_sentence`,
  :func:`report_headline`;
- the regime, the headline's reference at the same batch, the down-weighting question and
  replication are :mod:`fgmm_lib.study.report_regime`;
- what the pipeline answers: :data:`QUESTIONS`, :func:`has_evidence`, :func:`answered_questions`,
  :func:`report_status`.

The numbers come from :mod:`fgmm_lib.study.tables`, :mod:`fgmm_lib.study.stats` and
:mod:`fgmm_lib.study.selection`. The verdicts follow docs/study.md section 7.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from fgmm_lib.losses.scores import AGGREGATIONS
from fgmm_lib.study.curves import convergence_table
from fgmm_lib.study.results import METRICS
from fgmm_lib.study.selection import (
    LR_RULE_MARGIN,
    best_temperatures,
    fixed_temperatures,
    lr_factors,
    temperature_surface,
)
from fgmm_lib.study.stats import (
    mean_interval,
    metric_higher_is_better,
    paired_differences,
    seed_values,
    tie_or_difference,
    welch_interval,
)
from fgmm_lib.study.tables import (
    FINE_GRAINED_LOSSES,
    HEADLINE_METRIC,
    LEARNED_MARGIN,
    PAIRED_METRICS,
    REPORT_COSTS,
    SEED_SPLIT_GAP,
    SWEEP_FILES,
    attribute_table,
    best_losses,
    comparison_batch_size,
    comparison_table,
    compute_table,
    evaluation_interval_table,
    interval_column,
    interval_table,
    learnable_temperatures,
    learned_attributes,
    lr_rule_table,
    markdown_table,
    mean_std_table,
    metric_label,
    noise_drops,
    noise_table,
    paired_difference_table,
    seed_splits,
    seed_table,
    summarise_over_seeds,
    sweep_ends,
    sweep_table,
    time_to_target_summary,
)

# --------------------------------------------------------------------------------------------
# The report: each question of docs/study.md section 6 answered from the results folder
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
        verb = "lies" if len(lows) == 1 else "lie"
        common = (f" {_seeds_text(sorted(lows)).capitalize()} {verb} in the lower group of every one of them."
                  if lows and len(group) > 1 else "")
        report.add(f"Seeds split on {metric_label(metric)} (sorted values leave a gap over {gap:g}, several times a "
                   f"run's own evaluation interval): " + "; ".join(parts) + "." + common)
    first = splits[splits["metric"] == splits["metric"].iloc[0]]
    often = [f"`{row.loss}` {len(row.low_seeds)} of {len(row.low_seeds) + len(row.high_seeds)} "
             f"({_rate_interval_text(len(row.low_seeds), len(row.low_seeds) + len(row.high_seeds))})"
             for row in first.itertuples()]
    report.add(f"How often a seed lands in the lower group on {metric_label(first['metric'].iloc[0])}: "
               + "; ".join(often) + " (95% Wilson interval on the rate). The mean over seeds and its interval say "
               "how these seeds fell, not how the next one will; more seeds, or a longer budget (does the lower "
               "group catch up?), would narrow it.")
    profile = split_profile(runs, first, batch_size)
    if not profile.empty:
        report.add("What the lower seeds lack: each split loss's lower and upper seeds, mean over the group, on "
                   "every metric of the run (the attribute the lower group did not learn is where they part):")
        report.table(profile.round(3), index=False)
    return splits


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate of ``successes`` in ``trials`` (``trials`` >= 1)."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"wilson_interval: need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    rate = successes / trials
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate_interval_text(successes: int, trials: int) -> str:
    low, high = wilson_interval(successes, trials)
    return f"{low:.2f}–{high:.2f}"


#: The metrics :func:`split_profile` compares between a split's lower and upper seeds.
SPLIT_PROFILE_METRICS = ("t2v_R@10", "colour_top1", "action_top1", "digit_top1", "pointing")


def split_profile(runs: pd.DataFrame, splits: pd.DataFrame, batch_size: int,
                  metrics: Sequence[str] = SPLIT_PROFILE_METRICS) -> pd.DataFrame:
    """For each row of ``splits`` (:func:`seed_splits`), the mean of ``metrics`` over its lower seeds and
    over its upper seeds at ``batch_size``: one row per loss and group (``loss, group, seeds, *metrics``)."""
    present = [metric for metric in metrics if metric in runs.columns]
    rows = []
    for split in splits.itertuples():
        at = runs[(runs["loss"] == split.loss) & (runs["batch_size"] == batch_size)]
        for group, seeds in (("lower", split.low_seeds), ("upper", split.high_seeds)):
            chosen = at[at["seed"].isin(seeds)]
            rows.append({"loss": split.loss, "group": group, "seeds": ", ".join(map(str, sorted(seeds))),
                         **{metric_label(metric): float(chosen[metric].mean()) for metric in present}})
    return pd.DataFrame(rows)


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
    """What the encoders learned, per attribute (docs/study.md section 7, "Honest about the regime"): the
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


#: Each question of docs/study.md section 6 and the results (relative to the results folder) that answer it.
QUESTIONS = (
    ("1. loss comparison (mean ± std over seeds)", ("ablation/comparison.csv",)),
    ("2. batch-size ablation", ("ablation/batch_size.csv",)),
    ("3. noise ablation", ("noise/noise.csv",)),
    ("4. model-size ablation", ("width/width.csv",)),
    ("5. compute: FLOPs and wall time per run", ("compute",)),
    ("5. compute: time to reach a fixed retrieval target", ("compute/time_to_target.csv",)),
    ("6. attention maps and pointing", ("attention/pointing.csv",)),
    ("7. temperature sweep (τa, τw surface)", ("temperature/surface.csv",)),
    ("7b/§7 learning rate per loss and batch size (the rule checked and the factor chosen on validation)", ("lr/lr.csv",)),
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
    for row in sweep_ends(frame, "width", metric).itertuples():
        best = table[row.loss].idxmax()
        report.add(f"`{row.loss}`: from width {row.low:g} to {row.high:g}, {metric_label(metric)} "
                   f"{_change_text(row.change)} ({row.at_low:.3f} → {row.at_high:.3f}); best at width {best:g} "
                   f"({table[row.loss].max():.3f}).")
    return table


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


def report_lr_rule(report: Report, frame: pd.DataFrame | None, metric: str = HEADLINE_METRIC,
                   margin: float = LR_RULE_MARGIN) -> pd.DataFrame:
    """The learning-rate rule of docs/study.md section 7 (peak lr = lr * sqrt(batch / 64)) checked on
    validation: :func:`lr_rule_table` and a sentence on where it holds. Returns the table."""
    report.add("## 7b. Learning rate per loss and batch size: the rule checked, and the factor chosen, on validation")
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
    report.add("The study trains each loss of this grid at the factor the grid chose for it at its batch size (the "
               "rule's factor 1 wherever it comes within the margin): "
               + ", ".join(f"`{loss}` b{batch} × {factor:g}" for (loss, batch), factor in sorted(chosen.items()))
               + ". The attention variants take `attention`'s factor, other losses `coarse`'s at their batch size "
               "(fgmm_lib.study.sweep.factor_for): losses the grid lacks are untuned, so their comparisons are not "
               "verdicts on the loss. Batch sizes outside the grid follow the rule.")
    return table


# --------------------------------------------------------------------------------------------
# Convergence, time to target and the headline question (docs/study.md sections 6 and 7)
# --------------------------------------------------------------------------------------------


def _configurations(table: pd.DataFrame) -> str:
    return ", ".join(f"`{row.loss}` b{row.batch_size}" for row in table.itertuples())


def report_convergence(report: Report, curves: pd.DataFrame | None, threshold: float = 0.02) -> pd.DataFrame:
    """docs/study.md section 7, "Converged": :func:`fgmm_lib.study.curves.convergence_table` of the validation
    curves and which (loss, batch size) have not flattened (gain over the last 20% of samples
    >= ``threshold``). Returns the table (empty without curves)."""

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
    :func:`fgmm_lib.study.curves.time_to_target` table), summarised over seeds by
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
                    metric: str = HEADLINE_METRIC, margin: float = 0.03,
                    premise: pd.DataFrame | None = None) -> pd.DataFrame:
    """The headline question (docs/study.md section 6, question 2): :func:`headline_answer` as a table and
    one sentence answering yes / no / undecided, naming the losses. Given the ``premise`` of
    :func:`report_study_regime` and a verdict other than "better", a warning says what the comparison
    cannot show. Returns the answer."""
    reference = f"`{large[0]}` at batch {large[1]}"
    question = (f"At equal samples seen, does a fine-grained loss at batch {small_batch} reach {reference} on "
                f"{metric_label(metric)}, within the intervals?")
    report.add("## The headline: a fine-grained loss at a small batch against coarse at a large one")
    answer = headline_answer(runs, small_batch, large, metric, margin)
    if answer.empty:
        report.add(f"Not answered: it needs runs of {reference} and of a fine-grained loss at batch {small_batch}.")
        return answer
    shown = pd.DataFrame({"loss": answer["loss"], "seeds": answer["seeds"],
                          "mean [95% CI]": interval_column(answer, "mean", "ci95_low", "ci95_high"),
                          f"{large[0]} b{large[1]} [95% CI]": interval_column(
                              answer, "reference_mean", "reference_low", "reference_high"),
                          "difference [Welch 95% CI]": interval_column(answer, "difference", "welch_low",
                                                                        "welch_high"),
                          "pairs": answer["pairs"],
                          "paired difference [95% CI]": interval_column(answer, "paired_mean", "paired_low",
                                                                         "paired_high"),
                          "verdict": answer["verdict"], "read on": answer["verdict_on"]})
    report.add(f"{metric_label(metric)} at batch {small_batch} against {reference}: mean and 95% t-interval over "
               f"seeds, the difference of the means (Welch), the paired difference over the seeds both have; "
               f"reaches: the interval lies within ±{margin:g}, exceeds / falls short: it excludes 0.")
    report.table(shown, index=False)
    report.add(f"**{question} {headline_sentence(answer)}")
    if premise is not None and not premise.empty and premise["verdict"].iloc[0] != "better":
        report.add(f"**Read with the premise:** in this regime {reference} is not better than `{large[0]}` at batch "
                   f"{small_batch} ({premise['verdict'].iloc[0]}: {premise['difference [95% CI]'].iloc[0]}). "
                   "Reaching or exceeding it shows only that the large batch bought nothing here; it does not show "
                   "that the fine-grained loss reaches what a large batch buys. The comparison against coarse at "
                   "the same batch, below, is the one that counts.")
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


#: The headline verdict of each :func:`tie_or_difference` verdict (fine-grained minus coarse).
HEADLINE_VERDICTS = {"tie": "reaches", "better": "exceeds", "worse": "falls short", "undecided": "undecided"}


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
    base = seed_values(runs, reference_loss, large_batch, metric) if not runs.empty else pd.Series(dtype=float)
    rows = []
    for loss in [loss for loss in FINE_GRAINED_LOSSES if not base.empty]:
        values = seed_values(runs, loss, small_batch, metric)
        if values.empty:
            continue
        paired = paired_differences(runs[runs["loss"].isin([loss, reference_loss])], metric,
                                    (reference_loss, large_batch), margin=margin)
        paired = paired[(paired["loss"] == loss) & (paired["batch_size"] == small_batch)]
        pn, pmean, plow, phigh = ((int(paired["n"].iloc[0]), *paired[["mean", "ci95_low", "ci95_high"]].iloc[0])
                                  if not paired.empty else (0, math.nan, math.nan, math.nan))
        difference, wlow, whigh = welch_interval(values, base)
        on_pairs = pn >= 2
        verdict = tie_or_difference((plow, phigh) if on_pairs else (wlow, whigh), margin, metric_higher_is_better(metric))
        rows.append({"loss": loss, "batch_size": small_batch, "seeds": len(values),
                     **dict(zip(("mean", "ci95_low", "ci95_high"), mean_interval(values))),
                     "reference": f"{reference_loss} b{large_batch}", "reference_seeds": len(base),
                     **dict(zip(("reference_mean", "reference_low", "reference_high"), mean_interval(base))),
                     "difference": difference, "welch_low": wlow, "welch_high": whigh, "pairs": pn,
                     "paired_mean": pmean, "paired_low": plow, "paired_high": phigh,
                     "verdict": HEADLINE_VERDICTS[verdict], "verdict_on": "paired" if on_pairs else "Welch"})
    return pd.DataFrame(rows)
