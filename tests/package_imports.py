"""The package's import graph, read from the source with :mod:`ast` (as :mod:`modulefinder` does).

A module's imports are every ``import`` of an fgmm_lib module anywhere in it, function-level ones
included (a module a function imports runs when that function does). Importing ``fgmm_lib.a.b`` also
runs the package ``fgmm_lib.a``'s ``__init__``; the top package's ``__init__`` (a docstring and the
version) is left out. Modules loaded by name at run time (the ``fgmm`` commands of
``fgmm_lib.cli.main.COMMANDS``, the kernels of ``fgmm_lib.losses.scores.KERNELS_MODULE``) are not
followed: callers say which of them run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fgmm_lib"


def module_file(name: str) -> Path | None:
    """``fgmm_lib/a/b.py`` or ``fgmm_lib/a/b/__init__.py`` for ``fgmm_lib.a.b``; None if neither exists."""
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def module_name(path: Path) -> str:
    parts = path.resolve().relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> list[str]:
    return sorted(module_name(path) for path in PACKAGE.rglob("*.py"))


def _with_packages(name: str) -> set[str]:
    """``name`` and the packages whose ``__init__`` importing it runs (not the top package's)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}


def imported_modules(tree: ast.AST) -> set[str]:
    """fgmm_lib modules imported anywhere in ``tree`` (the module itself, not its packages)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = []
            for alias in node.names:  # `from fgmm_lib.a import b` imports the module fgmm_lib.a.b if it is one
                sub = f"{node.module}.{alias.name}"
                names.append(sub if module_file(sub) else node.module)
        else:
            continue
        found |= {name for name in names if name.startswith("fgmm_lib.") and module_file(name)}
    return found


def module_tree(name: str) -> ast.Module:
    return ast.parse(module_file(name).read_text())


def direct_imports(name: str) -> set[str]:
    return imported_modules(module_tree(name))


def closure(modules: set[str]) -> set[str]:
    """``modules``, their packages' ``__init__`` and every fgmm_lib module they import, transitively."""
    seen: set[str] = set()
    todo = [m for name in modules for m in _with_packages(name)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for imported in direct_imports(name) for m in _with_packages(imported) if m not in seen)
    return seen


def files(modules: set[str]) -> set[str]:
    """Repository-relative paths of ``modules``' files, with the C source a module builds at run time
    (``name.c`` beside ``name.py``)."""
    paths = {module_file(name) for name in modules}
    paths |= {path.with_suffix(".c") for path in paths if path.with_suffix(".c").is_file()}
    return {str(path.relative_to(ROOT)) for path in paths}


def local_imports(name: str) -> list[tuple[int, str]]:
    """(line, module) of every fgmm_lib import inside a function or class of module ``name``."""
    tree = module_tree(name)
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
            for module in imported_modules(ast.Module(body=[node], type_ignores=[])):
                found.append((node.lineno, module))
    return found
