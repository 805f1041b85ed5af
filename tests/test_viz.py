"""Tables and plots of fgmm_lib.study.plots, and the notebook helpers of fgmm_lib.study.notebook."""

from __future__ import annotations

import json
import math
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from fgmm_lib.io import write_atomic, write_json  # noqa: E402
from fgmm_lib.losses.scores import attention_maps  # noqa: E402
from fgmm_lib.models.encoders import token_to_cell  # noqa: E402
from fgmm_lib.study import plots as viz  # noqa: E402
from fgmm_lib.study import results
from fgmm_lib.study.attention import attention_example, pointing_table
from fgmm_lib.study.notebook import (
    check_parameters,
    declared_parameters,
    load_params,
    project_root,
    train_config,
    use_project_root,
)
from fgmm_lib.study.report import (
    Report,
    answered_questions,
    report_attention,
    report_attributes,
    report_batch_ablation,
    report_compute,
    report_loss_comparison,
    report_status,
    report_temperatures,
)
from fgmm_lib.study.results import LOSS_ORDER, METRICS, ordered_losses
from fgmm_lib.study.stats import paired_differences, t_interval, t_quantile_975, tie_or_difference
from fgmm_lib.study.tables import (
    COST_LABELS,
    attribute_table,
    best_losses,
    comparison_batch_size,
    comparison_table,
    compute_table,
    evaluation_interval_table,
    flatten_metrics,
    interval_table,
    load_runs,
    markdown_table,
    mean_std_table,
    metric_label,
    metrics_table,
    paired_difference_table,
    recall_at_k_table,
    summarise_over_seeds,
    sweep_by_loss,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def metrics_record(loss: str, batch_size: int, seed: int, rng: np.random.Generator) -> dict:
    """An evaluation record shaped like fgmm_lib.evaluation.protocol.evaluate's, with random values."""
    def retrieval() -> dict:
        values = {"R@1": float(rng.uniform(0, 0.5)), "R@5": float(rng.uniform(0.5, 0.8)),
                  "R@10": float(rng.uniform(0.8, 1)), "median_rank": float(rng.integers(1, 20)), "mean_rank": 5.0,
                  "queries": 10, "corpus": 40, "chance": {"R@1": 0.1, "R@5": 0.4, "R@10": 0.7}}
        values["ci95"] = {k: [values[k] - 0.05, values[k] + 0.04] for k in ("R@1", "R@5", "R@10")}
        return values

    def probe(chance: float) -> dict:
        top1 = float(rng.uniform())
        return {"top1": top1, "chance": chance, "ci95": [top1 - 0.02, top1 + 0.03], "weight_decay": 0.01}

    action = probe(0.125)
    t2v = retrieval()
    t2v["attributes"] = {attribute: retrieval() for attribute in ("colour", "digit", "action")}
    return {
        "run": f"runs/{loss}-b{batch_size}-s{seed}", "loss": loss, "split": "test", "clips": 40,
        "temperatures": {"attn": 0.1, "weight": 0.2},
        "probe": {"action_top1": action["top1"], "chance": 0.125, "ci95": {"action_top1": action["ci95"]},
                  "confusion": np.eye(8, dtype=int).tolist()},
        "probe_attributes": {"action": action, "colour": probe(0.125), "digit": probe(0.1)},
        "t2v": t2v, "t2i": retrieval(),
        "pointing": None if loss in ("coarse", "milnce") else {"accuracy": float(rng.uniform()), "chance": 0.2},
    }


def compute_record(loss: str, batch_size: int, seed: int) -> dict:
    """A compute record shaped like the one evaluate(..., compute_out=...) writes."""
    return {"flops_per_step": 1e6 * batch_size, "wall_s": 2.0 * batch_size, "device": "cpu", "loss": loss,
            "batch_size": batch_size, "seed": seed, "finished": True}


def write_results(root, loss: str, batch_size: int, seed: int, rng: np.random.Generator) -> dict:
    """The three results files of one run, as the evaluate notebook writes them under ``root``."""
    name = results.run_name(loss, batch_size, seed)
    record = metrics_record(loss, batch_size, seed, rng)
    results.write_metrics(record, results.metrics_path(name, root))
    write_json(results.details_path(name, root), record)
    write_json(results.compute_path(name, root), compute_record(loss, batch_size, seed))
    return record


@pytest.fixture
def runs(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    for loss in ("attention", "coarse", "max"):
        for batch_size in (4, 16):
            for seed in (0, 1, 2):
                write_results(tmp_path, loss, batch_size, seed, rng)
    return load_runs(results.metrics_path("x", tmp_path).parent)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def test_flatten_metrics_reads_every_metric_chance_and_compute():
    record = metrics_record("attention", 8, 3, np.random.default_rng(1))
    flat = results.headline_metrics(record)
    row = flatten_metrics(flat, source="attention-b8-s3.json", details=record,
                                   compute=compute_record("attention", 8, 3))
    assert flatten_metrics(record, compute=compute_record("attention", 8, 3)) == row  # the whole record alike
    assert (row["run"], row["loss"], row["batch_size"], row["seed"]) == ("attention-b8-s3", "attention", 8, 3)
    assert row["t2v_R@5"] == record["t2v"]["R@5"]
    assert row["t2i_median_rank"] == record["t2i"]["median_rank"]
    assert row["action_top1"] == record["probe"]["action_top1"]
    assert row["pointing"] == record["pointing"]["accuracy"]
    assert row["t2i_R@10_chance"] == 0.7 and row["pointing_chance"] == 0.2 and row["action_top1_chance"] == 0.125
    assert "t2v_median_rank_chance" not in row
    assert row["compute_flops_per_step"] == 8e6 and "compute_device" not in row
    assert row["attn_temperature"] == 0.1 and row["weight_temperature"] == 0.2
    assert row["colour_top1"] == record["probe_attributes"]["colour"]["top1"] and row["digit_top1_chance"] == 0.1
    assert row["t2v_digit_R@1"] == record["t2v"]["attributes"]["digit"]["R@1"] and row["t2v_digit_R@1_chance"] == 0.1
    assert (row["t2v_R@10_ci95_low"], row["t2v_R@10_ci95_high"]) == tuple(record["t2v"]["ci95"]["R@10"])
    assert (row["action_top1_ci95_low"], row["action_top1_ci95_high"]) == tuple(record["probe"]["ci95"]["action_top1"])
    assert row["colour_top1_ci95_high"] == record["probe_attributes"]["colour"]["ci95"][1]
    assert set(flat) == set(results.METRICS) and "t2v_digit_R@1" not in flat  # attribute retrieval: details only

    coarse = results.headline_metrics(metrics_record("coarse", 8, 0, np.random.default_rng(1)))
    assert coarse["pointing"] is None
    assert math.isnan(flatten_metrics(coarse, source="results/metrics/coarse-b8-s0.json")["pointing"])


def test_flatten_metrics_without_compute_uses_the_run_name_or_fails_naming_the_source():
    flat = results.headline_metrics(metrics_record("max", 32, 2, np.random.default_rng(1)))
    row = flatten_metrics(flat, source="results/metrics/max-b32-s2.json")
    assert (row["run"], row["loss"], row["batch_size"], row["seed"]) == ("max-b32-s2", "max", 32, 2)
    assert not any(key.startswith("compute_") for key in row)
    with pytest.raises(ValueError, match="demo.json.*not named <loss>-b<batch_size>-s<seed>"):
        flatten_metrics(flat, source="results/metrics/demo.json")
    with pytest.raises(ValueError, match="none of the downstream metrics"):
        results.headline_metrics({"t2v": {}})


def test_load_runs_sorts_by_loss_order_and_reports_bad_files(tmp_path, runs):
    assert list(runs["loss"].unique()) == ["coarse", "max", "attention"]  # study order, not alphabetical
    assert len(runs) == 18
    first = runs[runs["loss"] == "coarse"]
    assert list(first["batch_size"]) == [4, 4, 4, 16, 16, 16] and list(first["seed"]) == [0, 1, 2] * 2

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.json"):
        load_runs(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.json is not valid JSON"):
        load_runs(tmp_path / "broken")


def test_summarise_over_seeds_matches_a_plain_computation(runs):
    summary = summarise_over_seeds(runs, metrics=[*METRICS, *results.ATTRIBUTE_METRICS])
    assert list(summary.columns) == ["loss", "batch_size", "metric", "mean", "std", "n", "ci95_low", "ci95_high"]
    for (loss, batch_size), group in runs.groupby(["loss", "batch_size"]):
        for name in ("t2v_R@1", "action_top1", "t2i_median_rank", "t2v_colour_R@1"):
            values = [float(v) for v in group[name]]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            row = summary[(summary["loss"] == loss) & (summary["batch_size"] == batch_size) & (summary["metric"] == name)]
            assert len(row) == 1
            assert row["mean"].iloc[0] == pytest.approx(mean)
            assert row["std"].iloc[0] == pytest.approx(std)
            assert row["n"].iloc[0] == 3
            half = 4.302652730 * std / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
            assert row["ci95_low"].iloc[0] == pytest.approx(mean - half)
            assert row["ci95_high"].iloc[0] == pytest.approx(mean + half)
    # coarse has no pointing: no row rather than a NaN mean
    assert summary[(summary["loss"] == "coarse") & (summary["metric"] == "pointing")].empty
    with pytest.raises(ValueError, match="no column"):
        summarise_over_seeds(runs, by=("loss", "width"))


def _t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t, by Simpson's rule on its density (t >= 0)."""
    grid = np.linspace(0.0, t, 200_001)
    density = np.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) \
        * (1 + grid ** 2 / df) ** (-(df + 1) / 2)
    step = grid[1] - grid[0]
    return 0.5 + step / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())


def test_t_quantiles_are_the_975_quantiles():
    assert t_quantile_975(1) == pytest.approx(math.tan(math.pi * 0.475), abs=1e-8)  # Cauchy
    assert t_quantile_975(2) == pytest.approx(0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)), abs=1e-8)
    for df in (*range(3, 31), 31, 40, 100, 1000):
        assert _t_cdf(t_quantile_975(df), df) == pytest.approx(0.975, abs=2e-7), df
    assert t_quantile_975(10 ** 6) == pytest.approx(1.959964, abs=1e-5)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)
    assert all(math.isnan(v) for v in t_interval(0.5, 0.1, 1))


