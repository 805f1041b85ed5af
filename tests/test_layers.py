"""The package's import contract: subpackages import one way, the kernels stay off the CPU path, no
function-local imports of the package's own modules, no private names across modules, short modules."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from package_imports import PACKAGE, ROOT, all_modules, direct_imports, local_imports, module_file, module_tree

#: Bottom to top: a module may import its own layer and those below it, never one above.
LAYERS = (
    ("fgmm_lib.io", "fgmm_lib.config"),
    ("fgmm_lib.data",),
    ("fgmm_lib.models",),
    ("fgmm_lib.losses",),
    ("fgmm_lib.kernels",),
    ("fgmm_lib.runs",),
    ("fgmm_lib.evaluation",),
    ("fgmm_lib.training",),
    ("fgmm_lib.study",),
    ("fgmm_lib.bench",),
    ("fgmm_lib.cli",),
)
#: The only packages that import the kernels by name (losses reaches them through KERNELS_MODULE).
KERNEL_USERS = ("fgmm_lib.bench", "fgmm_lib.cli")
MAX_LINES = 800


def layer(module: str) -> int:
    for index, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return index
    raise AssertionError(f"{module} is in no layer of {LAYERS}")


def test_every_module_has_a_layer():
    for module in all_modules():
        if module != "fgmm_lib" and module != "fgmm_lib.__main__":
            layer(module)


@pytest.mark.parametrize("module", [m for m in all_modules() if m not in ("fgmm_lib", "fgmm_lib.__main__")])
def test_imports_go_down(module):
    upward = sorted(m for m in direct_imports(module) if layer(m) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports from layers above it: {upward}"


def test_the_leaves_import_nothing_of_the_package():
    for module in LAYERS[0]:
        assert direct_imports(module) == set(), module


def test_no_import_cycles():
    graph = {m: direct_imports(m) for m in all_modules()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [node, nxt])
                                     if nxt in path else f"import cycle through {node} -> {nxt}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_only_tools_import_the_kernels():
    for module in all_modules():
        if module.startswith("fgmm_lib.kernels") or module.startswith(KERNEL_USERS):
            continue
        kernels = sorted(m for m in direct_imports(module) if m.startswith("fgmm_lib.kernels"))
        assert not kernels, f"{module} imports {kernels}; only {KERNEL_USERS} may"


def test_no_function_local_imports_of_the_package():
    found = [f"{module}:{line} imports {imported}" for module in all_modules()
             for line, imported in local_imports(module)]
    assert not found, "import these at the top of the module:\n" + "\n".join(found)


def test_no_private_name_crosses_modules():
    found = []
    for module in all_modules():
        for node in ast.walk(module_tree(module)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fgmm_lib"):
                found += [f"{module} imports {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                          and a.name != "__version__"]
    assert not found, "\n".join(found)


def test_modules_are_short():
    long = {str(path.relative_to(ROOT)): count for path in PACKAGE.rglob("*.py")
            if (count := len(path.read_text().splitlines())) > MAX_LINES and "kernels" not in path.parts}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_public_modules_have_docstrings():
    missing = [m for m in all_modules() if not ast.get_docstring(module_tree(m))]
    assert not missing, missing


@pytest.mark.integration
def test_a_cpu_run_never_loads_the_kernels(tmp_path):
    """The training stages' deps leave the kernels out because a CPU run never imports them."""
    code = (
        "import sys, torch\n"
        "from fgmm_lib.data.generate import GenerationConfig, generate_dataset\n"
        "from fgmm_lib.evaluation.protocol import evaluate\n"
        "from fgmm_lib.training import TrainConfig, pretrain\n"
        f"data = generate_dataset(GenerationConfig(clips=40, frames=4, size=16, distractors=0, misaligned_frames=0), r'{tmp_path}/d',"
        " progress=False)\n"
        "for loss in ('max', 'attention'):\n"
        f"    run = pretrain(TrainConfig(data=str(data), out=r'{tmp_path}/' + loss, loss=loss, batch_size=8, epochs=1,"
        " dim=16, width=0.25, backend='auto'), progress=False)\n"
        "    evaluate(run, data, progress=False)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('fgmm_lib.kernels'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_triton_backend_loads_the_kernels():
    code = ("import sys\nfrom fgmm_lib.losses.scores import KERNELS_MODULE, _kernels\n"
            "assert KERNELS_MODULE not in sys.modules\n_kernels()\nassert KERNELS_MODULE in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert module_file("fgmm_lib.kernels.triton_scores") is not None


def test_the_library_loads_without_the_study_tools():
    """The library's packages need only the core dependencies (torchmetrics loads matplotlib itself when present)."""
    code = ("import sys\nimport fgmm_lib.training, fgmm_lib.evaluation, fgmm_lib.data.importers, fgmm_lib.losses\n"
            "extra = sorted({'seaborn', 'dvc', 'papermill', 'yaml', 'triton', 'fgmm_lib.study'} & set(sys.modules))\n"
            "assert not extra, extra\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
