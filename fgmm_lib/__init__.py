"""fgmm_lib: fine-grained multi-modal self-supervised learning.

Subpackages, one per concept; each imports only those listed before it (a test checks this):

- :mod:`fgmm_lib.io` and :mod:`fgmm_lib.config`: atomic file writes; dataclass configs from plain values.
- :mod:`fgmm_lib.data`: the dataset folder format, its vocabulary and reader, the Narrated Digits
  generator, the importers of real videos.
- :mod:`fgmm_lib.models`: the separable-3D video encoder and the n-gram text encoder.
- :mod:`fgmm_lib.losses`: pair scores (coarse, mean, max, attention, attention_floor, attention_gate,
  attention_uniform)
  with their reference and chunked backends, the InfoNCE and MIL-NCE modules, ``build_loss``.
- :mod:`fgmm_lib.kernels`: the fused Triton kernels, loaded only when the ``triton`` backend runs.
- :mod:`fgmm_lib.runs`: what a run is: its configuration (``TrainConfig``) and its folder (``load_run``).
- :mod:`fgmm_lib.evaluation`: metric primitives and the evaluation protocol of a run.
- :mod:`fgmm_lib.training`: pretraining, validation curves, data-parallel runs.
- :mod:`fgmm_lib.study`: the study's tooling: results files, sweeps, selection rules, tables,
  statistics, the report, plots, notebook helpers.
- :mod:`fgmm_lib.bench` and :mod:`fgmm_lib.cli`: the benchmarks and the ``fgmm`` command.

docs/study.md describes the study this code runs.
"""

__version__ = "0.1.0"
