"""What the fused pair-score kernels compile to, without a GPU: shared memory, registers, spills
and tensor-core instructions of every configuration the autotuner can pick.

``compile_report`` compiles each kernel of :mod:`fgmm_lib.kernels.triton_scores` with Triton's compiler
for a CUDA target (``sm90``: H100, ``sm80``: A100), reads the shared memory from the compiled
kernel's metadata and the tensor-core instruction shapes from its PTX (``wgmma.mMnNkK`` on
Hopper, ``mma.sync.mMnNkK`` on Ampere), and runs the ``ptxas`` shipped in the Triton wheel with
``-v`` for registers and spill bytes. ``fgmm bench-loss --compile-only`` writes the rows to
``kernels.json``; ``check_rows`` says which rows break a limit.

On sm90 it also reads each kernel's machine code (SASS, from ``nvdisasm`` of the same wheel) for
an upper bound on its speed: ``issue_bound`` counts the warp instructions of one unit of work (a
video's cells against a group of texts in the forward, one tile in the tiled backward, one swept
tile in a sweep), loop bodies multiplied by their trip counts, and divides the cycles its tensor
cores need for the multiply-adds the step counts by the cycles an H100 SM needs at least to issue
them (``SM90_PER_CLOCK``: every instruction, shuffles, MUFU). It is a ceiling, not a prediction:
memory, latency and occupancy only lower it. ``step_ceilings`` combines a forward and a backward
into the ceiling of one InfoNCE step at N = ``CEILING_CELLS`` cells.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from fgmm_lib.io import write_json
from fgmm_lib.kernels import triton_scores as ts

#: Shared memory one block may use on an H100 (bytes; the opt-in limit of sm_90).
SHARED_LIMIT = {"sm90": 232448, "sm80": 166912}
#: What one SM holds (CUDA C Programming Guide, compute capabilities 9.0 and 8.0): shared memory
#: (bytes, of which the system reserves 1 KB per block), 32-bit registers, warps and blocks.
SM_SHARED = {"sm90": 233472, "sm80": 167936}
SM_REGISTERS, SM_WARPS, SM_BLOCKS, RESERVED_SHARED = 65536, 64, 32, 1024
ARCHES = {"sm90": (90, "sm_90a"), "sm80": (80, "sm_80")}
#: The sweep of ``fgmm bench-loss --compile-only``.
FULL_PHRASES = (16, 32, 64, 128, 256)
FULL_DIMS = (128, 256, 512)
INPUT_DTYPES = ("bfloat16", "float32")
#: forward, the tiled backward, the stored backward's kernel (dS/ds to memory; its two GEMMs are the
#: GEMM library's), and the backward in sweeps: its launch for the video gradient and its launch for
#: the text gradient (``FOR_TEXT``) compile to different code.
KERNELS = ("forward", "backward", "stored", "sweep_video", "sweep_text")
COLUMNS = ["kernel", "aggregation", "dtype", "kernel_dtype", "M", "D", "arch", "config", "shared_bytes",
           "registers", "spill_bytes", "mma", "compile_s", "temp_grad", "unshifted", "warps_per_sm"]
#: Columns the sm90 rows add from the SASS: per unit of work, the warp instructions of one warp (in
#: all, shuffles, MUFU), the multiply-adds its HGMMAs run and the ones the step counts, the SM
#: cycles each limit needs, the limit that binds, and ``issue_bound`` (counted multiply-adds per
#: cycle over the tensor cores' rate: the share of the bf16 peak the kernel can reach at most).
SASS_COLUMNS = ["unit", "warp_instructions", "shuffles", "mufu", "tensor_macs", "counted_macs", "cycles",
                "bound_by", "issue_bound"]
#: What one H100 SM does per clock (CUDA C Programming Guide, compute capability 9.0), in warp
#: instructions: 4 issued (one per scheduler), 1 shuffle (32 lanes), 0.5 MUFU (16 lanes: exp2,
#: reciprocal, ...); and 2048 dense bf16 multiply-adds on its tensor cores.
SM90_PER_CLOCK = {"issue": 4.0, "SHFL": 1.0, "MUFU": 0.5}
SM90_TENSOR_MACS = 2048
#: Cells per video the SASS ceilings assume (the target size of ``bench_gpu.sh``).
CEILING_CELLS = 196


def warps_per_sm(arch: str, registers: int, shared_bytes: int, warps: int) -> int:
    """Warps of a kernel's blocks that one SM holds at once (its occupancy), from the registers of
    a thread (allocated per warp in units of 256: a multiple of 8 a thread) and the shared memory of
    a block; what the issue ceilings assume is that an SM has enough of them to hide latency."""
    per_warp = -(-registers // 8) * 8 * 32
    blocks = min(SM_BLOCKS, SM_WARPS // warps, SM_REGISTERS // (per_warp * warps),
                 SM_SHARED[arch] // (shared_bytes + RESERVED_SHARED))
    return blocks * warps


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
        elif kernel == "backward":
            names.append(("D_PAD", "i32"))
        else:  # stored: dS/ds in the dot products' dtype instead of the two gradients
            names = names[:7] + [("DS", pointer)] + names[9:]
    return dict(names)


def kernel_configs(kernel: str, aggregation: str, phrases: int, dim: int, unshifted: bool = True
                   ) -> tuple[dict[str, int], ...]:
    """The configurations the autotuner can pick for ``kernel`` at M = ``phrases``, D = ``dim`` in
    attention's ``unshifted`` variant or the other (none where that kernel does not run: the sweeps
    beyond their 64 columns)."""

    if kernel == "forward":
        return ts.forward_configs(aggregation, phrases, dim)
    if kernel == "backward":
        return ts.backward_configs(aggregation)
    if kernel == "stored":
        return ts.stored_configs(aggregation, phrases, CEILING_CELLS, unshifted)
    return ts.sweep_configs(dim, kernel == "sweep_text", aggregation) if ts.sweep_shape(phrases) is not None else ()


def _ptxas(capability: int) -> str:
    """The ptxas Triton itself uses for ``capability`` (the wheel ships one per generation)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(capability).path


