"""The three steps of ``scripts/bench_gpu.sh``, which runs them on a card in this order:

    python scripts/bench_gpu.py check OUT/gpu_check.json      correctness of the triton backend
    python scripts/bench_gpu.py times OUT/kernel_times.json   where the time goes at the target size
    python scripts/bench_gpu.py sweep OUT SECONDS             naive, chunked and triton, into OUT/gpu.csv

Each step takes ``--device`` (default cuda). The defaults are the card's sizes; the tests run every
step on the CPU under ``TRITON_INTERPRET=1`` at tiny sizes (``--quick``), so that a card's few
minutes are not lost to a mistake in this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

# fgmm_lib from this checkout, wherever the script is started from
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fgmm_lib.kernels import triton_scores as ts  # noqa: E402
from fgmm_lib.losses.scores import AGGREGATIONS, pair_scores  # noqa: E402

Shape = tuple[int, int, int, int, int]  # Bv, Bt, N, M, D

#: The designs the check runs: (forward, backward, only the stored kernel's own tiles offered).
#: The streamed forward with the tiled backward, the resident forward with the backward in sweeps
#: (where they apply; M = 128 and D = 1024 fall back to the first pair) and with the stored backward
#: (its GEMMs are the GEMM library's), then with only the stored kernel's own tiles (STORED_CONFIGS,
#: 128 cells x 64 columns), which the autotuner might not pick in the run before.
DESIGNS = (("streamed", "tiles", False), ("resident", "sweep", False), ("resident", "stored", False),
           ("resident", "stored", True))
CHECK_SHAPES: tuple[Shape, ...] = ((37, 29, 50, 13, 96), (64, 64, 196, 32, 256), (9, 9, 30, 128, 1024))
# where the stored kernel's own tiles are offered: tiles span two videos, the last is partial, 2 texts or 1
OWN_TILE_SHAPES: tuple[Shape, ...] = ((37, 29, 130, 20, 96), (64, 64, 196, 32, 256), (9, 9, 150, 64, 1024))
QUICK_CHECK_SHAPES: tuple[Shape, ...] = ((5, 3, 9, 5, 16),)
QUICK_OWN_TILE_SHAPES: tuple[Shape, ...] = ((3, 2, 130, 20, 16),)  # M = 20: attention is offered them too
TOLERANCE = 3e-2
TARGET_SIZE = (1024, 196, 32, 256)  # B, N, M, D
QUICK_SIZE = (4, 9, 5, 16)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} (triton interpreter)"


def median_ms(fn: Callable[[], Any], device: torch.device, warmup: int = 50, rep: int = 300) -> float:
    """Median time of ``fn`` in ms: triton's ``do_bench`` (``warmup`` and ``rep`` in ms) on CUDA; elsewhere
    (the interpreter, where the time says nothing about a card) the time of one call."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _own_tiles_only(offered: Callable[..., tuple[dict[str, int], ...]]) -> Callable[..., tuple[dict[str, int], ...]]:
    def configs(*args: Any, **kwargs: Any) -> tuple[dict[str, int], ...]:
        choices = offered(*args, **kwargs)
        return tuple(c for c in choices if c in ts.STORED_CONFIGS) or choices
    return configs


def check(out: str | Path, device: str = "cuda", shapes: Sequence[Shape] = CHECK_SHAPES,
          own_tile_shapes: Sequence[Shape] = OWN_TILE_SHAPES, aggregations: Sequence[str] = AGGREGATIONS,
          designs: Sequence[tuple[str, str, bool]] = DESIGNS, tolerance: float = TOLERANCE) -> bool:
    """The triton backend against naive and chunked on ``device``, values and gradients, for each design,
    bfloat16 and float32 tokens, each aggregation and learnable temperatures, and attention at
    tau_a = 0.01 (the forward with running maxima) on the first shape. Writes ``out`` (JSON) and
    returns whether every gated error is within ``tolerance``."""
    device = torch.device(device)
    torch.manual_seed(0)
    results = []
    offered_stored = ts.stored_configs
    try:
        for forward_design, backward_design, own_tiles in designs:
            ts.FORWARD_DESIGN, ts.BACKWARD_DESIGN = forward_design, backward_design
            ts.stored_configs = _own_tiles_only(offered_stored) if own_tiles else offered_stored
            ts.reset_tuning()
            # bfloat16 tokens, and float32 tokens (cast to bfloat16 inside on CUDA): both meet bf16
            # rounding of the tokens
            for dtype in (torch.bfloat16, torch.float32):
                design_shapes = tuple(own_tile_shapes if own_tiles else shapes)
                for shape in design_shapes:
                    first = shape == design_shapes[0]
                    results += _check_shape(device, dtype, shape, first, aggregations, tolerance,
                                            (forward_design, backward_design, own_tiles))
    finally:
        ts.BF16_ON_CUDA = True
        ts.FORWARD_DESIGN = ts.BACKWARD_DESIGN = "auto"
        ts.stored_configs = offered_stored
        ts.reset_tuning()
    passed = bool(results) and all(r["ok"] for r in results)
    Path(out).write_text(json.dumps({"device": _device_name(device), "passed": passed, "cases": results}, indent=2))
    return passed


