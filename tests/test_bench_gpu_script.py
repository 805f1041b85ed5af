"""scripts/bench_gpu.sh and its steps (scripts/bench_gpu.py) on the CPU under the Triton interpreter at
tiny sizes: the script runs end to end, its check covers every design and catches a wrong gradient,
and the stored kernel's own tiles are what its last design runs."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("triton", reason="triton is an optional extra (pip install 'fgmm_lib[triton]')")

from fgmm_lib.kernels import triton_scores as ts
from fgmm_lib.losses.scores import AGGREGATIONS

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu_script", REPO / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _load_script()


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_shell_script_runs_every_step_end_to_end(tmp_path):
    """bench_gpu.sh with a stand-in nvidia-smi and a python that runs each step on the CPU at tiny sizes:
    what it writes is what a card's run writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "nvidia-smi", "#!/bin/sh\necho 'GPU 0: stand-in'\n")
    # the script's one-line probes (-c: dependencies, the card's name) need CUDA; the steps get --quick
    python = _executable(tmp_path / "python", f"""#!/bin/sh
if [ "$1" = "-c" ]; then exit 0; fi
TRITON_INTERPRET=1 OMP_NUM_THREADS=1 exec {sys.executable} "$@" --device cpu --quick
""")
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python), "BENCH_SECONDS": "60"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    checked = json.loads((out / "gpu_check.json").read_text())
    assert checked["passed"] is True
    cases = checked["cases"]
    designs = {(c["forward_design"], c["backward_design"], c["stored_own_tiles_only"]) for c in cases}
    assert designs == set(script.DESIGNS)
    assert {c["aggregation"] for c in cases} == set(AGGREGATIONS)
    assert {c["dtype"] for c in cases} == {"torch.bfloat16", "torch.float32"}
    assert {c["reference"] for c in cases} == {"naive", "chunked"}
    assert any(c["temperatures"][0] == 0.01 for c in cases)  # the forward with running maxima
    assert {c["scores_dtype"] for c in cases} == {"torch.float32"}  # float32 scores for any input
    # max with float32 tokens is checked with float32 dot products, attention's gradients are gated
    assert all(c["float32_dots"] for c in cases if c["aggregation"] == "max" and c["dtype"] == "torch.float32")
    assert any("video_grad" in c["gated"] for c in cases if c["aggregation"] == "attention")

    rows = json.loads((out / "kernel_times.json").read_text())
    assert len(rows) == 5 * 3  # four design pairs in bfloat16 and auto in float32, three aggregations
    assert {(r["forward_design"], r["backward_design"]) for r in rows} == {
        ("streamed", "tiles"), ("resident", "sweep"), ("resident", "stored"), ("auto", "auto")}
    for row in rows:
        assert 0 < row["forward_ms"] and 0 < row["step_ms"] and row["matmul_bf16_tflops"] > 0
        assert row["share_of_matmul"] == pytest.approx(row["step_tflops_counted_3_gemms"] / row["matmul_bf16_tflops"])

    table = pd.read_csv(out / "gpu.csv")
    assert set(table["dtype"]) == {"bfloat16", "float32"}
    assert {"matmul_bf16_tflops", "device_name"} <= set(table.columns)
    assert set(table["backend"]) == {"naive", "chunked", "triton"}
    for dtype in ("bfloat16", "float32"):
        assert (out / dtype / "summary.json").exists() and (out / dtype / "loss.png").exists()
    log = (out / "bench_gpu.log").read_text()
    assert "== correctness" in log and "wrote" in log and "gpu.csv" in log


def test_shell_script_refuses_a_machine_without_a_gpu(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "nvidia-smi", "#!/bin/sh\nexit 9\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no NVIDIA GPU here" in done.stderr


def test_check_catches_a_wrong_gradient(tmp_path, monkeypatch):
    """A backward whose coefficients are 10 % off fails the check (and says so in its file)."""
    backward_inputs = ts._backward_inputs

    def off_by_ten_percent(*args, **kwargs):
        coef, phrase = backward_inputs(*args, **kwargs)
        return coef * 1.1, phrase

    monkeypatch.setattr(ts, "_backward_inputs", off_by_ten_percent)
    out = tmp_path / "check.json"
    passed = script.check(out, "cpu", shapes=script.QUICK_CHECK_SHAPES, aggregations=("attention",),
                          designs=(("resident", "sweep", False),))
    assert passed is False
    written = json.loads(out.read_text())
    assert written["passed"] is False
    bad = [c for c in written["cases"] if not c["ok"]]
    assert bad and all(c["relative_max_error"]["video_grad"] > script.TOLERANCE for c in bad)
    assert ts.FORWARD_DESIGN == ts.BACKWARD_DESIGN == "auto"  # the designs are put back


def test_own_tiles_design_runs_the_stored_kernel_with_its_own_tiles(tmp_path, monkeypatch):
    """The check's last design launches the stored kernel with a tile of STORED_CONFIGS, and the
    backend's tile choice is restored afterwards."""
    launched = []
    launch = ts._launch

    def recording(name, *args, **kwargs):
        kernel, blocks = launch(name, *args, **kwargs)
        launched.append((name, dict(blocks)))
        return kernel, blocks

    monkeypatch.setattr(ts, "_launch", recording)
    offered = ts.stored_configs
    passed = script.check(tmp_path / "check.json", "cpu", own_tile_shapes=script.QUICK_OWN_TILE_SHAPES,
                          aggregations=("mean", "attention"), designs=(("resident", "stored", True),))
    assert passed is True
    own = [{k: c[k] for k in ("BLOCK_N", "COLUMNS")} for c in ts.STORED_CONFIGS]
    stored = [blocks for name, blocks in launched if name == "stored"]
    assert stored and all({k: b[k] for k in ("BLOCK_N", "COLUMNS")} in own for b in stored)
    assert ts.stored_configs is offered
