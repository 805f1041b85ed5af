"""The fused kernels compiled for an H100 (sm_90a) on the CPU: limits read from the compiled code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is an optional extra (pip install 'fgmm_lib[triton]')")
pytest.importorskip("triton.backends.nvidia.compiler", reason="this triton has no CUDA backend")

from fgmm_lib import cli, kernel_report, triton_scores  # noqa: E402
from fgmm_lib.triton_scores import AGGREGATION_CODES  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    # a process of its own: the interpreted kernel tests build interpreter kernels in this one
    out = tmp_path_factory.mktemp("kernels")
    code = ("import sys; from fgmm_lib.kernel_report import compile_report\n"
            "compile_report(sys.argv[1], arch='sm90', phrases=(32,), dims=(256,), progress=False)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "kernels.json").read_text())


def test_every_kernel_and_configuration_has_a_row(report):
    out, rows = report
    configs = sum(len(triton_scores.forward_configs(aggregation, 32, 256))
                  + len(triton_scores.backward_configs(aggregation))
                  + len(triton_scores.sweep_configs(256, for_text=False))
                  + len(triton_scores.sweep_configs(256, for_text=True)) for aggregation in AGGREGATION_CODES)
    assert len(rows) == 2 * configs  # two input dtypes
    assert {row["kernel"] for row in rows} == set(kernel_report.KERNELS)
    assert {row["config"].split()[0] for row in rows if row["kernel"] == "backward"} == {"BLOCK_N=64",
                                                                                          "BLOCK_N=128"}
    forwards = [row for row in rows if row["kernel"] == "forward"]
    assert {row["config"].split()[5] for row in forwards} == {"D_RESIDENT=0", "D_RESIDENT=256"}
    sweeps = [row for row in rows if row["kernel"].startswith("sweep")]
    assert {row["config"].split()[4] for row in sweeps} == {"D_SLICE=128", "D_SLICE=256"}
    # the sweeps' rows exist where they run: texts of at most 64 phrases
    assert kernel_report.kernel_configs("sweep_text", "max", 128, 256) == ()
    assert kernel_report.kernel_configs("sweep_text", "max", 64, 128) == triton_scores.sweep_configs(128, True)
    assert {row["config"].split()[5] for row in sweeps if row["kernel"] == "sweep_video"} == {"RESIDENT=0",
                                                                                              "RESIDENT=1"}
    for row in rows:
        assert set(kernel_report.COLUMNS) <= set(row)
    assert {row["dtype"] for row in rows} == {"bfloat16", "float32"}
    assert {row["kernel_dtype"] for row in rows} == {"bfloat16"}  # float32 tokens reach the tensor cores


def test_compiled_kernels_fit_the_h100(report):
    _, rows = report
    assert kernel_report.check_rows(rows) == []
    for row in rows:
        assert row["shared_bytes"] <= 232448 and row["spill_bytes"] == 0
        assert row["mma"] and all(shape.startswith("wgmma.m64n") for shape in row["mma"])


def test_check_rows_names_what_breaks():
    row = {"kernel": "forward", "aggregation": "max", "dtype": "bfloat16", "M": 32, "D": 256, "arch": "sm90",
           "config": "x", "shared_bytes": 300000, "spill_bytes": 8, "mma": ["wgmma.m64n16k16"]}
    problems = " ".join(kernel_report.check_rows([row]))
    assert "shared" in problems and "spills" in problems and "N=64" in problems
    assert "not all wgmma" in " ".join(kernel_report.check_rows([{**row, "mma": ["mma.m16n8k16"]}]))


def test_cli_compile_only_writes_the_report(tmp_path, monkeypatch):
    calls = {}

    def fake_report(out_dir, arch, progress):
        calls.update(out_dir=out_dir, arch=arch)
        return []

    monkeypatch.setattr(kernel_report, "compile_report", fake_report)
    assert cli.main(["bench-loss", "--compile-only", "--arch", "sm80", "--out", str(tmp_path), "--quiet"]) == 0
    assert calls == {"out_dir": str(tmp_path), "arch": "sm80"}
