"""Curves of a study (fgmm_lib.study.curves): loading a folder, convergence, time to a target R@10, and
their plot (fgmm_lib.study.plots.plot_learning_curves), against values worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fgmm_lib.runs.curves import CURVE_COLUMNS
from fgmm_lib.study.curves import (
    TIME_TO_TARGET_COLUMNS,
    convergence_table,
    load_curves,
    mean_over_seeds,
    time_to_target,
)
from fgmm_lib.study.plots import plot_learning_curves  # noqa: E402
from fgmm_lib.study.tables import time_to_target_summary

SAMPLES = [0, 80, 160, 240, 320]  # batch size 8, validated every 10 steps
#: run -> (val_t2v_r10, wall_s) at SAMPLES
CURVES = {
    "coarse-b8-s0": ([0.10, 0.30, 0.50, 0.60, 0.62], [0, 12, 24, 36, 48]),
    "coarse-b8-s1": ([0.10, 0.20, 0.40, 0.56, 0.64], [0, 10, 20, 30, 40]),
    "attention-b8-s0": ([0.10, 0.20, 0.30, 0.35, 0.355], [0, 20, 40, 60, 80]),
}
COMPUTE = {"coarse-b8-s0": {"flops_per_step": 1000, "batch_size": 8},
           "coarse-b8-s1": {"flops_per_step": 1000, "batch_size": 8},
           "attention-b8-s0": {"flops_per_step": 3000, "batch_size": 8}}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def write_curve(folder: Path, name: str, r10: list[float], wall_s: list[float], run: str | None = None,
                samples: list[int] = SAMPLES, batch_size: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"run": run or name, "config_fingerprint": "0123456789abcdef", "samples_seen": samples,
                          "step": [s // batch_size for s in samples], "epoch": [s / 160 for s in samples],
                          "val_t2v_r1": [v / 4 for v in r10], "val_t2v_r5": [v / 2 for v in r10],
                          "val_t2v_r10": r10, "wall_s": wall_s}, columns=list(CURVE_COLUMNS))
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def curves_dir(tmp_path) -> Path:
    for name, (r10, wall_s) in CURVES.items():
        write_curve(tmp_path / "curves", name, r10, wall_s)
    return tmp_path / "curves"


def test_load_curves_adds_loss_batch_size_and_seed(curves_dir):
    curves = load_curves(curves_dir)
    assert list(curves.columns) == [*CURVE_COLUMNS, "loss", "batch_size", "seed"]
    assert len(curves) == 15
    assert curves["run"].drop_duplicates().tolist() == ["attention-b8-s0", "coarse-b8-s0", "coarse-b8-s1"]
    coarse = curves[curves["run"] == "coarse-b8-s1"]
    assert coarse["samples_seen"].tolist() == SAMPLES
    assert coarse["val_t2v_r10"].tolist() == [0.10, 0.20, 0.40, 0.56, 0.64]
    assert set(coarse["loss"]) == {"coarse"} and set(coarse["batch_size"]) == {8} and set(coarse["seed"]) == {1}


def test_mean_over_seeds(curves_dir):
    mean = mean_over_seeds(load_curves(curves_dir).query("loss == 'coarse'"))
    assert mean["samples_seen"].tolist() == SAMPLES
    assert mean["mean"].tolist() == pytest.approx([0.10, 0.25, 0.45, 0.58, 0.63])
    assert mean["min"].tolist() == pytest.approx([0.10, 0.20, 0.40, 0.56, 0.62])
    assert mean["max"].tolist() == pytest.approx([0.10, 0.30, 0.50, 0.60, 0.64])
    assert mean["seeds"].tolist() == [2] * 5


def test_convergence_table_matches_hand_computed_gains(curves_dir):
    table = convergence_table(load_curves(curves_dir))
    assert list(table.columns) == ["loss", "batch_size", "seeds", "last_samples", "final_val_t2v_r10",
                                   "gain_last_20pct", "flattened"]
    rows = table.set_index("loss")
    # coarse, mean curve: 0.63 at 320; at 256 = 0.58 + (16 / 80) * (0.63 - 0.58) = 0.59
    assert rows.loc["coarse", "seeds"] == 2 and rows.loc["coarse", "last_samples"] == 320
    assert rows.loc["coarse", "final_val_t2v_r10"] == pytest.approx(0.63)
    assert rows.loc["coarse", "gain_last_20pct"] == pytest.approx(0.04)
    assert not rows.loc["coarse", "flattened"]
    # attention: 0.355 at 320; at 256 = 0.35 + 0.2 * 0.005 = 0.351
    assert rows.loc["attention", "seeds"] == 1
    assert rows.loc["attention", "final_val_t2v_r10"] == pytest.approx(0.355)
    assert rows.loc["attention", "gain_last_20pct"] == pytest.approx(0.004)
    assert rows.loc["attention", "flattened"]
    # the last half: 0.63 - 0.45 at 160; a threshold above both gains flattens both
    half = convergence_table(load_curves(curves_dir), fraction=0.5, threshold=0.5).set_index("loss")
    assert half.loc["coarse", "gain_last_50pct"] == pytest.approx(0.18)
    assert half["flattened"].all()


def test_seeds_validated_at_other_samples_are_not_averaged(tmp_path):
    write_curve(tmp_path, "coarse-b8-s0", [0.1, 0.2, 0.3], [0, 1, 2], samples=[0, 80, 160])
    write_curve(tmp_path, "coarse-b8-s1", [0.1, 0.2, 0.3], [0, 1, 2], samples=[0, 80, 240])
    with pytest.raises(ValueError, match="coarse-b8-s0, coarse-b8-s1 are not validated at the same samples seen"):
        convergence_table(load_curves(tmp_path))


def test_time_to_target_interpolates_the_first_crossing(curves_dir):
    table = time_to_target(load_curves(curves_dir), COMPUTE, target=0.5).set_index("run")
    assert list(table.reset_index().columns) == list(TIME_TO_TARGET_COLUMNS)
    # s0 reaches 0.5 exactly at its third point (160 samples, 24 s)
    s0 = table.loc["coarse-b8-s0"]
    assert s0["reached"] and s0["samples_to_target"] == pytest.approx(160)
    assert s0["steps_to_target"] == pytest.approx(20) and s0["flops_to_target"] == pytest.approx(20000)
    assert s0["wall_s_to_target"] == pytest.approx(24) and s0["final_val_t2v_r10"] == pytest.approx(0.62)
    # s1 crosses between 0.40 (160 samples, 20 s) and 0.56 (240 samples, 30 s): (0.5 - 0.4) / 0.16 = 0.625
    s1 = table.loc["coarse-b8-s1"]
    assert s1["reached"] and s1["samples_to_target"] == pytest.approx(210)
    assert s1["steps_to_target"] == pytest.approx(26.25) and s1["flops_to_target"] == pytest.approx(26250)
    assert s1["wall_s_to_target"] == pytest.approx(26.25)
    attention = table.loc["attention-b8-s0"]
    assert not attention["reached"] and attention["final_val_t2v_r10"] == pytest.approx(0.355)
    assert all(math.isnan(attention[column]) for column in
               ("samples_to_target", "steps_to_target", "flops_to_target", "wall_s_to_target"))
    assert (table["target"] == 0.5).all()
    assert table.loc["coarse-b8-s1", ["loss", "batch_size", "seed"]].tolist() == ["coarse", 8, 1]


def test_time_to_target_of_a_curve_that_starts_above_it_is_its_first_point(curves_dir):
    table = time_to_target(load_curves(curves_dir), COMPUTE, target=0.1)
    assert table["reached"].all()
    assert table["samples_to_target"].tolist() == [0, 0, 0] and table["wall_s_to_target"].tolist() == [0, 0, 0]


def test_time_to_target_summary_is_a_t_interval_over_seeds(curves_dir):
    summary = time_to_target_summary(time_to_target(load_curves(curves_dir), COMPUTE, target=0.5)).set_index("loss")
    coarse = summary.loc["coarse"]
    assert coarse["seeds"] == 2 and coarse["reached"] == 2
    # samples 160 and 210: mean 185, std 25 * sqrt(2), half width t(1) * 25 with t(1) = 12.706204736
    assert coarse["samples_to_target_mean"] == pytest.approx(185)
    assert coarse["samples_to_target_low"] == pytest.approx(185 - 12.706204736 * 25)
    assert coarse["samples_to_target_high"] == pytest.approx(185 + 12.706204736 * 25)
    # FLOPs 20000 and 26250: mean 23125, half width t(1) * 3125
    assert coarse["flops_to_target_mean"] == pytest.approx(23125)
    assert coarse["flops_to_target_high"] == pytest.approx(23125 + 12.706204736 * 3125)
    attention = summary.loc["attention"]
    assert attention["seeds"] == 1 and attention["reached"] == 0
    assert math.isnan(attention["samples_to_target_mean"]) and math.isnan(attention["flops_to_target_low"])


@pytest.mark.parametrize("target", [0, -0.1, 1.5, float("nan"), True])
def test_a_target_outside_the_unit_interval_is_refused(curves_dir, target):
    curves = load_curves(curves_dir)
    with pytest.raises(ValueError, match=r"^target must be a val_t2v_r10 in \(0, 1\], got"):
        time_to_target(curves, COMPUTE, target=target)
    with pytest.raises(ValueError, match="^target must be"):
        plot_learning_curves(curves, target=target)


def test_a_compute_record_missing_or_of_another_batch_size_is_refused(curves_dir):
    curves = load_curves(curves_dir)
    with pytest.raises(ValueError, match="run 'coarse-b8-s1' has no compute record"):
        time_to_target(curves, {k: v for k, v in COMPUTE.items() if k != "coarse-b8-s1"}, target=0.5)
    with pytest.raises(ValueError, match="compute record of run 'coarse-b8-s0' has batch_size 64, its name says 8"):
        time_to_target(curves, {**COMPUTE, "coarse-b8-s0": {"flops_per_step": 1, "batch_size": 64}}, target=0.5)


def test_a_curve_file_of_another_run_is_refused(curves_dir):
    write_curve(curves_dir, "coarse-b8-s2", [0.1] * 5, [0] * 5, run="coarse-b8-s1")
    with pytest.raises(ValueError, match=r"coarse-b8-s2\.csv belongs to another run: its run is 'coarse-b8-s1', "
                                         r"expected 'coarse-b8-s2'"):
        load_curves(curves_dir)


def test_a_curve_file_not_named_after_a_run_is_refused(curves_dir):
    write_curve(curves_dir, "notes", [0.1] * 5, [0] * 5)
    with pytest.raises(ValueError, match=r"notes\.csv: 'notes' is not a run name <loss>-b<batch_size>-s<seed>"):
        load_curves(curves_dir)


def test_a_folder_without_curves_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no curves here")
    with pytest.raises(ValueError, match="curve folder .*empty holds no <run>.csv curve file"):
        load_curves(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="curve folder .*missing does not exist"):
        load_curves(tmp_path / "missing")


def test_plot_learning_curves_draws_a_panel_per_batch_size_and_a_line_per_loss(curves_dir):
    write_curve(curves_dir, "coarse-b64-s0", [0.1, 0.3, 0.5], [0, 5, 10], samples=[0, 640, 1280], batch_size=64)
    curves = load_curves(curves_dir)
    figure = plot_learning_curves(curves, target=0.5)
    assert isinstance(figure, Figure)
    b8, b64 = figure.axes
    assert (b8.get_title(), b64.get_title()) == ("batch size 8", "batch size 64")
    assert len(b8.lines) == 3 and len(b64.lines) == 2  # a mean per loss and the target
    coarse = [line for line in b8.lines if line.get_label() == "coarse"][0]
    assert list(coarse.get_ydata()) == pytest.approx([0.10, 0.25, 0.45, 0.58, 0.63])
    assert len(b8.collections) == 2  # a min-max band per loss
    assert len(plot_learning_curves(curves).axes[0].lines) == 2  # no target, no target line
