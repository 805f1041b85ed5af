"""The fused kernels compiled for an H100 (sm_90a) on the CPU: limits read from the compiled code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("triton", reason="triton is an optional extra (pip install 'fgmm_lib[triton]')")
pytest.importorskip("triton.backends.nvidia.compiler", reason="this triton has no CUDA backend")

from fgmm_lib.bench import kernel_report  # noqa: E402
from fgmm_lib.cli import main as cli  # noqa: E402
from fgmm_lib.kernels import triton_scores  # noqa: E402
from fgmm_lib.kernels.triton_scores import AGGREGATION_CODES  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    # a process of its own: the interpreted kernel tests build interpreter kernels in this one
    out = tmp_path_factory.mktemp("kernels")
    code = ("import sys; from fgmm_lib.bench.kernel_report import compile_report\n"
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
                  + len(triton_scores.stored_configs(aggregation, 32, kernel_report.CEILING_CELLS))
                  + len(triton_scores.sweep_configs(256, False, aggregation))
                  + len(triton_scores.sweep_configs(256, True, aggregation)) for aggregation in AGGREGATION_CODES)
    # attention's forward four times: with and without learnable temperatures' sums, unshifted or with
    # running maxima; its backward kernels twice, unshifted or not
    attention_forwards = len(triton_scores.forward_configs("attention", 32, 256))
    # (the stored kernel's own tiles in the unshifted variant only)
    attention_backwards = (len(triton_scores.backward_configs("attention"))
                           + len(triton_scores.stored_configs("attention", 32, kernel_report.CEILING_CELLS, False))
                           + len(triton_scores.sweep_configs(256, False, "attention"))
                           + len(triton_scores.sweep_configs(256, True, "attention")))
    assert len(rows) == 2 * (configs + 3 * attention_forwards + attention_backwards)  # two input dtypes
    assert sorted((row["temp_grad"], row["unshifted"]) for row in rows
                  if row["kernel"] == "forward" and row["aggregation"] == "attention") \
        == sorted([(t, u) for t in (True, False) for u in (True, False)] * 2 * attention_forwards)
    backward_variants = [row["unshifted"] for row in rows
                         if row["kernel"] != "forward" and row["aggregation"] == "attention"]
    own_tiles = len(set(map(str, triton_scores.stored_configs("attention", 32, kernel_report.CEILING_CELLS)))
                    - set(map(str, triton_scores.stored_configs("attention", 32, kernel_report.CEILING_CELLS, False))))
    assert own_tiles == len(triton_scores.STORED_CONFIGS)
    assert sorted(backward_variants) == sorted(([True, False] * attention_backwards + [True] * own_tiles) * 2)
    assert not any(row["temp_grad"] for row in rows if row["aggregation"] != "attention" or row["kernel"] != "forward")
    assert not any(row["unshifted"] for row in rows if row["aggregation"] != "attention")
    assert {row["kernel"] for row in rows} == set(kernel_report.KERNELS)
    for kernel in ("backward", "stored"):
        assert {row["config"].split()[0] for row in rows if row["kernel"] == kernel} == {"BLOCK_N=64", "BLOCK_N=128"}
    # the stored kernel's own tiles, 128 cells by 64 columns (2 texts of 32 phrases), for attention too
    assert {row["aggregation"] for row in rows if row["kernel"] == "stored"
            and row["config"].startswith("BLOCK_N=128") and row["config"].endswith("TEXTS=2")} \
        == set(AGGREGATION_CODES)
    forwards = [row for row in rows if row["kernel"] == "forward"]
    assert {row["config"].split()[5] for row in forwards} == {"D_RESIDENT=0", "D_RESIDENT=256"}
    sweeps = [row for row in rows if row["kernel"].startswith("sweep")]
    assert {row["config"].split()[4] for row in sweeps} == {"D_SLICE=128", "D_SLICE=256"}
    # the sweeps' rows exist where they run: texts of at most 64 phrases
    assert kernel_report.kernel_configs("sweep_text", "max", 128, 256) == ()
    assert kernel_report.kernel_configs("sweep_text", "max", 64, 128) == triton_scores.sweep_configs(128, True, "max")
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
        no_matmul = row["kernel"] == "stored" and row["aggregation"] == "mean"  # its dS/ds needs no similarity
        assert (bool(row["mma"]) != no_matmul) and all(shape.startswith("wgmma.m64n") for shape in row["mma"])
        warps = int(row["config"].split("warps=")[1].split()[0])
        assert row["warps_per_sm"] == kernel_report.warps_per_sm("sm90", row["registers"], row["shared_bytes"], warps)
        assert row["warps_per_sm"] >= warps  # a block fits an SM
    # the stored kernel's two tiles at the target size: 8 warps an SM either way (attention, unshifted)
    stored = {row["config"].split()[0]: row["warps_per_sm"] for row in rows if row["kernel"] == "stored"
              and row["aggregation"] == "attention" and row["unshifted"] and "BLOCK_D=64" in row["config"]}
    assert stored == {"BLOCK_N=64": 8, "BLOCK_N=128": 8}


def test_warps_per_sm_is_the_tightest_of_registers_shared_memory_warps_and_blocks():
    assert kernel_report.warps_per_sm("sm90", 255, 49152, 4) == 8  # 256 registers a thread: 2 blocks
    assert kernel_report.warps_per_sm("sm90", 170, 49152, 8) == 8  # 176 a thread: 45,056 a block, 1 fits
    assert kernel_report.warps_per_sm("sm90", 128, 0, 8) == 16  # registers: 2 blocks
    assert kernel_report.warps_per_sm("sm90", 32, 0, 4) == 64  # warps: 16 blocks of 4
    assert kernel_report.warps_per_sm("sm90", 16, 0, 1) == 32  # blocks: 32 at most
    assert kernel_report.warps_per_sm("sm90", 64, 163840, 8) == 8  # shared memory: 1 block (+1 KB reserved)
    assert kernel_report.warps_per_sm("sm90", 64, 115712, 4) == 8  # 2 x (113 + 1) KB = 228 KB: 2 fit
    assert kernel_report.warps_per_sm("sm80", 64, 100000, 4) == 4  # an A100 SM's 164 KB: 1 fits


def test_check_rows_names_what_breaks():
    row = {"kernel": "forward", "aggregation": "max", "dtype": "bfloat16", "M": 32, "D": 256, "arch": "sm90",
           "config": "x", "shared_bytes": 300000, "spill_bytes": 8, "mma": ["wgmma.m64n16k16"]}
    problems = " ".join(kernel_report.check_rows([row]))
    assert "shared" in problems and "spills" in problems and "N=64" in problems
    assert "not all wgmma" in " ".join(kernel_report.check_rows([{**row, "mma": ["mma.m16n8k16"]}]))
    # no matmul at all: a problem, except in mean's stored kernel (its dS/ds needs no similarity)
    fine = {**row, "kernel": "stored", "shared_bytes": 0, "spill_bytes": 0, "mma": []}
    assert "not all wgmma" in " ".join(kernel_report.check_rows([fine]))
    assert kernel_report.check_rows([{**fine, "aggregation": "mean"}]) == []


def test_cli_compile_only_writes_the_report(tmp_path, monkeypatch):
    calls = {}

    def fake_report(out_dir, arch, progress):
        calls.update(out_dir=out_dir, arch=arch)
        return []

    monkeypatch.setattr(kernel_report, "compile_report", fake_report)
    assert cli.main(["bench-loss", "--compile-only", "--arch", "sm80", "--out", str(tmp_path), "--quiet"]) == 0
    assert calls == {"out_dir": str(tmp_path), "arch": "sm80"}


SASS = """
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_0:
        /*0010*/                   FADD R1, R1, R2 ;
