"""The study summary's first part: the regime, the references of the headline, replication and the
down-weighting question (docs/study.md sections 6 and 7), answered from the results folder.

- :func:`report_regime`: the map's three conditions (premise, digit, convergence) at the chosen
  budget and whether the down-weighting is active;
- :func:`report_study_regime`: the premise, convergence and seed outcomes on the study's own runs;
- :func:`report_small_batch_reference`: every fine-grained loss against `coarse` at the same batch;
- :func:`report_down_weighting`: each attention form against its uniform ablation, and the
  ``down_weighting`` stage's sharper weight temperatures;
- :func:`report_replication`: each headline pair on fresh data;
- :func:`report_lr_at_budget`: the learning rate chosen on one seed, read again on the study's
  seeds against the map's runs at the rule's lr (:func:`lr_budget_table`);
- :func:`report_longer_runs`: the headline configurations trained 1.5 times as long, against the
  study's runs (condition (c), ``results/convergence/convergence.csv``), and the headline pairs
  again at the longer budget (:func:`longer_pairs_table`).

The rest of the summary (the headline, the sweeps, compute) is :mod:`fgmm_lib.study.report`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from fgmm_lib.study.curves import convergence_table
from fgmm_lib.study.report import Report, has_evidence
from fgmm_lib.study.selection import lr_factors
from fgmm_lib.study.stats import mean_interval, seed_values, t_interval
from fgmm_lib.study.tables import (
    HEADLINE_METRIC,
    interval_column,
    metric_label,
    paired_difference_table,
    seed_outcomes,
)


def _read_csv_if_any(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if has_evidence(path) else None


def _holds_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    return "holds" if bool(value) else "fails"


#: The largest gain of a 1.5x longer run for which a configuration has converged; the same value as
#: :data:`fgmm_lib.study.convergence.CONVERGED_GAIN`, which wrote ``results/convergence/convergence.csv``.
CONVERGED_GAIN = 0.02


def convergence_check(table: pd.DataFrame, factor: str = "1.5", threshold: float = CONVERGED_GAIN) -> dict[str, Any]:
    """Condition (c) as a row of ``checks.csv`` from the convergence stage's ``table``
    (``results/convergence/convergence.csv``): the largest mean gain over the headline configurations,
    with its interval; it holds where every mean gain is below ``threshold``."""
    worst = table.loc[table["gain"].idxmax()]
    return {"condition": "converged", "holds": bool((table["gain"] < threshold).all()),
            "value": float(worst["gain"]), "ci95_low": float(worst["ci95_low"]),
            "ci95_high": float(worst["ci95_high"]),
            "detail": f"largest gain of {factor}x the budget: {worst['loss']} b{int(worst['batch_size'])}, "
                      f"{int(worst['n'])} paired seeds (`results/convergence/`)"}


def report_regime(report: Report, budget: float | None = None) -> pd.DataFrame | None:
    """The regime first (docs/study.md section 7): the three conditions of ``results/regime/checks.csv``
    at the chosen budget, what each configuration of the map learned there (``regime.csv``), and
    whether the down-weighting is active (``results/attention/mechanism.csv``). Where the map has no
    longer budget to read convergence from, the convergence stage's longer runs answer it
    (:func:`convergence_check`). Returns the checks."""
    report.add("## The regime: does the comparison's premise hold, what is learned, has it converged?")
    checks = _read_csv_if_any(report.results / "regime" / "checks.csv")
    if checks is None:
        report.add("Not answered yet: `results/regime/checks.csv` is missing (`dvc repro regime_map`).")
        return None
    longer = _read_csv_if_any(report.results / "convergence" / "convergence.csv")
    unmeasured = (checks["condition"] == "converged") & checks["holds"].isna()
    if longer is not None and not longer.empty and unmeasured.any():
        checks = checks.astype({"holds": object})
        row = convergence_check(longer, _longer_factor(_read_csv_if_any(report.results / "convergence" / "runs.csv")))
        for column, value in row.items():
            checks.loc[unmeasured, column] = value
    shown = pd.DataFrame({"condition": checks["condition"],
                          "value [95% CI]": interval_column(checks, "value", "ci95_low", "ci95_high"),
                          "": [_holds_text(value) for value in checks["holds"]],
                          "read on": checks["detail"]})
    budget = None if budget is None else float(budget)
    where = f" at {budget:g}x the study's samples" if budget is not None else ""
    report.add(f"The conditions{where} (`results/regime/checks.csv`): the premise is `coarse` at the large batch "
               "minus `coarse` at the small batch on text→video R@10, paired over the map's seeds; the digit is the "
               "low end of the best configuration's probe interval against 0.5; convergence is the gain of 1.5x the "
               "budget.")
    report.table(shown, index=False)
    table = _read_csv_if_any(report.results / "regime" / "regime.csv")
    if table is not None and budget is not None:
        at = table[table["budget"] == budget]
        learned = at.groupby(["loss", "batch_size"], sort=False)[
            [m for m in ("t2v_R@10", "colour_top1", "action_top1", "digit_top1", "steps") if m in at.columns]].mean()
        report.add(f"What each configuration of the map learned{where} (mean over its seeds, at the rule's lr: the "
                   "map comes before the lr grid, so a loss whose chosen lr factor is not 1 trains at another lr in "
                   "the study; the map's plot is `results/regime/regime.png`):")
        report.table(learned.reset_index(), index=False)
    mechanism = _read_csv_if_any(report.results / "attention" / "mechanism.csv")
    if mechanism is not None and not mechanism.empty:
        report.add("Is the down-weighting active? The outer weights of each attention run on the matched test pairs: "
                   "entropy relative to uniform (1 = uniform) and the largest weight beside the uniform one "
                   "(`results/attention/mechanism.csv`):")
        report.table(mechanism, index=False)
    return checks


def report_study_regime(report: Report, runs: pd.DataFrame, small: Sequence[Any] = ("coarse", 8),
                        large: Sequence[Any] = ("coarse", 256), curves: pd.DataFrame | None = None,
                        metric: str = HEADLINE_METRIC, margin: float = 0.03) -> pd.DataFrame:
    """The regime on the study's own runs (the map has fewer seeds): the premise (``large`` minus
    ``small``, paired over the study's seeds), whether the curves of every configuration at the small
    batch and of ``large`` flattened (:func:`convergence_table` of ``curves``), and seed by seed how
    often each loss at the small batch beats each reference (:func:`seed_outcomes`). Returns the
    premise's paired row (empty when the study lacks either configuration)."""
    small, large = (str(small[0]), int(small[1])), (str(large[0]), int(large[1]))
    report.add("### The regime on the study's own runs")
    pair = runs[[(loss, int(batch)) in (small, large) for loss, batch in zip(runs["loss"], runs["batch_size"])]] \
        if not runs.empty else runs
    premise = paired_difference_table(pair, small, metrics=[metric], margin=margin) if not pair.empty else pair
    if premise.empty:
        report.add(f"Not answered: the study needs `{small[0]}` at batch {small[1]} and `{large[0]}` at batch "
                   f"{large[1]} with shared seeds.")
        return pd.DataFrame()
    verdict = premise["verdict"].iloc[0]
    holds = {"better": "holds", "worse": "is reversed", "tie": "fails (a tie)"}.get(verdict, "is undecided")
    report.add(f"The premise, {metric_label(metric)} of `{large[0]}` at batch {large[1]} minus `{small[0]}` at batch "
               f"{small[1]}, paired over the study's {int(premise['n'].iloc[0])} seeds: "
               f"{premise['difference [95% CI]'].iloc[0]}. The premise **{holds}**.")
    if curves is not None and not curves.empty:
        converged = convergence_table(curves)
        keep = (converged["batch_size"] == small[1]) | ((converged["loss"] == large[0])
                                                         & (converged["batch_size"] == large[1]))
        report.add("Have the study's curves flattened? The gain of the mean validation curve over its last 20% of "
                   "samples (flattened: below 0.02; a cosine schedule flattens every curve at its end, so this "
                   "reads the budget as much as the model):")
        report.table(converged[keep].round(3), index=False)
    outcomes = pd.concat([seed_outcomes(runs, reference, small[1], metric) for reference in (large, small)],
                         ignore_index=True)
    if not outcomes.empty:
        report.add(f"Seed by seed: how often each loss at batch {small[1]} is above each reference on "
                   f"{metric_label(metric)} (same seed, same data), and each seed's difference:")
        report.table(outcomes.drop(columns=["metric"]), index=False)
    return premise


