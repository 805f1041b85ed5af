"""Datasets: the folder format and its reader, the vocabulary, and what writes a dataset folder.

- :mod:`~fgmm_lib.data.dataset`: the folder format (``frames.npy``, ``meta.jsonl``, ``params.json``,
  ``vocab.json``), its checks and the :class:`NarratedDigits` reader (a torch ``Dataset``).
- :mod:`~fgmm_lib.data.vocab`: :class:`Vocabulary`.
- :mod:`~fgmm_lib.data.generate`: the Narrated Digits generator.
- :mod:`~fgmm_lib.data.importers` and :mod:`~fgmm_lib.data.video_io`: real videos, narrations and
  downstream sets into a dataset folder.
"""

from fgmm_lib.data.dataset import ACTIONS, COLOURS, DATASET_FILES, DIGIT_WORDS, SPLITS, NarratedDigits
from fgmm_lib.data.vocab import Vocabulary

__all__ = ["ACTIONS", "COLOURS", "DATASET_FILES", "DIGIT_WORDS", "SPLITS", "NarratedDigits", "Vocabulary"]
