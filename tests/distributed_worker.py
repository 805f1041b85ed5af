"""One rank of the data-parallel tests, started by torchrun: ``distributed_worker.py MODE DATA OUT``.

- ``runs``: pretrain every loss with both gathers for 2 steps of global batch 8, in one process
  group (run folders ``OUT/<loss>-<gather>``).
- ``dead``: rank 1 leaves at once; rank 0 pretrains and must stop with an error, which it writes
  to ``OUT/error.txt`` with the seconds it took.
"""

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fgmm_lib.losses.scores import LOSSES
from fgmm_lib.runs.config import TrainConfig
from fgmm_lib.training.loop import pretrain


def config(data: str, out: Path, **overrides) -> TrainConfig:
    values = dict(data=data, out=str(out), batch_size=8, epochs=2, dim=16, width=0.25, device="cpu",
                  backend="chunked", max_steps=2)
    values.update(overrides)
    return TrainConfig(**values)


def main(mode: str, data: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    if mode == "runs":
        for loss in LOSSES:
            for gather in ("all", "local"):
                pretrain(config(data, Path(out) / f"{loss}-{gather}", loss=loss, gather=gather), progress=False)
        return
    if dist.get_rank() == 1:
        os._exit(0)
    start = time.perf_counter()
    try:
        pretrain(config(data, Path(out) / "run"), progress=False)
    except Exception as error:  # noqa: BLE001 - the test reads what stopped the rank
        (Path(out) / "error.txt").write_text(f"{time.perf_counter() - start:.1f}\n{type(error).__name__}: {error}")
        os._exit(3)


if __name__ == "__main__":
    main(*sys.argv[1:4])
