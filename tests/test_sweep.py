"""Sweeps (fgmm_lib.study.sweep): the points of each sweep, their checks, and a tiny sweep end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.study.results import collect_records
from fgmm_lib.study.selection import lr_factors
from fgmm_lib.study.sweep import (
    factor_for,
    lr_points,
    noise_points,
    run_sweep,
    study_part,
    study_points,
    sweep_epochs,
    sweep_points,
    temperature_points,
    width_points,
)

pytestmark = pytest.mark.integration

CLEAN = dict(distractors=0, filler_words=0.0, misaligned_frames=0.0, mismatched_narration=0.0)
TINY = dict(frames=4, size=16)
BASE_KNOBS = dict(distractors=1, filler_words=0.3, misaligned_frames=0.25, mismatched_narration=0.1)


def test_noise_points_share_the_base_level_across_knobs():
    points = noise_points(["coarse", "max"], {"distractors": [0, 1, 2], "filler_words": [0.0, 0.3]},
                                BASE_KNOBS, batch_size=8, seed=0)
    assert len(points) == 2 * (3 + 2)
    base = [p for p in points if not p.data]
    # distractors=1 and filler_words=0.3 are the base data: one run per loss, named alike, in two rows
    assert sorted(p.name for p in base) == ["coarse-b8-s0-base"] * 2 + ["max-b8-s0-base"] * 2
    assert {p.labels["knob"] for p in base} == {"distractors", "filler_words"}
    changed = [p for p in points if p.data]
    assert {tuple(p.data.items()) for p in changed} == {(("distractors", 0),), (("distractors", 2),),
                                                         (("filler_words", 0.0),)}
    assert all(p.train == {"loss": p.labels["loss"], "batch_size": 8, "seed": 0} for p in points)


def test_lr_factors_choose_per_loss_and_batch_size_on_validation_and_keep_the_rule_within_the_margin():
    rows = [{"loss": loss, "batch_size": batch, "lr_factor": factor, "seed": seed, "t2v_R@10": value}
            for loss, batch, factor, seed, value in [
                ("attention", 8, 0.5, 0, 0.30), ("attention", 8, 1.0, 0, 0.35), ("attention", 8, 2.0, 0, 0.39),
                ("coarse", 8, 0.5, 0, 0.50), ("coarse", 8, 1.0, 0, 0.30), ("coarse", 8, 2.0, 0, 0.20),
                ("coarse", 64, 0.5, 0, 0.30), ("coarse", 64, 1.0, 0, 0.40), ("coarse", 64, 2.0, 0, 0.42),
                ("coarse", 256, 0.5, 0, 0.50), ("coarse", 256, 0.5, 1, 0.30),  # mean 0.40 over seeds
                ("coarse", 256, 1.0, 0, 0.45), ("coarse", 256, 1.0, 1, 0.45)]]
    frame = pd.DataFrame(rows)
    assert lr_factors(frame) == {("attention", 8): 2.0, ("coarse", 8): 0.5, ("coarse", 64): 1.0, ("coarse", 256): 1.0}
    assert lr_factors(frame, margin=0.01)[("coarse", 64)] == 2.0
    # each loss at its own factor; the attention variants at attention's, other losses at coarse's
    # of their batch size, batch sizes outside the grid at the rule
    points = study_points([{"batch_size": 8, "losses": ["coarse", "attention", "attention_gate", "max"]},
                           {"batch_size": 64, "losses": ["max"]}, {"batch_size": 32, "losses": ["max"]}], [0],
                          lr=0.002, lr_factors=lr_factors(frame))
    assert {p.name: p.train.get("lr") for p in points} == {
        "coarse-b8-s0": 0.001, "attention-b8-s0": 0.004, "attention_gate-b8-s0": 0.004, "max-b8-s0": 0.001,
        "max-b64-s0": 0.002, "max-b32-s0": None}
    assert factor_for({("attention", 8): 2.0}, "attention_floor", 8) == 2.0
    assert factor_for({("attention", 8): 2.0}, "mean", 8) is None
    with pytest.raises(ValueError, match="no run at factor 1 for attention at batch size 8"):
        lr_factors(frame[frame["lr_factor"] != 1.0])
    with pytest.raises(ValueError, match="lacks the columns"):
        lr_factors(frame.drop(columns="lr_factor"))
    with pytest.raises(ValueError, match="base lr"):
        study_points([{"batch_size": 8, "losses": ["coarse"]}], [0], lr_factors={("coarse", 8): 2.0})


def test_study_points_cross_groups_losses_and_seeds():
    points = study_points([{"batch_size": 8, "losses": ["coarse", "max"]},
                                 {"batch_size": 256, "losses": ["coarse"]}], seeds=[0, 1, 2])
    assert [p.name for p in points][:3] == ["coarse-b8-s0", "coarse-b8-s1", "coarse-b8-s2"]
    assert len(points) == 9 and points[-1].name == "coarse-b256-s2"
    assert points[-1].train == {"loss": "coarse", "batch_size": 256, "seed": 2}


def test_study_points_take_a_group_s_own_seeds_and_refuse_a_repeated_configuration():
    points = study_points([{"batch_size": 8, "losses": ["coarse", "attention"], "seeds": [0, 1, 2, 3, 4]},
                           {"batch_size": 8, "losses": ["mean"]}, {"batch_size": 256, "losses": ["coarse"]}],
                          seeds=[0, 1, 2])
    names = [p.name for p in points]
    assert len(names) == 10 + 3 + 3 and "attention-b8-s4" in names and "mean-b8-s3" not in names
    with pytest.raises(ValueError, match="coarse at batch 8 twice"):
        study_points([{"batch_size": 8, "losses": ["coarse"]}, {"batch_size": 8, "losses": ["coarse", "max"]}],
                     seeds=[0])
    with pytest.raises(ValueError, match="seeds of the batch-8 group"):
        study_points([{"batch_size": 8, "losses": ["coarse"], "seeds": []}], seeds=[0])
    with pytest.raises(ValueError, match="study.runs"):
        study_points({"batch_size": 8, "losses": ["coarse"]}, seeds=[0])


def test_lr_points_multiply_the_rule_base():
    points = lr_points([{"batch_size": 8, "losses": ["attention"]}], factors=[0.5, 2.0], lr=0.002)
    assert [p.train["lr"] for p in points] == [0.001, 0.004]
    assert [p.labels["lr_factor"] for p in points] == [0.5, 2.0]


def test_temperature_points_grid_then_learnable():
    points = temperature_points("attention", [0.05, 0.1], [1.0, 10.0], [[0.1, 0.1]], batch_size=8)
    assert len(points) == 5
    assert [p.labels["learnable"] for p in points] == [False] * 4 + [True]
    assert points[1].train["attn_temperature"] == 0.05 and points[1].train["weight_temperature"] == 10.0
    assert points[-1].train["learn_attention_temperatures"] is True


@pytest.mark.parametrize("call, message", [
    (lambda: temperature_points("attention", [0.1, 0.0], [1.0], [], 8), "positive"),
    (lambda: temperature_points("attention", [0.1], [-1.0], [], 8), "positive"),
    (lambda: temperature_points("attention", [0.1], [1.0], [[0.1, 0]], 8), "positive"),
    (lambda: temperature_points("attention", [0.1], [1.0], [[0.1]], 8), "pairs"),
    (lambda: temperature_points("cross", [0.1], [1.0], [], 8), "unknown loss"),
    (lambda: noise_points(["coarse"], {"blur": [0, 1]}, BASE_KNOBS, 8), "unknown noise knob"),
    (lambda: noise_points(["coarse"], {"distractors": [-1, 1]}, BASE_KNOBS, 8), ">= 0"),
    (lambda: width_points(["coarse"], [1.0, 1.0], 8), "repeats"),
    (lambda: study_points([{"batch_size": 8, "losses": ["sum"]}], [0]), "unknown loss"),
    (lambda: study_points([{"batch_size": 1, "losses": ["coarse"]}], [0]), ">= 2"),
    (lambda: study_points([{"batch": 8, "losses": ["coarse"]}], [0]), "exactly the keys"),
    (lambda: sweep_points("depth", {}, {"batch_size": 8, "seed": 0}, {}, {}), "unknown sweep kind"),
])
def test_bad_sweep_parameters_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    pretrain = generate_dataset(GenerationConfig(clips=120, seed=0, **TINY, **BASE_KNOBS), root / "pretrain",
                                progress=False)
    evaluation = generate_dataset(GenerationConfig(clips=60, seed=1, **TINY, **CLEAN), root / "eval",
                                  vocab=pretrain / "vocab.json", progress=False)
    train = dict(epochs=1, dim=16, width=0.25, val_data=str(evaluation), val_points=2)
    return root, pretrain, evaluation, train


def test_a_noise_sweep_generates_each_dataset_once_and_writes_one_row_per_point(tiny_data):
    root, pretrain, evaluation, train = tiny_data
    points = noise_points(["coarse"], {"distractors": [0, 1]}, BASE_KNOBS, batch_size=8)
    out = root / "noise" / "noise.csv"
    table = run_sweep(points, train, pretrain, evaluation, root / "runs_noise", out, workers=1, progress=False)
    assert out.is_file() and len(pd.read_csv(out)) == 2
    assert list(table["level"]) == [0, 1]
    generated = json.loads((root / "runs_noise" / "data" / "distractors-0" / "params.json").read_text())
    assert generated["distractors"] == 0 and generated["filler_words"] == 0.3
    assert not (root / "runs_noise" / "data" / "base").exists()  # the base level is the base data itself
    for column in ("t2v_R@10", "digit_top1", "colour_top1", "gain_last_20pct", "samples_seen"):
        assert table[column].notna().all(), column
    train_clips = sum(json.loads(line)["split"] == "train" for line in (pretrain / "meta.jsonl").open())
    assert (table["samples_seen"] == train_clips // 8 * 8).all()  # 1 epoch of full batches of 8


def test_a_study_sweep_writes_the_run_files_and_resumes_without_training(tiny_data):
    root, pretrain, evaluation, train = tiny_data
    points = study_points([{"batch_size": 8, "losses": ["coarse", "mean"]}], seeds=[0])
    args = (points, train, pretrain, evaluation, root / "runs_study", root / "runs_study" / "runs.csv")
    run_sweep(*args, workers=2, progress=False, results_root=root)
    for name in ("coarse-b8-s0", "mean-b8-s0"):
        for path in (root / "results" / "metrics" / f"{name}.json", root / "results" / "compute" / f"{name}.json",
                     root / "results" / "details" / f"{name}.json",
                     root / "results" / "curves" / f"{name}.csv"):
            assert path.is_file(), path
    run = root / "runs_study" / "coarse-b8-s0"
    stamps = {name: (run / name).stat().st_mtime_ns for name in ("checkpoint.pt", "compute.json", "curves.csv")}
    record = (run / "compute.json").read_text()
    table = run_sweep(*args, workers=1, progress=False)
    # finished runs are evaluated again, not retrained or resumed: their compute record keeps the training's wall time
    assert {name: (run / name).stat().st_mtime_ns for name in stamps} == stamps
    assert (run / "compute.json").read_text() == record
    assert list(table["run"]) == ["coarse-b8-s0", "mean-b8-s0"]
    # the same folder asked for another config is not a finished run of it: resuming it names the difference
    with pytest.raises(ValueError, match="cannot resume .*weight_decay"):
        run_sweep(points[:1], {**train, "weight_decay": 0.5}, pretrain, evaluation, root / "runs_study",
                  root / "other.csv", workers=1, progress=False)


def test_run_sweep_refuses_a_missing_dataset_and_a_bad_split(tiny_data):
    root, pretrain, evaluation, train = tiny_data
    points = width_points(["coarse"], [0.5], batch_size=8)
    with pytest.raises(FileNotFoundError, match="is not a dataset"):
        run_sweep(points, train, root / "nowhere", evaluation, root / "r", root / "t.csv", progress=False)
    with pytest.raises(ValueError, match="split must be 'val' or 'test'"):
        run_sweep(points, train, pretrain, evaluation, root / "r", root / "t.csv", split="train",
                        progress=False)
    with pytest.raises(ValueError, match="epochs"):  # every config is checked before any run starts
        run_sweep(points, {**train, "epochs": 0}, pretrain, evaluation, root / "r", root / "t.csv",
                        progress=False)
    assert not (root / "r" / points[0].name).exists()


def test_run_names_of_every_loss_parse():
    from fgmm_lib.losses.scores import LOSSES
    from fgmm_lib.study.results import parse_run_name, run_name

    for loss in LOSSES:
        assert parse_run_name(run_name(loss, 8, 2)) == {"loss": loss, "batch_size": 8, "seed": 2}


def test_sweep_epochs_puts_the_lr_sweep_at_the_study_budget():
    params = {"train": {"epochs": 4}, "sweep": {"epochs": 2}, "regime": {"choice": {"budget": 3}}}
    assert sweep_epochs("lr", params) == 12
    assert sweep_epochs("noise", params) == sweep_epochs("temperature", params) == 2
    with pytest.raises(ValueError, match="regime.choice.budget"):
        sweep_epochs("lr", {"train": {"epochs": 4}, "sweep": {"epochs": 2}})
    with pytest.raises(ValueError, match="positive int, got 0"):
        sweep_epochs("lr", {**params, "regime": {"choice": {"budget": 0}}})
    with pytest.raises(ValueError, match="unknown sweep kind 'speed'"):
        sweep_epochs("speed", params)


def test_study_part_names_the_parts_when_one_is_missing():
    study = {"runs": {"headline": [{"batch_size": 8, "losses": ["coarse"]}], "variants": []}}
    assert study_part(study, "headline") == [{"batch_size": 8, "losses": ["coarse"]}]
    with pytest.raises(ValueError, match="no part 'extra'; its parts: headline, variants"):
        study_part(study, "extra")
    with pytest.raises(ValueError, match="must map part names"):
        study_part({"runs": [{"batch_size": 8, "losses": ["coarse"]}]}, "headline")


def _part_records(part, names, curves=True):
    for name in names:
        for folder in ("metrics", "details", "compute"):
            path = part / "results" / folder / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"part": part.name, "folder": folder}))
        if curves:
            path = part / "results" / "curves" / f"{name}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"samples,val_t2v_r10\n8,0.1\n# {part.name}\n")


def test_collect_records_gathers_every_part_and_drops_runs_that_left(tmp_path):
    headline, variants = tmp_path / "runs/headline", tmp_path / "runs/variants"
    _part_records(headline, ["coarse-b8-s0", "attention-b8-s0"])
    _part_records(variants, ["mean-b8-s0"], curves=False)  # a run without validation has no curve
    stale = tmp_path / "results/metrics/max-b8-s3.json"  # a run no part holds any more
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    names = collect_records([headline, variants], tmp_path)
    assert names == ["attention-b8-s0", "coarse-b8-s0", "mean-b8-s0"]
    assert sorted(p.name for p in (tmp_path / "results/metrics").iterdir()) == [f"{n}.json" for n in names]
    assert json.loads((tmp_path / "results/details/mean-b8-s0.json").read_text()) == {"part": "variants",
                                                                                     "folder": "details"}
    assert sorted(p.name for p in (tmp_path / "results/curves").iterdir()) == ["attention-b8-s0.csv", "coarse-b8-s0.csv"]
    assert not [p for p in (tmp_path / "results").iterdir() if p.name.startswith(".")]  # no partial folder left


def test_collect_records_refuses_a_run_in_two_parts_and_an_empty_part(tmp_path):
    first, second, empty = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _part_records(first, ["coarse-b8-s0"])
    _part_records(second, ["coarse-b8-s0"])
    with pytest.raises(ValueError, match=f"coarse-b8-s0 is in two parts of the study: {first} and {second}"):
        collect_records([first, second], tmp_path)
    with pytest.raises(FileNotFoundError, match=f"study part {empty} holds no run records"):
        collect_records([first, empty], tmp_path)
    (first / "results/compute/coarse-b8-s0.json").unlink()
    with pytest.raises(FileNotFoundError, match="coarse-b8-s0 of study part .* has no compute record"):
        collect_records([first], tmp_path)
    assert not (tmp_path / "results").exists()  # checked before any folder was replaced
