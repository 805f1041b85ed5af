"""Datasets: the folder format and its reader, the vocabulary, and what writes a dataset folder.

- :mod:`~fgmm_lib.data.dataset`: the folder format (``frames.npy``, ``meta.jsonl``, ``params.json``,
  ``vocab.json``), its checks and the :class:`NarratedDigits` reader (a torch ``Dataset``).
- :mod:`~fgmm_lib.data.vocab`: :class:`Vocabulary`.
- :mod:`~fgmm_lib.data.generate`: the Narrated Digits generator.
- :mod:`~fgmm_lib.data.importers`, :mod:`~fgmm_lib.data.datasets` and :mod:`~fgmm_lib.data.video_io`:
  real videos, narrations and downstream sets into a dataset folder.

Import from the modules (``from fgmm_lib.data.dataset import NarratedDigits``): this package's
``__init__`` imports nothing, so that an import's worker processes, which run
:func:`fgmm_lib.data.video_io.decode_into`, start without loading torch.
"""
