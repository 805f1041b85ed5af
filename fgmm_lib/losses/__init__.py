"""Pair scores between videos and texts, and the contrastive losses built on them.

- :mod:`~fgmm_lib.losses.scores`: the pair scores of docs/study.md section 2 and their backends
  (``naive`` reference, ``chunked``, ``triton``, ``auto``), and :func:`attention_maps`.
- :mod:`~fgmm_lib.losses.modules`: the loss modules (:class:`ContrastiveLoss`, :class:`MilNceLoss`,
  the :class:`PairLoss` interface), :func:`build_loss` and :func:`mil_nce_loss`.
"""

from fgmm_lib.losses.modules import ContrastiveLoss, MilNceLoss, PairLoss, build_loss, mil_nce_loss
from fgmm_lib.losses.scores import AGGREGATIONS, ATTENTION_AGGREGATIONS, BACKENDS, LOSSES, attention_maps, pair_scores

__all__ = ["AGGREGATIONS", "ATTENTION_AGGREGATIONS", "BACKENDS", "LOSSES", "ContrastiveLoss", "MilNceLoss",
           "PairLoss", "attention_maps", "build_loss", "mil_nce_loss", "pair_scores"]
