"""What the fused pair-score kernels compile to, without a GPU: shared memory, registers, spills
and tensor-core instructions of every configuration the autotuner can pick.

``compile_report`` compiles each kernel of :mod:`fgmm_lib.triton_scores` with Triton's compiler
for a CUDA target (``sm90``: H100, ``sm80``: A100), reads the shared memory from the compiled
kernel's metadata and the tensor-core instruction shapes from its PTX (``wgmma.mMnNkK`` on
Hopper, ``mma.sync.mMnNkK`` on Ampere), and runs the ``ptxas`` shipped in the Triton wheel with
``-v`` for registers and spill bytes. ``fgmm bench-loss --compile-only`` writes the rows to
``kernels.json``; ``check_rows`` says which rows break a limit.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

#: Shared memory one block may use on an H100 (bytes; the opt-in limit of sm_90).
SHARED_LIMIT = {"sm90": 232448, "sm80": 166912}
ARCHES = {"sm90": (90, "sm_90a"), "sm80": (80, "sm_80")}
#: The sweep of ``fgmm bench-loss --compile-only``.
FULL_PHRASES = (16, 32, 64, 128, 256)
FULL_DIMS = (128, 256, 512)
INPUT_DTYPES = ("bfloat16", "float32")
#: forward, the tiled backward, and the backward in sweeps: its launch for the video gradient and its
#: launch for the text gradient (``FOR_TEXT``) compile to different code.
KERNELS = ("forward", "backward", "sweep_video", "sweep_text")
COLUMNS = ["kernel", "aggregation", "dtype", "kernel_dtype", "M", "D", "arch", "config", "shared_bytes",
           "registers", "spill_bytes", "mma", "compile_s"]


def kernel_dtype(input_dtype: str) -> str:
    """The dtype the kernels see on a GPU: float32 tokens are cast to bfloat16 before them."""
    return "bfloat16" if input_dtype in ("bfloat16", "float32") else input_dtype


def _signature(kernel: str, dtype: str) -> dict[str, str]:
    pointer = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32"}[dtype]
    if kernel == "forward":
        names = [("V", pointer), ("T", pointer), ("VMASK", "*u8"), ("TMASK", "*u8"), ("NCNT", "*fp32"),
                 ("MCNT", "*fp32"), ("TEMPS", "*fp32"), ("OUT", "*fp32"), ("PAIR", "*fp32"),
                 ("PHRASE", "*fp32"), ("SLOPES", "*fp32"), ("Bv", "i32"), ("Bt", "i32"), ("N", "i32"),
                 ("M", "i32"), ("D", "i32")]
    else:
        names = [("V", pointer), ("T", pointer), ("VMASK", "*u8"), ("TMASK", "*u8"), ("TEMPS", "*fp32"),
                 ("COEF", "*fp32"), ("PHRASE", "*fp32"), ("DV", "*fp32"), ("DT", "*fp32"), ("Bt", "i32"),
                 ("N", "i32"), ("M", "i32"), ("D", "i32"), ("R", "i32")]
        if kernel.startswith("sweep"):
            names.append(("PER_SPLIT", "i32"))
    return dict(names)


def kernel_configs(kernel: str, aggregation: str, phrases: int, dim: int) -> tuple[dict[str, int], ...]:
    """The configurations the autotuner can pick for ``kernel`` at M = ``phrases``, D = ``dim``
    (none where that kernel does not run: the sweeps beyond their 64 columns)."""
    from fgmm_lib import triton_scores as ts

    if kernel == "forward":
        return ts.forward_configs(aggregation, phrases, dim)
    if kernel == "backward":
        return ts.backward_configs(aggregation)
    return ts.sweep_configs(dim, kernel == "sweep_text") if ts.sweep_shape(phrases) is not None else ()


def _ptxas(capability: int) -> str:
    """The ptxas Triton itself uses for ``capability`` (the wheel ships one per generation)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(capability).path


