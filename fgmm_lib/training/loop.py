"""Pretraining of both encoders from scratch (docs/study.md section 3), with checkpoints and resume: :func:`pretrain`.

A run is defined by a :class:`fgmm_lib.runs.config.TrainConfig` and writes a run folder. The
folder's files (config, vocabulary, step log, checkpoint, compute record and, with ``val_data``,
validation curves) are described in :mod:`fgmm_lib.runs.folder`. The parts of one step (the loss of
a batch, the schedule, the parameter groups) are in :mod:`fgmm_lib.training.step`. The
data-parallel parts are in :mod:`fgmm_lib.training.distributed`, and
:func:`fgmm_lib.training.launch.launch` starts a run on several processes.

The peak learning rate follows the batch size by a stated rule (``lr_scaling``,
:func:`fgmm_lib.runs.config.peak_lr`): ``lr`` at ``reference_batch_size``, times the ratio of batch
sizes (``linear``) or its square root (``sqrt``). ``warmup_samples`` fixes the warmup in samples, so
every batch size warms up over the same data (``warmup_fraction`` of the steps otherwise;
:func:`fgmm_lib.training.step.warmup_steps`).

Validation (``val_data``) embeds the validation split with the current weights in eval mode and
scores it exactly as :func:`fgmm_lib.evaluation.protocol.evaluate` scores the test split (the distinct clean
captions query the clips; every clip with that caption is a correct answer; R@1/5/10). It runs
before the first step and after the steps that :func:`fgmm_lib.training.step.validation_steps` lists,
on rank 0 only, and leaves every random state as it found it. Its time is not counted in the
training wall time. The test split is never read during training.

On the CPU a run is bitwise reproducible from its seed, and a run resumed from a checkpoint ends
with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from fgmm_lib.data.dataset import NarratedDigits
from fgmm_lib.data.vocab import Vocabulary
from fgmm_lib.evaluation.embedding import caption_retrieval, embed_dataset
from fgmm_lib.io import check_writable_folder, clean_leftovers, write_atomic, write_json
from fgmm_lib.losses.modules import PairLoss
from fgmm_lib.models.encoders import DualEncoder, ModelConfig
from fgmm_lib.runs.config import (
    RESUMABLE_CHANGES,
    TrainConfig,
    check_backend,
    complete_train_dict,
    loss_from_config,
    peak_lr,
)
from fgmm_lib.runs.curves import CURVE_COLUMNS, config_fingerprint
from fgmm_lib.runs.folder import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    COMPUTE,
    CONFIG,
    CURVES,
    LOG,
    RUN_FILES,
    VOCAB,
    load_checkpoint,
    mismatches,
    run_config_problem,
)
from fgmm_lib.training.distributed import World, close_world, indivisible_message, init_world, world_size_from_env
from fgmm_lib.training.step import (
    BATCH_KEYS,
    RankLoss,
    Schedule,
    apply_fast_path,
    batch_loss,
    count_step_flops,
    parameter_groups,
    to_device,
    validation_steps,
    warmup_steps,
)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device is {name!r} but CUDA is not available")
    return device


# ---------------------------------------------------------------- files


def _prepare_run_folder(run: Path, resume: bool) -> None:
    """Check the run folder before any training: a new or empty folder, or (with ``resume``) a run
    folder with a checkpoint; writable. Leftovers of a killed earlier write are removed."""
    if run.exists() and not run.is_dir():
        raise ValueError(f"TrainConfig.out {run} exists and is not a folder")
    checkpoint = run / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise FileNotFoundError(
            f"cannot resume: run folder {run} has no {CHECKPOINT}; start it without resume "
            f"(it is written at the end of every epoch)"
        )
    if not resume and checkpoint.is_file():
        raise ValueError(
            f"run folder {run} already holds a run ({checkpoint}); resume it with resume=True "
            f"(fgmm pretrain --resume) or choose another folder for TrainConfig.out"
        )
    if run.is_dir():
        clean_leftovers(run)
        foreign = sorted(entry.name for entry in run.iterdir() if entry.name not in RUN_FILES)
        if foreign and not resume:
            raise ValueError(
                f"TrainConfig.out {run} is not empty and is not a run folder (it holds {', '.join(foreign[:5])}); "
                f"a run is written only into a new or empty folder, or resumed in its own folder")
        problem = run_config_problem(run) if resume else None
        if problem:
            raise ValueError(f"cannot resume: {run} has a {CHECKPOINT} but {problem}")
    check_writable_folder(run, "TrainConfig.out")


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything after it is dropped too
    return rows


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the rows of steps <= ``last_step`` (those the checkpoint covers)."""
    rows = [row for row in _read_log(path) if int(row.get("step", 0)) <= last_step]
    write_atomic(path, lambda tmp: tmp.write_text("".join(json.dumps(row) + "\n" for row in rows)))


