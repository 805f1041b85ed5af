"""Small functions every study notebook calls first.

- :func:`use_project_root` moves the working directory to the repository root (the nearest
  parent holding ``dvc.yaml``), so that the paths in a notebook's parameters mean the same thing
  under papermill (run from the root) and in JupyterLab (opened with ``notebooks/`` as cwd).
- :func:`load_params` reads ``params.yaml`` (or one section of it) with clear errors.
- :func:`train_config` merges a parameters file's ``train`` section, overrides and a notebook's
  own parameters into one :class:`~fgmm_lib.runs.config.TrainConfig`.
- :func:`require_inputs` stops a notebook whose inputs do not exist yet with one line that names
  the missing input and the command that makes it (``dvc repro data_pretrain``).
- :func:`check_parameters` makes a papermill run with an unknown or ill-typed parameter fail at
  once, naming it, instead of running the whole notebook with a parameter that is silently
  ignored or used with the wrong type.

How :func:`check_parameters` finds the two cells it compares: IPython keeps the source of every
executed cell, in order, in the list ``In`` of the notebook's namespace. Papermill inserts its
injected cell (whose source starts with ``# Parameters``) directly after the cell tagged
``parameters`` and executes the notebook top to bottom, so in ``In`` the injected cell is the
last entry starting with that comment, and the declared parameters cell is the code cell executed
just before it. Both are parsed with :mod:`ast`: the names and literal defaults come from the
parameters cell's source; the injected names come from the injected cell's source, and their
values (already executed) from the namespace. When no injected cell is in ``In`` (the notebook
is run interactively, or papermill was given no parameters), there is nothing to check.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Mapping

from fgmm_lib.runs.config import TrainConfig

PROJECT_MARKER = "dvc.yaml"
INJECTED_HEADER = "# Parameters"


def project_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: the cwd) holding ``dvc.yaml``.

    Raises:
        FileNotFoundError: no such directory up to the filesystem root.
    """
    here = Path(start if start is not None else os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / PROJECT_MARKER).is_file():
            return candidate
    raise FileNotFoundError(f"no {PROJECT_MARKER} in {here} or any of its parents: not inside the fgmm project")


def use_project_root(start: str | Path | None = None) -> Path:
    """Change the working directory to :func:`project_root` and return it."""
    root = project_root(start)
    os.chdir(root)
    return root


class MissingInput(FileNotFoundError):
    """A notebook input that does not exist yet. IPython shows its one line, without a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def _stage_making(path: Path, pipeline: Path) -> str | None:
    """The name of the pipeline stage whose outputs hold ``path`` (or a folder above it)."""
    import yaml

    if not pipeline.is_file():
        return None
    stages = (yaml.safe_load(pipeline.read_text()) or {}).get("stages", {})
    target = path.as_posix().rstrip("/")
    for name, stage in stages.items():
        body = stage.get("do", stage)
        items = stage.get("foreach", [None]) if "do" in stage else [None]
        for item in items if isinstance(items, list) else [None]:
            for out in body.get("outs", []) + body.get("plots", []):
                out = next(iter(out)) if isinstance(out, dict) else out
                if item is not None:
                    out = out.replace("${item}", str(item))
                if "${" in out:
                    continue
                if target == out or target.startswith(out.rstrip("/") + "/") or out.startswith(target + "/"):
                    return name if item is None else f"{name}@{item}"
    return None


def require_inputs(*paths: str | Path, made_by: Mapping[str, str] | None = None) -> None:
    """Stop with :class:`MissingInput` (one line) at the first of ``paths`` that does not exist.

    The line names the path and the command that makes it: ``made_by[path]`` when given, else
    ``dvc repro STAGE`` for the stage of ``dvc.yaml`` (in the cwd) whose outputs hold it. Empty
    paths (an optional input left unset) are skipped.
    """
    for path in paths:
        if not str(path) or Path(path).exists():
            continue
        how = (made_by or {}).get(str(path))
        if how is None:
            stage = _stage_making(Path(path), Path(PROJECT_MARKER))
            how = f"`dvc repro {stage}`" if stage else "the notebook or command that writes it"
        raise MissingInput(f"{path} does not exist yet: make it with {how}")


def load_params(path: str | Path = "params.yaml", section: str | None = None) -> dict[str, Any]:
    """The mapping in a YAML parameters file, or its ``section`` (a mapping too).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid YAML, is not a mapping, or lacks ``section`` (naming it).
    """
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"parameters file {file} does not exist")
    try:
        content = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"parameters file {file} is not valid YAML: {error}") from error
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise ValueError(f"parameters file {file} must hold a mapping, got {type(content).__name__}")
    if section is None:
        return content
    if section not in content:
        raise ValueError(f"parameters file {file} has no section {section!r}; it has {sorted(content)}")
    values = content[section] if content[section] is not None else {}
    if not isinstance(values, dict):
        raise ValueError(f"section {section!r} of {file} must be a mapping, got {type(values).__name__}")
    return dict(values)


def train_config(params_file: str | Path = "params.yaml", section: str = "train",
                 overrides: Mapping[str, Any] | None = None, **fixed: Any) -> Any:
    """The :class:`~fgmm_lib.runs.config.TrainConfig` of a run: ``section`` of ``params_file``, then
    ``overrides`` (any other field, for this run only), then ``fixed`` (the notebook's own
    parameters: data, out, loss, batch_size, seed), each one replacing the former's values.

    Raises:
        ValueError: ``overrides`` sets a field of ``fixed`` (they are set directly), or a value is
            not valid for its field (naming it).
        FileNotFoundError: ``params_file`` does not exist.
    """

    overrides = dict(overrides or {})
    clashes = sorted(set(overrides) & set(fixed))
    if clashes:
        raise ValueError(f"overrides may not set {clashes}: they are parameters of this notebook, set them directly")
    return TrainConfig.from_dict({**load_params(params_file, section=section), **overrides, **fixed})


def declared_parameters(source: str) -> dict[str, Any]:
    """Names and literal default values assigned at the top level of a parameters cell.

    Comments, blank lines and docstrings are allowed; every statement must be a plain
    assignment of a literal (``name = 3``, ``name: int = 3``, ``a = b = "x"``).

    Raises:
        ValueError: a statement that is not a literal assignment, naming its line.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise ValueError(f"the parameters cell is not valid Python: {error}") from error
    declared: dict[str, Any] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a bare string: documentation
        if isinstance(statement, ast.Assign):
            targets, value_node = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value_node = [statement.target], statement.value
        else:
            raise ValueError(
                f"the parameters cell may hold only literal assignments; line {statement.lineno} is "
                f"{ast.unparse(statement)!r}"
            )
        try:
            value = ast.literal_eval(value_node)
        except ValueError as error:
            raise ValueError(
                f"the parameters cell may hold only literal assignments; line {statement.lineno} assigns "
                f"{ast.unparse(value_node)!r}, which is not a literal"
            ) from error
        for target in targets:
            if not isinstance(target, ast.Name):
                raise ValueError(
                    f"the parameters cell may assign only plain names; line {statement.lineno} assigns "
                    f"{ast.unparse(target)!r}"
                )
            declared[target.id] = value
    return declared


