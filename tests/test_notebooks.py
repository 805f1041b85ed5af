"""Every study notebook, executed through papermill on a toy world, and the stored notebooks' hygiene.

The toy world (built once for the module in a temporary folder) is a repository root in
miniature: dvc.yaml, a params.yaml with a tiny `train` section, tiny pretraining and evaluation
data, and runs trained and evaluated in-process for the notebooks that gather results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import torch
import yaml

from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.evaluation.protocol import evaluate
from fgmm_lib.runs.config import TrainConfig
from fgmm_lib.study.notebook import declared_parameters
from fgmm_lib.study.results import METRICS, compute_path, details_path, metrics_path, write_metrics
from fgmm_lib.training.loop import pretrain

pytestmark = pytest.mark.integration

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "python3"
TRAIN = {"epochs": 1, "dim": 16, "width": 0.25}
#: The parameters of every notebook and their defaults: the pipeline contract (dvc.yaml passes them).
CONTRACT = {
    "tour": {"workdir": "", "clips": 800, "eval_clips": 500, "frames": 8, "size": 32, "loss": "attention",
             "epochs": 2, "batch_size": 16, "dim": 64, "width": 0.5, "seed": 0, "attention_clips": 2,
             "results_dir": "results", "params_file": "params.yaml"},
    "pretrain": {"params_file": "params.yaml", "data": "data/pretrain", "out": "runs/demo", "loss": "attention",
                 "batch_size": 64, "seed": 0, "overrides": {}},
    "evaluate": {"run": "runs/demo", "data": "data/eval", "metrics_out": "results/metrics/demo.json",
                 "details_out": "results/details/demo.json", "compute_out": "results/compute/demo.json",
                 "split": "test"},
    "inspect_run": {"run": "runs/demo", "details": "results/details/demo.json"},
    "batch_ablation": {"metrics_dir": "results/metrics", "compute_dir": "results/compute", "params_file": "params.yaml",
                       "out_dir": "results/ablation"},
    "attention_maps": {"runs": ["runs/study/headline/attention-b8-s0", "runs/study/headline/max-b8-s0",
                                "runs/study/variants/mean-b8-s0"], "data": "data/eval",
                       "clips": 4, "metrics_dir": "results/metrics", "out_dir": "results/attention"},
    "report": {"results_dir": "results", "params_file": "params.yaml"},
    "study": {"params_file": "params.yaml", "data": "data/pretrain", "eval_data": "data/eval",
              "surface": "results/temperature/surface.csv", "lr_sweep": "results/lr/lr.csv", "part": "headline",
              "runs_dir": "runs/study/headline", "results_root": "runs/study/headline"},
    "study_results": {"params_file": "params.yaml", "parts": ["runs/study/headline", "runs/study/variants"],
                      "results_root": "."},
    "sweep": {"params_file": "params.yaml", "kind": "noise", "data": "data/pretrain", "eval_data": "data/eval",
              "surface": "", "runs_dir": "runs/noise", "out_csv": "results/noise/noise.csv"},
    "regime": {"params_file": "params.yaml", "budget": 1.0, "data": "data/pretrain", "eval_data": "data/eval",
               "runs_dir": "runs/regime/x1", "out_dir": "results/regime/runs/x1"},
    "regime_map": {"params_file": "params.yaml", "regime_dir": "results/regime"},
    "replication": {"params_file": "params.yaml", "data": "data/pretrain", "eval_data": "data/eval",
                    "study_runs": "runs/study/headline", "surface": "results/temperature/surface.csv",
                    "lr_sweep": "results/lr/lr.csv", "runs_dir": "runs/replication", "out_dir": "results/replication"},
    "convergence": {"params_file": "params.yaml", "data": "data/pretrain", "eval_data": "data/eval",
                    "surface": "results/temperature/surface.csv", "lr_sweep": "results/lr/lr.csv",
                    "metrics_dir": "results/metrics", "runs_dir": "runs/convergence", "out_dir": "results/convergence"},
    "down_weighting": {"params_file": "params.yaml", "data": "data/pretrain", "eval_data": "data/eval",
                       "surface": "results/temperature/surface.csv", "lr_sweep": "results/lr/lr.csv",
                       "metrics_dir": "results/metrics", "study_runs": "runs/study/headline", "runs_dir": "runs/down_weighting",
                       "out_dir": "results/down_weighting"},
}
#: Runs trained and evaluated in-process: (loss, batch size, seed).
IN_PROCESS_RUNS = [(loss, batch_size, seed) for loss in ("coarse", "attention") for batch_size in (4, 8)
                   for seed in (0, 1)] + [("milnce", 8, 0), ("mean", 8, 0), ("max", 8, 0)]
#: The run evaluated through the evaluate notebook instead.
NOTEBOOK_EVALUATED = "max-b8-s1"


def execute(root: Path, name: str, **parameters) -> nbformat.NotebookNode:
    """Execute notebooks/<name>.ipynb from ``root`` with papermill; return the executed notebook."""
    output = root / "executed" / f"{name}-{len(list((root / 'executed').glob(f'{name}-*')))}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output), parameters=parameters,
                               kernel_name=KERNEL, cwd=str(root), progress_bar=False)
    return nbformat.read(output, as_version=4)


def images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def non_empty_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The toy repository root, with data, params and in-process runs and metrics."""
    root = tmp_path_factory.mktemp("toy-study")
    (root / "executed").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        # the kernels inherit these: no display needed, one thread each on a small machine
        patch.setenv("MPLBACKEND", "Agg")
        patch.setenv("OMP_NUM_THREADS", "1")
        (root / "dvc.yaml").write_text("stages: {}\n")
        (root / "params.yaml").write_text(yaml.safe_dump({"train": TRAIN, "study": {"batch_size": 8}}))
        # 128 pretraining clips: enough for the train split's vocabulary to hold every colour, digit and action word
        generate_dataset(GenerationConfig(clips=128, frames=4, size=32), root / "data/pretrain", progress=False)
        generate_dataset(GenerationConfig(clips=48, seed=1, frames=4, size=32, distractors=0, filler_words=0.0,
                                          misaligned_frames=0.0, mismatched_narration=0.0),
                         root / "data/eval", vocab=root / "data/pretrain/vocab.json", progress=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for loss, batch_size, seed in IN_PROCESS_RUNS + [("max", 8, 1)]:
                name = f"{loss}-b{batch_size}-s{seed}"
                config = TrainConfig(data=str(root / "data/pretrain"), out=str(root / "runs" / name), loss=loss,
                                     batch_size=batch_size, seed=seed, max_steps=4, **TRAIN)
                pretrain(config, progress=False)
                if name != NOTEBOOK_EVALUATED:
                    # relative paths, as the pipeline writes them
                    cwd = os.getcwd()
                    os.chdir(root)
                    try:
                        record = evaluate(f"runs/{name}", "data/eval", out=details_path(name),
                                          compute_out=compute_path(name), progress=False)
                        write_metrics(record, metrics_path(name))
                    finally:
                        os.chdir(cwd)
        finally:
            torch.set_num_threads(threads)
        yield root


# ---------------------------------------------------------------------------------------------
# the stored notebooks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_stored_notebook_is_clean_and_checks_its_parameters(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == KERNEL
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} is stored with outputs"
            assert cell.execution_count is None, f"{path.name} cell {index} is stored with an execution count"
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} must have exactly one cell tagged 'parameters', has {len(tagged)}"
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    follower = notebook.cells[tagged[0] + 1]
    assert "check_parameters(globals())" in follower.source and "use_project_root()" in follower.source
    assert declared_parameters(notebook.cells[tagged[0]].source) == CONTRACT[path.stem]


