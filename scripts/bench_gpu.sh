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
    "$python" - "$out_dir/gpu_check.json" <<'PY'
import json, sys
import torch
from fgmm_lib import triton_scores
from fgmm_lib.losses import AGGREGATIONS, pair_scores

torch.manual_seed(0)
device = torch.device("cuda")
results = []
# every kernel design on the card: the streamed forward with the tiled backward, the resident forward
# with the backward in sweeps (where they apply; M = 128 and D = 1024 fall back to the first pair), and
# with the stored backward (its GEMMs are cuBLAS's), then with the stored kernel's own tiles only
# (STORED_CONFIGS, 128 cells x 64 columns), which the autotuner might not pick in the run before
offered_stored = triton_scores.stored_configs


def own_tiles_only(*args, **kwargs):
    configs = offered_stored(*args, **kwargs)
    return tuple(c for c in configs if c in triton_scores.STORED_CONFIGS) or configs


for forward_design, backward_design, own_tiles in (("streamed", "tiles", False), ("resident", "sweep", False),
                                                   ("resident", "stored", False), ("resident", "stored", True)):
    triton_scores.FORWARD_DESIGN, triton_scores.BACKWARD_DESIGN = forward_design, backward_design
    triton_scores.stored_configs = own_tiles_only if own_tiles else offered_stored
    triton_scores.reset_tuning()
    # bfloat16 inputs, and float32 inputs (cast to bfloat16 inside): both meet bf16 rounding of the tokens
    for dtype, tolerance in ((torch.bfloat16, 3e-2), (torch.float32, 3e-2)):
        shapes = ((37, 29, 50, 13, 96), (64, 64, 196, 32, 256), (9, 9, 30, 128, 1024))
        if own_tiles:  # where they are offered: tiles span two videos, the last is partial, 2 texts or 1
            shapes = ((37, 29, 130, 20, 96), (64, 64, 196, 32, 256), (9, 9, 150, 64, 1024))
        for shape in shapes:
            Bv, Bt, N, M, D = shape
            video = torch.randn(Bv, N, D, device=device)
            text = torch.randn(Bt, M, D, device=device)
            video_mask = torch.rand(Bv, N, device=device) > 0.2
            video_mask[:, 0] = True
            text_mask = torch.rand(Bt, M, device=device) > 0.3
            text_mask[:, 0] = True
            upstream = torch.randn(Bv, Bt, device=device)
            # attention also at tau_a = 0.01 on the first shape: the forward with running maxima, which
            # runs below 1/64. There 1/tau_a = 100 magnifies bfloat16 rounding of the similarities in the
            # gradients: float32 tokens check them with float32 dot products, bfloat16 tokens only the
            # scores; the temperature gradients (rounding grows by 1/tau^2) are not gated
            cases = [(aggregation, (0.1, 0.2)) for aggregation in AGGREGATIONS]
            if shape == shapes[0]:
                cases.append(("attention", (0.01, 0.2)))
            for aggregation, tau_values in cases:
                # max's gradient follows its argmax, which bfloat16 rounding of the similarities moves
                # wherever two cells (or phrases) are nearly tied: float32 tokens check max's gradients with
                # float32 dot products (BF16_ON_CUDA off); with bfloat16 tokens only its scores must agree
                small_tau = tau_values[0] < 1 / triton_scores.MAX_UNSHIFTED_INVERSE_TEMPERATURE
                sharp = aggregation == "max" or small_tau
                triton_scores.BF16_ON_CUDA = not (sharp and dtype == torch.float32)
                gated = ("scores",) if sharp and dtype == torch.bfloat16 else \
                    ("scores", "video_grad", "text_grad") + (() if small_tau else ("temperature_grad",))
                outputs = {}
                for backend in ("naive", "chunked", "triton"):
                    # the references run in float32 on the same rounded inputs
                    run_dtype = dtype if backend == "triton" else torch.float32
                    v = video.to(dtype).to(run_dtype).clone().requires_grad_()
                    t = text.to(dtype).to(run_dtype).clone().requires_grad_()
                    taus = [torch.tensor(tau, device=device, requires_grad=True) for tau in tau_values]
                    try:
                        scores = pair_scores(v, t, text_mask, video_mask, aggregation=aggregation, backend=backend,
                                             attn_temperature=taus[0], weight_temperature=taus[1])
                        (scores.float() * upstream).sum().backward()
                    except torch.cuda.OutOfMemoryError:
                        continue
                    torch.cuda.synchronize()
                    grads = [tau.grad if tau.grad is not None else torch.zeros((), device=device) for tau in taus]
                    outputs[backend] = (scores.detach().float(), v.grad.float(), t.grad.float(), torch.stack(grads))
                    del v, t, scores
                for reference in ("naive", "chunked"):
                    if reference not in outputs:
                        continue
                    errors = {}
                    for index, name in enumerate(("scores", "video_grad", "text_grad", "temperature_grad")):
                        want, got = outputs[reference][index], outputs["triton"][index]
                        errors[name] = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
                    ok = all(errors[name] <= tolerance for name in gated)
                    results.append({"dtype": str(dtype), "shape": shape, "aggregation": aggregation, "gated": gated,
                                    "temperatures": tau_values,
                                    "forward_design": forward_design, "backward_design": backward_design,
                                    "stored_own_tiles_only": own_tiles,
                                    "float32_dots": not triton_scores.BF16_ON_CUDA,
                                    "reference": reference, "relative_max_error": errors, "tolerance": tolerance,
                                    "ok": ok, "scores_dtype": str(outputs["triton"][0].dtype)})
                    print(forward_design, backward_design, "own tiles" if own_tiles else "", dtype, shape,
                          aggregation, tau_values, "vs", reference,
                          "ok" if ok else "MISMATCH", errors)
