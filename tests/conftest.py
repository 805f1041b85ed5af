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
