"""The DVC pipeline (dvc.yaml): each stage depends on exactly the fgmm_lib modules its command
imports, its plots are defined on their data, and a fresh copy of the repository can be queried.

Which modules a stage imports is read from the source with :mod:`ast`, as :mod:`modulefinder`
does: every ``import`` of an fgmm_lib module anywhere in the stage's entry code (the notebook's
code cells; for ``fgmm <command>``, the ``cli`` module, its ``build_parser`` and the command's
handler), then transitively every fgmm_lib import anywhere in those modules, function-level ones
included (a module a function imports runs when that function does). The package's
``__init__.py`` (a docstring and the version) is left out.
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

from fgmm_lib.losses import LOSSES
from fgmm_lib.results import METRICS, headline_metrics

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fgmm_lib"
DVC = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))


def _imported_modules(tree: ast.AST) -> set[str]:
    """fgmm_lib module names (``"train"``) imported anywhere in ``tree``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "fgmm_lib":
                names = [f"fgmm_lib.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "fgmm_lib" and len(parts) > 1 and (PACKAGE / f"{parts[1]}.py").is_file():
                found.add(parts[1])
    return found


def _module_tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{name}.py").read_text())


def closure(modules: set[str], read: set[str] = frozenset()) -> set[str]:
    """``modules`` and every fgmm_lib module they import, transitively; the modules in ``read``
    (whose imports the caller has read already, like the cli's) are not read again."""
    seen: set[str] = set(read)
    todo = list(modules - seen)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imported_modules(_module_tree(name)) - seen)
    return seen


def notebook_imports(path: Path) -> set[str]:
    notebook = nbformat.read(path, as_version=4)
    modules: set[str] = set()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            modules |= _imported_modules(ast.parse(cell.source))
    return modules


def cli_imports(command: str) -> set[str]:
    """What ``fgmm <command>`` imports: the cli module's own imports, ``build_parser`` and ``main``,
    and the command's handler ``_cmd_<command>``."""
    tree = _module_tree("cli")
    modules = {"cli"}
    handler = "_cmd_" + command.replace("-", "_")
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules |= _imported_modules(node)
        elif isinstance(node, ast.FunctionDef) and node.name in ("build_parser", "main", handler):
            modules |= _imported_modules(node)
    return modules


def stage_commands(stage: dict) -> list[str]:
    cmd = stage["cmd"]
    return cmd if isinstance(cmd, list) else [cmd]


def stage_imports(stage: dict) -> set[str]:
    entry: set[str] = set()
    read: set[str] = set()
    for cmd in stage_commands(stage):
        for notebook in re.findall(r"papermill .*?(notebooks/\S+\.ipynb)", cmd):
            entry |= notebook_imports(ROOT / notebook)
        for command in re.findall(r"(?:^|&&\s*)fgmm (\S+)", cmd):
            entry |= cli_imports(command)
            read.add("cli")
    return closure(entry, read)


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


STAGES = dvc_yaml()["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_exactly_the_modules_it_imports(name):
    stage = STAGES[name].get("do", STAGES[name])  # a foreach stage's body
    listed = {Path(dep).stem for dep in stage["deps"] if str(dep).startswith("fgmm_lib/")}
    imported = stage_imports(stage)
    assert imported, f"stage {name} runs no fgmm_lib code?"
    assert listed == imported, (f"stage {name}: deps list {sorted(listed)}, its command imports {sorted(imported)}; "
                                f"missing {sorted(imported - listed)}, not imported {sorted(listed - imported)}")
    for cmd in stage_commands(stage):
        for notebook in re.findall(r"(notebooks/\S+\.ipynb)", cmd):
            assert notebook in stage["deps"], f"stage {name} runs {notebook} but does not depend on it"


def test_training_and_evaluation_do_not_depend_on_plots_or_analysis():
    for name in ("study", "temperature", "sweep", "data_pretrain", "data_eval"):
        deps = set(STAGES[name].get("do", STAGES[name])["deps"])
        assert not deps & {"fgmm_lib/viz.py", "fgmm_lib/analysis.py"}, name


def test_the_closure_follows_function_level_imports():
    assert closure({"runs"}) >= {"runs", "train", "data", "models", "losses"}  # load_run imports them when called
    assert "viz" not in closure({"train"}) and "analysis" not in closure({"evaluate"})


def test_top_level_plots_are_defined_on_the_per_loss_csv_files():
    plots = dvc_yaml()["plots"]
    defined = [next(iter(entry.values())) for entry in plots if isinstance(entry, dict)]
    assert defined, "dvc.yaml has no plot defined on data"
    for plot in defined:
        assert plot["x"] == "batch_size" or plot["template"] == "bar_horizontal"
        for path, column in plot["y"].items():
            found = re.fullmatch(r"results/ablation/by_loss/(\w+)\.csv", path)
            if found:
                assert found.group(1) in LOSSES and column in METRICS, (path, column)
    t2v = next(plot for plot in defined if plot["y"] and "t2v_R@1" in plot["y"].values())
    groups = yaml.safe_load((ROOT / "params.yaml").read_text())["study"]["runs"]
    study_losses = {loss for group in groups for loss in group["losses"]}
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
    for name in ("data_pretrain", "data_eval", "temperature", "sweep@noise", "study", "ablation",
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
