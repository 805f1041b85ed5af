"""The DVC pipeline (dvc.yaml): each stage depends on exactly the fgmm_lib modules its command
imports, its plots are defined on their data, and a fresh copy of the repository can be queried.

Which modules a stage imports is read from the source (tests/package_imports.py): every import of an
fgmm_lib module in the stage's entry code (the notebook's code cells; for ``fgmm <command>``, the
command line's ``main`` module and the module of that command), then transitively every fgmm_lib
import in those modules, function-level ones included.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from package_imports import closure, files, imported_modules

from fgmm_lib.cli.main import COMMANDS
from fgmm_lib.losses.scores import LOSSES
from fgmm_lib.study.results import METRICS

ROOT = Path(__file__).resolve().parent.parent
DVC = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))


def notebook_imports(path: Path) -> set[str]:
    notebook = nbformat.read(path, as_version=4)
    modules: set[str] = set()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            modules |= imported_modules(ast.parse(cell.source))
    return modules


def cli_imports(command: str) -> set[str]:
    """What ``fgmm <command>`` imports: the command line's main module and the command's own module."""
    return {"fgmm_lib.cli.main", COMMANDS[command][0]}


def stage_commands(stage: dict) -> list[str]:
    cmd = stage["cmd"]
    return cmd if isinstance(cmd, list) else [cmd]


def stage_imports(stage: dict) -> set[str]:
    """The fgmm_lib files a stage's commands run."""
    entry: set[str] = set()
    for cmd in stage_commands(stage):
        for notebook in re.findall(r"papermill .*?(notebooks/\S+\.ipynb)", cmd):
            entry |= notebook_imports(ROOT / notebook)
        for command in re.findall(r"(?:^|&&\s*)fgmm (\S+)", cmd):
            entry |= cli_imports(command)
    return files(closure(entry))


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


