"""Shared test settings: one thread per process keeps the suite fast on a shared 2-core machine."""

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# The fused kernels are tested with the Triton interpreter on the CPU. Triton reads this switch once,
# so it is set for the whole session, before any test builds a kernel; the compile-only kernel
# report runs in a process of its own without it.
os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: Test files of the integration tier (`make test-fast` skips them): notebooks, the pipeline's
#: fresh-copy checks, distributed runs, the kernels in the interpreter, the GPU script, sweeps,
#: reliability under faults, benchmarks. Each file also says so in its ``pytestmark``.
INTEGRATION_FILES = {
    "test_notebooks.py", "test_study_notebooks.py", "test_first_look.py", "test_distributed.py",
    "test_kernel_report.py", "test_triton_scores.py", "test_bench_gpu_script.py", "test_sweep.py",
    "test_reliability.py", "test_bench.py", "test_import_checks.py",
    "test_faults.py",
}


def pytest_collection_modifyitems(config, items):
    """Slow end-to-end tests belong to the integration tier too; every file of INTEGRATION_FILES is marked."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        if item.path.name in INTEGRATION_FILES:
            assert item.get_closest_marker("integration"), f"{item.path.name} must set pytestmark = pytest.mark.integration"