def compile_one(kernel: str, aggregation: str, input_dtype: str, phrases: int, dim: int, config: dict[str, int],
                arch: str = "sm90", temp_grad: bool | None = None, unshifted: bool = True) -> dict[str, Any]:
    """Compile one kernel configuration for ``arch``; return its row of ``kernels.json``. Attention's
    kernels have variants: ``unshifted`` (exponentials without running maxima, what runs at
    temperatures of at least 1/``MAX_UNSHIFTED_INVERSE_TEMPERATURE``) defaults to the one that
    usually runs; the forward's ``temp_grad`` (it also sums what learnable temperatures' gradients
    need) to the heavier one."""
    return _compile(kernel, aggregation, input_dtype, phrases, dim, config, arch, temp_grad, unshifted)[0]


def _compile(kernel: str, aggregation: str, input_dtype: str, phrases: int, dim: int, config: dict[str, int],
             arch: str, temp_grad: bool | None = None, unshifted: bool = True
             ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The row of ``compile_one``, and the SASS loops of the kernel (``sass_loops``; sm90 only)."""
    import time

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default of a launch; silences a warning
    if ts._interpret_mode():
        raise RuntimeError("compile_report needs a process without TRITON_INTERPRET: its kernels are interpreted")
    ts._load_kernels()
    function = {"forward": ts._forward_kernel, "backward": ts._backward_kernel,
                "stored": ts._stored_kernel}.get(kernel, ts._sweep_backward_kernel)
    dtype = kernel_dtype(input_dtype)
    sweep = kernel.startswith("sweep")
    config = _unit_config(kernel, config, phrases)
    block_m, texts = config["BLOCK_M"], config["TEXTS"]
    constexprs: dict[str, Any] = {
        "AGG": ts.AGGREGATION_CODES[aggregation], "PRECISION": "ieee" if dtype == "float32" else "tf32",
        "UPCAST": False, **{k: v for k, v in ts._tuned_keys(config).items() if k in function.arg_names},
    }
    temp_grad = aggregation == "attention" if temp_grad is None else temp_grad and aggregation == "attention"
    unshifted = unshifted and aggregation == "attention"
    if kernel == "forward":
        constexprs["TEMP_GRAD"] = temp_grad
    constexprs["UNSHIFTED"] = unshifted
    if sweep:
        constexprs["FOR_TEXT"] = kernel == "sweep_text"
    if kernel in ("backward", "stored"):  # compiled for videos of CEILING_CELLS cells, as it runs there
        constexprs["TWO_VIDEOS"] = ts.two_videos(constexprs["AGG"], CEILING_CELLS, config["BLOCK_N"])
    signature = _signature(kernel, dtype)
    # what a launch specialises on: 16-byte aligned pointers (every torch allocation), and integer
    # arguments that are multiples of 16 (D, M and the backward's padded D here; N = 196 is not, and
    # Bt is not assumed)
    divisible = {"D": dim, "M": phrases, "D_PAD": ts.backward_padding(aggregation)[1]}
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
    program, sass_row = None, {}
    if arch == "sm90":
        program = sass_loops(_disassemble(compiled.asm["cubin"], capability))
        sass_row = work_unit(kernel, program, config, dim)
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
        "temp_grad": kernel == "forward" and temp_grad, "unshifted": unshifted,
        "warps_per_sm": warps_per_sm(arch, registers, int(compiled.metadata.shared), config["num_warps"]),
        **sass_row,
    }, program


def _unit_config(kernel: str, config: dict[str, int], phrases: int) -> dict[str, int]:
    """``config`` with the tile's BLOCK_M and TEXTS (and the sweep's BLOCK_N): the constexprs of a
    compilation, and what ``work_unit`` reads."""

    sweep = kernel.startswith("sweep")
    columns = config.get("COLUMNS", ts.TILE_COLUMNS)  # the stored kernel's configurations name theirs
    block_m, texts = ts.sweep_shape(phrases) if sweep else ts.tile_shape(phrases, columns)
    return {**({"BLOCK_N": ts.SWEEP_BLOCK_N} if sweep else {}), **config, "BLOCK_M": block_m, "TEXTS": texts}


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


def _disassemble(cubin: bytes, capability: int) -> str:
    """The SASS of ``cubin``, from the ``nvdisasm`` next to the wheel's ptxas."""
    tool = Path(_ptxas(capability)).with_name("nvdisasm")
    with tempfile.TemporaryDirectory() as folder:
        binary = Path(folder) / "kernel.cubin"
        binary.write_bytes(cubin)
        result = subprocess.run([str(tool), "-c", str(binary)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"nvdisasm failed: {result.stderr.strip()[:500]}")
    return result.stdout


_SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)([^;]*);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_HGMMA_SHAPE = re.compile(r"\.(\d+)x(\d+)x(\d+)")