def report_small_batch_reference(report: Report, runs: pd.DataFrame, small_batch: int = 8,
                                 metric: str = HEADLINE_METRIC, margin: float = 0.03) -> pd.DataFrame:
    """The headline's other reference: every fine-grained loss at ``small_batch`` against `coarse` at the
    same batch (does fine-grained alignment help at a small batch?), paired over seeds."""
    report.add(f"### Against `coarse` at the same batch {small_batch}")
    at = runs[runs["batch_size"] == small_batch] if not runs.empty else runs
    table = paired_difference_table(at, ("coarse", small_batch), metrics=[metric], margin=margin) if not at.empty else at
    if table.empty:
        report.add(f"Not answered: it needs `coarse` and a fine-grained loss at batch {small_batch} with shared seeds.")
        return pd.DataFrame()
    report.add(f"{metric_label(metric)}, each loss at batch {small_batch} minus `coarse` at batch {small_batch} "
               f"(same seed, same data; tie: within ±{margin:g}; better / worse: the interval excludes 0):")
    report.table(table, index=False)
    return table


def _longer_factor(runs: pd.DataFrame | None) -> str:
    return f"{float(runs['factor'].iloc[0]):g}" if runs is not None and "factor" in runs else "more"


def longer_pairs_table(longer: pd.DataFrame, study: pd.DataFrame, pairs: Sequence[Sequence[Sequence[Any]]],
                       metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Does a comparison keep its sign with a longer budget? Each ``(configuration, reference)`` of ``pairs``
    (each a ``(loss, batch_size)``), paired seed by seed on the seeds where the ``longer`` runs have both,
    once on those runs and once on the ``study``'s runs of the same seeds. One row per pair: ``comparison,
    n, study, longer`` (mean differences), ``ci95_low, ci95_high`` (the 95% t-interval of ``longer``) and
    ``per seed`` (``s<seed> study -> longer``)."""
    rows = []
    for configuration, reference in pairs:
        (loss, batch), (ref_loss, ref_batch) = (str(configuration[0]), int(configuration[1])), \
            (str(reference[0]), int(reference[1]))
        long_diff = (seed_values(longer, loss, batch, metric)
                     - seed_values(longer, ref_loss, ref_batch, metric)).dropna()
        study_diff = (seed_values(study, loss, batch, metric)
                      - seed_values(study, ref_loss, ref_batch, metric)).reindex(long_diff.index)
        if long_diff.empty:
            continue
        mean, low, high = mean_interval(long_diff)
        per_seed = ", ".join(f"s{int(seed)} {study_diff[seed]:+.3f} -> {long_diff[seed]:+.3f}"
                             for seed in sorted(long_diff.index))
        rows.append({"comparison": f"{loss} b{batch} - {ref_loss} b{ref_batch}", "n": len(long_diff),
                     "study": float(study_diff.mean()), "longer": mean,
                     "ci95_low": low, "ci95_high": high, "per seed": per_seed})
    return pd.DataFrame(rows, columns=["comparison", "n", "study", "longer", "ci95_low", "ci95_high", "per seed"])


def report_longer_runs(report: Report, runs: pd.DataFrame | None = None, small: Sequence[Any] = ("coarse", 8),
                       large: Sequence[Any] = ("coarse", 64), threshold: float = CONVERGED_GAIN) -> pd.DataFrame | None:
    """Condition (c): each headline configuration trained ``factor`` times as long (the ``convergence``
    stage), minus the study's run on the same seed; converged where the mean gain is below
    ``threshold``. With the study's ``runs``, each fine-grained configuration of the longer runs at
    ``small``'s batch against ``small`` and ``large`` at both budgets (:func:`longer_pairs_table`)."""
    table = _read_csv_if_any(report.results / "convergence" / "convergence.csv")
    if table is None:
        report.add("Convergence at the study's budget is not measured yet (`results/convergence/` is missing: "
                   "`dvc repro convergence`).")
        return None
    longer = _read_csv_if_any(report.results / "convergence" / "runs.csv")
    factor = _longer_factor(longer)
    table = table.assign(converged=table["gain"] < threshold)
    shown = pd.DataFrame({"configuration": [f"{loss} b{batch}" for loss, batch in zip(table["loss"], table["batch_size"])],
                          "n": table["n"], "study": table["study_mean"].round(3),
                          f"{factor}x": table["longer_mean"].round(3),
                          "gain [95% CI]": interval_column(table, "gain", "ci95_low", "ci95_high"),
                          f"converged (gain < {threshold:g})": table["converged"].map({True: "yes", False: "no"}),
                          "interval decides": table["decided"].map({True: "yes", False: "no"})})
    report.add(f"Condition (c), convergence: the headline configurations trained {factor} times as long (the same lr, "
               f"temperatures and seeds; `results/convergence/`), minus the study's run on the same seed, "
               f"{metric_label(HEADLINE_METRIC)}:")
    report.table(shown, index=False)
    open_ = [label for label, done in zip(shown["configuration"], table["converged"]) if not done]
    report.add(f"**Every headline configuration has converged** (a mean gain below {threshold:g})." if not open_ else
               f"**Not converged at the study's budget**: {', '.join(f'`{label}`' for label in open_)} still gain "
               f"{threshold:g} or more from a longer run.")
    if runs is None or runs.empty or longer is None:
        return table
    small, large = (str(small[0]), int(small[1])), (str(large[0]), int(large[1]))
    fine = [(loss, batch) for loss, batch in zip(table["loss"], table["batch_size"])
            if int(batch) == small[1] and (loss, int(batch)) != small]
    pairs = [((loss, batch), reference) for loss, batch in fine for reference in (small, large)]
    moved = longer_pairs_table(longer, runs, pairs)
    if moved.empty:
        return table
    shown = pd.DataFrame({"comparison": moved["comparison"], "n": moved["n"], "study": moved["study"].round(3),
                          f"{factor}x [95% CI]": interval_column(moved, "longer", "ci95_low", "ci95_high"),
                          "per seed": moved["per seed"]})
    report.add(f"Does the headline keep its sign with the longer budget? {metric_label(HEADLINE_METRIC)}, each "
               f"fine-grained configuration at batch {small[1]} minus each reference, seed by seed, at the study's "
               f"budget and at {factor}x it (the same seeds; the interval is over the longer runs' pairs):")
    report.table(shown, index=False)
    report.add(f"With {int(moved['n'].max())} seeds a shift smaller than these intervals decides nothing; where the "
               "sign or the size moves, the study's verdict at its budget is a verdict on that budget (how fast each "
               "loss learns), not on where it ends.")
    return table


def report_replication(report: Report) -> pd.DataFrame | None:
    """Replication (docs/study.md section 7): each headline pair's paired difference in every (pretraining
    data, evaluation data) setting of ``results/replication/replication.csv``, side by side."""
    report.add("## Replication on fresh data")
    table = _read_csv_if_any(report.results / "replication" / "replication.csv")
    if table is None:
        report.add("Not answered yet: `results/replication/replication.csv` is missing (`dvc repro replication`).")
        return None
    shown = pd.DataFrame({"comparison": table["comparison"], "setting": table["setting"], "n": table["n"],
                          "difference [95% CI]": interval_column(table, "mean", "ci95_low", "ci95_high"),
                          "verdict": table["verdict"],
                          "same verdict as the study": table["replicates"].map({True: "yes", False: "no"}).fillna("")})
    report.add("Each headline pair, paired over model seeds, on the study's data and on data generated afresh from other "
               "seeds (`results/replication/replication.csv`); a verdict that changes is undecided:")
    report.table(shown, index=False)
    return table


def report_down_weighting(report: Report, runs: pd.DataFrame, batch_size: int = 8, ablation: str = "attention_uniform",
                          metric: str = HEADLINE_METRIC, margin: float = 0.03) -> pd.DataFrame:
    """Does down-weighting noisy pairs help? Each attention form of the study at ``batch_size`` minus
    ``ablation`` (the same form with uniform outer weights, the same τa), paired over seeds; then the
    ``down_weighting`` stage's sharper τw (``results/down_weighting/down_weighting.csv``) beside how
    far its weights are from uniform (``mechanism.csv``). Returns the study's paired table."""
    report.add("### Does down-weighting noisy pairs help?")
    at = runs[(runs["batch_size"] == batch_size) & runs["loss"].astype(str).str.startswith("attention")] \
        if not runs.empty else runs
    table = paired_difference_table(at, (ablation, batch_size), [metric], margin=margin) if not at.empty else at
    if table.empty:
        report.add(f"Not answered: it needs `{ablation}` and an attention loss at batch {batch_size} with shared seeds.")
        return pd.DataFrame()
    report.add(f"{metric_label(metric)}, each attention form at batch {batch_size} minus `{ablation}` (its outer "
               f"weights uniform, the same τa; same seed, same data). better: the down-weighting helps; worse: it "
               f"hurts; tie: within ±{margin:g}:")
    report.table(table, index=False)
    helped = list(table.loc[table["verdict"] == "better", "loss"])
    report.add(f"**Down-weighting helps** for {', '.join(f'`{loss}`' for loss in helped)}." if helped else
               "**No attention form is better than its uniform ablation at the study's τw** (the mechanism table "
               "above says how far its weights are from uniform there).")
    _report_sharper(report)
    return table


def _report_sharper(report: Report) -> None:
    """The down_weighting stage: each τw against uniform weights, with the weights' spread."""
    folder = report.results / "down_weighting"
    if not has_evidence(folder / "down_weighting.csv"):
        report.add("Sharper weights are not trained yet (`results/down_weighting/` is missing: "
                   "`dvc repro down_weighting`).")
        return
    stage = pd.read_csv(folder / "down_weighting.csv")
    shown = stage[["loss", "tau_w", "source", "seeds", "mean"]].copy()
    shown["minus uniform [95% CI]"] = interval_column(stage, "difference", "ci95_low", "ci95_high")
    shown["verdict"] = stage["verdict"]
    if has_evidence(folder / "mechanism.csv"):
        spread = pd.read_csv(folder / "mechanism.csv").groupby(["weight_temperature", "weights"])[
            "entropy_relative"].mean().unstack("weights")
        for what in spread.columns:
            shown[f"{what}: entropy / uniform"] = [spread[what].get(tau_w, float("nan")) for tau_w in stage["tau_w"]]
    report.add("The same loss trained at sharper weight temperatures, at the study's budget, batch size, lr and τa "
               "(`results/down_weighting/`), each minus the study's uniform-weight runs on the same seeds; the "
               "entropy of its weights relative to uniform (1 = uniform), mean over its runs:")
    report.table(shown, index=False)
    sharp = stage[stage["source"] == "down_weighting"]
    verdicts = {f"τw = {tau_w:g}": verdict for tau_w, verdict in zip(sharp["tau_w"], sharp["verdict"])}
    helped = [name for name, verdict in verdicts.items() if verdict == "better"]
    hurt = [name for name, verdict in verdicts.items() if verdict == "worse"]
    rest = [f"{name} {verdict}" for name, verdict in verdicts.items() if verdict not in ("better", "worse")]
    if helped:
        report.add(f"**With sharper weights, down-weighting helps** at {', '.join(helped)}.")
    elif hurt:
        report.add(f"**Down-weighting hurts here**: sharper weights are worse than uniform ones at {', '.join(hurt)} "
                   "(the interval excludes 0)" + (f"; {', '.join(rest)}." if rest else "."))
    else:
        report.add(f"**Sharper weights do not help**: {', '.join(rest)} against uniform weights.")


def lr_budget_table(regime: pd.DataFrame, curves: pd.DataFrame, budget: float,
                    factors: Mapping[tuple[str, int], float]) -> pd.DataFrame:
    """Does the learning-rate factor chosen on one seed hold on the study's seeds? For each loss and
    batch size whose chosen factor (``factors``, keys ``(loss, batch_size)``) is not 1, the map's runs at
    ``budget`` (trained at the rule, factor 1) against the study's (at the chosen factor), on the final
    validation R@10 of each run (the map's ``final_val_t2v_r10``, the last point of the study's
    ``curves``), paired over the seeds both have. One row per loss and batch size: ``loss, batch_size,
    factor, n, rule, chosen, difference, ci95_low, ci95_high, chosen_better`` (seeds where the chosen
    factor is higher)."""
    at = regime[regime["budget"] == float(budget)]
    final = curves.sort_values("samples_seen").groupby("run").tail(1)
    rows = []
    for (loss, batch_size), factor in sorted(factors.items()):
        if float(factor) == 1.0:
            continue
        rule = at[(at["loss"] == loss) & (at["batch_size"] == batch_size)].set_index("seed")["final_val_t2v_r10"]
        chosen = final[(final["loss"] == loss) & (final["batch_size"] == batch_size)].set_index("seed")["val_t2v_r10"]
        seeds = sorted(set(rule.index) & set(chosen.index))
        if not seeds:
            continue
        differences = chosen[seeds] - rule[seeds]
        mean = float(differences.mean())
        low, high = t_interval(mean, float(differences.std(ddof=1)) if len(seeds) > 1 else math.nan, len(seeds))
        rows.append({"loss": loss, "batch_size": int(batch_size), "factor": float(factor), "n": len(seeds),
                     "rule": float(rule[seeds].mean()), "chosen": float(chosen[seeds].mean()), "difference": mean,
                     "ci95_low": low, "ci95_high": high, "chosen_better": int((differences > 0).sum())})
    return pd.DataFrame(rows, columns=["loss", "batch_size", "factor", "n", "rule", "chosen", "difference",
                                       "ci95_low", "ci95_high", "chosen_better"])


def report_lr_at_budget(report: Report, curves: pd.DataFrame | None, lr: pd.DataFrame | None,
                        budget: float | None) -> pd.DataFrame:
    """The learning-rate choice read again on the study's seeds (:func:`lr_budget_table`), from
    ``results/regime/regime.csv``, the study's validation ``curves`` and the lr grid ``lr``."""
    report.add("### Does the chosen learning rate beat the rule's on more seeds?")
    regime = _read_csv_if_any(report.results / "regime" / "regime.csv")
    if regime is None or curves is None or curves.empty or lr is None or budget is None:
        report.add("Not answered: it needs the regime map, the study's curves and the learning-rate grid.")
        return pd.DataFrame()
    table = lr_budget_table(regime, curves, float(budget), lr_factors(lr))
    if table.empty:
        report.add("Nothing to check: every configuration of the lr grid trains at the rule's lr, as the map's runs did.")
        return table
    shown = table[["loss", "batch_size", "factor", "n", "rule", "chosen"]].copy()
    shown["chosen minus rule [95% CI]"] = interval_column(table, "difference", "ci95_low", "ci95_high")
    shown["seeds where the choice is higher"] = [f"{k}/{n}" for k, n in zip(table["chosen_better"], table["n"])]
    report.add(f"Final validation R@10 at {float(budget):g}x: the map's runs at the rule's lr (factor 1) against the "
               "study's at the factor the lr grid chose on one seed, paired over the seeds both have (the map has 2, "
               "so the interval is wide; the count says more):")
    report.table(shown, index=False)
    return table