def test_every_notebook_of_the_contract_exists():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CONTRACT)


# ---------------------------------------------------------------------------------------------
# executed on the toy world
# ---------------------------------------------------------------------------------------------


def test_pretrain_notebook_trains_with_the_merged_config(world):
    executed = execute(world, "pretrain", data="data/pretrain", out="runs/notebook-run", loss="attention",
                       batch_size=8, seed=3, overrides={"lr": 0.001})
    run = world / "runs/notebook-run"
    for name in ("config.json", "log.jsonl", "checkpoint.pt", "compute.json"):
        assert (run / name).is_file(), name
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["loss"], train["batch_size"], train["seed"], train["lr"]) == ("attention", 8, 3, 0.001)
    assert (train["epochs"], train["dim"], train["width"]) == (1, 16, 0.25)  # from params.yaml's train section
    log = pd.read_json(run / "log.jsonl", lines=True)
    assert len(log) == json.loads((run / "compute.json").read_text())["steps"] > 0
    assert images(executed) == 0  # the pipeline's training stages draw nothing (notebooks/inspect_run.ipynb does)


def test_pretrain_notebook_refuses_overrides_of_its_own_parameters(world):
    with pytest.raises(papermill.PapermillExecutionError, match="overrides may not set \\['loss'\\]"):
        execute(world, "pretrain", out="runs/clash", batch_size=8, overrides={"loss": "max"})
    assert not (world / "runs/clash/checkpoint.pt").exists()