triton_scores.BF16_ON_CUDA = True
triton_scores.FORWARD_DESIGN = triton_scores.BACKWARD_DESIGN = "auto"
triton_scores.stored_configs = offered_stored
passed = all(r["ok"] for r in results)
with open(sys.argv[1], "w") as handle:
    json.dump({"device": torch.cuda.get_device_name(), "passed": passed, "cases": results}, handle, indent=2)
sys.exit(0 if passed else 1)
PY

    echo "== where the time goes at the target size (B=1024, N=196, M=32, D=256, bfloat16 and float32 tokens)"
    "$python" - "$out_dir/kernel_times.json" <<'PY'
import json, sys
import torch
import triton
from fgmm_lib import triton_scores as ts
from fgmm_lib.losses import pair_scores

device = torch.device("cuda")
B, N, M, D = 1024, 196, 32, 256
flop = 2.0 * B * B * N * M * D  # one similarity GEMM
a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
matmul_ms = triton.testing.do_bench(lambda: a @ a, warmup=50, rep=300, return_mode="median")
matmul_tflops = 2.0 * 8192 ** 3 / matmul_ms / 1e9
print(f"bf16 matmul 8192^3: {matmul_tflops:.0f} TFLOP/s")
del a
rows = []
# each design pair alone, then auto (the autotuner and the backward's timing choose), bf16 tokens;
# float32 tokens (cast to bf16 inside) with auto
runs = [(torch.bfloat16, pair) for pair in (("streamed", "tiles"), ("resident", "sweep"), ("resident", "stored"),
                                            ("auto", "auto"))]
runs.append((torch.float32, ("auto", "auto")))
for dtype, (forward_design, backward_design) in runs:
    ts.FORWARD_DESIGN, ts.BACKWARD_DESIGN = forward_design, backward_design
    ts.reset_tuning()
    video = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)
    text = torch.randn(B, M, D, device=device, dtype=dtype, requires_grad=True)
    text_mask = torch.rand(B, M, device=device) > 0.3
    text_mask[:, 0] = True
    upstream = torch.randn(B, B, device=device)
    for aggregation in ("mean", "max", "attention"):
        def forward():
            return pair_scores(video, text, text_mask, aggregation=aggregation, backend="triton")
        scores = forward()
        scores.backward(upstream)  # autotune the kernels (and choose the backward design) once
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_ms = triton.testing.do_bench(forward, warmup=50, rep=300, return_mode="median")
        def step():
            video.grad = text.grad = None
            forward().backward(upstream)
        step_ms = triton.testing.do_bench(step, warmup=50, rep=400, return_mode="median")
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        picked = {name: str(getattr(kernel, "best_config", None)) for name, kernel in ts._TUNED.items()}
        row = {"dtype": str(dtype), "aggregation": aggregation, "forward_design": forward_design,
               "backward_design": backward_design, "chosen_backward": ts.chosen_designs(),
               "forward_ms": fwd_ms, "step_ms": step_ms,
               "backward_ms": step_ms - fwd_ms, "forward_tflops_of_1_gemm": flop / fwd_ms / 1e9,
               "step_tflops_counted_3_gemms": 3 * flop / step_ms / 1e9, "matmul_bf16_tflops": matmul_tflops,
               "share_of_matmul": 3 * flop / step_ms / 1e9 / matmul_tflops, "peak_extra_mib": peak,
               "configs": picked}
        rows.append(row)
        print(json.dumps(row))
    del video, text
ts.FORWARD_DESIGN = ts.BACKWARD_DESIGN = "auto"
json.dump(rows, open(sys.argv[1], "w"), indent=1)
PY

    echo "== benchmark: bfloat16, then float32 (the training path), naive, chunked and triton"
    "$python" - "$out_dir" "${BENCH_SECONDS:-150}" <<'PY'
import json, sys, time
import pandas as pd
from fgmm_lib.bench import bench_loss

start = time.perf_counter()
tables = []
pd.set_option("display.width", 250)
for dtype in ("bfloat16", "float32"):
    table = bench_loss(out_dir=f"{sys.argv[1]}/{dtype}", device="cuda", dtype=dtype,
                       batch_sizes=(32, 64, 128, 256, 512, 1024), cells=(16, 64, 196), phrases=(16, 32), dim=256,
                       repeats=3, progress=False, max_seconds=float(sys.argv[2]))
    summary = json.load(open(f"{sys.argv[1]}/{dtype}/summary.json"))
    table["matmul_bf16_tflops"] = summary["matmul_bf16_tflops"]
    table["device_name"] = summary["device_name"]
    tables.append(table)
    print(table.drop(columns=["reason", "device", "dim"]).to_string(index=False))
    print(json.dumps(summary["targets"], indent=1))
pd.concat(tables).to_csv(f"{sys.argv[1]}/gpu.csv", index=False)
print(f"benchmark took {time.perf_counter() - start:.0f} s; wrote {sys.argv[1]}/gpu.csv")
PY
} 2>&1 | tee -a "$log"
