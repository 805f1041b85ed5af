"""Pretraining (docs/study.md section 3).

- :mod:`~fgmm_lib.training.step`: one step (encode a batch, the loss), the schedule, parameter groups.
- :mod:`~fgmm_lib.training.loop`: :func:`pretrain`: AdamW, checkpoints, resume, logs, validation curves.
- :mod:`~fgmm_lib.training.distributed` and :mod:`~fgmm_lib.training.launch`: data-parallel runs.
"""

from fgmm_lib.runs.config import TrainConfig
from fgmm_lib.training.launch import launch
from fgmm_lib.training.loop import pretrain

__all__ = ["TrainConfig", "launch", "pretrain"]