def test_tie_or_difference():
    assert tie_or_difference((-0.02, 0.025)) == "tie"
    assert tie_or_difference((0.005, 0.02)) == "tie"  # within the margin, though it excludes 0
    assert tie_or_difference((0.01, 0.2)) == "better"
    assert tie_or_difference((-0.2, -0.01)) == "worse"
    assert tie_or_difference((-0.2, -0.01), higher_is_better=False) == "better"  # ranks
    assert tie_or_difference((-0.05, 0.02)) == "undecided"
    assert tie_or_difference((-0.05, 0.02), margin=0.05) == "tie"
    assert tie_or_difference((math.nan, math.nan)) == "undecided"
    with pytest.raises(ValueError, match="low <= high"):
        tie_or_difference((0.1, -0.1))


def test_paired_differences_match_a_plain_computation(runs):
    table = paired_differences(runs, "t2v_R@10", reference=("coarse", 16))
    assert len(table) == 5  # coarse b4, max b4 and b16, attention b4 and b16
    assert list(table["loss"]) == ["coarse", "max", "max", "attention", "attention"]
    for _, row in table.iterrows():
        differences = []
        for seed in (0, 1, 2):
            value = runs[(runs["loss"] == row["loss"]) & (runs["batch_size"] == row["batch_size"]) & (runs["seed"] == seed)]
            base = runs[(runs["loss"] == "coarse") & (runs["batch_size"] == 16) & (runs["seed"] == seed)]
            differences.append(float(value["t2v_R@10"].iloc[0]) - float(base["t2v_R@10"].iloc[0]))
        mean = sum(differences) / 3
        std = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
        assert row["n"] == 3 and row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)
        assert row["ci95_low"] == pytest.approx(mean - 4.302652730 * std / math.sqrt(3))
        assert row["ci95_high"] == pytest.approx(mean + 4.302652730 * std / math.sqrt(3))
        assert row["verdict"] == tie_or_difference((row["ci95_low"], row["ci95_high"]))
        assert row["reference"] == "coarse b16" and row["seeds"] == "0,1,2"
    # Only shared seeds pair; a reference without runs gives an empty table.
    fewer = runs[~((runs["loss"] == "max") & (runs["seed"] == 2))]
    assert set(paired_differences(fewer, "t2v_R@10", ("coarse", 16))
               .query("loss == 'max'")["n"]) == {2}
    assert paired_differences(runs, "t2v_R@10", ("coarse", 256)).empty
    with pytest.raises(ValueError, match="one value per column"):
        paired_differences(runs, "t2v_R@10", ("coarse",))
    with pytest.raises(ValueError, match="no column"):
        paired_differences(runs, "nothing", ("coarse", 16))
    twice = pd.concat([runs, runs[(runs["loss"] == "coarse") & (runs["batch_size"] == 16)]])
    with pytest.raises(ValueError, match="same seed"):
        paired_differences(twice, "t2v_R@10", ("coarse", 16))
    table = paired_difference_table(runs, ("coarse", 16))
    assert len(table) == 15 and set(table["verdict"]) <= {"tie", "better", "worse", "undecided"}


