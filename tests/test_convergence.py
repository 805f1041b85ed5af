"""Condition (c): the longer runs, their pairing with the study's runs and the report section,
checked against plain computations on small hand-made frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fgmm_lib.study import report_regime
from fgmm_lib.study.convergence import CONVERGED_GAIN, longer_epochs, longer_points, longer_table
from fgmm_lib.study.report import Report
from fgmm_lib.study.report_regime import longer_pairs_table, report_longer_runs
from fgmm_lib.study.stats import t_quantile_975

GROUPS = [{"batch_size": 64, "losses": ["coarse"]}, {"batch_size": 8, "losses": ["coarse", "attention"]}]


def test_longer_points_are_the_studys_points_with_more_epochs():
    points = longer_points(GROUPS, [0, 1], epochs=12, factor=1.5, lr=0.002,
                           lr_factors={("coarse", 8): 0.5, ("attention", 8): 2.0})
    assert [p.name for p in points] == ["coarse-b64-s0-x1.5", "coarse-b64-s1-x1.5", "coarse-b8-s0-x1.5",
                                        "coarse-b8-s1-x1.5", "attention-b8-s0-x1.5", "attention-b8-s1-x1.5"]
    first, small = points[0], points[2]
    assert first.labels == {"loss": "coarse", "batch_size": 64, "seed": 0, "factor": 1.5}
    assert first.train == {"loss": "coarse", "batch_size": 64, "seed": 0, "epochs": 18}  # the rule's lr at 64
    assert small.train["lr"] == pytest.approx(0.001) and small.train["epochs"] == 18
    assert points[4].train["lr"] == pytest.approx(0.004)  # each loss at its own factor


@pytest.mark.parametrize("epochs, factor, match", [(12, 1.25, "whole number of epochs above 12, got 15"),
                                                    (12, 1.0, "above 12"), (12, 0.0, "positive"),
                                                    (12, float("nan"), "finite")])
def test_longer_epochs_refuses_a_factor_that_is_not_a_longer_whole_run(epochs, factor, match):
    if factor == 1.25:  # 15 epochs is whole: the message is checked on 1.3 instead
        assert longer_epochs(epochs, factor) == 15
        factor, match = 1.3, "whole number of epochs above 12, got 15.6"
    with pytest.raises(ValueError, match=match):
        longer_epochs(epochs, factor)


def _frames(rng):
    seeds = [0, 1, 2]
    study = pd.DataFrame([{"loss": loss, "batch_size": batch, "seed": s, "t2v_R@10": rng.uniform(0.3, 0.6)}
                          for loss, batch in (("coarse", 8), ("coarse", 64)) for s in [*seeds, 3]])
    gains = {("coarse", 8): rng.uniform(0.07, 0.09, size=3), ("coarse", 64): rng.uniform(-0.01, 0.01, size=3)}
    base = study.set_index(["loss", "batch_size", "seed"])["t2v_R@10"]
    runs = pd.DataFrame([{"loss": loss, "batch_size": batch, "seed": s, "factor": 1.5,
                          "t2v_R@10": base[loss, batch, s] + gain}
                         for (loss, batch), values in gains.items() for s, gain in zip(seeds, values)])
    return runs, study, gains


def test_longer_table_pairs_each_configuration_with_the_studys_runs_seed_by_seed():
    runs, study, gains = _frames(np.random.default_rng(5))
    table = longer_table(runs, study).set_index(["loss", "batch_size"])
    for key, values in gains.items():
        mean, std = values.mean(), values.std(ddof=1)
        half = t_quantile_975(2) * std / math.sqrt(3)
        row = table.loc[key]
        assert row["n"] == 3 and row["gain"] == pytest.approx(mean)
        assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((mean - half, mean + half))
        seeds = study[(study["loss"] == key[0]) & (study["batch_size"] == key[1]) & study["seed"].isin([0, 1, 2])]
        assert row["study_mean"] == pytest.approx(seeds["t2v_R@10"].mean())  # seed 3 has no longer run
    assert not table.loc[("coarse", 8), "converged"] and table.loc[("coarse", 8), "decided"]
    assert table.loc[("coarse", 64), "converged"]
    with pytest.raises(ValueError, match="no coarse run at batch 8 on seeds"):
        longer_table(runs, study[study["batch_size"] == 64])


def test_report_longer_runs_names_the_configurations_that_still_gain(tmp_path):
    report = Report(tmp_path)
    assert report_longer_runs(report) is None
    assert "`dvc repro convergence`" in report.markdown()
    runs, study, _ = _frames(np.random.default_rng(6))
    (tmp_path / "convergence").mkdir()
    longer_table(runs, study).to_csv(tmp_path / "convergence/convergence.csv", index=False)
    runs.to_csv(tmp_path / "convergence/runs.csv", index=False)
    report = Report(tmp_path)
    report_longer_runs(report)
    text = report.markdown()
    assert "trained 1.5 times as long" in text and "| coarse b8 |" in text
    assert "**Not converged at the study's budget**: `coarse b8` still gain 0.02 or more" in text


def test_the_report_reads_convergence_with_the_stages_threshold():
    assert report_regime.CONVERGED_GAIN == CONVERGED_GAIN


def test_longer_pairs_table_compares_each_pair_on_the_seeds_the_longer_runs_share():
    rng = np.random.default_rng(7)
    configurations = [("coarse", 8), ("coarse", 64), ("attention", 8)]
    study = pd.DataFrame([{"loss": loss, "batch_size": batch, "seed": seed, "t2v_R@10": rng.uniform(0.3, 0.7)}
                          for loss, batch in configurations for seed in range(4)])
    longer = pd.DataFrame([{"loss": loss, "batch_size": batch, "seed": seed, "t2v_R@10": rng.uniform(0.3, 0.7)}
                           for loss, batch in configurations for seed in (0, 1) if (loss, seed) != ("coarse", 1)
                           or batch == 8])
    table = longer_pairs_table(longer, study, [(("attention", 8), ("coarse", 8)), (("attention", 8), ("coarse", 64)),
                                               (("max", 8), ("coarse", 8))]).set_index("comparison")
    assert list(table.index) == ["attention b8 - coarse b8", "attention b8 - coarse b64"]  # max has no longer run

    def value(frame, loss, batch, seed):
        return frame[(frame["loss"] == loss) & (frame["batch_size"] == batch) & (frame["seed"] == seed)][
            "t2v_R@10"].item()

    for reference, seeds in ((("coarse", 8), [0, 1]), (("coarse", 64), [0])):  # coarse b64 seed 1 has no longer run
        row = table.loc[f"attention b8 - {reference[0]} b{reference[1]}"]
        assert row["n"] == len(seeds)
        assert row["longer"] == pytest.approx(np.mean([value(longer, "attention", 8, s) - value(longer, *reference, s)
                                                       for s in seeds]))
        assert row["study"] == pytest.approx(np.mean([value(study, "attention", 8, s) - value(study, *reference, s)
                                                      for s in seeds]))
        assert row["per seed"].count("->") == len(seeds)
        if len(seeds) > 1:
            differences = [value(longer, "attention", 8, s) - value(longer, *reference, s) for s in seeds]
            half = t_quantile_975(len(seeds) - 1) * np.std(differences, ddof=1) / math.sqrt(len(seeds))
            assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((row["longer"] - half, row["longer"] + half))
        else:
            assert math.isnan(row["ci95_low"]) and math.isnan(row["ci95_high"])


def test_report_longer_runs_shows_the_headline_pairs_at_both_budgets(tmp_path):
    runs, study, _ = _frames(np.random.default_rng(8))
    fine = runs[runs["batch_size"] == 8].assign(loss="attention")
    runs = pd.concat([runs, fine], ignore_index=True)
    study = pd.concat([study, study[study["batch_size"] == 8].assign(loss="attention")], ignore_index=True)
    (tmp_path / "convergence").mkdir()
    longer_table(runs, study).to_csv(tmp_path / "convergence/convergence.csv", index=False)
    runs.to_csv(tmp_path / "convergence/runs.csv", index=False)
    report = Report(tmp_path)
    report_longer_runs(report, study, small=("coarse", 8), large=("coarse", 64), threshold=0.5)
    text = report.markdown()
    assert "converged (gain < 0.5)" in text and "**Every headline configuration has converged**" in text
    assert "| attention b8 - coarse b8 | 3 | 0.000 | 0.000 [0.000, 0.000] |" in text  # identical runs differ by nothing
    assert "| attention b8 - coarse b64 | 3 |" in text and "at 1.5x it" in text