def sass_loops(sass: str) -> dict[str, Any]:
    """The instructions of ``sass`` (one kernel) and its loops: ``{"instructions": [(opcode,
    modifiers)], "loops": [{"start", "end", "parent"}]}``. A loop is a branch back to an earlier
    label (a branch to itself, the trap after the exit, is none); ``parent`` indexes the innermost
    loop that contains it, or is None."""
    instructions: list[tuple[str, str]] = []
    labels: dict[str, int] = {}
    branches: list[tuple[int, str]] = []
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        match = _SASS_LINE.match(line)
        if match:
            opcode, modifiers, operands = match.groups()
            target = re.search(r"\((\.L_x_\d+)\)", operands)
            if opcode == "BRA" and target:
                branches.append((len(instructions), target.group(1)))
            instructions.append((opcode, modifiers))
    spans = sorted({(labels[target], at) for at, target in branches if target in labels and labels[target] < at},
                   key=lambda span: (span[0], -span[1]))
    loops = []
    for start, end in spans:
        parents = [i for i, loop in enumerate(loops) if loop["start"] <= start and end <= loop["end"]]
        loops.append({"start": start, "end": end, "parent": max(parents, key=lambda i: loops[i]["start"])
                      if parents else None})
    return {"instructions": instructions, "loops": loops}


def _tally(instructions: Sequence[tuple[str, str]]) -> collections.Counter:
    """Warp instructions in all, shuffles, MUFU, and the multiply-adds of the HGMMAs (per warp: a
    warpgroup's m x n x k split over its 4 warps)."""
    tally: collections.Counter = collections.Counter()
    for opcode, modifiers in instructions:
        tally["issue"] += 1
        if opcode in ("SHFL", "MUFU"):
            tally[opcode] += 1
        if opcode == "HGMMA":
            m, n, k = (int(x) for x in _HGMMA_SHAPE.match(modifiers).groups())
            tally["macs"] += m * n * k // 4
    return tally


