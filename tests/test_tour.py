"""notebooks/tour.ipynb, executed through papermill at toy size from the repository root.

The tour makes its own data and run in ``workdir`` and reads the study's committed results from
``results/``; these tests run it with both present and with the results absent, and check that what it
reads is committed in git.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "notebooks" / "tour.ipynb"
KERNEL = "python3"
#: Toy sizes: 128 pretraining clips hold every colour, digit and action word in the train split's vocabulary.
TOY = {"clips": 128, "eval_clips": 64, "frames": 4, "size": 32, "epochs": 1, "batch_size": 8, "dim": 16,
       "width": 0.25, "attention_clips": 1}
#: What the tour reads from the results folder (section 5 and the summary).
STUDY_FILES = ("ablation/comparison.csv", "ablation/batch_size.png")


def run_tour(tmp_path: Path, monkeypatch, **parameters) -> tuple[nbformat.NotebookNode, Path]:
    """Execute the tour from the repository root with the toy sizes; return it and its workdir."""
    # the kernel inherits these: no display needed, one thread on a small shared machine
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    workdir = tmp_path / "tour"
    output = tmp_path / "tour.ipynb"
    papermill.execute_notebook(str(TOUR), str(output), parameters={**TOY, "workdir": str(workdir), **parameters},
                               kernel_name=KERNEL, cwd=str(ROOT), progress_bar=False)
    return nbformat.read(output, as_version=4), workdir


def texts(notebook: nbformat.NotebookNode) -> str:
    """Every text output of the executed notebook (streams, markdown, plain-text reprs), joined."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output["text"])
            data = output.get("data", {})
            parts.extend(data[kind] for kind in ("text/markdown", "text/plain") if kind in data)
    return "\n".join(parts)


def images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.integration
def test_tour_trains_evaluates_and_shows_the_study(tmp_path, monkeypatch):
    executed, workdir = run_tour(tmp_path, monkeypatch)
    run = workdir / "runs" / "attention-b8-s0"
    for name in ("config.json", "log.jsonl", "checkpoint.pt", "compute.json"):
        assert (run / name).is_file(), name
    assert (workdir / "data" / "pretrain" / "frames.npy").is_file() and (workdir / "data" / "eval" / "frames.npy").is_file()
    shown = texts(executed)
    # the evaluation: every metric beside its chance level, on the test split
    assert "test clips" in shown and "text→video R@10" in shown and "pointing accuracy" in shown
    # the committed study's headline table and answer, and the summary beside it
    large = yaml.safe_load((ROOT / "params.yaml").read_text())["regime"]["choice"]["large"]
    assert "## The headline" in shown and re.search(r"\| attention \| \d+ \|", shown)
    assert f"{large[0]} b{large[1]} [95% CI]" in shown  # against the study's large-batch reference
    assert f"does a fine-grained loss at batch 8 reach `{large[0]}` at batch {large[1]}" in shown
    assert "this tour [95% CI]" in shown and re.search(r"study: attention at batch 8, \d+ seeds", shown)
    assert images(executed) == 3  # loss curve, attention maps, the committed batch-size figure


@pytest.mark.integration
def test_tour_says_so_when_the_results_are_absent(tmp_path, monkeypatch):
    empty = tmp_path / "no-results"
    empty.mkdir()
    executed, workdir = run_tour(tmp_path, monkeypatch, results_dir=str(empty))
    assert (workdir / "runs" / "attention-b8-s0" / "checkpoint.pt").is_file()
    shown = texts(executed)
    assert f"The study's results are absent from {empty}/" in shown
    assert "## The headline" not in shown and "study: attention" not in shown
    assert "this tour [95% CI]" in shown
    assert images(executed) == 2  # loss curve and attention maps only


def test_what_the_tour_reads_is_committed():
    git = shutil.which("git")
    if git is None or subprocess.run([git, "-C", str(ROOT), "rev-parse", "--git-dir"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    tracked = set(subprocess.run([git, "-C", str(ROOT), "ls-files", "results"], capture_output=True, text=True,
                                 check=True).stdout.split())
    missing = [f"results/{name}" for name in STUDY_FILES if f"results/{name}" not in tracked]
    assert not missing, f"the tour reads {missing}, which git does not track"
    metrics = [name for name in tracked if name.startswith("results/metrics/") and name.endswith(".json")]
    assert any(name.startswith("results/metrics/coarse-b256-") for name in metrics), "no committed coarse b256 run"
    assert any(name.startswith("results/metrics/attention-b8-") for name in metrics), "no committed attention b8 run"
