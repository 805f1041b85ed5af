"""The downstream evaluation (docs/study.md section 5).

- :mod:`~fgmm_lib.evaluation.metrics`: metric primitives on tensors: retrieval R@k, bootstrap
  intervals, the linear probe, pointing accuracy.
- :mod:`~fgmm_lib.evaluation.embedding`: a model's embeddings of a dataset, pair-score matrices,
  caption and text-to-image retrieval.
- :mod:`~fgmm_lib.evaluation.protocol`: :func:`evaluate`, every task on a run folder.
"""

from fgmm_lib.evaluation.metrics import linear_probe, pointing_accuracy, retrieval_metrics
from fgmm_lib.evaluation.protocol import evaluate

__all__ = ["evaluate", "linear_probe", "pointing_accuracy", "retrieval_metrics"]
