"""fgmm_lib: fine-grained multi-modal self-supervised learning.

Modules, one per concept (each imports only those above it):

- ``config``: dataclass configs from plain values (CLI, params.yaml, JSON).
- ``runs``: the run folder, atomic writes of files and folders, output checks, ``load_run``.
- ``data``: the dataset folder format, its ``Vocabulary`` and the ``NarratedDigits`` reader.
- ``generate``: the Narrated Digits generator.
- ``models``: the separable-3D video encoder and the n-gram text encoder.
- ``losses``: pair scores (coarse, mean, max, attention, attention_floor, attention_gate), InfoNCE and MIL-NCE modules, ``build_loss``.
- ``triton_scores``: the fused Triton kernel behind ``pair_scores(backend="triton")``.
- ``train``: pretraining with checkpoints, resume and logs.
- ``evaluate``: the downstream tasks (linear probe, retrieval, pointing).
- ``results``: the results folder: each run's metrics, details and compute files, the headline metrics.
- ``analysis``: tables, summaries, verdicts and the report, from the results files.
- ``viz``: plots used by the notebooks.
- ``notebook``: helpers for the parameterised notebooks.
- ``bench``: the loss benchmark.
- ``cli``: the ``fgmm`` command (also ``python -m fgmm_lib``).
"""

__version__ = "0.1.0"