@pytest.fixture(scope="module")
def evaluated(world):
    name = NOTEBOOK_EVALUATED
    executed = execute(world, "evaluate", run=f"runs/{name}", data="data/eval", metrics_out=str(metrics_path(name)),
                       details_out=str(details_path(name)), compute_out=str(compute_path(name)), split="test")
    return executed, name


def test_evaluate_notebook_writes_metrics_details_and_compute(world, evaluated):
    executed, name = evaluated
    metrics = json.loads(metrics_path(name, world).read_text())
    assert sorted(metrics) == sorted(METRICS)  # the headline metrics only, flat
    assert 0 <= metrics["pointing"] <= 1 and 0 <= metrics["t2v_R@1"] <= 1
    details = json.loads(details_path(name, world).read_text())
    for key in ("loss", "split", "probe", "t2v", "t2i", "pointing", "temperatures"):
        assert key in details, f"the evaluation record lacks {key!r}"
    assert details["loss"] == "max" and details["split"] == "test"
    assert details["t2v"]["R@1"] == metrics["t2v_R@1"] and details["pointing"]["accuracy"] == metrics["pointing"]
    compute = json.loads(compute_path(name, world).read_text())
    assert (compute["loss"], compute["batch_size"], compute["seed"]) == ("max", 8, 1) and compute["steps"] > 0
    assert images(executed) == 0  # evaluation draws nothing: plot code reruns plot stages only


def test_inspect_run_notebook_draws_curves_recall_and_confusion(world, evaluated):
    _, name = evaluated
    executed = execute(world, "inspect_run", run=f"runs/{name}", details=str(details_path(name)))
    assert images(executed) == 3
    assert images(execute(world, "inspect_run", run=f"runs/{name}", details="")) == 1


@pytest.fixture(scope="module")
def ablation(world, evaluated):
    executed = execute(world, "batch_ablation", metrics_dir="results/metrics", compute_dir="results/compute",
                       out_dir="results/ablation")
    return executed, world / "results/ablation"