def compile_one(kernel: str, aggregation: str, input_dtype: str, phrases: int, dim: int, config: dict[str, int],
                arch: str = "sm90") -> dict[str, Any]:
    """Compile one kernel configuration for ``arch``; return its row of ``kernels.json``."""
    import time

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fgmm_lib import triton_scores as ts

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default of a launch; silences a warning
    if ts._interpret_mode():
        raise RuntimeError("compile_report needs a process without TRITON_INTERPRET: its kernels are interpreted")
    ts._load_kernels()
    function = {"forward": ts._forward_kernel, "backward": ts._backward_kernel}.get(kernel, ts._sweep_backward_kernel)
    dtype = kernel_dtype(input_dtype)
    sweep = kernel.startswith("sweep")
    block_m, texts = ts.sweep_shape(phrases) if sweep else ts.tile_shape(phrases)
    config = {"BLOCK_N": ts.SWEEP_BLOCK_N, **config} if sweep else config
    constexprs: dict[str, Any] = {
        "AGG": ts.AGGREGATION_CODES[aggregation], "PRECISION": "ieee" if dtype == "float32" else "tf32",
        "UPCAST": False, "BLOCK_M": block_m, "TEXTS": texts, **ts._tuned_keys(config),
    }
    if kernel == "forward":
        constexprs["TEMP_GRAD"] = aggregation == "attention"  # the heavier variant
    if sweep:
        constexprs["FOR_TEXT"] = kernel == "sweep_text"
    signature = _signature(kernel, dtype)
    # what a launch specialises on: 16-byte aligned pointers (every torch allocation), and integer
    # arguments that are multiples of 16 (D and M here; N = 196 is not, and Bt is not assumed)
    divisible = {"D": dim, "M": phrases}
    attrs = {(index,): [["tt.divisibility", 16]] for index, (name, kind) in enumerate(signature.items())
             if kind.startswith("*") or (name in divisible and divisible[name] % 16 == 0)}
    signature.update({name: "constexpr" for name in constexprs})
    capability, gpu_name = ARCHES[arch]
    started = time.perf_counter()
    compiled = triton.compile(
        ASTSource(function, signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": config["num_warps"], "num_stages": config["num_stages"]},
    )
    ptx = compiled.asm["ptx"]
    registers, spills = _ptxas_usage(ptx, capability, gpu_name)
    shapes = sorted(set(re.findall(r"\b(wgmma\.mma_async\.sync\.aligned\.m\d+n\d+k\d+|mma\.sync\.aligned\.m\d+n\d+k\d+)",
                                   ptx)))
    mma = sorted({re.sub(r"\.(mma_async|sync|aligned)", "", shape) for shape in shapes})
    return {
        "kernel": kernel, "aggregation": aggregation, "dtype": input_dtype, "kernel_dtype": dtype, "M": phrases,
        "D": dim, "arch": arch,
        "config": "BLOCK_N={BLOCK_N} BLOCK_D={BLOCK_D} warps={num_warps} stages={num_stages}".format(**config)
        + (f" D_SLICE={config['D_SLICE']} RESIDENT={config['RESIDENT']}" if sweep else "")
        + (f" VIDEOS={config['VIDEOS']} D_RESIDENT={config['D_RESIDENT']}" if kernel == "forward" else "")
        + f" BLOCK_M={block_m} TEXTS={texts}",
        "shared_bytes": int(compiled.metadata.shared), "registers": registers, "spill_bytes": spills,
        "mma": mma, "compile_s": round(time.perf_counter() - started, 1),
    }


def _ptxas_usage(ptx: str, capability: int, gpu_name: str) -> tuple[int, int]:
    """Registers per thread and spill bytes (stores + loads) that ptxas -v reports for ``ptx``."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run([_ptxas(capability), "-v", f"--gpu-name={gpu_name}", str(source), "-o",
                                 str(Path(folder) / "kernel.cubin")], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"ptxas failed: {result.stderr.strip()[:500]}")
    log = result.stderr + result.stdout
    registers = max(int(r) for r in re.findall(r"Used (\d+) registers", log))
    spills = sum(int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log))
    return registers, spills


def compile_report(out_dir: str | Path, arch: str = "sm90", phrases: Sequence[int] = FULL_PHRASES,
                   dims: Sequence[int] = FULL_DIMS, dtypes: Sequence[str] = INPUT_DTYPES,
                   aggregations: Iterable[str] | None = None, kernels: Sequence[str] = KERNELS,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Compile every configuration the autotuner can pick, for each kernel, aggregation, input dtype,
    M and D; write ``out_dir/kernels.json`` and return its rows. M above ``MAX_PHRASES`` has no row:
    those texts run on the chunked backend. Configurations that compile to the
    same code (D is a runtime argument; float32 inputs run the bfloat16 kernels) are compiled once."""
    from fgmm_lib import triton_scores as ts

    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHES)}")
    aggregations = tuple(ts.AGGREGATION_CODES if aggregations is None else aggregations)
    compiled: dict[tuple[Any, ...], dict[str, Any]] = {}
    rows = []
    for kernel, aggregation, dtype, m, d in itertools.product(kernels, aggregations, dtypes, phrases, dims):
        if ts.fused_limits(m) is not None:
            continue  # auto runs these on the chunked backend (with a warning): no kernel to compile
        for config in kernel_configs(kernel, aggregation, m, d):
            # the code depends on D only through its divisibility (and, in the sweeps, through the
            # accumulator slice, which is part of the configuration)
            key = (kernel, aggregation, kernel_dtype(dtype), m, d % 16 == 0, tuple(sorted(config.items())))
            if key not in compiled:
                compiled[key] = compile_one(kernel, aggregation, dtype, m, d, config, arch)
                if progress:
                    row = compiled[key]
                    print(f"{kernel:8s} {aggregation:9s} {row['kernel_dtype']:8s} M={m:<3d} {row['config']}: "
                          f"shared {row['shared_bytes']} B, {row['registers']} registers, "
                          f"spills {row['spill_bytes']} B, {' '.join(row['mma'])} ({row['compile_s']} s)", flush=True)
            rows.append({**compiled[key], "dtype": dtype, "M": m, "D": d})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def check_rows(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The limits a row breaks: shared memory over the architecture's limit, spills, a matmul off the
    tensor cores (no wgmma on sm90, no mma on sm80), a forward wgmma narrower than N=64."""
    problems = []
    for row in rows:
        name = f"{row['kernel']}/{row['aggregation']} {row['dtype']} M={row['M']} D={row['D']} {row['config']}"
        if row["shared_bytes"] > SHARED_LIMIT[row["arch"]]:
            problems.append(f"{name}: shared {row['shared_bytes']} B > {SHARED_LIMIT[row['arch']]}")
        if row["spill_bytes"]:
            problems.append(f"{name}: spills {row['spill_bytes']} B")
        prefix = "wgmma" if row["arch"] == "sm90" else "mma"
        if not row["mma"] or any(not shape.startswith(prefix) for shape in row["mma"]):
            problems.append(f"{name}: matmuls {row['mma']} are not all {prefix}")
        if row["arch"] == "sm90" and row["kernel"] == "forward":
            widths = [int(re.search(r"n(\d+)", shape).group(1)) for shape in row["mma"]]
            if any(width < 64 for width in widths):
                problems.append(f"{name}: forward wgmma narrower than N=64: {row['mma']}")
    return problems
