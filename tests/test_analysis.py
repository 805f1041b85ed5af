"""Sweep tables, the headline question and the report sections of fgmm_lib.study.tables, on small
hand-made frames whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fgmm_lib.study.report import (
    Report,
    answered_questions,
    headline_answer,
    learned_attributes_sentence,
    report_convergence,
    report_headline,
    report_lr_rule,
    report_noise,
    report_seed_splits,
    report_temperature,
    report_time_to_target,
    report_width,
    split_profile,
    wilson_interval,
)
from fgmm_lib.study.report_regime import (
    report_down_weighting,
    report_regime,
    report_replication,
    report_small_batch_reference,
    report_study_regime,
)
from fgmm_lib.study.selection import best_temperatures, temperature_surface
from fgmm_lib.study.stats import t_quantile_975, tie_or_difference, welch_interval
from fgmm_lib.study.tables import (
    SWEEP_LABELS,
    learnable_temperatures,
    learned_attributes,
    load_sweep,
    load_sweep_if_any,
    lr_rule_table,
    noise_drops,
    noise_table,
    seed_outcomes,
    seed_splits,
    seed_table,
    study_temperatures,
)


def write_csv(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def noise_frame() -> pd.DataFrame:
    """Two losses, two knobs with three levels; `max` loses 0.1 per distractor level, `coarse` 0.05."""
    rows = []
    for knob in ("distractors", "filler_words"):
        for level in (0, 1, 2):
            for loss, slope in (("coarse", 0.05), ("max", 0.1)):
                for seed in (0, 1):
                    value = 0.8 - (slope if knob == "distractors" else 0.0) * level + 0.01 * seed
                    rows.append({"knob": knob, "level": level, "loss": loss, "batch_size": 8, "seed": seed,
                                 "run": f"{loss}-{knob}-{level}-{seed}", "t2v_R@10": value, "digit_top1": 0.5})
    return pd.DataFrame(rows)


def temperature_frame() -> pd.DataFrame:
    rows = [{"loss": "attention", "attn_temperature": a, "weight_temperature": w, "learnable": False,
             "batch_size": 8, "seed": 0, "t2v_R@10": 0.5 - abs(a - 0.1) - abs(w - 0.5),
             "final_attn_temperature": a, "final_weight_temperature": w}
            for a in (0.05, 0.1, 0.5) for w in (0.1, 0.5)]
    rows.append({"loss": "attention", "attn_temperature": 0.5, "weight_temperature": 0.5, "learnable": True,
                 "batch_size": 8, "seed": 0, "t2v_R@10": 0.42, "final_attn_temperature": 0.12,
                 "final_weight_temperature": 0.3})
    return pd.DataFrame(rows)


def lr_frame() -> pd.DataFrame:
    values = {("max", 8): {0.5: 0.50, 1.0: 0.60, 2.0: 0.55},   # factor 1 best
              ("max", 64): {0.5: 0.40, 1.0: 0.58, 2.0: 0.60},  # within 0.03 of the best
              ("coarse", 8): {0.5: 0.70, 1.0: 0.50, 2.0: 0.45}}  # factor 0.5 better by 0.2
    return pd.DataFrame([{"loss": loss, "batch_size": batch, "lr_factor": factor, "seed": seed,
                          "t2v_R@10": value + 0.001 * seed}
                         for (loss, batch), by_factor in values.items() for factor, value in by_factor.items()
                         for seed in (0, 1)])


def runs_frame(deltas: dict[str, list[float]], coarse: list[float] = (0.6, 0.62, 0.64)) -> pd.DataFrame:
    """coarse at 256 and each loss at 8, seeds 0..n-1; a loss's seed value = coarse's + delta."""
    rows = [{"loss": "coarse", "batch_size": 256, "seed": seed, "t2v_R@10": value} for seed, value in enumerate(coarse)]
    rows += [{"loss": "coarse", "batch_size": 8, "seed": seed, "t2v_R@10": 0.1} for seed in range(len(coarse))]
    for loss, delta in deltas.items():
        rows += [{"loss": loss, "batch_size": 8, "seed": seed, "t2v_R@10": coarse[seed] + d}
                 for seed, d in enumerate(delta)]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# reading sweeps
# ---------------------------------------------------------------------------------------------


def test_load_sweep_checks_the_label_and_metric_columns(tmp_path):
    path = write_csv(tmp_path / "noise.csv", noise_frame())
    frame = load_sweep(path, SWEEP_LABELS["noise"])
    assert len(frame) == 24 and list(frame.columns[:5]) == list(SWEEP_LABELS["noise"])
    bad = write_csv(tmp_path / "bad.csv", noise_frame().drop(columns=["knob", "t2v_R@10"]))
    with pytest.raises(ValueError, match=r"bad\.csv.*knob, t2v_R@10"):
        load_sweep(bad, SWEEP_LABELS["noise"])
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        load_sweep(tmp_path / "absent.csv", ["loss"])


# ---------------------------------------------------------------------------------------------
# noise and width
# ---------------------------------------------------------------------------------------------


def test_noise_table_and_drops_are_means_over_seeds():
    table = noise_table(noise_frame())
    assert list(table.columns) == ["coarse", "max"]
    assert table.loc[("distractors", 2), "max"] == pytest.approx(0.8 - 0.2 + 0.005)
    drops = noise_drops(noise_frame()).set_index(["knob", "loss"])
    assert drops.loc[("distractors", "max"), "change"] == pytest.approx(-0.2)
    assert drops.loc[("distractors", "coarse"), "change"] == pytest.approx(-0.1)
    assert drops.loc[("filler_words", "max"), "change"] == pytest.approx(0.0)


def test_report_noise_states_each_drop(tmp_path):
    report = Report(tmp_path)
    report_noise(report, noise_frame())
    text = report.markdown()
    assert ("`max`: text→video R@10 drops by 0.200 from distractors 0 to 2 (0.805 → 0.605); stays within 0.001 "
            "from filler_words 0 to 2") in text
    assert "`coarse`: text→video R@10 drops by 0.100 from distractors 0 to 2" in text
    missing = Report(tmp_path)
    report_noise(missing, None)
    assert "Not answered" in missing.markdown() and "noise/noise.csv" in missing.markdown()


def test_report_width_gives_the_change_and_the_best_width(tmp_path):
    frame = pd.DataFrame([{"width": w, "loss": "max", "batch_size": 8, "seed": 0, "t2v_R@10": v}
                          for w, v in ((0.5, 0.4), (1.0, 0.7), (2.0, 0.6))])
    report = Report(tmp_path)
    table = report_width(report, frame)
    assert table.loc[1.0, "max"] == 0.7
    assert "from width 0.5 to 2, text→video R@10 rises by 0.200 (0.400 → 0.600); best at width 1 (0.700)" \
        in report.markdown()


# ---------------------------------------------------------------------------------------------
# temperatures and the learning-rate rule
# ---------------------------------------------------------------------------------------------


def test_temperature_surface_and_best_pair_use_the_fixed_grid_only():
    frame = temperature_frame()
    surface = temperature_surface(frame)
    assert surface.shape == (3, 2) and list(surface.index) == [0.05, 0.1, 0.5]
    assert best_temperatures(frame) == (0.1, 0.5, pytest.approx(0.5))
    learnable = learnable_temperatures(frame)
    assert learnable.iloc[0]["τa end"] == 0.12 and learnable.iloc[0]["τw start"] == 0.5
    with pytest.raises(ValueError, match="mixes losses"):
        temperature_surface(pd.concat([frame, frame.assign(loss="max")]))


def test_learnable_read_as_text_is_not_on_the_grid():
    frame = temperature_frame().astype({"learnable": str})
    assert temperature_surface(frame).size == 6


@pytest.mark.parametrize("chosen, sentence", [
    ((0.1, 0.5), "(τa = 0.1, τw = 0.5) are the best pair of the surface"),
    ((0.05, 0.1), "are not the best pair of the surface: they give 0.050 there"),
    ((0.2, 0.5), "are not the best pair of the surface: they are not on the grid"),
    (None, "were not given"),
])
def test_report_temperature_says_whether_the_study_uses_the_best_pair(tmp_path, chosen, sentence):
    report = Report(tmp_path)
    assert report_temperature(report, temperature_frame(), chosen=chosen)[:2] == (0.1, 0.5)
    text = report.markdown()
    assert sentence in text and "τa = 0.1, τw = 0.5 (0.500)" in text and "| 0.5 | 0.12" not in text
    assert "| attention | 0 | 0.5000 | 0.1200 | 0.5000 | 0.3000 | 0.4200 |" in text


def test_lr_rule_verdicts(tmp_path):
    table = lr_rule_table(lr_frame()).set_index(["loss", "batch_size"])
    assert table.loc[("max", 8), "verdict"] == "the rule is confirmed"
    assert table.loc[("max", 64), "verdict"] == "the rule is confirmed"
    assert table.loc[("coarse", 8), "verdict"] == "factor 0.5 is better by 0.200"
    assert list(table.index.get_level_values(0)) == ["coarse", "max", "max"]  # study order
    report = Report(tmp_path)
    report_lr_rule(report, lr_frame())
    assert "confirmed for 2 of 3; not for `coarse` b8 (factor 0.5 is better by 0.200)" in report.markdown()
    # each loss at its own factor: coarse b8 at 0.5, max at the rule (within the margin at b64)
    assert "the factor the grid chose for it at its batch size" in report.markdown()
    assert "`coarse` b8 × 0.5, `max` b8 × 1, `max` b64 × 1." in report.markdown()


# ---------------------------------------------------------------------------------------------
# convergence and time to target
# ---------------------------------------------------------------------------------------------


def curves_frame() -> pd.DataFrame:
    rows = []
    for loss, final in (("coarse", 0.5), ("max", 0.8)):
        for seed in (0, 1):
            for samples, value in ((100, 0.1), (800, final - 0.01 if loss == "coarse" else final - 0.2), (1000, final)):
                rows.append({"run": f"{loss}-b8-s{seed}", "loss": loss, "batch_size": 8, "seed": seed,
                             "samples_seen": samples, "val_t2v_r10": value, "wall_s": samples / 10})
    return pd.DataFrame(rows)


def test_report_convergence_names_the_curves_that_have_not_flattened(tmp_path):
    report = Report(tmp_path)
    table = report_convergence(report, curves_frame())
    assert list(table["flattened"]) == [True, False]
    assert "Not flattened (gain >= 0.02): `max` b8;" in report.markdown()


def test_report_time_to_target_summarises_over_seeds(tmp_path):
    from fgmm_lib.study.curves import time_to_target

    table = time_to_target(curves_frame(), {f"{loss}-b8-s{s}": {"flops_per_step": 8.0} for loss in ("coarse", "max")
                                            for s in (0, 1)}, target=0.6)
    report = Report(tmp_path)
    summary = report_time_to_target(report, table)
    assert list(summary["reached"]) == [0, 2]
    text = report.markdown()
    assert "Never reached the target: `coarse` b8." in text and "`max` at batch 8 (" in text


# ---------------------------------------------------------------------------------------------
# the headline question
# ---------------------------------------------------------------------------------------------


def test_welch_interval_matches_a_plain_computation():
    a, b = [1.0, 2.0, 3.0], [0.0, 0.5, 1.0, 1.5]
    difference, low, high = welch_interval(a, b)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    half = t_quantile_975(int(df)) * math.sqrt(va + vb)
    assert difference == pytest.approx(1.25) and (low, high) == pytest.approx((1.25 - half, 1.25 + half))
    assert math.isnan(welch_interval([1.0], b)[1])


def test_headline_answer_pairs_by_seed_and_gives_each_verdict():
    runs = runs_frame({"attention": [0.01, 0.0, -0.01],    # paired: a tie -> reaches
                       "max": [-0.2, -0.21, -0.19],        # falls short
                       "mean": [0.1, 0.12, 0.11],          # exceeds
                       "attention_gate": [0.3, -0.3, 0.0]})  # wide -> undecided
    answer = headline_answer(runs).set_index("loss")
    assert list(answer.index) == ["mean", "max", "attention", "attention_gate"]
    assert answer["verdict"].to_dict() == {"mean": "exceeds", "max": "falls short", "attention": "reaches",
                                           "attention_gate": "undecided"}
    assert (answer["verdict_on"] == "paired").all() and (answer["pairs"] == 3).all()
    assert answer.loc["attention", "paired_mean"] == pytest.approx(0.0)
    assert answer.loc["attention", "difference"] == pytest.approx(0.0)
    # unpaired, the seed-to-seed spread of coarse makes the same tie undecided
    assert tie_or_difference((answer.loc["attention", "welch_low"],
                                       answer.loc["attention", "welch_high"])) == "undecided"
    assert answer.loc["max", "reference_mean"] == pytest.approx(0.62)


def test_headline_answer_without_pairs_reads_the_welch_interval():
    runs = runs_frame({"max": [-0.2, -0.21, -0.19]})
    runs.loc[runs["loss"] == "max", "seed"] += 10
    answer = headline_answer(runs)
    assert answer["verdict_on"].tolist() == ["Welch"] and answer["pairs"].tolist() == [0]
    assert answer["verdict"].tolist() == ["falls short"]


@pytest.mark.parametrize("deltas, expected", [
    ({"attention": [0.01, 0.0, -0.01], "max": [-0.2, -0.21, -0.19]},
     "? yes**: `attention` reaches; `max` falls short."),
    ({"max": [-0.2, -0.21, -0.19]}, "? no**: `max` falls short."),
    ({"max": [-0.2, -0.21, -0.19], "attention_floor": [0.3, -0.3, 0.0]},
     "? undecided**: `max` falls short; `attention_floor` undecided."),
])
def test_report_headline_answers_yes_no_or_undecided(tmp_path, deltas, expected):
    report = Report(tmp_path)
    report_headline(report, runs_frame(deltas))
    text = report.markdown()
    assert "**At equal samples seen, does a fine-grained loss at batch 8 reach `coarse` at batch 256 on " \
           "text→video R@10, within the intervals" + expected in text


def test_report_headline_without_the_reference(tmp_path):
    report = Report(tmp_path)
    assert report_headline(report, pd.DataFrame()).empty
    assert "Not answered" in report.markdown()


# ---------------------------------------------------------------------------------------------
# what the pipeline answers
# ---------------------------------------------------------------------------------------------


def test_a_question_is_answered_only_by_non_empty_evidence(tmp_path):
    write_csv(tmp_path / "noise/noise.csv", noise_frame())
    (tmp_path / "width").mkdir()
    (tmp_path / "width/width.csv").write_text("width,loss,batch_size,seed,t2v_R@10\n")
    write_csv(tmp_path / "lr/lr.csv", lr_frame())
    (tmp_path / "compute").mkdir()
    status = answered_questions(tmp_path, pd.DataFrame())
    answered = {question.split(".")[0].split("/")[0]: row["answered"] for question, row in status.iterrows()}
    assert answered["3"] == "yes" and answered["4"] == "no" and answered["7b"] == "yes" and answered["7"] == "no"
    assert "width.csv` (empty)" in status.loc["4. model-size ablation", "evidence"]
    assert "surface.csv` (missing)" in status.loc["7. temperature sweep (τa, τw surface)", "evidence"]
    assert status.loc["5. compute: FLOPs and wall time per run", "answered"] == "no"  # an empty folder


def test_report_headline_checks_equal_samples_seen(tmp_path):
    runs = runs_frame({"max": [-0.2, -0.21, -0.19]}).assign(compute_samples_seen=1000.0)
    report = Report(tmp_path)
    report_headline(report, runs)
    assert "Every compared run saw 1000 samples." in report.markdown()
    runs.loc[runs["loss"] == "max", "compute_samples_seen"] = 500.0
    report = Report(tmp_path)
    report_headline(report, runs)
    assert "Samples seen by the compared runs: 500, 1000 (50.0% apart" in report.markdown()


def test_load_sweep_if_any_is_none_for_a_missing_or_empty_table(tmp_path):
    assert load_sweep_if_any(tmp_path, "width") is None
    write_csv(tmp_path / "width/width.csv", pd.DataFrame(columns=[*SWEEP_LABELS["width"], "t2v_R@10"]))
    assert load_sweep_if_any(tmp_path, "width") is None
    write_csv(tmp_path / "noise/noise.csv", noise_frame())
    assert len(load_sweep_if_any(tmp_path, "noise")) == 24


def test_learned_attributes_need_the_interval_above_chance_by_the_margin():
    runs = pd.DataFrame({
        "loss": ["coarse"] * 3 + ["attention"] * 3,
        "digit_top1": [0.15, 0.16, 0.17, 0.40, 0.42, 0.44], "digit_top1_chance": [0.1] * 6,
        "colour_top1": [1.0] * 6, "colour_top1_chance": [0.125] * 6})
    learned = learned_attributes(runs)
    assert learned == {"colour": ["coarse", "attention"], "digit": ["attention"]}
    sentence = learned_attributes_sentence(runs)
    assert "colour: every loss" in sentence and "digit: `attention`" in sentence and "No loss learned" not in sentence
    assert "No loss learned digit at this budget" in learned_attributes_sentence(
        runs.assign(digit_top1=0.15))
    # a wide interval is not enough: mean 0.3 but one seed at chance
    wide = runs.assign(digit_top1=[0.1, 0.1, 0.1, 0.1, 0.4, 0.4])
    assert learned_attributes(wide)["digit"] == []


def test_study_temperatures_read_from_the_attention_runs():
    runs = pd.DataFrame({"loss": ["attention", "attention", "coarse"], "attn_temperature": [0.5, 0.5, 0.1],
                         "weight_temperature": [10.0, 10.0, 0.1]})
    assert study_temperatures(runs) == (0.5, 10.0)
    assert study_temperatures(runs[runs["loss"] == "coarse"]) is None
    with pytest.raises(ValueError, match="several temperature pairs"):
        study_temperatures(runs.assign(attn_temperature=[0.5, 0.1, 0.1]))


def seeds_frame(values: dict[str, list[float]], batch_size: int = 8, metric: str = "action_top1") -> pd.DataFrame:
    return pd.DataFrame([{"loss": loss, "batch_size": batch_size, "seed": seed, metric: value,
                          "t2v_R@10": 0.3, "t2v_R@1": 0.05}
                         for loss, by_seed in values.items() for seed, value in enumerate(by_seed)])


def _reference_split(values: list[float], gap: float):
    """The widest gap between consecutive sorted values, by brute force over every cut."""
    best = None
    for cut in range(1, len(values)):
        low = sorted(range(len(values)), key=lambda i: values[i])[:cut]
        high = [i for i in range(len(values)) if i not in low]
        width = min(values[i] for i in high) - max(values[i] for i in low)
        if width > gap and (best is None or width > best[0]):
            best = (width, sorted(low), sorted(high))
    return best


def test_seed_splits_find_the_widest_gap_like_a_brute_force_reference():
    rng = np.random.default_rng(3)
    for _ in range(50):
        seeds = int(rng.integers(2, 7))
        values = {loss: list(rng.choice([0.5, 0.8], size=seeds) + rng.normal(0, 0.03, size=seeds))
                  for loss in ("coarse", "max", "attention")}
        splits = seed_splits(seeds_frame(values), 8, "action_top1", gap=0.1).set_index("loss")
        for loss, by_seed in values.items():
            want = _reference_split(by_seed, 0.1)
            if want is None:
                assert loss not in splits.index
                continue
            row = splits.loc[loss]
            assert row["gap"] == pytest.approx(want[0])
            assert sorted(row["low_seeds"]) == want[1] and sorted(row["high_seeds"]) == want[2]
            assert row["low_max"] == pytest.approx(max(by_seed[i] for i in want[1]))
            assert row["high_min"] == pytest.approx(min(by_seed[i] for i in want[2]))


def test_report_seed_splits_names_the_split_and_the_seed_low_in_every_one(tmp_path):
    frame = seeds_frame({"coarse": [0.55, 0.58, 0.62], "max": [0.79, 0.61, 0.83], "attention": [0.78, 0.53, 0.78]})
    report = Report(tmp_path)
    splits = report_seed_splits(report, frame, 8)
    assert list(splits["loss"]) == ["max", "attention"]  # coarse's seeds lie within 0.1 of each other
    text = report.markdown()
    assert "`max` (seed 1 at 0.61, seeds 0, 2 at 0.79–0.83)" in text
    assert "`attention` (seed 1 at 0.53, seeds 0, 2 at 0.78)" in text
    assert "Seed 1 lies in the lower group of every one of them." in text
    assert "`max` 1 of 3 (0.06–0.79)" in text and "`attention` 1 of 3" in text  # the Wilson interval of 1/3
    assert "| max | lower | 1 | 0.300 | 0.610 |" in text and "| max | upper | 0, 2 | 0.300 | 0.810 |" in text
    table = seed_table(frame, 8)
    assert list(table.index) == ["coarse", "max", "attention"]
    assert table.loc["max", "action top-1 (linear probe) s1"] == pytest.approx(0.61)
    calm = Report(tmp_path)
    assert report_seed_splits(calm, seeds_frame({"coarse": [0.55, 0.58, 0.62]}), 8).empty
    assert "No loss's seeds split by more than 0.1" in calm.markdown()


def test_wilson_interval_solves_the_score_equation_at_both_ends():
    z = 1.959964
    for successes, trials in [(0, 5), (2, 5), (5, 5), (1, 3), (7, 20)]:
        low, high = wilson_interval(successes, trials)
        rate = successes / trials
        for end in (low, high):  # each end p solves (rate - p)^2 = z^2 p (1 - p) / n, or is clipped at 0 or 1
            assert end in (0.0, 1.0) or (rate - end) ** 2 == pytest.approx(z * z * end * (1 - end) / trials)
        assert low <= rate <= high and 0 <= low and high <= 1
    assert wilson_interval(2, 5) == pytest.approx((0.1176, 0.7693), abs=1e-4)
    with pytest.raises(ValueError, match="3/2"):
        wilson_interval(3, 2)


def test_split_profile_averages_every_metric_over_each_group_of_seeds():
    frame = seeds_frame({"max": [0.9, 0.4, 0.8, 0.5]})
    frame["pointing"] = [0.7, 0.1, 0.6, 0.3]
    splits = seed_splits(frame, 8, "action_top1")
    profile = split_profile(frame, splits, 8).set_index("group")
    assert profile.loc["lower", "seeds"] == "1, 3" and profile.loc["upper", "seeds"] == "0, 2"
    assert profile.loc["lower", "pointing accuracy"] == pytest.approx(0.2)
    assert profile.loc["upper", "action top-1 (linear probe)"] == pytest.approx(0.85)
    assert profile.loc["upper", "text→video R@10"] == pytest.approx(0.3)


def test_report_convergence_says_a_flat_end_is_the_schedule_not_convergence(tmp_path):
    report = Report(tmp_path)
    report_convergence(report, curves_frame())
    assert "not that the model has converged" in report.markdown()


# ---------------------------------------------------------------------------------------------
# the regime, the small-batch reference, replication
# ---------------------------------------------------------------------------------------------


def test_report_regime_states_each_condition_what_was_learned_and_the_weights(tmp_path):
    report = Report(tmp_path)
    assert report_regime(report, budget=3) is None and "dvc repro regime_map" in report.markdown()
    write_csv(tmp_path / "regime/checks.csv", pd.DataFrame([
        {"condition": "premise", "holds": True, "value": 0.1, "ci95_low": 0.05, "ci95_high": 0.15, "detail": "p"},
        {"condition": "digit learned", "holds": False, "value": 0.4, "ci95_low": 0.3, "ci95_high": 0.5, "detail": "d"},
        {"condition": "converged", "holds": None, "value": math.nan, "ci95_low": math.nan, "ci95_high": math.nan,
         "detail": "c"}]))
    write_csv(tmp_path / "regime/regime.csv", pd.DataFrame([
        {"loss": "coarse", "batch_size": 8, "budget": budget, "seed": seed, "t2v_R@10": 0.5 + budget / 10 + seed / 100,
         "digit_top1": 0.2, "steps": 100} for budget in (1.0, 3.0) for seed in (0, 1)]))
    write_csv(tmp_path / "attention/mechanism.csv", pd.DataFrame([
        {"run": "attention-b8-s0", "loss": "attention", "weights": "phrases", "entropy_relative": 0.999,
         "max_weight": 0.26, "uniform_weight": 0.25}]))
    report = Report(tmp_path)
    checks = report_regime(report, budget=3)
    text = report.markdown()
    assert list(checks["condition"]) == ["premise", "digit learned", "converged"]
    assert "| premise | 0.100 [0.050, 0.150] | holds |" in text
    assert "| digit learned | 0.400 [0.300, 0.500] | fails |" in text and "not measured" in text
    assert "| coarse | 8 | 0.805 |" in text  # the mean over seeds at 3x only
    assert "0.999" in text and "at 3x the study's samples" in text
    write_csv(tmp_path / "convergence/convergence.csv", pd.DataFrame([
        {"loss": "coarse", "batch_size": 8, "n": 2, "gain": 0.15, "ci95_low": 0.05, "ci95_high": 0.25,
         "converged": False},
        {"loss": "attention", "batch_size": 8, "n": 2, "gain": 0.01, "ci95_low": -0.1, "ci95_high": 0.1,
         "converged": True}]))
    write_csv(tmp_path / "convergence/runs.csv", pd.DataFrame([{"loss": "coarse", "factor": 1.5}]))
    report = Report(tmp_path)
    checks = report_regime(report, budget=3).set_index("condition")
    assert checks.loc["converged", "holds"] is False and checks.loc["converged", "value"] == pytest.approx(0.15)
    assert "| converged | 0.150 [0.050, 0.250] | fails | largest gain of 1.5x the budget: coarse b8, 2 paired" \
        in report.markdown()


def test_report_small_batch_reference_pairs_each_loss_with_coarse_at_the_same_batch(tmp_path):
    runs = runs_frame({"attention": [0.01, 0.0, -0.01]})  # attention b8 = coarse b256 + delta, coarse b8 = 0.1
    report = Report(tmp_path)
    table = report_small_batch_reference(report, runs)
    assert list(table["loss"]) == ["attention"] and list(table["verdict"]) == ["better"]
    assert "0.520 [" in report.markdown()  # mean of (0.61, 0.62, 0.63) - 0.1
    empty = Report(tmp_path)
    assert report_small_batch_reference(empty, runs[runs["loss"] == "coarse"]).empty


def test_seed_outcomes_counts_wins_against_a_plain_loop():
    rng = np.random.default_rng(3)
    rows = [{"loss": loss, "batch_size": batch, "seed": seed, "t2v_R@10": float(rng.uniform())}
            for loss, batch in (("coarse", 256), ("coarse", 8), ("max", 8), ("attention", 8)) for seed in range(5)]
    runs = pd.DataFrame(rows[:-1])  # attention lacks seed 4: four pairs
    table = seed_outcomes(runs, ("coarse", 256), 8, "t2v_R@10").set_index("loss")
    assert list(table.index) == ["coarse", "max", "attention"]
    value = {(row["loss"], row["batch_size"], row["seed"]): row["t2v_R@10"] for row in rows[:-1]}
    for loss in table.index:
        differences = [value[loss, 8, seed] - value["coarse", 256, seed] for seed in range(5) if (loss, 8, seed) in value]
        assert table.loc[loss, "n"] == len(differences)
        assert table.loc[loss, "wins"] == sum(d > 0 for d in differences)
        assert table.loc[loss, "losses"] == sum(d < 0 for d in differences)
        assert table.loc[loss, "differences"].split(", ")[0] == f"s0 {differences[0]:+.3f}"
    assert "coarse" not in set(seed_outcomes(runs, ("coarse", 8), 8, "t2v_R@10")["loss"])
    with pytest.raises(ValueError, match="t2i_R@10"):
        seed_outcomes(runs, ("coarse", 8), 8, "t2i_R@10")


def test_report_study_regime_reads_the_premise_on_the_studys_seeds(tmp_path):
    runs = runs_frame({"attention": [0.01, -0.02, 0.03]})  # coarse b256 (0.6, 0.62, 0.64) against coarse b8 at 0.1
    curves = pd.DataFrame([{"run": f"{loss}-b{batch}-s{seed}", "loss": loss, "batch_size": batch, "seed": seed,
                            "samples_seen": samples,
                            "val_t2v_r10": value + (0.1 if loss == "attention" else 0.0) * samples / 100}
                           for loss, batch, value in (("coarse", 256, 0.5), ("coarse", 8, 0.2), ("attention", 8, 0.3))
                           for seed in range(3) for samples in (20, 40, 60, 80, 100)])
    report = Report(tmp_path)
    premise = report_study_regime(report, runs, curves=curves)
    text = report.markdown()
    assert list(premise["verdict"]) == ["better"] and "The premise **holds**" in text
    assert "0.520 [" in text  # mean of (0.6, 0.62, 0.64) - 0.1 over the 3 seeds
    assert "| attention | 8 | coarse b256 | 3 | 2 | 1 | s0 +0.010, s1 -0.020, s2 +0.030 |" in text
    assert "| attention | 8 | coarse b8 | 3 | 3 | 0 |" in text
    assert "| attention | 8 | 3 | 100 |" in text and "| False |" in text  # attention's curve still rises
    reversed_runs = runs.assign(**{"t2v_R@10": np.where(runs["batch_size"] == 8, 0.9, runs["t2v_R@10"])})
    reversed_report = Report(tmp_path)
    report_study_regime(reversed_report, reversed_runs)
    assert "The premise **is reversed**" in reversed_report.markdown()
    empty = Report(tmp_path)
    assert report_study_regime(empty, runs[runs["batch_size"] == 8]).empty and "Not answered" in empty.markdown()
    # the headline warns when its premise fails, and only then
    failed = Report(tmp_path)
    report_headline(failed, reversed_runs, premise=report_study_regime(Report(tmp_path), reversed_runs))
    assert "**Read with the premise:**" in failed.markdown() and "worse" in failed.markdown()
    held = Report(tmp_path)
    report_headline(held, runs, premise=premise)
    assert "Read with the premise" not in held.markdown()


def test_report_down_weighting_pairs_each_attention_form_with_its_uniform_ablation(tmp_path):
    runs = runs_frame({"attention": [0.10, 0.12, 0.11], "attention_gate": [0.0, 0.01, -0.01],
                       "attention_uniform": [0.0, 0.0, 0.0], "max": [0.3, 0.3, 0.3]})
    report = Report(tmp_path)
    table = report_down_weighting(report, runs).set_index("loss")
    assert sorted(table.index) == ["attention", "attention_gate"]  # max is no attention form
    assert table.loc["attention", "verdict"] == "better" and table.loc["attention_gate", "verdict"] == "tie"
    assert "0.110 [" in report.markdown() and "**Down-weighting helps** for `attention`." in report.markdown()
    none = Report(tmp_path)
    report_down_weighting(none, runs[runs["loss"] != "attention"])
    assert "No attention form is better than its uniform ablation at the study's τw" in none.markdown()
    assert "Sharper weights are not trained yet" in none.markdown()
    empty = Report(tmp_path)
    assert report_down_weighting(empty, runs[runs["loss"] != "attention_uniform"]).empty
    assert "Not answered" in empty.markdown()


def test_report_replication_shows_every_setting_side_by_side(tmp_path):
    report = Report(tmp_path)
    assert report_replication(report) is None and "dvc repro replication" in report.markdown()
    write_csv(tmp_path / "replication/replication.csv", pd.DataFrame([
        {"comparison": "attention b8 - coarse b256", "setting": setting, "metric": "t2v_R@10", "n": 3, "mean": mean,
         "ci95_low": mean - 0.02, "ci95_high": mean + 0.02, "verdict": verdict, "replicates": same}
        for setting, mean, verdict, same in (("study data", 0.1, "better", True), ("both fresh", 0.0, "tie", False))]))
    report = Report(tmp_path)
    report_replication(report)
    text = report.markdown()
    assert "| attention b8 - coarse b256 | study data | 3 | 0.100 [0.080, 0.120] | better | yes |" in text
    assert "| both fresh | 3 | 0.000 [-0.020, 0.020] | tie | no |" in text
