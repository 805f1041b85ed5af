#!/usr/bin/env bash
# The GPU loss benchmark on a one-GPU machine (H100 / H200), in about 8 minutes.
#
#   scripts/bench_gpu.sh [OUT_DIR]      (default: $OUT when set, else results/bench-gpu)
#
# 1. Finds a Python with PyTorch (CUDA), Triton, pandas, matplotlib and tqdm; when the default
#    python3 lacks one, makes a virtual environment (.venv-gpu) and installs them from PyPI.
#    fgmm_lib itself is pure Python and is used from this checkout (PYTHONPATH).
# 2. Correctness first: the triton backend against naive and chunked on this card (values and
#    gradients, bfloat16 and float32 inputs, every aggregation, learnable temperatures, and attention
#    at tau_a = 0.01, where the forward keeps running maxima), for each
#    kernel design (streamed forward + tiled backward, resident forward + backward in sweeps,
#    resident forward + stored backward, and that again with only the stored kernel's own
#    128 x 64 tiles offered wherever they are):
#    OUT_DIR/gpu_check.json; stops if they disagree.
#    Then where the time goes at B=1024, N=196, M=32, D=256: forward, backward and step of each
#    design and of auto, with the card's bf16 matmul rate measured in the same step:
#    OUT_DIR/kernel_times.json (copy to results/bench/gpu_kernel_times.json).
# 3. The sweep, fwd+bwd of one InfoNCE step, naive, chunked and triton on the same card, in
#    bfloat16 and in float32 (the path training runs: float32 tokens, cast to bfloat16 inside
#    the triton backend): B in 32..1024, N in (16, 64, 196), M in (16, 32), D = 256, the targets'
#    configurations first, each dtype stopping new configurations after BENCH_SECONDS (default
#    150). OUT_DIR/<dtype>/loss.csv, loss.png, summary.json (with the card's name and the bf16
#    matmul rate measured in the same run), and both tables in OUT_DIR/gpu.csv. Copy gpu.csv to
#    results/bench/gpu.csv to commit it. The whole log goes to OUT_DIR/bench_gpu.log.
# The three steps are scripts/bench_gpu.py (check, times, sweep); the tests run this script end to end
# on the CPU under the Triton interpreter at tiny sizes, so a card's time is not lost to a typo here.
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

    echo "== correctness of the triton backend on this GPU (against naive and chunked)"
    "$python" scripts/bench_gpu.py check "$out_dir/gpu_check.json"

    echo "== where the time goes at the target size (B=1024, N=196, M=32, D=256, bfloat16 and float32 tokens)"
    "$python" scripts/bench_gpu.py times "$out_dir/kernel_times.json"

    echo "== benchmark: bfloat16, then float32 (the training path), naive, chunked and triton"
    "$python" scripts/bench_gpu.py sweep "$out_dir" "${BENCH_SECONDS:-150}"
} 2>&1 | tee -a "$log"