def work_unit(kernel: str, program: dict[str, Any], config: dict[str, int], dim: int,
              cells: int = CEILING_CELLS) -> dict[str, Any]:
    """The SASS columns of a row (``SASS_COLUMNS``): one unit of ``kernel``'s work, from the loops of
    ``program`` (``sass_loops``) and their trip counts at D = ``dim`` and ``cells`` cells a video.

    - forward: one video against one group of texts; the loop over blocks of cells runs
      ceil(cells / BLOCK_N) times, a loop inside it over chunks of D ceil(D / BLOCK_D) times, and
      the code outside it once per video (the part outside a loop over VIDEOS, once per VIDEOS).
    - backward (tiled) and stored: one program, one tile; each loop (chunks of D) ceil(D / BLOCK_D)
      times. The stored kernel counts one GEMM's multiply-adds (the similarity it recomputes): its
      ``issue_bound`` is the rate at which it does the work of one GEMM.
    - sweep_video / sweep_text: one swept tile for all ceil(D / D_SLICE) slices; a loop inside the
      sweep (chunks of D of the similarity) ceil(D / BLOCK_D) times; the code outside the sweep is
      left out (a program sweeps thousands of tiles).

    The multiply-adds a unit counts are the step's (the similarity in the forward, the two
    gradients in the backward), of real cells only; ``tensor_macs`` is what its HGMMAs run,
    recomputations and padding included."""
    instructions, loops = program["instructions"], program["loops"]

    def span(i: int) -> collections.Counter:
        return _tally(instructions[loops[i]["start"]:loops[i]["end"] + 1])

    def children(parent: int | None) -> list[int]:
        return [i for i, loop in enumerate(loops) if loop["parent"] == parent]

    def with_trips(total: collections.Counter, inner: Sequence[int], trips: int) -> collections.Counter:
        for i in inner:  # the static count holds each inner body once
            total = total + collections.Counter({k: v * (trips - 1) for k, v in span(i).items()})
        return total

    columns = config["TEXTS"] * config["BLOCK_M"]
    whole = _tally(instructions)
    chunks = math.ceil(dim / config["BLOCK_D"])
    if kernel == "forward":
        top = children(None)
        if len(top) != 1:
            raise ValueError(f"forward SASS: expected one outer loop, found {len(top)}")
        blocks = math.ceil(cells / config["BLOCK_N"])
        if config["VIDEOS"] > 1:  # the outer loop runs over videos, the cell loop is inside it
            (video_loop,), outside = top, whole - span(top[0])
            (cell_loop,) = children(video_loop)
            per_video = span(video_loop) - span(cell_loop)
            per_video = per_video + collections.Counter({k: v / config["VIDEOS"] for k, v in outside.items()})
        else:
            (cell_loop,) = top
            per_video = whole - span(cell_loop)
        block = with_trips(span(cell_loop), children(cell_loop), chunks)
        unit = per_video + collections.Counter({k: v * blocks for k, v in block.items()})
        counted = cells * columns * dim
        name = f"one video ({cells} cells) x {columns} columns"
    elif kernel in ("backward", "stored"):
        unit = with_trips(whole, children(None), chunks)
        counted = (2 if kernel == "backward" else 1) * config["BLOCK_N"] * columns * dim
        name = f"one tile, {config['BLOCK_N']} cells x {columns} columns"
    else:
        top = children(None)
        if len(top) != 1:
            raise ValueError(f"{kernel} SASS: expected one sweep loop, found {len(top)}")
        slices = math.ceil(dim / config["D_SLICE"])
        one = with_trips(span(top[0]), children(top[0]), chunks)
        unit = collections.Counter({k: v * slices for k, v in one.items()})
        counted = config["BLOCK_N"] * columns * dim
        name = f"one swept tile, {config['BLOCK_N']} cells x {columns} columns, {slices} slice(s)"
    warps = config["num_warps"]
    cycles = {limit: warps * unit[limit] / rate for limit, rate in SM90_PER_CLOCK.items()}
    cycles["tensor"] = warps * unit["macs"] / SM90_TENSOR_MACS
    bound_by = max(cycles, key=cycles.get)
    return {"unit": name, "warp_instructions": round(unit["issue"]), "shuffles": round(unit["SHFL"]),
            "mufu": round(unit["MUFU"]), "tensor_macs": round(warps * unit["macs"]), "counted_macs": counted,
            "cycles": round(cycles[bound_by]), "bound_by": bound_by,
            "issue_bound": round(counted / SM90_TENSOR_MACS / cycles[bound_by], 4)}


