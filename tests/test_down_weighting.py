"""The down-weighting question: the sharper-τw runs, their pairing with uniform weights, the report
section and its figure, checked against plain computations on small hand-made frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fgmm_lib.study.down_weighting import weighting_points, weighting_table
from fgmm_lib.study.plots import plot_down_weighting
from fgmm_lib.study.report import Report
from fgmm_lib.study.report_regime import report_down_weighting
from fgmm_lib.study.stats import t_quantile_975


def test_weighting_points_are_the_studys_points_at_each_weight_temperature():
    points = weighting_points("attention", [1.0, 0.1], [0, 2], batch_size=8, lr=0.002, lr_factors={("attention", 8): 0.5, ("coarse", 8): 2.0})
    assert [p.name for p in points] == ["attention-b8-s0-tw1", "attention-b8-s2-tw1",
                                        "attention-b8-s0-tw0.1", "attention-b8-s2-tw0.1"]
    first = points[0]
    assert first.labels == {"loss": "attention", "batch_size": 8, "seed": 0, "weight_temperature": 1.0}
    assert first.train == {"loss": "attention", "batch_size": 8, "seed": 0, "lr": 0.001, "weight_temperature": 1.0}
    assert "lr" not in weighting_points("attention", [1.0], [0], batch_size=16, lr=0.002,
                                           lr_factors={("attention", 8): 0.5})[0].train
    with pytest.raises(ValueError, match="down_weighting.weight_temperatures"):
        weighting_points("attention", [0.0], [0], batch_size=8)
    with pytest.raises(ValueError, match="unknown loss"):
        weighting_points("nope", [1.0], [0], batch_size=8)


def _frames(rng):
    seeds = [0, 1, 2]
    uniform = rng.uniform(0.3, 0.6, size=3)
    own = rng.uniform(0.3, 0.6, size=3)
    study = pd.DataFrame(
        [{"loss": "attention_uniform", "batch_size": 8, "seed": s, "weight_temperature": 10.0, "t2v_R@10": v}
         for s, v in zip(seeds, uniform)]
        + [{"loss": "attention", "batch_size": 8, "seed": s, "weight_temperature": 10.0, "t2v_R@10": v}
           for s, v in zip(seeds, own)]
        + [{"loss": "coarse", "batch_size": 8, "seed": s, "weight_temperature": float("nan"), "t2v_R@10": 0.1}
           for s in seeds])
    sharp = {1.0: rng.uniform(0.3, 0.6, size=3), 0.1: uniform - 0.2 + rng.uniform(-0.01, 0.01, size=3)}
    runs = pd.DataFrame([{"loss": "attention", "batch_size": 8, "seed": s, "weight_temperature": tau_w,
                          "t2v_R@10": v} for tau_w, values in sharp.items() for s, v in zip(seeds, values)])
    return runs, study, uniform, own, sharp


def _plain(values, reference):
    differences = np.asarray(values) - np.asarray(reference)
    mean, std = differences.mean(), differences.std(ddof=1)
    half = t_quantile_975(len(differences) - 1) * std / math.sqrt(len(differences))
    return mean, mean - half, mean + half


def test_weighting_table_pairs_each_weight_temperature_with_uniform_weights_seed_by_seed():
    runs, study, uniform, own, sharp = _frames(np.random.default_rng(3))
    table = weighting_table(runs, study).set_index("tau_w")
    assert list(table.index) == [0.1, 1.0, 10.0]
    assert list(table["source"]) == ["down_weighting", "down_weighting", "study"]
    for tau_w, values in ((0.1, sharp[0.1]), (1.0, sharp[1.0]), (10.0, own)):
        mean, low, high = _plain(values, uniform)
        row = table.loc[tau_w]
        assert (row["difference"], row["ci95_low"], row["ci95_high"]) == pytest.approx((mean, low, high))
        assert row["n"] == 3 and row["mean"] == pytest.approx(np.mean(values))
        assert row["reference_mean"] == pytest.approx(uniform.mean())
    assert table.loc[0.1, "verdict"] == "worse"  # 0.2 below uniform on every seed
    # a seed the study lacks is left out of the pairs
    partial = weighting_table(runs.assign(seed=runs["seed"] + 1), study).set_index("tau_w")
    assert partial.loc[1.0, "n"] == 2
    # a weight temperature of the stage that is also the study's: two rows, each paired on its own runs
    same = weighting_table(runs.assign(weight_temperature=runs["weight_temperature"].replace(1.0, 10.0)), study)
    assert list(zip(same["tau_w"], same["source"]))[-2:] == [(10.0, "down_weighting"), (10.0, "study")]
    assert same.set_index("source").loc["study", "difference"] == pytest.approx(_plain(own, uniform)[0])
    with pytest.raises(ValueError, match="no attention_uniform run"):
        weighting_table(runs, study[study["loss"] != "attention_uniform"])
    with pytest.raises(ValueError, match="no runs"):
        weighting_table(runs.iloc[:0], study)


def test_report_down_weighting_shows_the_sharper_weights_beside_their_spread(tmp_path):
    runs, study, *_ = _frames(np.random.default_rng(4))
    table = weighting_table(runs, study)
    folder = tmp_path / "down_weighting"
    folder.mkdir()
    table.to_csv(folder / "down_weighting.csv", index=False)
    mechanism = pd.DataFrame([{"run": f"r{tau_w}", "loss": "attention", "weights": what, "weight_temperature": tau_w,
                               "entropy_relative": entropy, "max_weight": 0.5, "uniform_weight": 0.25}
                              for tau_w, entropy in ((0.1, 0.4), (1.0, 0.9), (10.0, 1.0))
                              for what in ("phrases", "cells")])
    mechanism.to_csv(folder / "mechanism.csv", index=False)
    report = Report(tmp_path)
    report_down_weighting(report, study)
    text = report.markdown()
    assert "No attention form is better than its uniform ablation at the study's τw" in text
    assert "phrases: entropy / uniform" in text and "0.400" in text
    assert "**Down-weighting hurts here**: sharper weights are worse than uniform ones at τw = 0.1" in text
    assert "(the interval excludes 0); τw = 1 undecided." in text  # τw = 1 of these frames spans 0
    figure = plot_down_weighting(table, mechanism)
    assert len(figure.axes) == 2
    assert len(plot_down_weighting(table).axes) == 1