def _rng_states(shuffle_state: Tensor) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]), "cached": float(numpy_state[4])},
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "shuffle": shuffle_state,
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------- training


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on the CPU (cheap there), restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.benchmark = previous_benchmark


class _Batches(torch.utils.data.Dataset):
    """One item per batch of positions, assembled with the dataset's vectorised get_batch."""

    def __init__(self, dataset: Any, batches: list[np.ndarray]) -> None:
        self.dataset = dataset
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.dataset.get_batch(self.batches[index])
        return {key: batch[key] for key in BATCH_KEYS if key in batch}


def _iterate_batches(dataset: Any, batches: list[np.ndarray], num_workers: int, pin_memory: bool,
                     seed: int) -> Iterator[dict[str, Any]]:
    if num_workers == 0:
        for positions in batches:
            yield dataset.get_batch(positions)
        return
    loader = torch.utils.data.DataLoader(
        _Batches(dataset, batches), batch_size=None, shuffle=False, num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
    )
    yield from loader


@dataclass
class _Plan:
    clips: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    stop_step: int
    peak_lr: float


@dataclass
class _Validation:
    """The validation split of a run and what its retrieval needs; ``rows`` is the curve so far."""

    dataset: Any
    vocab: Any
    caption_lists: list[list[str]]
    several: bool
    max_words: int
    steps: frozenset[int]
    run: str
    fingerprint: str
    steps_per_epoch: int
    batch_size: int
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _State:
    """Everything a run carries from step to step (what a checkpoint saves)."""

    model: DualEncoder
    loss_module: PairLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    shuffle: torch.Generator
    epoch_shuffle_state: Tensor
    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    wall_before: float = 0.0
    #: Seconds spent validating before this session (not part of wall_before).
    val_wall_before: float = 0.0
    last_checkpoint_step: int | None = None
    world: World = field(default_factory=World)
    #: The loss of this rank's slice of a batch, under DistributedDataParallel (None on one process).
    parallel: nn.Module | None = None


def _open_data(config: TrainConfig) -> Any:
    """The train split of ``config.data``; a vocabulary that lacks words of its narrations or a batch
    larger than the split raises ValueError."""

    dataset = NarratedDigits(config.data, split="train", neighbours=config.neighbours)
    unknown = dataset.unknown_words("narration")
    if unknown:
        raise ValueError(f"{Path(config.data) / VOCAB} lacks {len(unknown)} word(s) of the train narrations of "
                         f"{config.data} ({', '.join(unknown[:8])}): they would all train as <unk>; the vocabulary "
                         f"does not belong to this data (regenerate it, or build it from the train narrations)")
    if config.batch_size > len(dataset):
        raise ValueError(f"TrainConfig.batch_size {config.batch_size} is larger than the train split of "
                         f"{config.data} ({len(dataset)} clips); choose batch_size <= {len(dataset)}")
    return dataset


def _plan_schedule(config: TrainConfig, clips: int) -> _Plan:
    steps_per_epoch = clips // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    stop_step = total_steps if config.max_steps == 0 else min(total_steps, config.max_steps)
    return _Plan(clips, steps_per_epoch, total_steps, warmup_steps(config, total_steps), stop_step, peak_lr(config))


