#!/usr/bin/env bash
# The GPU loss benchmark on a one-GPU machine (H100 / H200), in bfloat16, in about 8 minutes.
#
#   scripts/bench_gpu.sh [OUT_DIR]      (default: $OUT when set, else results/bench-gpu)
#
# 1. Finds a Python with PyTorch (CUDA), Triton, pandas, matplotlib and tqdm; when the default
#    python3 lacks one, makes a virtual environment (.venv-gpu) and installs them from PyPI.
#    fgmm_lib itself is pure Python and is used from this checkout (PYTHONPATH), so nothing else
#    is installed.
# 2. Checks the Triton kernels against the naive backend in float32 on this GPU (values and
#    gradients, on float32 and on bfloat16-rounded inputs, the three aggregations):
#    OUT_DIR/gpu_check.json; stops if they disagree.
# 3. Runs bench_loss in bfloat16 over B in 32..1024, N in (16, 64, 196), M in (16, 32), D = 256,
#    the targets' configurations first, stopping new configurations after BENCH_SECONDS
#    (default 330): OUT_DIR/loss.csv, loss.png, summary.json (with the card's name and its
#    measured bf16 matmul rate). The whole log goes to OUT_DIR/bench_gpu.log.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:-${OUT:-$repo/results/bench-gpu}}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
log="$out_dir/bench_gpu.log"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
unset TRITON_INTERPRET

if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no NVIDIA GPU here (nvidia-smi -L failed): this script needs one" >&2
    exit 1
fi
needs='import sys, torch, triton, pandas, matplotlib, tqdm; sys.exit(0 if torch.cuda.is_available() else 3)'
python="${PYTHON:-python3}"
if ! "$python" -c "$needs" >/dev/null 2>&1; then
    status=0
    "$python" -c "$needs" >/dev/null 2>&1 || status=$?
    if [ "$status" -eq 3 ]; then
        echo "$python has PyTorch but it sees no CUDA device (a CPU-only build?); set PYTHON to a CUDA one" >&2
        exit 1
    fi
    echo "installing torch, triton, pandas, matplotlib, tqdm into $repo/.venv-gpu" | tee -a "$log"
    python3 -m venv "$repo/.venv-gpu"
    "$repo/.venv-gpu/bin/pip" install -q --upgrade pip
    "$repo/.venv-gpu/bin/pip" install -q torch triton pandas matplotlib tqdm numpy
    python="$repo/.venv-gpu/bin/python"
    "$python" -c "$needs" || { echo "no usable CUDA PyTorch after installing" >&2; exit 1; }
fi

cd "$repo"
{
    echo "== $(date -u +%FT%TZ) on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$python" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'

    echo "== correctness of the triton backend on this GPU"
    "$python" - "$out_dir/gpu_check.json" <<'PY'
import json, sys
import torch
from fgmm_lib.losses import AGGREGATIONS, pair_scores

torch.manual_seed(0)
device = torch.device("cuda")
results, worst = [], {}
for dtype, tolerance in ((torch.float32, 2e-4), (torch.bfloat16, 3e-2)):
    for shape in ((37, 29, 50, 13, 96), (64, 64, 196, 32, 256)):
        Bv, Bt, N, M, D = shape
        video = torch.randn(Bv, N, D, device=device)
        text = torch.randn(Bt, M, D, device=device)
        video_mask = torch.rand(Bv, N, device=device) > 0.2
        video_mask[:, 0] = True
        text_mask = torch.rand(Bt, M, device=device) > 0.3
        text_mask[:, 0] = True
        upstream = torch.randn(Bv, Bt, device=device)
        for aggregation in AGGREGATIONS:
            # reference: the naive backend in float32 on the same (rounded) inputs
            outputs = {}
            for backend, run_dtype in (("naive", torch.float32), ("triton", dtype)):
                v = video.to(dtype).to(run_dtype).clone().requires_grad_()
                t = text.to(dtype).to(run_dtype).clone().requires_grad_()
                scores = pair_scores(v, t, text_mask, video_mask, aggregation=aggregation, backend=backend)
                (scores.float() * upstream).sum().backward()
                torch.cuda.synchronize()
                outputs[backend] = (scores.detach().float(), v.grad.float(), t.grad.float())
            errors = {}
            for index, name in enumerate(("scores", "video_grad", "text_grad")):
                want, got = outputs["naive"][index], outputs["triton"][index]
                errors[name] = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
            ok = all(e <= tolerance for e in errors.values())
            results.append({"dtype": str(dtype), "shape": shape, "aggregation": aggregation,
                            "relative_max_error": errors, "tolerance": tolerance, "ok": ok})
            print(dtype, shape, aggregation, "ok" if ok else "MISMATCH", errors)
passed = all(r["ok"] for r in results)
with open(sys.argv[1], "w") as handle:
    json.dump({"device": torch.cuda.get_device_name(), "passed": passed, "cases": results}, handle, indent=2)
sys.exit(0 if passed else 1)
PY

    echo "== benchmark (bfloat16)"
    "$python" - "$out_dir" "${BENCH_SECONDS:-330}" <<'PY'
import sys, time
import pandas as pd
from fgmm_lib.bench import bench_loss

start = time.perf_counter()
table = bench_loss(out_dir=sys.argv[1], device="cuda", dtype="bfloat16",
                   batch_sizes=(32, 64, 128, 256, 512, 1024), cells=(16, 64, 196), phrases=(16, 32), dim=256,
                   repeats=3, progress=False, max_seconds=float(sys.argv[2]))
pd.set_option("display.width", 250)
print(table.drop(columns=["reason", "device", "dtype", "dim"]).to_string(index=False))
print(open(f"{sys.argv[1]}/summary.json").read())
print(f"benchmark took {time.perf_counter() - start:.0f} s")
PY
} 2>&1 | tee -a "$log"