.L_x_1:
        /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0030*/              @!P1 BRA `(.L_x_1) ;
        /*0040*/                   SHFL.BFLY PT, R8, R5, 0x10, 0x1f ;
        /*0050*/                   MUFU.EX2 R9, R8 ;
        /*0060*/               @P0 BRA `(.L_x_0) ;
        /*0070*/                   EXIT ;
.L_x_2:
        /*0080*/                   BRA `(.L_x_2);
"""


def test_sass_loops_nest_and_skip_the_trap():
    program = kernel_report.sass_loops(SASS)
    assert [op for op, _ in program["instructions"]] == ["S2R", "FADD", "HGMMA", "BRA", "SHFL", "MUFU", "BRA",
                                                         "EXIT", "BRA"]
    assert program["loops"] == [{"start": 1, "end": 6, "parent": None}, {"start": 2, "end": 3, "parent": 0}]


def test_work_unit_multiplies_loop_bodies_by_their_trips():
    # a streamed forward: the outer loop is the cell loop (196 cells: 4 blocks of 64), the inner one
    # takes D = 256 in 4 chunks of 64
    program = kernel_report.sass_loops(SASS)
    config = {"BLOCK_N": 64, "BLOCK_D": 64, "VIDEOS": 1, "num_warps": 8, "BLOCK_M": 32, "TEXTS": 4}
    unit = kernel_report.work_unit("forward", program, config, dim=256, cells=196)
    per_block = 6 + 3 * 2  # the cell loop once, its inner body 3 more times
    assert unit["warp_instructions"] == 3 + 4 * per_block  # S2R, EXIT and the trap once a video
    assert unit["shuffles"] == 4 and unit["mufu"] == 4
    assert unit["tensor_macs"] == 8 * 4 * 4 * 64 * 64 * 16 // 4  # 8 warps, 4 blocks x 4 chunks
    assert unit["counted_macs"] == 196 * 128 * 256
    cycles = {"issue": 8 * unit["warp_instructions"] / 4, "SHFL": 8 * 4, "MUFU": 8 * 4 / 0.5,
              "tensor": unit["tensor_macs"] / 2048}
    assert unit["bound_by"] == max(cycles, key=cycles.get) == "tensor"
    assert unit["issue_bound"] == pytest.approx(196 * 128 * 256 / 2048 / cycles["tensor"], abs=1e-4)
    with pytest.raises(ValueError, match="one sweep loop"):
        kernel_report.work_unit("sweep_text", {"instructions": [], "loops": []}, {**config, "D_SLICE": 256}, 256)


def test_sass_units_run_the_multiply_adds_of_their_tiles(report):
    _, rows = report
    for row in rows:
        config = dict(item.split("=") for item in row["config"].split() if "=" in item)
        config = {key: int(value) for key, value in config.items()}
        columns = config["BLOCK_M"] * config["TEXTS"]
        similarity = 0 if row["aggregation"] == "mean" else 1  # mean's gradients need no similarity
        if row["kernel"] == "forward":
            expected = 4 * config["BLOCK_N"] * columns * 256  # 196 cells in 4 blocks of 64
        elif row["kernel"] == "backward":
            expected = (2 + similarity) * config["BLOCK_N"] * columns * 256
        elif row["kernel"] == "stored":  # the similarity only: both gradients are the GEMM library's
            expected = similarity * config["BLOCK_N"] * columns * 256
            if not similarity:  # mean's dS/ds needs no dot product at all
                assert row["mma"] == [] and row["bound_by"] != "tensor"
                continue
        else:
            slices = 256 // config["D_SLICE"]
            expected = slices * (similarity * 64 * columns * 256 + 64 * columns * config["D_SLICE"])
        # with 8 warps a resident sweep runs its similarity twice (both warpgroups, all of D)
        twice = row["kernel"].startswith("sweep") and config["RESIDENT"] and similarity and config["warps"] == 8
        assert row["tensor_macs"] == expected + twice * 64 * columns * 256, row["config"]
        assert 0 < row["issue_bound"] <= 1 and row["bound_by"] in ("issue", "SHFL", "MUFU", "tensor")
    ceilings = json.loads((report[0] / "ceilings.json").read_text())
    assert sorted((c["aggregation"], c["learnable_temperatures"], c["forward"], c["backward"]) for c in ceilings) == sorted(
        (a, learnable, f, b) for a in AGGREGATION_CODES for learnable in ((False, True) if a == "attention" else (False,))
        for f in ("streamed", "resident") for b in ("tiles", "sweep", "stored"))
    fixed, learnable = ({c["forward"] + c["backward"]: c["step_issue_bound"] for c in ceilings
                         if c["aggregation"] == "attention" and c["learnable_temperatures"] is flag} for flag in (False, True))
    assert all(fixed[pair] > learnable[pair] for pair in fixed)  # the temperatures' sums cost instructions
    # the unshifted kernels (no running maxima) issue fewer instructions than their fallbacks
    for kernel, temp_grad, gain in (("forward", True, 1.15), ("forward", False, 1.15), ("backward", False, 1.05),
                                    ("stored", False, 1.05), ("sweep_video", False, 1.05), ("sweep_text", False, 1.05)):
        bounds = {unshifted: max(r["issue_bound"] for r in rows if r["kernel"] == kernel
                                 and r["aggregation"] == "attention" and r["temp_grad"] is temp_grad
                                 and r["unshifted"] is unshifted) for unshifted in (True, False)}
        assert bounds[True] > gain * bounds[False], (kernel, bounds)


def test_step_ceiling_weighs_each_kernel_by_the_gemms_it_counts():
    def row(kernel, bound, config="BLOCK_N=64 D_RESIDENT=0"):
        return {"kernel": kernel, "aggregation": "max", "M": 32, "D": 256, "config": config, "issue_bound": bound,
                "bound_by": "issue", "temp_grad": False}
    rows = [row("forward", 0.2), row("forward", 0.3, "VIDEOS=4 D_RESIDENT=256"), row("backward", 0.4),
            row("backward", 0.5), row("sweep_video", 0.25), row("sweep_text", 0.5), row("stored", 0.4)]
    table = {(c["forward"], c["backward"]): c["step_issue_bound"] for c in kernel_report.step_ceilings(rows)}
    assert table[("streamed", "tiles")] == pytest.approx(3 / (1 / 0.2 + 2 / 0.5), abs=1e-4)  # the best backward
    assert table[("resident", "sweep")] == pytest.approx(3 / (1 / 0.3 + 1 / 0.25 + 1 / 0.5), abs=1e-4)
    # the stored backward: its kernel (one GEMM's work), and two GEMMs of the GEMM library at the peak
    assert table[("resident", "stored")] == pytest.approx(3 / (1 / 0.3 + 1 / 0.4 + 2), abs=1e-4)