def test_attribute_and_interval_tables(runs):
    table = attribute_table(runs, 16)
    assert list(table.index) == ["coarse", "max", "attention", "chance"]
    assert "colour top-1 (linear probe)" in table.columns and "text→video R@1, digit only" in table.columns
    assert table.loc["chance", "digit top-1 (linear probe)"] == "0.100"
    summary = summarise_over_seeds(runs)
    row = summary[(summary["loss"] == "max") & (summary["batch_size"] == 16) & (summary["metric"] == "t2v_R@10")]
    wide = interval_table(comparison_table(summary, 16), metrics=["t2v_R@10"])
    assert wide.loc["max", "text→video R@10"] == (f"{row['mean'].item():.3f} [{row['ci95_low'].item():.3f}, "
                                                  f"{row['ci95_high'].item():.3f}]")
    precision = evaluation_interval_table(runs)
    assert precision["text→video R@10"].tolist() == pytest.approx([0.045] * 6)
    assert precision["action top-1 (linear probe)"].tolist() == pytest.approx([0.025] * 6)


def test_comparison_tables(runs):
    summary = summarise_over_seeds(runs)
    comparison = comparison_table(summary, 16)
    assert set(comparison["batch_size"]) == {16}
    with pytest.raises(ValueError, match="no run at batch size 64"):
        comparison_table(summary, 64)
    wide = mean_std_table(comparison)
    assert list(wide.index) == ["coarse", "max", "attention"]
    assert wide.loc["coarse", "pointing accuracy"] == "–"
    row = comparison[(comparison["loss"] == "max") & (comparison["metric"] == "t2v_R@1")].iloc[0]
    assert wide.loc["max", "text→video R@1"] == f"{row['mean']:.3f} ± {row['std']:.3f}"

    best = best_losses(comparison)
    for name in ("t2v_R@1", "t2v_median_rank"):
        rows = comparison[comparison["metric"] == name]
        expected = rows.loc[rows["mean"].idxmin() if name.endswith("rank") else rows["mean"].idxmax(), "loss"]
        assert best.loc[metric_label(name), "best"] == expected

    assert comparison_batch_size([8, 64, 256, 64], preferred=64) == 64
    assert comparison_batch_size([8, 64, 256], preferred=32) == 64
    assert comparison_batch_size([8, 256]) == 8
    with pytest.raises(ValueError, match="no runs"):
        comparison_batch_size([])


