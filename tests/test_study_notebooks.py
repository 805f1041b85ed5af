"""The study and sweep notebooks, executed through papermill on a toy world as the pipeline runs them."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import yaml

from fgmm_lib.data.generate import GenerationConfig, generate_dataset

pytestmark = pytest.mark.integration

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KNOBS = dict(distractors=1, filler_words=0.3, misaligned_frames=0.25, mismatched_narration=0.1)
PARAMS = {
    "data_pretrain": {"clips": 128, "seed": 0, "frames": 4, "size": 32, **KNOBS},
    "train": {"epochs": 1, "dim": 16, "width": 0.25, "lr_scaling": "sqrt", "warmup_samples": 16,
              "val_data": "data/eval", "val_points": 2},
    "study": {"seeds": [0, 1], "batch_size": 8, "target_val_r10": 0.05, "workers": 1,
              "runs": {"headline": [{"batch_size": 8, "losses": ["coarse", "attention"]},
                                    {"batch_size": 16, "losses": ["coarse"]}],
                       "variants": [{"batch_size": 8, "losses": ["attention_uniform"], "seeds": [0]}]}},
    "down_weighting": {"loss": "attention", "weight_temperatures": [0.1], "seeds": [0, 1], "workers": 1},
    "convergence": {"factor": 1.5, "runs": [{"batch_size": 8, "losses": ["coarse"]}], "seeds": [0], "workers": 1},
    "sweep": {"epochs": 1, "batch_size": 8, "seed": 0, "workers": 1},
    "temperature": {"loss": "attention", "attn_temperatures": [0.1, 0.5], "weight_temperatures": [1.0],
                    "learnable_from": [[0.1, 1.0]]},
    "lr": {"runs": [{"batch_size": 8, "losses": ["coarse"]}], "factors": [0.5, 1.0]},
    "noise": {"losses": ["coarse"], "knobs": {"mismatched_narration": [0.1, 0.5]}},
    "width": {"losses": ["coarse"], "widths": [0.25, 0.5]},
    "replication": {"pretrain_seed": 7, "eval_seed": 8, "seeds": [0, 1], "workers": 1,
                    "runs": [{"batch_size": 8, "losses": ["coarse", "attention"]}, {"batch_size": 16, "losses": ["coarse"]}],
                    "pairs": [[["attention", 8], ["coarse", 16]], [["attention", 8], ["coarse", 8]]]},
    "regime": {"runs": [{"batch_size": 8, "losses": ["coarse", "attention"]}, {"batch_size": 16, "losses": ["coarse"]}],
               "budgets": [1, 2], "seeds": [0, 1], "workers": 1,
               "train": {"attn_temperature": 0.5, "weight_temperature": 10.0, "val_points": 1},
               "choice": {"budget": 2, "small": ["coarse", 8], "large": ["coarse", 16],
                          "headline": [["coarse", 8], ["attention", 8]]}},
}


def execute(root: Path, name: str, output: str | None = None, **parameters) -> nbformat.NotebookNode:
    output = root / "executed" / f"{output or name + '-' + parameters.get('kind', 'study')}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output), parameters=parameters,
                               kernel_name="python3", cwd=str(root), progress_bar=False)
    return nbformat.read(output, as_version=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-sweeps")
    (root / "executed").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")
        patch.setenv("OMP_NUM_THREADS", "1")
        (root / "dvc.yaml").write_text("stages: {}\n")
        (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
        generate_dataset(GenerationConfig(**PARAMS["data_pretrain"]), root / "data/pretrain", progress=False)
        generate_dataset(GenerationConfig(clips=80, seed=1, frames=4, size=32, distractors=0, filler_words=0.0,
                                          misaligned_frames=0.0, mismatched_narration=0.0),
                         root / "data/eval", vocab=root / "data/pretrain/vocab.json", progress=False)
        yield root


@pytest.fixture(scope="module")
def surface(world):
    execute(world, "sweep", kind="temperature", surface="", runs_dir="runs/temperature",
            out_csv="results/temperature/surface.csv")
    return world / "results/temperature/surface.csv"


def test_temperature_sweep_writes_the_grid_and_learnable_rows_on_validation(world, surface):
    table = pd.read_csv(surface)
    assert len(table) == 3 and list(table["learnable"]) == [False, False, True]
    assert table["t2v_R@10"].notna().all()
    details = json.loads(next((world / "runs/temperature").glob("*-ta0.1-tw1/config.json")).read_text())
    assert details["train"]["attn_temperature"] == 0.1


@pytest.mark.parametrize("kind, rows", [("lr", 2), ("noise", 2), ("width", 2)])
def test_each_sweep_writes_its_table_and_uses_the_chosen_temperatures(world, surface, kind, rows):
    out = f"results/{kind}/{kind}.csv"
    execute(world, "sweep", kind=kind, surface="results/temperature/surface.csv",
                       runs_dir=f"runs/{kind}", out_csv=out)
    table = pd.read_csv(world / out)
    assert len(table) == rows and table["t2v_R@10"].notna().all()


@pytest.fixture(scope="module")
def study(world, surface):
    # a learning-rate grid on validation that prefers twice the rule at batch 8 and has no batch 16
    grid = world / "results/lr/grid-for-study.csv"
    grid.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"loss": "coarse", "batch_size": 8, "lr_factor": f, "seed": 0, "t2v_R@10": v}
                  for f, v in ((0.5, 0.1), (1.0, 0.2), (2.0, 0.3))]).to_csv(grid, index=False)
    notebooks = [execute(world, "study", surface="results/temperature/surface.csv", lr_sweep=str(grid.relative_to(world)),
                         part=part, runs_dir=f"runs/study/{part}", results_root=f"runs/study/{part}",
                         output=f"study-{part}") for part in ("headline", "variants")]
    execute(world, "study_results", parts=["runs/study/headline", "runs/study/variants"], results_root=".")
    return notebooks[0], grid


def test_study_notebook_writes_every_run_file_and_time_to_target(world, surface, study):
    notebook, _ = study
    assert "b8 x 2" in "".join(str(output.get("text", "")) for cell in notebook.cells for output in cell.get("outputs", []))
    names = [f"{loss}-b{batch}-s{seed}" for loss, batch in (("coarse", 8), ("attention", 8), ("coarse", 16))
             for seed in (0, 1)] + ["attention_uniform-b8-s0"]
    for name in names:
        for folder in ("results/metrics", "results/compute", "results/details"):
            assert (world / folder / f"{name}.json").is_file(), (folder, name)
        assert (world / "results/curves" / f"{name}.csv").is_file()
    to_target = pd.read_csv(world / "results/compute/time_to_target.csv")
    assert sorted(to_target["run"]) == sorted(names)
    chosen = pd.read_csv(surface)
    best = chosen[~chosen["learnable"]].sort_values("t2v_R@10", ascending=False).iloc[0]
    config = json.loads((world / "runs/study/headline/attention-b8-s0/config.json").read_text())
    assert config["train"]["attn_temperature"] == pytest.approx(best["attn_temperature"])
    assert config["train"]["epochs"] == 2  # regime.choice.budget (2) times train.epochs (1)
    # the rule: peak lr = lr * sqrt(batch / 64), warmup over the same samples at every batch size
    compute = json.loads((world / "results/compute/coarse-b16-s0.json").read_text())
    assert compute["peak_lr"] == pytest.approx(0.002 * (16 / 64) ** 0.5)
    assert compute["warmup_steps"] == 1
    # batch 8 at the grid's factor 2
    compute = json.loads((world / "results/compute/coarse-b8-s0.json").read_text())
    assert compute["peak_lr"] == pytest.approx(2 * 0.002 * (8 / 64) ** 0.5)


def test_regime_notebooks_train_each_budget_and_read_the_map(world):
    for budget in (1, 2):
        execute(world, "regime", budget=budget, runs_dir=f"runs/regime/x{budget}",
                out_dir=f"results/regime/runs/x{budget}")
    runs = pd.read_csv(world / "results/regime/runs/x2/runs.csv")
    assert len(runs) == 6 and set(runs["epochs"]) == {2} and runs["digit_top1"].notna().all()
    assert (runs["steps"] * runs["batch_size"] == runs["samples_seen"]).all()
    config = json.loads((world / "runs/regime/x2/attention-b8-s1-x2/config.json").read_text())["train"]
    assert (config["epochs"], config["weight_temperature"], config["seed"]) == (2, 10.0, 1)
    curves = pd.read_csv(world / "results/regime/runs/x1/curves.csv")
    assert set(curves["run"]) == set(pd.read_csv(world / "results/regime/runs/x1/runs.csv")["run"])

    execute(world, "regime_map", regime_dir="results/regime")
    table = pd.read_csv(world / "results/regime/regime.csv")
    assert len(table) == 12 and sorted(set(table["budget"])) == [1.0, 2.0]
    checks = pd.read_csv(world / "results/regime/checks.csv")
    assert list(checks["condition"]) == ["premise", "digit learned", "converged"]
    assert checks["holds"].isna().iloc[2]  # the map has no budget 3: convergence is not measured
    assert (world / "results/regime/regime.png").stat().st_size > 10_000


def test_replication_notebook_compares_every_pair_in_four_settings(world, study):
    _, grid = study
    execute(world, "replication", surface="results/temperature/surface.csv", lr_sweep=str(grid.relative_to(world)),
            study_runs="runs/study/headline", runs_dir="runs/replication", out_dir="results/replication")
    runs = pd.read_csv(world / "results/replication/runs.csv")
    assert sorted(set(runs["setting"])) == sorted(["study data", "fresh pretraining data", "fresh evaluation data",
                                                   "both fresh"])
    assert (runs.groupby("setting").size() == 6).all() and runs["t2v_R@10"].notna().all()
    params = json.loads((world / "runs/replication/data/seed-7/params.json").read_text())
    assert params["seed"] == 7 and params["clips"] == 128
    assert json.loads((world / "runs/replication/data/eval-s8/params.json").read_text())["seed"] == 8
    # the study's runs on the study's data are its own numbers, not re-evaluated
    study_runs = pd.read_csv(world / "runs/study/headline/runs.csv").set_index("run")
    own = runs[runs["setting"] == "study data"].set_index("run")
    assert own["t2v_R@10"].to_dict() == study_runs.loc[own.index, "t2v_R@10"].to_dict()
    # the same settings on fresh pretraining data: same lr as the study run
    fresh, own_config = (json.loads((world / "runs" / path / "config.json").read_text())["train"]
                         for path in ("replication/coarse-b8-s0-d7", "study/headline/coarse-b8-s0"))
    assert (fresh["lr"], fresh["epochs"]) == (own_config["lr"], own_config["epochs"]) and fresh["epochs"] == 2
    table = pd.read_csv(world / "results/replication/replication.csv")
    assert len(table) == 2 * 4 and set(table["n"]) == {2}
    first = table[table["comparison"] == "attention b8 - coarse b8"].iloc[0]
    frame = runs[runs["setting"] == "study data"].set_index(["loss", "batch_size", "seed"])["t2v_R@10"]
    assert first["mean"] == pytest.approx(((frame["attention", 8] - frame["coarse", 8])).mean())


def test_down_weighting_notebook_trains_sharper_weights_and_pairs_them_with_uniform(world, study):
    _, grid = study
    execute(world, "down_weighting", surface="results/temperature/surface.csv", lr_sweep=str(grid.relative_to(world)),
            metrics_dir="results/metrics", study_runs="runs/study/headline", runs_dir="runs/down_weighting",
            out_dir="results/down_weighting")
    runs = pd.read_csv(world / "results/down_weighting/runs.csv")
    assert list(runs["run"]) == ["attention-b8-s0-tw0.1", "attention-b8-s1-tw0.1"]
    sharp, own = (json.loads((world / "runs" / path / "config.json").read_text())["train"]
                  for path in ("down_weighting/attention-b8-s0-tw0.1", "study/headline/attention-b8-s0"))
    assert sharp["weight_temperature"] == 0.1 and own["weight_temperature"] != 0.1
    for key in ("lr", "epochs", "attn_temperature", "batch_size", "seed"):  # everything else as the study's run
        assert sharp[key] == own[key], key
    mechanism = pd.read_csv(world / "results/down_weighting/mechanism.csv")
    assert sorted(set(mechanism["run"])) == ["attention-b8-s0", "attention-b8-s0-tw0.1", "attention-b8-s1",
                                             "attention-b8-s1-tw0.1"]
    assert mechanism["weight_temperature"].notna().all() and set(mechanism["weights"]) == {"phrases", "cells"}
    table = pd.read_csv(world / "results/down_weighting/down_weighting.csv").set_index("source")
    assert sorted(table.index) == ["down_weighting", "study"]
    row = table.loc["down_weighting"]
    uniform = json.loads((world / "results/metrics/attention_uniform-b8-s0.json").read_text())
    value = runs.set_index("run").loc["attention-b8-s0-tw0.1", "t2v_R@10"]
    assert row["n"] == 1 and row["difference"] == pytest.approx(value - uniform["t2v_R@10"])



def test_convergence_notebook_trains_longer_runs_and_pairs_them_with_the_study(world, study):
    _, grid = study
    execute(world, "convergence", surface="results/temperature/surface.csv", lr_sweep=str(grid.relative_to(world)),
            metrics_dir="results/metrics", runs_dir="runs/convergence", out_dir="results/convergence")
    runs = pd.read_csv(world / "results/convergence/runs.csv")
    assert list(runs["run"]) == ["coarse-b8-s0-x1.5"] and list(runs["factor"]) == [1.5]
    longer, own = (json.loads((world / "runs" / path / "config.json").read_text())["train"]
                   for path in ("convergence/coarse-b8-s0-x1.5", "study/headline/coarse-b8-s0"))
    assert (longer["epochs"], own["epochs"]) == (3, 2)  # 1.5 x the study's 2 epochs
    for key in ("lr", "batch_size", "seed", "warmup_samples"):  # everything else as the study's run
        assert longer[key] == own[key], key
    table = pd.read_csv(world / "results/convergence/convergence.csv")
    study_value = json.loads((world / "results/metrics/coarse-b8-s0.json").read_text())["t2v_R@10"]
    assert len(table) == 1 and table["n"].iloc[0] == 1
    assert table["gain"].iloc[0] == pytest.approx(runs["t2v_R@10"].iloc[0] - study_value)