def _open_validation(config: TrainConfig, train_set: Any, plan: _Plan, fingerprint: str) -> _Validation | None:
    """The validation split of ``config.val_data``, checked against the training data (same
    vocabulary, same clip shape, clean captions, not empty); None without ``val_data``."""
    if not config.val_data:
        return None

    data = Path(config.val_data)
    vocab_path = data / VOCAB
    if not data.is_dir():
        raise FileNotFoundError(f"TrainConfig.val_data {data} does not exist")
    if not vocab_path.is_file():
        raise FileNotFoundError(f"TrainConfig.val_data {data} has no vocabulary file {vocab_path}")
    found, expected = Vocabulary.load(vocab_path).fingerprint(), train_set.vocab.fingerprint()
    if found != expected:
        raise ValueError(f"{vocab_path} is another vocabulary than that of the training data {config.data} "
                         f"(fingerprints {found[:12]}... vs {expected[:12]}...); generate the validation data with "
                         f"--vocab {Path(config.data) / VOCAB}")
    dataset = NarratedDigits(data, split=config.val_split, vocab=train_set.vocab)
    for key in ("frames", "size"):
        given, trained = dataset.params.to_dict().get(key), train_set.params.to_dict().get(key)
        if given != trained:
            raise ValueError(f"{data / 'params.json'}: {key}={given} but the training data {config.data} has "
                             f"{key}={trained}; validate on clips of the same shape")
    if len(dataset) == 0:
        raise ValueError(f"split {config.val_split!r} of {data} has no clips to validate on")
    fields = dataset.fields
    if "captions" in fields:
        caption_lists = [[str(c) for c in texts] for texts in dataset.meta["captions"]]
    elif "caption" in fields:
        caption_lists = [[str(c)] for c in dataset.meta["caption"]]
    else:
        raise ValueError(f"split {config.val_split!r} of {data} has no clean captions to query its clips with")
    return _Validation(dataset, train_set.vocab, caption_lists, "captions" in fields, int(dataset.params.max_words),
                       frozenset(validation_steps(config, plan.total_steps)), Path(config.out).name,
                       config_fingerprint(config.to_dict(), fingerprint, ignore=RESUMABLE_CHANGES),
                       plan.steps_per_epoch, config.batch_size)


def _validation_row(validation: _Validation, state: _State, device: torch.device, wall_s: float) -> dict[str, Any]:
    """Text to video retrieval on the validation split with the current weights, as the test
    evaluation scores it; every random state is left as it was. Returns the curve row."""

    saved = _rng_states(torch.empty(0))
    try:
        embedded = embed_dataset(state.model, validation.dataset, progress=False, stills=False)
        metrics = caption_retrieval(state.model, state.loss_module, validation.vocab, embedded,
                                     validation.caption_lists, validation.several, validation.max_words, str(device))
    finally:
        _set_rng_states(saved)
    return {"run": validation.run, "config_fingerprint": validation.fingerprint,
            "samples_seen": state.step * validation.batch_size, "step": state.step,
            "epoch": state.step / validation.steps_per_epoch, "val_t2v_r1": metrics["R@1"],
            "val_t2v_r5": metrics["R@5"], "val_t2v_r10": metrics["R@10"], "wall_s": wall_s}


def _write_curves(run: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(CURVE_COLUMNS))
    write_atomic(run / CURVES, lambda tmp: frame.to_csv(tmp, index=False))


def _kept_curve_rows(run: Path, last_step: int) -> list[dict[str, Any]]:
    """The curve rows of steps <= ``last_step`` (those the checkpoint covers)."""
    import pandas as pd

    if not (run / CURVES).is_file():
        return []
    frame = pd.read_csv(run / CURVES, dtype={"run": str, "config_fingerprint": str})
    return frame[frame["step"] <= last_step].to_dict("records")


def _checkpoint_to_resume(run: Path, config: TrainConfig, fingerprint: str, data_params: dict[str, Any]) -> dict[str, Any]:
    """The run's checkpoint, after checking that the config, vocabulary and data are the run's."""
    checkpoint = load_checkpoint(run / CHECKPOINT)
    differences = mismatches(complete_train_dict(checkpoint["train_config"]), config.to_dict(),
                             ignore=RESUMABLE_CHANGES)
    if differences:
        raise ValueError(f"cannot resume {run}: the config differs from the run's in "
                         f"{'; '.join(differences)} (given vs saved)")
    if checkpoint["vocab_fingerprint"] != fingerprint:
        raise ValueError(f"cannot resume {run}: {config.data} has another vocabulary than the run "
                         f"(fingerprint {fingerprint[:12]}... vs {checkpoint['vocab_fingerprint'][:12]}...)")
    differences = mismatches(checkpoint["data_params"], data_params)
    if differences:
        raise ValueError(f"cannot resume {run}: {config.data} was generated with other parameters than the "
                         f"run's data: {'; '.join(differences)} (given vs saved)")
    return checkpoint