def _check_shape(device: torch.device, dtype: torch.dtype, shape: Shape, first: bool, aggregations: Sequence[str],
                 tolerance: float, design: tuple[str, str, bool]) -> list[dict[str, Any]]:
    forward_design, backward_design, own_tiles = design
    Bv, Bt, N, M, D = shape
    video = torch.randn(Bv, N, D, device=device)
    text = torch.randn(Bt, M, D, device=device)
    video_mask = torch.rand(Bv, N, device=device) > 0.2
    video_mask[:, 0] = True
    text_mask = torch.rand(Bt, M, device=device) > 0.3
    text_mask[:, 0] = True
    upstream = torch.randn(Bv, Bt, device=device)
    # attention also at tau_a = 0.01 on the first shape: the forward with running maxima, which runs
    # below 1/64. There 1/tau_a = 100 magnifies bfloat16 rounding of the similarities in the gradients:
    # float32 tokens check them with float32 dot products, bfloat16 tokens only the scores; the
    # temperature gradients (rounding grows by 1/tau^2) are not gated
    cases = [(aggregation, (0.1, 0.2)) for aggregation in aggregations]
    if first and "attention" in aggregations:
        cases.append(("attention", (0.01, 0.2)))
    rows = []
    for aggregation, tau_values in cases:
        # max's gradient follows its argmax, which bfloat16 rounding of the similarities moves wherever two
        # cells (or phrases) are nearly tied: float32 tokens check max's gradients with float32 dot
        # products (BF16_ON_CUDA off); with bfloat16 tokens only its scores must agree
        small_tau = tau_values[0] < 1 / ts.MAX_UNSHIFTED_INVERSE_TEMPERATURE
        sharp = aggregation == "max" or small_tau
        ts.BF16_ON_CUDA = not (sharp and dtype == torch.float32)
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
                if backend == "triton":
                    raise
                continue
            _synchronize(device)
            grads = [tau.grad if tau.grad is not None else torch.zeros((), device=device) for tau in taus]
            outputs[backend] = (scores.detach().float(), v.grad.float(), t.grad.float(), torch.stack(grads))
            if backend == "triton":
                scores_dtype = str(scores.dtype)  # the backend's own output dtype (float32 for any input)
            del v, t, scores
        for reference in ("naive", "chunked"):
            if reference not in outputs:
                continue
            errors = {}
            for index, name in enumerate(("scores", "video_grad", "text_grad", "temperature_grad")):
                want, got = outputs[reference][index], outputs["triton"][index]
                errors[name] = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
            ok = all(errors[name] <= tolerance for name in gated)
            rows.append({"dtype": str(dtype), "shape": shape, "aggregation": aggregation, "gated": gated,
                         "temperatures": tau_values, "forward_design": forward_design,
                         "backward_design": backward_design, "stored_own_tiles_only": own_tiles,
                         "float32_dots": not ts.BF16_ON_CUDA, "reference": reference,
                         "relative_max_error": errors, "tolerance": tolerance, "ok": ok,
                         "scores_dtype": scores_dtype})
            print(forward_design, backward_design, "own tiles" if own_tiles else "", dtype, shape, aggregation,
                  tau_values, "vs", reference, "ok" if ok else "MISMATCH", errors, flush=True)
    return rows