STAGES = dvc_yaml()["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_exactly_the_modules_it_imports(name):
    stage = STAGES[name].get("do", STAGES[name])  # a foreach stage's body
    listed = {str(dep) for dep in stage["deps"] if str(dep).startswith("fgmm_lib/")}
    imported = stage_imports(stage)
    assert imported, f"stage {name} runs no fgmm_lib code?"
    assert listed == imported, (f"stage {name}: deps list {sorted(listed)}, its command imports {sorted(imported)}; "
                                f"missing {sorted(imported - listed)}, not imported {sorted(listed - imported)}")
    for cmd in stage_commands(stage):
        for notebook in re.findall(r"(notebooks/\S+\.ipynb)", cmd):
            assert notebook in stage["deps"], f"stage {name} runs {notebook} but does not depend on it"


def test_each_stage_depends_on_what_decides_its_numbers():
    deps = {name: {str(dep) for dep in STAGES[name].get("do", STAGES[name])["deps"]} for name in STAGES}
    for name in ("data_pretrain", "data_eval"):  # data: the data code, the command line, the two leaves
        assert all(dep.startswith(("fgmm_lib/data/", "fgmm_lib/cli/", "fgmm_lib/io.py", "fgmm_lib/config.py"))
                   for dep in deps[name] if dep.startswith("fgmm_lib/")), sorted(deps[name])
    for name in STAGES:  # on a CPU the kernels never run: only the loss benchmark (which compiles them) names them
        kernels = {dep for dep in deps[name] if dep.startswith("fgmm_lib/kernels/")}
        assert not kernels or name == "bench_loss", (name, kernels)
        benches = {dep for dep in deps[name] if dep.startswith("fgmm_lib/bench/")}
        assert not benches or name.startswith("bench_"), (name, benches)
    for name in ("study", "temperature", "sweep", "down_weighting", "data_pretrain", "data_eval"):  # training draws nothing
        assert "fgmm_lib/study/plots.py" not in deps[name] and "fgmm_lib/study/report.py" not in deps[name], name
    for name in ("ablation", "attention_maps", "report"):  # report stages: no training loop
        assert "fgmm_lib/training/loop.py" not in deps[name], name


def test_the_closure_follows_function_level_imports_and_packages():
    assert closure({"fgmm_lib.data.importers"}) >= {"fgmm_lib.data", "fgmm_lib.data.importers",
                                                     "fgmm_lib.data.video_io", "fgmm_lib.data.dataset"}
    assert "fgmm_lib.study.plots" not in closure({"fgmm_lib.training.loop"})
    assert not any(name.startswith("fgmm_lib.kernels") for name in closure({"fgmm_lib.training.loop"}))
    assert "fgmm_lib.kernels.triton_scores" in closure({"fgmm_lib.bench.kernel_report"})


def test_supervised_plot_names_every_supervised_stage_output():
    plot = next(next(iter(entry.values())) for entry in dvc_yaml()["plots"]
                if isinstance(entry, dict) and "supervised" in next(iter(entry)))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["supervised"]
    expected = {f"results/supervised/digit-{data}-{pooling}/curve.csv"
                for data in params["digit_data"] for pooling in params["digit_poolings"]}
    expected |= {f"results/supervised/{attribute}-eval-mean/curve.csv" for attribute in params["reference"]}
    assert set(plot["y"]) == expected and set(plot["y"].values()) == {"test_top1"}


def test_top_level_plots_are_defined_on_the_per_loss_csv_files():
    plots = dvc_yaml()["plots"]
    defined = [next(iter(entry.values())) for entry in plots if isinstance(entry, dict)]
    assert defined, "dvc.yaml has no plot defined on data"
    for plot in defined:
        assert plot["x"] == "batch_size" or plot["template"] == "bar_horizontal" or all(
            path.startswith("results/supervised/") for path in plot["y"])
        for path, column in plot["y"].items():
            found = re.fullmatch(r"results/ablation/by_loss/(\w+)\.csv", path)
            if found:
                assert found.group(1) in LOSSES and column in METRICS, (path, column)
    t2v = next(plot for plot in defined if plot["y"] and "t2v_R@1" in plot["y"].values())
    parts = yaml.safe_load((ROOT / "params.yaml").read_text())["study"]["runs"]
    study_losses = {loss for groups in parts.values() for group in groups for loss in group["losses"]}
    assert sorted(Path(path).stem for path in t2v["y"]) == sorted(study_losses)  # one line per loss of the study


# ---------------------------------------------------------------------------------------------
# a fresh copy of the repository
# ---------------------------------------------------------------------------------------------


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(DVC).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([DVC, *args], cwd=root, env=environment, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """The repository's files as git sees them (tracked and new, nothing ignored), in a new git repository:
    no data, runs or DVC cache, as after a clone."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    copy = tmp_path_factory.mktemp("fresh") / "repo"
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(git + ["add", "-A"], cwd=copy, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "copy"], cwd=copy, check=True)
    return copy


@pytest.mark.slow
def test_fresh_copy_status_and_dry_run(fresh_copy):
    status = _dvc(fresh_copy, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    # nothing is produced in a fresh copy, so every stage would run: --force lists them all without
    # hashing dependencies that upstream stages have not produced yet
    dry = _dvc(fresh_copy, "repro", "--dry", "--force")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for name in ("data_pretrain", "data_eval", "temperature", "sweep@noise", "lr", "study@headline", "study@variants",
                 "study_results", "ablation",
                 "attention_maps", "report"):
        assert f"Running stage '{name}'" in dry.stdout, name


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="DVC 3.67 hashes every dependency for its run cache before a dry run and "
                                       "fails on one that an upstream stage has not produced yet (treeverse/dvc#9818)")
def test_plain_dry_run_in_a_fresh_copy(fresh_copy):
    dry = _dvc(fresh_copy, "repro", "--dry")
    assert dry.returncode == 0, dry.stdout + dry.stderr


@pytest.mark.slow
def test_metrics_show_fits_a_screen(fresh_copy):
    files = sorted((fresh_copy / "results/metrics").glob("*.json"))
    assert files and all(set(json.loads(path.read_text())) <= set(METRICS) for path in files)  # headline metrics only
    shown = _dvc(fresh_copy, "metrics", "show")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    # one line per run; the widest line is the header (paths up to results/metrics/attention_floor-b8-s0.json)
    assert len(lines) == len(files) + 1 and max(len(line) for line in lines) <= 205, shown.stdout
    assert "t2v_R@1" in lines[0] and "compute" not in lines[0] and "config" not in lines[0]
