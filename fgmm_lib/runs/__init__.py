"""What a run is: its configuration and its folder.

- :mod:`~fgmm_lib.runs.config`: :class:`TrainConfig` (its fields are the options of ``fgmm pretrain``
  and the keys of ``params.yaml``'s ``train`` section) and the loss it builds.
- :mod:`~fgmm_lib.runs.folder`: the run folder's files and :func:`load_run`.
- :mod:`~fgmm_lib.runs.curves`: the validation curve a run writes (``curves.csv``).
"""