def kernel_times(out: str | Path, device: str = "cuda", size: tuple[int, int, int, int] = TARGET_SIZE,
                 matmul_size: int = 8192, aggregations: Sequence[str] = ("mean", "max", "attention")
                 ) -> list[dict[str, Any]]:
    """Forward, backward and step times at ``size`` (B, N, M, D) of each design pair alone and of auto
    (bfloat16 tokens), and of auto with float32 tokens, beside the bf16 matmul rate measured on
    ``device`` in the same run (an ``matmul_size``-cubed GEMM). Writes ``out`` (JSON) and returns the rows."""
    device = torch.device(device)
    B, N, M, D = size
    flop = 2.0 * B * B * N * M * D  # one similarity GEMM
    a = torch.randn(matmul_size, matmul_size, device=device, dtype=torch.bfloat16)
    matmul_ms = median_ms(lambda: a @ a, device)
    matmul_tflops = 2.0 * matmul_size ** 3 / matmul_ms / 1e9
    print(f"bf16 matmul {matmul_size}^3: {matmul_tflops:.3g} TFLOP/s", flush=True)
    del a
    runs = [(torch.bfloat16, pair) for pair in (("streamed", "tiles"), ("resident", "sweep"),
                                                ("resident", "stored"), ("auto", "auto"))]
    runs.append((torch.float32, ("auto", "auto")))
    rows = []
    try:
        for dtype, (forward_design, backward_design) in runs:
            ts.FORWARD_DESIGN, ts.BACKWARD_DESIGN = forward_design, backward_design
            ts.reset_tuning()
            video = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)
            text = torch.randn(B, M, D, device=device, dtype=dtype, requires_grad=True)
            text_mask = torch.rand(B, M, device=device) > 0.3
            text_mask[:, 0] = True
            upstream = torch.randn(B, B, device=device)
            for aggregation in aggregations:
                def forward() -> torch.Tensor:
                    return pair_scores(video, text, text_mask, aggregation=aggregation, backend="triton")

                def step() -> None:
                    video.grad = text.grad = None
                    forward().backward(upstream)

                forward().backward(upstream)  # autotune the kernels (and choose the backward design) once
                _synchronize(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                fwd_ms = median_ms(forward, device)
                step_ms = median_ms(step, device, rep=400)
                peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
                picked = {name: str(getattr(kernel, "best_config", None)) for name, kernel in ts._TUNED.items()}
                row = {"dtype": str(dtype), "aggregation": aggregation, "forward_design": forward_design,
                       "backward_design": backward_design, "chosen_backward": ts.chosen_designs(),
                       "forward_ms": fwd_ms, "step_ms": step_ms, "backward_ms": step_ms - fwd_ms,
                       "forward_tflops_of_1_gemm": flop / fwd_ms / 1e9,
                       "step_tflops_counted_3_gemms": 3 * flop / step_ms / 1e9,
                       "matmul_bf16_tflops": matmul_tflops,
                       "share_of_matmul": 3 * flop / step_ms / 1e9 / matmul_tflops,
                       "peak_extra_mib": peak, "configs": picked}
                rows.append(row)
                print(json.dumps(row), flush=True)
            del video, text
    finally:
        ts.FORWARD_DESIGN = ts.BACKWARD_DESIGN = "auto"
        ts.reset_tuning()
    Path(out).write_text(json.dumps(rows, indent=1))
    return rows


def sweep(out_dir: str | Path, seconds: float, device: str = "cuda", quick: bool = False) -> Any:
    """The benchmark of ``fgmm_lib.bench.loss.bench_loss``, fwd+bwd of one InfoNCE step on naive, chunked and
    triton, in bfloat16 and then float32 tokens (the training path): B in 32..1024, N in (16, 64, 196),
    M in (16, 32), D = 256 (``quick``: bench_loss's tiny grid), each dtype starting no configuration
    after ``seconds``. Writes ``out_dir/<dtype>/`` and both tables in ``out_dir/gpu.csv``."""
    import pandas as pd

    from fgmm_lib.bench.loss import bench_loss

    start = time.perf_counter()
    tables = []
    pd.set_option("display.width", 250)
    for dtype in ("bfloat16", "float32"):
        table = bench_loss(out_dir=f"{out_dir}/{dtype}", device=device, dtype=dtype,
                           batch_sizes=(32, 64, 128, 256, 512, 1024), cells=(16, 64, 196), phrases=(16, 32), dim=256,
                           repeats=3, quick=quick, progress=False, max_seconds=seconds)
        summary = json.loads(Path(f"{out_dir}/{dtype}/summary.json").read_text())
        table["matmul_bf16_tflops"] = summary["matmul_bf16_tflops"]
        table["device_name"] = summary["device_name"]
        tables.append(table)
        print(table.drop(columns=["reason", "device", "dim"]).to_string(index=False))
        print(json.dumps(summary["targets"], indent=1), flush=True)
    table = pd.concat(tables)
    table.to_csv(f"{out_dir}/gpu.csv", index=False)
    print(f"benchmark took {time.perf_counter() - start:.0f} s; wrote {out_dir}/gpu.csv")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    for name in ("check", "times", "sweep"):
        step = steps.add_parser(name)
        step.add_argument("out", help="output file (check, times) or folder (sweep)")
        if name == "sweep":
            step.add_argument("seconds", type=float, help="each dtype starts no configuration after this long")
        step.add_argument("--device", default="cuda")
        step.add_argument("--quick", action="store_true", help="tiny sizes (for a CPU under TRITON_INTERPRET=1)")
    args = parser.parse_args(argv)
    if args.step == "check":
        if args.quick:
            return 0 if check(args.out, args.device, QUICK_CHECK_SHAPES, QUICK_OWN_TILE_SHAPES) else 1
        return 0 if check(args.out, args.device) else 1
    if args.step == "times":
        kernel_times(args.out, args.device, *((QUICK_SIZE, 64) if args.quick else ()))
        return 0
    sweep(args.out, args.seconds, args.device, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
