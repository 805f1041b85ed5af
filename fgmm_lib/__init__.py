"""fgmm_lib: fine-grained multi-modal self-supervised learning.

Modules, one per concept:

- ``data``: the Narrated Digits generator, its tokenizer and torch Dataset.
- ``models``: the separable-3D video encoder and the n-gram text encoder.
- ``losses``: pair scores (coarse, mean, max, attention), InfoNCE and MIL-NCE.
- ``triton_scores``: the fused Triton kernel behind ``pair_scores(backend="triton")``.
- ``train``: pretraining with checkpoints, resume and logs.
- ``evaluate``: the downstream tasks (linear probe, retrieval, pointing).
- ``viz``: plots used by the notebooks.
- ``bench``: the loss benchmark.
"""

__version__ = "0.1.0"