def test_batch_ablation_notebook_writes_tables_and_plot(ablation):
    executed, out = ablation
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == len(IN_PROCESS_RUNS) + 1
    assert {"run", "loss", "batch_size", "seed", "t2v_R@1", "t2i_R@10", "action_top1", "pointing", "colour_top1",
            "t2v_digit_R@1", "t2v_R@10_ci95_low"} <= set(runs.columns)
    assert NOTEBOOK_EVALUATED in set(runs["run"])
    summary = pd.read_csv(out / "batch_size.csv")
    assert list(summary.columns) == ["loss", "batch_size", "metric", "mean", "std", "n", "ci95_low", "ci95_high"]
    coarse = summary[(summary["loss"] == "coarse") & (summary["batch_size"] == 4) & (summary["metric"] == "t2v_R@1")]
    expected = runs[(runs["loss"] == "coarse") & (runs["batch_size"] == 4)]["t2v_R@1"]
    assert coarse["n"].item() == 2 and coarse["mean"].item() == pytest.approx(expected.mean())
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["batch_size"]) == {8}  # params.yaml's study batch size
    assert set(comparison["loss"]) == {"coarse", "milnce", "mean", "max", "attention"}
    assert non_empty_png(out / "batch_size.png")
    assert runs["compute_flops_per_step"].notna().all()  # read from results/compute
    by_loss = pd.read_csv(out / "by_loss" / "coarse.csv")  # the data of the DVC plots
    assert list(by_loss["batch_size"]) == [4, 8] and by_loss.loc[0, "t2v_R@1"] == pytest.approx(expected.mean())
    assert sorted(p.stem for p in (out / "by_loss").glob("*.csv")) == sorted(set(runs["loss"]))  # one per loss run
    assert images(executed) == 1


@pytest.fixture(scope="module")
def attention(world):
    executed = execute(world, "attention_maps", runs=["runs/attention-b8-s0", "runs/coarse-b8-s0", "runs/max-b8-s0"],
                       data="data/eval", clips=2, out_dir="results/attention")
    return executed, world / "results/attention"


def test_attention_maps_notebook_draws_runs_with_local_tokens(world, attention):
    executed, out = attention
    assert non_empty_png(out / "attention-b8-s0.png") and non_empty_png(out / "max-b8-s0.png")
    assert not (out / "coarse-b8-s0.png").exists()
    pointing = pd.read_csv(out / "pointing.csv")
    assert list(pointing.columns) == ["run", "loss", "pointing_accuracy", "chance", "clips"]
    assert list(pointing["run"]) == ["attention-b8-s0", "max-b8-s0"]
    assert pointing["pointing_accuracy"].between(0, 1).all() and pointing["chance"].between(0, 1).all()
    # read from the metrics files evaluation wrote, not recomputed
    stored = json.loads(metrics_path("max-b8-s0", world).read_text())["pointing"]
    assert pointing.set_index("run").loc["max-b8-s0", "pointing_accuracy"] == stored
    assert images(executed) == 2
    mechanism = pd.read_csv(out / "mechanism.csv")  # only the attention-form loss has outer weights to spread
    assert list(mechanism["run"]) == ["attention-b8-s0"] * 2 and list(mechanism["weights"]) == ["phrases", "cells"]
    assert mechanism["entropy_relative"].between(0, 1 + 1e-9).all()
    assert (mechanism["max_weight"] >= mechanism["uniform_weight"] - 1e-9).all()


def test_report_notebook_summarises_every_loss(world, ablation, attention):
    executed = execute(world, "report", results_dir="results", params_file="params.yaml")
    summary = (world / "results/report/summary.md").read_text()
    for loss in ("coarse", "milnce", "mean", "max", "attention"):
        assert f"| {loss} |" in summary, f"summary.md does not mention {loss}"
    assert "larger standard deviation" not in summary  # question 2 is read on intervals
    assert "](../ablation/batch_size.png)" in summary and "](../attention/attention-b8-s0.png)" in summary
    assert "Not answered by the current pipeline" in summary and "noise ablation" in summary
    assert "## The headline" in summary and "## 3. Noise ablation" in summary  # sections render without sweeps
    assert "GFLOPs per training step" in summary, "the compute section found no compute record in results/compute"
    assert "Not answered: it needs runs of `coarse` at batch 256" in summary  # the toy world has batches 4 and 8
    assert images(executed) >= 5  # comparison, ablation, compute, two attention maps


