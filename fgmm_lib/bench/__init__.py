"""Benchmarks (docs/benchmarks.md): each writes its figures to ``results/bench``.

- :mod:`~fgmm_lib.bench.loss`: time and memory of the pair-score backends.
- :mod:`~fgmm_lib.bench.kernel_report`: the fused kernels compiled for a GPU: resources and ceilings.
- :mod:`~fgmm_lib.bench.train`: training steps: samples/s and where a step's time goes.
- :mod:`~fgmm_lib.bench.ddp`: one process against several, and batch limits.
- :mod:`~fgmm_lib.bench.imports`: import throughput and reading speed of imported data.
"""