def _assigned_names(source: str) -> list[str]:
    """Names assigned at the top level of papermill's injected cell, in order."""
    names: list[str] = []
    for statement in ast.parse(source).body:
        targets = statement.targets if isinstance(statement, ast.Assign) else (
            [statement.target] if isinstance(statement, ast.AnnAssign) else [])
        names.extend(target.id for target in targets if isinstance(target, ast.Name))
    return names


def _type_name(value: Any) -> str:
    return type(value).__name__


def _compatible(value: Any, default: Any) -> bool:
    """Whether ``value`` may replace ``default``: same type, an int for a float, anything for None."""
    if default is None:
        return True
    if isinstance(default, float) and type(value) is int:
        return True
    if type(value) is not type(default):
        return False
    if isinstance(default, (list, tuple)) and default:
        element_types = {type(element) for element in default}
        if len(element_types) == 1:
            example = default[0]
            return all(_compatible(element, example) for element in value)
    return True


def check_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Fail at once if papermill injected a parameter the notebook does not declare, or one of the wrong type.

    Call it as ``check_parameters(globals())`` in the first code cell after the parameters cell.
    A declared default of None accepts any value; an int is accepted where a float is declared;
    a list whose default elements share one type checks the injected elements against it.

    Returns:
        The injected parameters and their values ({} when nothing was injected, e.g. interactively).

    Raises:
        ValueError: naming every unknown parameter (with the declared ones) and every ill-typed
            one (with the declared and the injected type).
    """
    history = namespace.get("In")
    if not isinstance(history, (list, tuple)):
        return {}
    injected_at = None
    for position in range(len(history) - 1, -1, -1):
        if isinstance(history[position], str) and history[position].lstrip().startswith(INJECTED_HEADER):
            injected_at = position
            break
    if injected_at is None:
        return {}
    declared_source = history[injected_at - 1] if injected_at > 0 else ""
    declared = declared_parameters(declared_source if isinstance(declared_source, str) else "")
    injected = {name: namespace.get(name) for name in _assigned_names(history[injected_at])}

    problems: list[str] = []
    unknown = [name for name in injected if name not in declared]
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        problems.append(
            f"unknown parameter(s) {', '.join(repr(name) for name in unknown)}: this notebook declares {known}"
        )
    for name, value in injected.items():
        if name in declared and not _compatible(value, declared[name]):
            problems.append(
                f"parameter {name!r} must be a {_type_name(declared[name])} like its default "
                f"{declared[name]!r}, got {_type_name(value)} {value!r}"
            )
    if problems:
        raise ValueError("; ".join(problems))
    return injected
