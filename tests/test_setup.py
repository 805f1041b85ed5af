"""The environment files agree with each other, and the command line is wired."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = {_name(r) for r in [*project["dependencies"], *extras["study"], *extras["test"]]} - {"fgmm-lib"}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r) for r in pip_section if not r.startswith("-")}
    assert listed == declared, f"only in environment.yml: {listed - declared}; only in pyproject.toml: {declared - listed}"
    assert any(r.startswith("-e .") for r in pip_section), "environment.yml must install the package itself"


def test_the_library_installs_without_the_study_tools():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert not core & {"dvc", "papermill", "jupyterlab", "matplotlib", "seaborn", "triton"}, core
    assert {"dvc", "papermill", "jupyterlab", "matplotlib"} <= {_name(r) for r in project["optional-dependencies"]["study"]}


def test_constraints_pin_every_declared_dependency_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_name(name)] = version
    for requirement in project["dependencies"]:
        assert _name(requirement) in pins, f"constraints.txt does not pin {requirement}"
    assert pins["torch"] == "2.13.0"


def test_console_script_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "fgmm_lib.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("generate", "pretrain", "evaluate", "bench-loss"):
        assert command in out.stdout


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make repro" in readme
    assert "make test" in ci
