"""The fused Triton kernels of the pair scores (:mod:`~fgmm_lib.kernels.triton_scores`).

Loaded only when ``pair_scores(backend="triton")`` runs, or ``"auto"`` picks it on CUDA; nothing on
the CPU path imports this package, so the study's CPU stages do not depend on it. On the CPU the
kernels run under ``TRITON_INTERPRET=1`` in the tests, against the float64 reference.
"""
