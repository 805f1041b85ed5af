"""The regime map (fgmm_lib.study.regime): its runs, the joined table, the three conditions against
plain re-computations, the diagnostics of the down-weighting, and the map's plot."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fgmm_lib.study.attention import weight_spread
from fgmm_lib.study.plots import plot_regime
from fgmm_lib.study.regime import budget_folder, budget_epochs, regime_checks, regime_map, regime_points, regime_summary

RUNS = [{"batch_size": 8, "losses": ["coarse", "attention"]}, {"batch_size": 256, "losses": ["coarse"]}]
T_975 = {1: 12.706, 2: 4.303, 3: 3.182}


def test_regime_points_scale_the_epochs_and_name_the_budget():
    points = regime_points(RUNS, 1.5, [0, 1], epochs=4)
    assert [point.name for point in points] == [
        "coarse-b8-s0-x1.5", "coarse-b8-s1-x1.5", "attention-b8-s0-x1.5", "attention-b8-s1-x1.5",
        "coarse-b256-s0-x1.5", "coarse-b256-s1-x1.5"]
    assert {point.train["epochs"] for point in points} == {6}
    assert points[2].labels == {"loss": "attention", "batch_size": 8, "budget": 1.5, "seed": 0, "epochs": 6}
    assert "lr" not in points[0].train and regime_points(RUNS, 1, [0], 4, lr=0.01)[0].train["lr"] == 0.01
    assert str(budget_folder("results/regime", 10)) == "results/regime/runs/x10"


@pytest.mark.parametrize("budget, message", [(0, "positive"), (-3, "positive"), (float("nan"), "positive"),
                                             (True, "positive"), (1.3, "whole number of epochs")])
def test_a_bad_budget_is_refused_by_name(budget, message):
    with pytest.raises(ValueError, match=f"budget.*{message}|{message}"):
        regime_points(RUNS, budget, [0], epochs=4)


def test_bad_groups_and_seeds_are_named():
    with pytest.raises(ValueError, match="regime.runs"):
        regime_points([{"batch_size": 8}], 1, [0], 4)
    with pytest.raises(ValueError, match="regime.seeds"):
        regime_points(RUNS, 1, [], 4)
    assert budget_epochs(10, 4) == 40


def table_of(values: dict) -> pd.DataFrame:
    """A regime table from {(loss, batch, budget): ([R@10 per seed], [digit per seed])}."""
    rows = []
    for (loss, batch, budget), (recall, digit) in values.items():
        for seed, (r, d) in enumerate(zip(recall, digit)):
            rows.append({"loss": loss, "batch_size": batch, "budget": float(budget), "seed": seed,
                         "run": f"{loss}-b{batch}-s{seed}-x{budget:g}", "t2v_R@10": r, "digit_top1": d,
                         "action_top1": 1.0, "colour_top1": 1.0, "samples_seen": 28000 * budget,
                         "steps": 28000 * budget // batch})
    return pd.DataFrame(rows)


MAP = {
    ("coarse", 8, 2): ([0.50, 0.55, 0.52], [0.40, 0.45, 0.42]),
    ("coarse", 256, 2): ([0.60, 0.70, 0.64], [0.30, 0.33, 0.31]),
    ("attention", 8, 2): ([0.70, 0.72, 0.71], [0.60, 0.66, 0.63]),
    ("coarse", 8, 3): ([0.51, 0.55, 0.53], [0.41, 0.45, 0.43]),
    ("coarse", 256, 3): ([0.70, 0.75, 0.70], [0.31, 0.33, 0.30]),
    ("attention", 8, 3): ([0.71, 0.73, 0.72], [0.61, 0.66, 0.64]),
}


def test_regime_checks_against_plain_arithmetic():
    table = table_of(MAP)
    checks = regime_checks(table, 2, small=("coarse", 8), large=("coarse", 256),
                           headline=[("coarse", 8), ("coarse", 256), ("attention", 8)]).set_index("condition")

    differences = np.subtract(MAP[("coarse", 256, 2)][0], MAP[("coarse", 8, 2)][0])
    half = T_975[2] * differences.std(ddof=1) / math.sqrt(3)
    premise = checks.loc["premise"]
    assert premise["value"] == pytest.approx(differences.mean())
    assert premise["ci95_low"] == pytest.approx(differences.mean() - half, abs=1e-3)
    assert premise["holds"] == (differences.mean() - half > 0)

    digits = np.array(MAP[("attention", 8, 2)][1])
    low = digits.mean() - T_975[2] * digits.std(ddof=1) / math.sqrt(3)
    digit = checks.loc["digit learned"]
    assert "attention b8" in digit["detail"] and digit["ci95_low"] == pytest.approx(low, abs=1e-3)
    assert digit["holds"] == (low >= 0.5)

    gains = [np.mean(MAP[(loss, batch, 3)][0]) - np.mean(MAP[(loss, batch, 2)][0])
             for loss, batch in (("coarse", 8), ("coarse", 256), ("attention", 8))]
    converged = checks.loc["converged"]
    assert converged["value"] == pytest.approx(max(gains)) and "coarse b256" in converged["detail"]
    assert bool(converged["holds"]) == (max(gains) < 0.02)


def test_regime_checks_cannot_tell_convergence_without_the_longer_budget():
    checks = regime_checks(table_of(MAP), 3).set_index("condition")
    assert checks.loc["converged", "holds"] is None and "4.5" in checks.loc["converged", "detail"]


def test_a_choice_outside_the_map_is_refused_by_name():
    table = table_of(MAP)
    with pytest.raises(ValueError, match="budget 10 is not in the map"):
        regime_checks(table, 10)
    with pytest.raises(ValueError, match="max b8 has no run at budget 2"):
        regime_checks(table, 2, headline=[("max", 8)])
    with pytest.raises(ValueError, match="large-batch reference coarse b64"):
        regime_checks(table, 2, large=("coarse", 64))


def test_regime_map_joins_budgets_and_refuses_a_repeated_run():
    table = table_of(MAP)
    joined = regime_map([table[table["budget"] == 3], table[table["budget"] == 2]])
    assert len(joined) == len(table) and list(joined["budget"][:2]) == [2.0, 2.0]
    with pytest.raises(ValueError, match="repeat"):
        regime_map([table, table.head(1)])
    with pytest.raises(ValueError, match="budget"):
        regime_map([table.drop(columns="budget")])


def test_regime_summary_and_its_plot():
    summary = regime_summary(table_of(MAP))
    row = summary[(summary["loss"] == "coarse") & (summary["batch_size"] == 256) & (summary["budget"] == 2)].iloc[0]
    assert row["seeds"] == 3 and row["t2v_R@10"] == pytest.approx(np.mean(MAP[("coarse", 256, 2)][0]))
    assert row["t2v_R@10_low"] < row["t2v_R@10"] < row["t2v_R@10_high"] and row["steps"] == 28000 * 2 // 256
    figure = plot_regime(summary)
    assert len(figure.axes) == 2 and len(figure.axes[0].get_legend().get_texts()) == 3
    with pytest.raises(ValueError, match="samples_seen"):
        plot_regime(summary.drop(columns="samples_seen"))


def reference_spread(row: list[float]) -> tuple[float, float]:
    valid = [w for w in row if w > 0]
    entropy = -sum(w * math.log(w) for w in valid)
    return entropy / math.log(len(valid)), max(valid)


def test_weight_spread_against_plain_loops():
    rng = np.random.default_rng(0)
    rows = []
    for count in (2, 3, 5, 5):
        raw = rng.random(count) ** 3
        rows.append(list(raw / raw.sum()) + [0.0] * (5 - count))
    spread = weight_spread(np.array(rows))
    expected = [reference_spread(row) for row in rows]
    assert spread["entropy_relative"] == pytest.approx(np.mean([e for e, _ in expected]))
    assert spread["max_weight"] == pytest.approx(np.mean([m for _, m in expected]))
    assert spread["uniform_weight"] == pytest.approx(np.mean([1 / 2, 1 / 3, 1 / 5, 1 / 5]))
    assert weight_spread(np.full((3, 4), 0.25))["entropy_relative"] == pytest.approx(1.0)
    assert weight_spread(np.array([[1.0, 0, 0], [0, 1.0, 0]]))["max_weight"] == 1.0
    with pytest.raises(ValueError, match="positive entry"):
        weight_spread(np.zeros((2, 3)))


def test_lr_budget_table_pairs_the_maps_rule_runs_with_the_studys_chosen_factor(tmp_path):
    from fgmm_lib.study.report import Report
    from fgmm_lib.study.report_regime import lr_budget_table, report_lr_at_budget

    regime = pd.DataFrame([{"loss": loss, "batch_size": b, "budget": budget, "seed": s, "final_val_t2v_r10": v}
                           for (loss, b, budget, s, v) in (
                               ("coarse", 8, 3.0, 0, 0.37), ("coarse", 8, 3.0, 1, 0.39), ("coarse", 8, 1.0, 0, 0.9),
                               ("coarse", 64, 3.0, 0, 0.52), ("coarse", 64, 3.0, 1, 0.54),
                               ("coarse", 256, 3.0, 0, 0.4), ("attention", 8, 3.0, 0, 0.2), ("attention", 8, 3.0, 1, 0.3))])
    # the study's curves: two points a run, the last one counts; seed 2 has no partner in the map
    curves = pd.DataFrame([{"run": f"{loss}-b{b}-s{s}", "loss": loss, "batch_size": b, "seed": s,
                            "samples_seen": samples, "val_t2v_r10": v}
                           for (loss, b, s, last) in (("coarse", 8, 0, 0.42), ("coarse", 8, 1, 0.48), ("coarse", 8, 2, 0.5),
                                                      ("coarse", 64, 0, 0.50), ("coarse", 64, 1, 0.56),
                                                      ("coarse", 256, 0, 0.4), ("attention", 8, 0, 0.6),
                                                      ("attention", 8, 1, 0.7))
                           for samples, v in ((100, 0.1), (200, last))])
    factors = {("coarse", 8): 0.5, ("coarse", 64): 2.0, ("coarse", 256): 1.0, ("attention", 8): 2.0}
    table = lr_budget_table(regime, curves, 3, factors).set_index(["loss", "batch_size"])
    # batch 256 trains at the rule in both: nothing to compare; each loss is paired with its own runs
    assert list(table.index) == [("attention", 8), ("coarse", 8), ("coarse", 64)]
    assert table.loc[("attention", 8), "difference"] == pytest.approx(0.4)
    differences = np.array([0.42 - 0.37, 0.48 - 0.39])
    half = T_975[1] * differences.std(ddof=1) / math.sqrt(2)
    row = table.loc[("coarse", 8)]
    assert (row["n"], row["rule"], row["chosen"]) == (2, pytest.approx(0.38), pytest.approx(0.45))
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((differences.mean() - half, differences.mean() + half),
                                                               rel=1e-4)
    assert row["chosen_better"] == 2 and table.loc[("coarse", 64), "chosen_better"] == 1
    results = tmp_path / "results"
    (results / "regime").mkdir(parents=True)
    regime.to_csv(results / "regime" / "regime.csv", index=False)
    lr = pd.DataFrame([{"loss": "coarse", "batch_size": 8, "lr_factor": f, "seed": 0, "t2v_R@10": v}
                       for f, v in ((0.5, 0.4), (1.0, 0.3))])
    report = Report(results)
    assert len(report_lr_at_budget(report, curves, lr, 3)) == 1
    assert "2/2" in report.markdown() and "0.450" in report.markdown()
    missing = Report(tmp_path / "nothing")
    assert report_lr_at_budget(missing, curves, lr, 3).empty and "Not answered" in missing.markdown()