def fake_sweeps(results: Path) -> None:
    """Hand-made sweep tables, curves and a time-to-target table, as the pipeline writes them."""
    from fgmm_lib.runs.curves import CURVE_COLUMNS
    from fgmm_lib.study.curves import time_to_target

    def write(name, rows):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(results / name, index=False)

    metrics = {"t2v_R@10": 0.5, "digit_top1": 0.4}
    write("noise/noise.csv", [{"knob": knob, "level": level, "loss": loss, "batch_size": 8, "seed": 0, "run": "r",
                               **metrics, "t2v_R@10": 0.6 - 0.1 * level}
                              for knob in ("distractors", "filler_words") for level in (0, 1)
                              for loss in ("coarse", "max")])
    write("width/width.csv", [{"width": width, "loss": loss, "batch_size": 8, "seed": 0, "run": "r", **metrics}
                              for width in (0.5, 1.0) for loss in ("coarse", "attention")])
    write("temperature/surface.csv", [{"loss": "attention", "attn_temperature": a, "weight_temperature": w,
                                       "learnable": learnable, "batch_size": 8, "seed": 0, "run": "r", **metrics,
                                       "t2v_R@10": a + w, "final_attn_temperature": a, "final_weight_temperature": w}
                                      for a, w, learnable in ((0.1, 0.1, False), (0.1, 0.5, False),
                                                              (0.5, 0.1, False), (0.1, 0.1, True))])
    write("lr/lr.csv", [{"loss": "max", "batch_size": 8, "lr_factor": factor, "seed": 0, "run": "r", **metrics}
                        for factor in (0.5, 1.0, 2.0)])
    curves = pd.DataFrame([{"run": f"max-b8-s{seed}", "config_fingerprint": "f", "samples_seen": samples, "step": 1,
                            "epoch": 0, "val_t2v_r1": 0.1, "val_t2v_r5": 0.2, "val_t2v_r10": samples / 1000,
                            "wall_s": samples / 10, "loss": "max", "batch_size": 8, "seed": seed}
                           for seed in (0, 1) for samples in (100, 500, 1000)])
    for run, rows in curves.groupby("run"):
        write(f"curves/{run}.csv", rows[list(CURVE_COLUMNS)])
    times = time_to_target(curves, {run: {"flops_per_step": 1e9} for run in curves["run"]}, target=0.5)
    write("compute/time_to_target.csv", times)


def test_report_notebook_renders_the_sweeps_of_a_partial_pipeline(tmp_path):
    """No metrics at all, only the sweeps: every sweep section and figure renders, the rest says
    what is missing."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {**TRAIN, "attn_temperature": 0.1,
                                                                     "weight_temperature": 0.5},
                                                           "study": {"batch_size": 8}}))
    (tmp_path / "executed").mkdir()
    fake_sweeps(tmp_path / "results")
    executed = execute(tmp_path, "report", results_dir="results", params_file="params.yaml")
    summary = (tmp_path / "results/report/summary.md").read_text()
    for png in ("noise/noise.png", "width/width.png", "temperature/surface.png", "report/learning_curves.png"):
        assert non_empty_png(tmp_path / "results" / png), png
        assert f"](../{png})" in summary
    assert "`max`: text→video R@10 drops by 0.100 from distractors 0 to 1" in summary
    assert "The study's temperatures were not given: no check against the surface." in summary  # no study runs
    assert "The rule is confirmed for every loss and batch size (1)." in summary
    assert "Not flattened (gain >= 0.02): `max` b8" in summary
    assert "until validation text→video R@10 reaches 0.5" in summary
    assert "## The headline" in summary and "Not answered: it needs runs of `coarse` at batch 256" in summary
    answered = [line for line in summary.splitlines() if line.startswith("| 3. noise") or line.startswith("| 7b")]
    assert len(answered) == 2 and all("| yes |" in line for line in answered)
    assert images(executed) == 4


# ---------------------------------------------------------------------------------------------
# bad parameters fail at once, naming the parameter
# ---------------------------------------------------------------------------------------------


def test_unknown_parameter_fails_naming_it(world):
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute(world, "evaluate", batchsize=3)
    assert "unknown parameter(s) 'batchsize'" in str(error.value)


def test_ill_typed_parameter_fails_before_any_work(world):
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute(world, "pretrain", out="runs/ill-typed", batch_size="big")
    assert "parameter 'batch_size' must be a int" in str(error.value) and "'big'" in str(error.value)
    assert not (world / "runs/ill-typed").exists()