def test_markdown_table():
    table = pd.DataFrame({"a": [1.23456, float("nan")], "b": ["x|y", "z"]}, index=pd.Index(["r1", "r2"], name="row"))
    text = markdown_table(table)
    assert text.splitlines() == ["| row | a | b |", "| --- | --- | --- |", "| r1 | 1.235 | x\\|y |", "| r2 | – | z |"]
    assert markdown_table(table, index=False).splitlines()[0] == "| a | b |"


def test_metrics_and_recall_tables():
    record = metrics_record("coarse", 8, 0, np.random.default_rng(2))
    table = metrics_table(record)
    assert "pointing accuracy" not in table.index
    assert table.loc["text→video R@5", "value"] == record["t2v"]["R@5"]
    assert table.loc["text→video R@5", "chance"] == 0.4
    assert math.isnan(table.loc["text→video median rank", "chance"])
    recall = recall_at_k_table(record)
    assert list(recall["K"]) == [1, 5, 10, 1, 5, 10]
    assert recall.set_index(["task", "K"]).loc[("t2i", 10), "recall"] == record["t2i"]["R@10"]
    with pytest.raises(ValueError, match="no R@K"):
        recall_at_k_table({"t2v": {"median_rank": 3}})


def test_outputs_are_written_atomically(tmp_path):
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    png = viz.save_figure(figure, tmp_path / "deep" / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = viz.save_table(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.csv")
    assert pd.read_csv(csv)["a"].tolist() == [1, 2]
    viz.save_text("hello", tmp_path / "s.md")
    assert (tmp_path / "s.md").read_text() == "hello"

    def fail(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "t.csv", fail)
    assert pd.read_csv(csv)["a"].tolist() == [1, 2]  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "s.md", "t.csv"]  # no temporary left


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------


def visible_axes(figure: Figure) -> list:
    return [axes for axes in figure.axes if axes.get_visible()]


def test_training_curves():
    steps = np.arange(1, 41)
    log = pd.DataFrame({"step": steps, "loss": np.exp(-steps / 10), "temperature": 0.07, "attn_temperature": None,
                        "weight_temperature": None, "lr": np.linspace(1e-3, 0, 40)})
    figure = viz.plot_training_curves(log, title="run")
    assert len(figure.axes) == 3
    assert [line.get_label() for line in figure.axes[1].get_lines()] == ["temperature"]  # all-None columns skipped
    with pytest.raises(ValueError, match="no column 'lr'"):
        viz.plot_training_curves(log.drop(columns="lr"))


def test_recall_confusion_and_sweep_plots(runs):
    record = metrics_record("attention", 8, 0, np.random.default_rng(3))
    figure = viz.plot_recall_at_k(recall_at_k_table(record))
    assert len(figure.axes[0].get_lines()) == 4  # two tasks, each with its chance line

    confusion = np.diag([3, 2, 0, 1]) + np.eye(4, k=1, dtype=int)
    figure = viz.plot_confusion_matrix(confusion, ["a", "b", "c", "d"])
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["a", "b", "c", "d"]
    assert "top-1 0.667" in figure.axes[0].get_title()  # 6 of 9 on the diagonal
    with pytest.raises(ValueError, match="square"):
        viz.plot_confusion_matrix(confusion, ["a", "b"])

    summary = summarise_over_seeds(runs)
    figure = viz.plot_batch_ablation(summary, chance={"t2v_R@1": 0.1})
    assert len(visible_axes(figure)) == len(METRICS)
    first = visible_axes(figure)[0]
    assert first.get_xscale() == "log" and [t.get_text() for t in first.get_xticklabels()] == ["4", "16"]
    assert viz.plot_metric_sweep(summary, metrics=["t2v_R@1", "pointing"], log2=False).axes[0].get_xscale() == "linear"

    comparison = comparison_table(summary, 4)
    figure = viz.plot_comparison(comparison, metrics=["t2v_R@1", "pointing"])
    assert len(visible_axes(figure)) == 2
    from matplotlib.collections import PathCollection

    def scatters(axes):
        return [c for c in axes.collections if isinstance(c, PathCollection)]

    assert not scatters(visible_axes(figure)[0])  # no dots without the runs
    figure = viz.plot_comparison(comparison, metrics=["t2v_R@1"], runs=runs)
    dots = np.concatenate([c.get_offsets() for c in scatters(visible_axes(figure)[0])])
    at_batch = runs[runs["batch_size"] == 4]
    assert len(dots) == at_batch["t2v_R@1"].notna().sum()  # one dot per seed of each loss at batch 4
    present = ordered_losses(comparison["loss"])
    for position, loss in enumerate(present):  # each loss's dots sit on its bar at its seeds' values
        on_bar = dots[np.abs(dots[:, 0] - position) < 0.5, 1]
        want = at_batch.loc[at_batch["loss"] == loss, "t2v_R@1"].dropna()
        assert sorted(on_bar) == pytest.approx(sorted(want))
    figure = viz.plot_compute(runs, ["compute_flops_per_step", "compute_wall_s"])
    assert len(figure.axes) == 2
    with pytest.raises(ValueError, match="no column"):
        viz.plot_compute(runs, ["compute_energy"])


def test_attention_example_puts_each_token_in_its_cell():
    grid = (2, 3, 4)
    cells = 2 * 3 * 4
    generator = torch.Generator().manual_seed(0)
    video_tokens = torch.randn(cells, 8, generator=generator, dtype=torch.float64)
    text_tokens = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    text_mask = torch.tensor([True, True, True, False, False])
    # make phrase 1 point sharply at token 17
    text_tokens[1] = video_tokens[17] * 10
    maps = attention_maps(video_tokens, text_tokens, text_mask=text_mask, attn_temperature=0.01)
    video = torch.rand(3, 4, 12, 16)
    example = attention_example(video, torch.zeros(4, 4), torch.ones(4, dtype=torch.bool), maps, grid,
                                    ["the", "red", "seven"], phrase_mask=text_mask, ngram=3, title="clip")
    assert example["phrase_attention"].shape == (3, 2, 3, 4)
    assert example["phrases"] == ["[the] red", "the [red] seven", "red [seven]"]
    assert example["frames"].shape == (4, 12, 16, 3) and example["frames"].dtype == np.uint8
    t, y, x = token_to_cell(17, grid)
    assert np.unravel_index(example["phrase_attention"][1].argmax(), (2, 3, 4)) == (t, y, x)
    for n in range(cells):  # every token lands in the cell token_to_cell names
        assert example["cell_weight"][token_to_cell(n, grid)] == pytest.approx(float(maps["cell_weight"][n]))
    assert example["phrase_weight"].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 words for 3 valid phrases"):
        attention_example(video, torch.zeros(4, 4), torch.ones(4, dtype=torch.bool), maps, grid,
                              ["the", "red"], phrase_mask=text_mask)

    figure = viz.plot_attention_maps([example, example], title="run")
    tiles = [axes for axes in figure.axes if axes.get_title() == "frame 0"]
    assert len(tiles) == 2  # one block per clip
    assert len(figure.axes) == 2 * ((3 + 1) * 4 + 1)  # (phrases + cell-weight row) x frames + bar chart
    with pytest.raises(ValueError, match="lacks"):
        viz.plot_attention_maps([{"frames": example["frames"]}])
    with pytest.raises(ValueError, match="nothing to draw"):
        viz.plot_attention_maps([])


def test_frame_to_cell_mapping_covers_the_grid_in_order():
    assert [viz._frame_cell(f, 8, 4) for f in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [viz._frame_cell(f, 4, 4) for f in range(4)] == [0, 1, 2, 3]
    assert [viz._frame_cell(f, 3, 2) for f in range(3)] == [0, 1, 1]


# ---------------------------------------------------------------------------------------------
# notebook helpers
# ---------------------------------------------------------------------------------------------

PARAMETERS_CELL = '''
"""Documented parameters."""
data = "data/eval"  # a comment
batch_size = 64
lr: float = 0.5
clips = [0, 1, 2]
overrides = {}
anything = None
'''


def namespace(injected: str | None, **values) -> dict:
    history = ["", PARAMETERS_CELL]
    if injected is not None:
        history.append(injected)
    history.append("check_parameters(globals())")
    return {"In": history, **values}


def test_declared_parameters_reads_literal_assignments_only():
    assert declared_parameters(PARAMETERS_CELL) == {"data": "data/eval", "batch_size": 64, "lr": 0.5,
                                                    "clips": [0, 1, 2], "overrides": {}, "anything": None}
    with pytest.raises(ValueError, match="line 2 assigns 'len\\(a\\)'"):
        declared_parameters("a = 1\nb = len(a)")
    with pytest.raises(ValueError, match="line 1 is 'import os'"):
        declared_parameters("import os")
    with pytest.raises(ValueError, match="not valid Python"):
        declared_parameters("a = ")


def test_check_parameters_accepts_matching_types():
    injected = '# Parameters\nbatch_size = 8\nlr = 1\nclips = [3]\noverrides = {"epochs": 2}\nanything = "x"\n'
    values = {"batch_size": 8, "lr": 1, "clips": [3], "overrides": {"epochs": 2}, "anything": "x"}
    assert check_parameters(namespace(injected, **values)) == values


def test_check_parameters_without_injection_checks_nothing():
    assert check_parameters(namespace(None, batch_size="anything")) == {}
    assert check_parameters({}) == {}
    assert check_parameters({"In": "not a list"}) == {}


@pytest.mark.parametrize("line, value, message", [
    ("batchsize = 3", 3, "unknown parameter\\(s\\) 'batchsize': this notebook declares anything, batch_size"),
    ("batch_size = 'big'", "big", "parameter 'batch_size' must be a int like its default 64, got str 'big'"),
    ("batch_size = True", True, "'batch_size' must be a int.*got bool"),
    ("lr = 'fast'", "fast", "'lr' must be a float"),
    ("clips = [0.5]", [0.5], "'clips' must be a list"),
    ("clips = 3", 3, "'clips' must be a list"),
    ("overrides = []", [], "'overrides' must be a dict"),
    ("data = None", None, "'data' must be a str"),
])
def test_check_parameters_names_the_bad_parameter(line, value, message):
    name = line.split(" = ")[0]
    with pytest.raises(ValueError, match=message):
        check_parameters(namespace(f"# Parameters\n{line}\n", **{name: value}))


def test_check_parameters_reports_every_problem_and_uses_the_last_injection():
    injected = "# Parameters\nbatchsize = 3\nlr = 'x'\n"
    with pytest.raises(ValueError) as error:
        check_parameters(namespace(injected, batchsize=3, lr="x"))
    assert "'batchsize'" in str(error.value) and "'lr'" in str(error.value)
    history = namespace("# Parameters\nbatchsize = 3\n")["In"] + [PARAMETERS_CELL, "# Parameters\nlr = 2.0\n"]
    assert check_parameters({"In": history, "lr": 2.0}) == {"lr": 2.0}


def test_project_root_and_params(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    nested = tmp_path / "notebooks" / "deeper"
    nested.mkdir(parents=True)
    assert project_root(nested) == tmp_path.resolve()
    monkeypatch.chdir(nested)
    assert use_project_root() == tmp_path.resolve()
    assert os.getcwd() == str(tmp_path.resolve())
    with pytest.raises(FileNotFoundError, match="no dvc.yaml"):
        project_root("/")

    (tmp_path / "params.yaml").write_text("train:\n  epochs: 2\nstudy:\n  batch_size: 64\nempty:\n")
    assert load_params(tmp_path / "params.yaml", section="train") == {"epochs": 2}
    assert load_params(tmp_path / "params.yaml", section="empty") == {}
    assert load_params(tmp_path / "params.yaml")["study"] == {"batch_size": 64}
    with pytest.raises(ValueError, match="no section 'data'"):
        load_params(tmp_path / "params.yaml", section="data")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_params(tmp_path / "list.yaml")


# ---------------------------------------------------------------------------------------------
# the report, the pointing table and the per-loss plot data
# ---------------------------------------------------------------------------------------------


def test_load_runs_reads_compute_and_details_beside_the_metrics(runs):
    assert runs["compute_flops_per_step"].tolist() == [1e6 * b for b in runs["batch_size"]]
    assert (runs["t2v_R@1_chance"] == 0.1).all() and (runs["attn_temperature"] == 0.1).all()
    assert "compute_batch_size" not in runs and "compute_seed" not in runs


def test_compute_table_labels_costs_once(runs):
    table = compute_table(runs)
    assert "GFLOPs per training step" in table.columns and COST_LABELS["compute_wall_s"] in table.columns
    first = table[(table["loss"] == "coarse") & (table["batch_size"] == 4)]
    assert first["GFLOPs per training step"].item() == pytest.approx(4e6 / 1e9)


def test_report_sections_answer_from_the_results_folder(tmp_path, runs):
    shown = []
    report = Report(tmp_path, show=shown.append)
    comparison = report_loss_comparison(report, runs, study_batch_size=16)
    assert comparison.attrs["batch_size"] == 16 and set(comparison["loss"]) == {"coarse", "max", "attention"}
    assert report_batch_ablation(report).empty  # no ablation/batch_size.csv
    summary = summarise_over_seeds(runs)
    viz.save_table(summary, tmp_path / "ablation" / "batch_size.csv")
    paired = report_batch_ablation(report, runs)
    assert not paired.empty and set(paired["verdict"]) <= {"tie", "better", "worse", "undecided"}
    attributes = report_attributes(report, runs, 16)
    assert list(attributes.index) == ["coarse", "max", "attention", "chance"]
    assert report_compute(report, runs) == ["compute_flops_per_step", "compute_wall_s"]
    report_attention(report)
    temperatures = report_temperatures(report, runs)
    assert set(temperatures["loss"]) == {"max", "attention"}  # the losses with an aggregation
    status = report_status(report, runs)
    assert status.loc["2. batch-size ablation", "answered"] == "yes"
    assert status.loc["3. noise ablation", "answered"] == "no"
    text = report.markdown()
    assert shown == report.blocks and "## 1. The losses compared" in text
    assert "larger standard deviation" not in text  # question 2 is read on intervals
    assert "Paired differences against `coarse` at batch 16" in text and "Mean and 95% t-interval" in text
    assert "## What the encoders learned, per attribute" in text and "mean half-width" in text
    assert "text→video R@1, colour only" not in text.split("## 2.")[0]  # the comparison keeps the headline metrics
    assert "Not answered: " in text and "attention/pointing.csv" in text
    empty = Report(tmp_path / "nothing")
    assert report_loss_comparison(empty, pd.DataFrame(), 8).empty
    assert report_compute(empty, pd.DataFrame()) == []
    assert report_attributes(empty, pd.DataFrame()).empty
    assert answered_questions(tmp_path / "nothing", pd.DataFrame())["answered"].eq("no").all()


def test_one_seed_answers_the_comparison_partly(tmp_path):
    rng = np.random.default_rng(0)
    for loss in ("coarse", "attention"):
        write_results(tmp_path, loss, 8, 0, rng)
    (tmp_path / "results" / "ablation").mkdir()
    (tmp_path / "results" / "ablation" / "comparison.csv").write_text("loss\ncoarse\n")  # a header alone is empty
    one_seed = load_runs(tmp_path / "results" / "metrics")
    status = answered_questions(tmp_path / "results", one_seed)
    assert status.loc["1. loss comparison (mean ± std over seeds)", "answered"] == "partly: one seed, no spread"


def test_report_image_links_are_relative_to_the_report_folder(tmp_path):
    png = tmp_path / "attention" / "max-b8-s0.png"
    png.parent.mkdir()
    png.write_bytes(b"png")
    report = Report(tmp_path)
    report.image(png, "maps")
    assert report.markdown() == "![maps](../attention/max-b8-s0.png)\n"


def test_sweep_by_loss_is_one_wide_table_per_loss(runs):
    summary = summarise_over_seeds(runs)
    tables = sweep_by_loss(summary)
    assert list(tables) == ["coarse", "max", "attention"]
    coarse = tables["coarse"]
    assert list(coarse.columns[:3]) == ["batch_size", "action_top1", "t2v_R@1"] and "pointing" not in coarse
    expected = runs[(runs["loss"] == "coarse") & (runs["batch_size"] == 16)]["t2v_R@1"].mean()
    assert coarse.set_index("batch_size").loc[16, "t2v_R@1"] == pytest.approx(expected)


def test_pointing_table_reads_the_metrics_files(tmp_path, runs):
    folder = results.metrics_path("x", tmp_path).parent
    table = pointing_table(["runs/coarse-b4-s0", "runs/max-b4-s1"], folder)
    stored = json.loads((folder / "max-b4-s1.json").read_text())["pointing"]
    assert table.to_dict("records") == [{"run": "max-b4-s1", "loss": "max", "pointing_accuracy": stored,
                                         "chance": 0.2, "clips": None}]
    with pytest.raises(FileNotFoundError, match="mean-b4-s0 has no metrics file.*evaluate it first"):
        pointing_table(["runs/mean-b4-s0"], folder)


def test_run_names_round_trip():
    assert results.run_name("max", 32, 1) == "max-b32-s1"
    assert results.parse_run_name("results/metrics/max-b32-s1.json") == {"loss": "max", "batch_size": 32, "seed": 1}
    assert results.parse_run_name("runs/demo") is None


def test_train_config_merges_params_overrides_and_the_notebook_parameters(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 3\n  lr: 2e-3\n  dim: 16\nstudy:\n  batch_size: 64\n")
    config = train_config(params, overrides={"epochs": 5}, data="data/pretrain", out="runs/x", loss="max",
                          batch_size=8, seed=2)
    assert (config.epochs, config.lr, config.dim, config.loss, config.batch_size, config.seed) == (5, 0.002, 16, "max", 8, 2)
    with pytest.raises(ValueError, match="overrides may not set \\['loss'\\]"):
        train_config(params, overrides={"loss": "coarse"}, data="d", out="o", loss="max")
    with pytest.raises(ValueError, match="no section 'training'"):
        train_config(params, section="training", data="d", out="o")


def test_every_loss_has_its_own_colour():
    from fgmm_lib.losses.scores import LOSSES

    assert LOSS_ORDER == LOSSES
    assert set(viz.LOSS_COLOURS) == set(LOSSES)
    assert len({tuple(colour) for colour in viz.LOSS_COLOURS.values()}) == len(LOSSES)


def _sweep_rows(x: str, values, losses=("coarse", "max")) -> pd.DataFrame:
    return pd.DataFrame([{x: value, "loss": loss, "seed": seed, "t2v_R@10": 0.1 * value + seed * 0.01,
                          "digit_top1": 0.5} for value in values for loss in losses for seed in (0, 1)])


def test_plot_noise_has_a_panel_per_knob_and_metric():
    frame = pd.concat([_sweep_rows("level", (0, 1, 2)).assign(knob=knob) for knob in ("distractors", "filler_words")])
    figure = viz.plot_noise(frame)
    axes = [a for a in figure.axes if a.get_visible()]
    assert len(axes) == 4 and axes[0].get_title() == "distractors" and axes[1].get_title() == "filler words"
    assert axes[2].get_ylabel() == metric_label("digit_top1")
    # one line per loss, through the mean over seeds at each level
    lines = [line for line in axes[0].get_lines() if line.get_marker() == "o"]
    assert len(lines) == 2 and np.allclose(lines[0].get_ydata(), [0.005, 0.105, 0.205])
    with pytest.raises(ValueError, match="knob"):
        viz.plot_noise(frame.drop(columns="knob"))


def test_plot_width_has_a_panel_per_metric():
    figure = viz.plot_width(_sweep_rows("width", (0.5, 1.0, 2.0)), metrics=("t2v_R@10",))
    assert len(figure.axes) == 1 and figure.axes[0].get_xlabel() == "width multiplier"
    with pytest.raises(ValueError, match="no run"):
        viz.plot_width(_sweep_rows("width", (0.5,)).iloc[:0])


def test_plot_temperature_surface_annotates_and_outlines_the_best_cell():
    surface = pd.DataFrame([[0.1, 0.2], [0.6, 0.3], [0.4, 0.5]], index=[0.05, 0.1, 0.5], columns=[0.1, 0.5])
    figure = viz.plot_temperature_surface(surface)
    axes = figure.axes[0]
    assert sorted(text.get_text() for text in axes.texts) == sorted(f"{v:.3f}" for v in surface.to_numpy().flat)
    outlined = [patch for patch in axes.patches if isinstance(patch, Rectangle)]
    assert [(patch.get_x(), patch.get_y()) for patch in outlined] == [(0, 1)]  # τw 0.1 (column 0), τa 0.1 (row 1)
    given = viz.plot_temperature_surface(surface, best=(0.5, 0.5)).axes[0]
    assert [(p.get_x(), p.get_y()) for p in given.patches if isinstance(p, Rectangle)] == [(1, 2)]