#: Each backward design of a step: its kernels with the GEMMs each counts, and the GEMMs the GEMM
#: library runs (``step_ceilings``).
BACKWARD_STEPS = {"tiles": ((("backward", 2.0),), 0.0),
                  "sweep": ((("sweep_video", 1.0), ("sweep_text", 1.0)), 0.0),
                  "stored": ((("stored", 1.0),), 2.0)}


def step_ceilings(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The SASS ceiling of one InfoNCE step (forward and backward) per aggregation, M, D, pair of
    designs (forward streamed or resident, backward tiles, sweep or stored) and, for attention, fixed
    or learnable temperatures (the forward's ``temp_grad``), each kernel at its best configuration:
    the step counts 3 GEMMs, so its share of the bf16 peak is 3 / (1 / forward + 2 / tiled
    backward), 3 / (1 / forward + 1 / sweep_video + 1 / sweep_text) or 3 / (1 / forward + 1 / stored
    + 2), the stored backward's two GEMMs (the GEMM library's) taken at the peak, and its traffic of
    dS/ds, like every memory access here, left out. Attention's kernels are the
    unshifted ones, which run at temperatures of at least 1/64 (their fallbacks below them have rows
    in ``kernels.json``, not a ceiling here)."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        if "issue_bound" not in row:
            continue
        if row["aggregation"] == "attention" and not row.get("unshifted"):
            continue
        design = ("resident" if "D_RESIDENT=0" not in row["config"] else "streamed") if row["kernel"] == "forward" \
            else row["kernel"]
        key = (row["aggregation"], row["M"], row["D"], design, bool(row.get("temp_grad")))
        if key not in best or row["issue_bound"] > best[key]["issue_bound"]:
            best[key] = row
    table = []
    for (aggregation, m, d, design, learnable) in sorted(k for k in best if k[3] in ("streamed", "resident")):
        forward = best[(aggregation, m, d, design, learnable)]
        for name, (weighted, library_gemms) in BACKWARD_STEPS.items():
            kernels = [best.get((aggregation, m, d, kernel, False)) for kernel, _ in weighted]
            if any(k is None for k in kernels):
                continue
            # the GEMM library's GEMMs at the peak: 1 / 1.0 each
            share = 3.0 / (1.0 / forward["issue_bound"] + library_gemms
                           + sum(w / k["issue_bound"] for (_, w), k in zip(weighted, kernels)))
            table.append({"aggregation": aggregation, "M": m, "D": d, "learnable_temperatures": learnable,
                          "forward": design, "backward": name,
                          "forward_bound": forward["issue_bound"],
                          "backward_bounds": [k["issue_bound"] for k in kernels],
                          "bound_by": [forward["bound_by"]] + [k["bound_by"] for k in kernels],
                          "step_issue_bound": round(share, 4)})
    return table


def compile_report(out_dir: str | Path, arch: str = "sm90", phrases: Sequence[int] = FULL_PHRASES,
                   dims: Sequence[int] = FULL_DIMS, dtypes: Sequence[str] = INPUT_DTYPES,
                   aggregations: Iterable[str] | None = None, kernels: Sequence[str] = KERNELS,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Compile every configuration the autotuner can pick, for each kernel, aggregation, input dtype,
    M and D; write ``out_dir/kernels.json`` (on sm90 also ``ceilings.json``, ``step_ceilings``) and
    return its rows. M above ``MAX_PHRASES`` has no row:
    those texts run on the chunked backend. Configurations that compile to the
    same code (D is a runtime argument; float32 inputs run the bfloat16 kernels) are compiled once."""

    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHES)}")
    aggregations = tuple(ts.AGGREGATION_CODES if aggregations is None else aggregations)
    compiled: dict[tuple[Any, ...], dict[str, Any]] = {}
    rows = []
    for kernel, aggregation, dtype, m, d in itertools.product(kernels, aggregations, dtypes, phrases, dims):
        if ts.fused_limits(m) is not None:
            continue  # auto runs these on the chunked backend (with a warning): no kernel to compile
        # attention's kernels have variants: the ones they are launched in (unshifted exponentials, or
        # running maxima below 1/64), and the forward with the sums learnable temperatures need or without
        temp_grads = (True, False) if kernel == "forward" and aggregation == "attention" else (False,)
        variants = list(itertools.product(temp_grads, ts._variants(ts.AGGREGATION_CODES[aggregation])))
        for config, (temp_grad, unshifted) in itertools.product(kernel_configs(kernel, aggregation, m, d), variants):
            if config not in kernel_configs(kernel, aggregation, m, d, unshifted):
                continue  # offered to attention's unshifted variant only (the stored kernel's own tiles)
            # the code depends on D only through its divisibility (and, in the sweeps, through the
            # accumulator slice, which is part of the configuration)
            key = (kernel, aggregation, kernel_dtype(dtype), m, d % 16 == 0, tuple(sorted(config.items())), temp_grad,
                   unshifted)
            if key not in compiled:
                compiled[key] = _compile(kernel, aggregation, dtype, m, d, config, arch, temp_grad, unshifted)
                if progress:
                    row = compiled[key][0]
                    print(f"{kernel:8s} {aggregation:9s} {row['kernel_dtype']:8s} M={m:<3d} {row['config']}"
                          f"{' TEMP_GRAD' if temp_grad else ''}{' UNSHIFTED' if unshifted else ''}: "
                          f"shared {row['shared_bytes']} B, {row['registers']} registers "
                          f"({row['warps_per_sm']} warps an SM), "
                          f"spills {row['spill_bytes']} B, {' '.join(row['mma'])} ({row['compile_s']} s)", flush=True)
            row, program = compiled[key]
            at_dim = {} if program is None else work_unit(kernel, program, _unit_config(kernel, config, m), d)
            rows.append({**row, "dtype": dtype, "M": m, "D": d, **at_dim})
    out = Path(out_dir)
    write_json(out / "kernels.json", rows)
    if arch == "sm90":
        ceilings = step_ceilings(rows)
        write_json(out / "ceilings.json", ceilings)
        if progress:
            print(f"ceiling of one step from the SASS (share of the bf16 peak, N = {CEILING_CELLS}; "
                  f"{out / 'ceilings.json'}):")
            for c in ceilings:
                print(f"  {c['aggregation']:9s} M={c['M']:<3d} D={c['D']:<3d} forward {c['forward']:8s} "
                      f"backward {c['backward']:6s} {c['step_issue_bound']:.1%}"
                      + (" (learnable temperatures)" if c["learnable_temperatures"] else ""))
    return rows


def check_rows(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The limits a row breaks: shared memory over the architecture's limit, spills, a matmul off the
    tensor cores (no wgmma on sm90, no mma on sm80; only the stored kernel of ``mean`` has none), a
    forward wgmma narrower than N=64."""
    problems = []
    for row in rows:
        name = f"{row['kernel']}/{row['aggregation']} {row['dtype']} M={row['M']} D={row['D']} {row['config']}"
        if row["shared_bytes"] > SHARED_LIMIT[row["arch"]]:
            problems.append(f"{name}: shared {row['shared_bytes']} B > {SHARED_LIMIT[row['arch']]}")
        if row["spill_bytes"]:
            problems.append(f"{name}: spills {row['spill_bytes']} B")
        prefix = "wgmma" if row["arch"] == "sm90" else "mma"
        no_matmul = row["kernel"] == "stored" and row["aggregation"] == "mean"  # mean's dS/ds needs no similarity
        if (not row["mma"] and not no_matmul) or any(not shape.startswith(prefix) for shape in row["mma"]):
            problems.append(f"{name}: matmuls {row['mma']} are not all {prefix}")
        if row["arch"] == "sm90" and row["kernel"] == "forward":
            widths = [int(re.search(r"n(\d+)", shape).group(1)) for shape in row["mma"]]
            if any(width < 64 for width in widths):
                problems.append(f"{name}: forward wgmma narrower than N=64: {row['mma']}")
    return problems
