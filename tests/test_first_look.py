"""A first look in a fresh clone: every notebook run with its defaults either works (the tour, the
report, the batch ablation: they read committed results) or stops with one line naming the missing
input and the command that makes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import papermill
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration

#: notebook -> (the input its defaults miss in a fresh clone, the command the line names)
STOPS = {
    "pretrain": ("data/pretrain", "dvc repro data_pretrain"),
    "sweep": ("data/pretrain", "dvc repro data_pretrain"),
    "study": ("data/pretrain", "dvc repro data_pretrain"),
    "attention_maps": ("runs/study/headline/attention-b8-s0", "dvc repro study@headline"),
    "evaluate": ("runs/demo", "fgmm pretrain --out runs/demo"),
    "inspect_run": ("runs/demo", "fgmm pretrain --out runs/demo"),
}


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """What a clone holds that the notebooks read (no data/, runs/ or DVC cache)."""
    copy = tmp_path_factory.mktemp("clone")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / "notebooks", copy / "notebooks")
    return copy


@pytest.mark.parametrize("name", sorted(STOPS))
def test_a_notebook_without_its_inputs_stops_with_one_line(name, fresh_clone, tmp_path, monkeypatch):
    missing, command = STOPS[name]
    monkeypatch.chdir(fresh_clone)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        papermill.execute_notebook(str(fresh_clone / "notebooks" / f"{name}.ipynb"), str(tmp_path / "out.ipynb"),
                                   kernel_name="python3", progress_bar=False, cwd=str(fresh_clone))
    error = raised.value
    assert error.ename == "MissingInput", (error.ename, error.evalue)
    assert missing in error.evalue and command in error.evalue, error.evalue
    assert len(error.traceback) == 1, error.traceback  # one line, no traceback
    assert not (fresh_clone / "runs").exists() and not (fresh_clone / "results").exists()