def _build_state(config: TrainConfig, model_config: ModelConfig, plan: _Plan, device: torch.device,
                 checkpoint: dict[str, Any] | None, world: World) -> _State:
    """Model, loss, optimiser and schedule from the seed, or restored from ``checkpoint``; on more
    than one process, wrapped in DistributedDataParallel."""
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = DualEncoder(model_config).to(device)
    loss_module = loss_from_config(config).to(device)
    apply_fast_path(config.fast_path, model.video, loss_module)
    optimizer = torch.optim.AdamW(parameter_groups(model, loss_module, config.weight_decay), lr=plan.peak_lr,
                                  fused=config.fast_path or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(plan.total_steps, plan.warmup_steps))
    shuffle = torch.Generator().manual_seed(config.seed)
    state = _State(model, loss_module, optimizer, scheduler, shuffle, shuffle.get_state())
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        loss_module.load_state_dict(checkpoint["loss"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_states(checkpoint["rng"])
        state.epoch_shuffle_state = checkpoint["rng"]["shuffle"]
        state.epoch, state.step_in_epoch, state.step = (checkpoint["epoch"], checkpoint["step_in_epoch"],
                                                        checkpoint["step"])
        state.wall_before = float(checkpoint["wall_s"])
        state.val_wall_before = float(checkpoint.get("val_wall_s", 0.0))
        state.last_checkpoint_step = state.step
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        state.world = world
        rank_loss = RankLoss(model, loss_module, world, config.gather, mixed_precision=device.type == "cuda")
        # find_unused_parameters: a loss leaves some heads unused (the global projections of "max")
        state.parallel = DistributedDataParallel(rank_loss, device_ids=[device] if device.type == "cuda" else None,
                                                 find_unused_parameters=True)
    return state


def _save_checkpoint(run: Path, state: _State, run_info: dict[str, Any], shuffle_state: Tensor, wall_s: float,
                     val_wall_s: float = 0.0) -> None:
    """Write the checkpoint atomically: a kill at any moment leaves the previous one whole."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": state.model.state_dict(),
        "loss": state.loss_module.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": _rng_states(shuffle_state),
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "step": state.step,
        "wall_s": wall_s,
        "val_wall_s": val_wall_s,
        "vocab_fingerprint": run_info["vocab_fingerprint"],
        "data_params": run_info["data_params"],
        "model_config": run_info["model"],
        "train_config": run_info["train"],
    }
    write_atomic(run / CHECKPOINT, lambda tmp: torch.save(payload, tmp))
    state.last_checkpoint_step = state.step


def _train_step(state: _State, batch: dict[str, Tensor], mixed_precision: bool, count_flops: bool) -> tuple[float, int | None]:
    """One optimisation step: (loss value, FLOPs counted or None)."""
    def forward_backward() -> Tensor:
        state.optimizer.zero_grad(set_to_none=True)
        if state.parallel is None:
            value = batch_loss(state.model, state.loss_module, batch, mixed_precision)
        else:
            value = state.parallel(batch)
        value.backward()
        return value

    flops = None
    if count_flops:
        value, flops = count_step_flops(forward_backward)
    else:
        value = forward_backward()
    value = value.detach()
    if state.world.size > 1:  # the mean of the ranks' shares: the loss of the global batch
        value = value.clone()
        torch.distributed.all_reduce(value)
        value = value / state.world.size
    loss_float = float(value)
    if not math.isfinite(loss_float):
        return loss_float, flops
    state.optimizer.step()
    state.loss_module.clamp_temperatures_()
    state.scheduler.step()
    return loss_float, flops


def _run_epochs(run: Path, config: TrainConfig, dataset: Any, plan: _Plan, state: _State,
                run_info: dict[str, Any], device: torch.device, progress: bool,
                validation: _Validation | None = None) -> tuple[int | None, float, float]:
    """Train from ``state`` until ``plan.stop_step``, logging every step, validating at the
    validation steps and checkpointing every epoch; return (FLOPs of one step or None, training
    wall seconds of this session, validation wall seconds of this session)."""
    from tqdm.auto import tqdm

    mixed_precision = device.type == "cuda"
    state.model.train()
    flops_per_step: int | None = None
    session_start = time.perf_counter()
    world = state.world
    validating = {"s": 0.0}

    def train_wall() -> float:
        return state.wall_before + (time.perf_counter() - session_start - validating["s"])

    def maybe_validate() -> None:
        """Rank 0 validates and writes the curve; the other ranks wait for it at a barrier."""
        if validation is None or state.step not in validation.steps:
            return
        start = time.perf_counter()
        if world.is_main:
            validation.rows.append(_validation_row(validation, state, device, train_wall()))
            _write_curves(run, validation.rows)
        if world.size > 1:
            torch.distributed.barrier()
        validating["s"] += time.perf_counter() - start

    bar = tqdm(total=plan.stop_step, initial=min(state.step, plan.stop_step), disable=not progress or not world.is_main,
               unit="step", desc=f"pretrain {config.loss}", dynamic_ncols=True)
    share = config.batch_size // world.size
    try:
        if state.step == 0:
            maybe_validate()
        with open(run / LOG, "a") if world.is_main else contextlib.nullcontext(None) as log:
            while state.epoch < config.epochs and state.step < plan.stop_step:
                state.shuffle.set_state(state.epoch_shuffle_state)
                order = torch.randperm(plan.clips, generator=state.shuffle).numpy()
                next_epoch_shuffle_state = state.shuffle.get_state()
                batches = [order[k * config.batch_size:(k + 1) * config.batch_size][world.rank * share:
                                                                                   (world.rank + 1) * share]
                           for k in range(state.step_in_epoch, plan.steps_per_epoch)]
                stopped_in_epoch = False
                step_start = time.perf_counter()
                for raw in _iterate_batches(dataset, batches, config.num_workers, device.type == "cuda",
                                            seed=config.seed * 100003 + state.epoch):
                    lr = state.optimizer.param_groups[0]["lr"]
                    loss_float, flops = _train_step(state, to_device(raw, device), mixed_precision,
                                                     count_flops=flops_per_step is None)
                    flops_per_step = flops if flops_per_step is None else flops_per_step
                    if not math.isfinite(loss_float):
                        kept = (f"the last good checkpoint {run / CHECKPOINT} (step {state.last_checkpoint_step}) is kept"
                                if state.last_checkpoint_step is not None else "no checkpoint had been written yet")
                        raise FloatingPointError(
                            f"non-finite loss {loss_float} at step {state.step + 1} (epoch {state.epoch + 1}); {kept}")
                    state.step += 1
                    state.step_in_epoch += 1
                    now = time.perf_counter()
                    samples_per_s = config.batch_size / max(now - step_start, 1e-9)
                    step_start = now
                    row = {"step": state.step, "epoch": state.epoch + 1, "loss": loss_float,
                           **state.loss_module.logged_temperatures(), "lr": lr, "samples_per_s": samples_per_s,
                           "wall_s": train_wall()}
                    if log is not None:
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_float:.4f}", samples_per_s=f"{samples_per_s:.0f}")
                    maybe_validate()
                    step_start = time.perf_counter()
                    if state.step >= plan.stop_step and state.step_in_epoch < plan.steps_per_epoch:
                        stopped_in_epoch = True
                        break
                wall_s = train_wall()
                if not stopped_in_epoch:
                    state.epoch += 1
                    state.step_in_epoch = 0
                    state.epoch_shuffle_state = next_epoch_shuffle_state
                if world.is_main:
                    _save_checkpoint(run, state, run_info, state.epoch_shuffle_state, wall_s,
                                     state.val_wall_before + validating["s"])
                else:
                    state.last_checkpoint_step = state.step
    finally:
        bar.close()
    return flops_per_step, train_wall() - state.wall_before, validating["s"]


def _peak_rss_mib(world: World) -> list[float | None]:
    """The peak resident memory of every rank so far, in MiB (None where the platform cannot tell)."""
    try:
        import resource

        peak: float | None = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:
        peak = None
    if world.size == 1:
        return [peak]
    peaks: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(peaks, peak)
    return peaks


def _write_compute(run: Path, config: TrainConfig, plan: _Plan, state: _State, flops_per_step: int | None,
                   wall_s: float, val_wall_s: float, device: torch.device, peak_rss_mib: list[float | None]) -> None:
    if flops_per_step is None:  # nothing left to train (a finished run resumed): keep the old record
        previous = json.loads((run / COMPUTE).read_text()) if (run / COMPUTE).is_file() else {}
        flops_per_step = previous.get("flops_per_step")
    samples_seen = state.step * config.batch_size
    write_json(run / COMPUTE, {
        "flops_per_step": flops_per_step,
        "total_flops": None if flops_per_step is None else flops_per_step * state.step,
        "steps": state.step,
        "epochs_done": state.epoch,
        "samples_seen": samples_seen,
        "wall_s": wall_s,
        "samples_per_s": samples_seen / wall_s if wall_s > 0 else None,
        "val_wall_s": val_wall_s,
        "peak_lr": plan.peak_lr,
        "warmup_steps": plan.warmup_steps,
        "device": str(device),
        "batch_size": config.batch_size,
        "nproc": state.world.size,
        "gather": config.gather,
        "peak_rss_mib_per_rank": peak_rss_mib,
        "loss": config.loss,
    })


def pretrain(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train both encoders from scratch on the "train" split of ``config.data``; return the run folder.

    AdamW with linear warmup then cosine decay (per step), bf16 autocast on CUDA, a checkpoint at
    the end of every epoch. ``resume=True`` continues the run in ``config.out`` from its
    checkpoint (the config must match the run's, except for the fields in RESUMABLE_CHANGES).
    ``config.max_steps`` stops early without changing the schedule, so a stopped run is a prefix
    of the full one and can be resumed to it.

    In a process that torchrun started (``WORLD_SIZE`` > 1) this is one rank of a data-parallel
    run (:mod:`fgmm_lib.training.distributed`): ``batch_size`` is the global batch, each rank encodes its
    slice of it, and rank 0 alone writes the run folder. :func:`fgmm_lib.training.launch.launch`
    starts such a run from ``config.nproc``.

    Writes only into a new or empty folder, or (resuming) into the run's own folder. Raises
    ValueError for a batch size larger than the split or not divisible by the processes, a folder
    that cannot be written, that holds other files, or that holds a run already (without
    ``resume``); FloatingPointError for a non-finite loss (the last good checkpoint is kept).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    processes = world_size_from_env()
    if config.batch_size % processes:

        raise ValueError(indivisible_message(config.batch_size, processes))
    config = dataclasses.replace(config, nproc=processes)
    run = Path(config.out)
    check_backend(config)  # before anything is written: "triton" needs CUDA and the triton package
    device = _rank_device(_resolve_device(config.device))
    dataset = _open_data(config)
    plan = _plan_schedule(config, len(dataset))
    fingerprint = dataset.vocab.fingerprint()
    data_params = dataset.params.to_dict()
    model_config = config.model_config(len(dataset.vocab))

    world = init_world(device)
    try:
        _on_main(world, lambda: _prepare_run_folder(run, resume))
        checkpoint = _checkpoint_to_resume(run, config, fingerprint, data_params) if resume else None
        validation = _open_validation(config, dataset, plan, fingerprint)
        run_info = {
            "train": config.to_dict(),
            "model": dataclasses.asdict(model_config),
            "vocab_fingerprint": fingerprint,
            "data_params": data_params,
            "device": str(device),
            "nproc": world.size,
            "train_clips": plan.clips,
            "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps,
            "warmup_steps": plan.warmup_steps,
            "peak_lr": plan.peak_lr,
            "validation_steps": validation_steps(config, plan.total_steps),
            "torch": torch.__version__,
        }
        with _deterministic(device):
            state = _build_state(config, model_config, plan, device, checkpoint, world)
            if world.is_main:
                if checkpoint is not None:
                    _truncate_log(run / LOG, state.step)
                    if validation is not None:
                        validation.rows = _kept_curve_rows(run, state.step)
                        _write_curves(run, validation.rows)
                else:
                    for name in (LOG, COMPUTE, CURVES):
                        (run / name).unlink(missing_ok=True)
                write_json(run / CONFIG, run_info)
                write_atomic(run / VOCAB, lambda tmp: dataset.vocab.save(tmp))
            flops_per_step, session_s, val_s = _run_epochs(run, config, dataset, plan, state, run_info, device,
                                                           progress, validation)
        peak_rss_mib = _peak_rss_mib(world)
        if world.is_main:
            _write_compute(run, config, plan, state, flops_per_step, state.wall_before + session_s,
                           state.val_wall_before + val_s, device, peak_rss_mib)
    finally:
        close_world(world)
    return run


def _rank_device(device: torch.device) -> torch.device:
    """This rank's device: CUDA device ``LOCAL_RANK`` when torchrun starts several processes on CUDA."""
    if device.type == "cuda" and device.index is None and world_size_from_env() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _on_main(world: World, check: Any) -> None:
    """Run ``check()`` on rank 0 only; an error it raises is raised on every rank, so all stop together."""
    if world.size == 1:
        check()
        return
    message: list[Any] = [None]
    error: BaseException | None = None
    if world.is_main:
        try:
            check()
        except (ValueError, OSError) as caught:
            error, message = caught, [f"{type(caught).__name__}: {caught}"]
    torch.distributed.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise ValueError(f"rank 0 refused the run: {message[0]}")
