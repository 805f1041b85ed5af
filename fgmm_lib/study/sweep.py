"""Sweeps: many short pretraining runs, each trained and evaluated, one CSV row per run.

The ablations of docs/study.md section 6 (noise knobs, encoder width, the (tau_a, tau_w) surface) are
grids of runs that differ from the study's ``train`` section in a few fields and, for the noise
ablation, in the knobs of the pretraining data. A :class:`SweepPoint` names one run: its row
labels, its training overrides and its data overrides. :func:`run_sweep`

1. generates each distinct pretraining dataset once (the base data's knobs plus the point's
   overrides, with the base data's vocabulary, so the clean evaluation set fits every run);
2. trains every run, ``workers`` at a time, each in its own one-thread process (on a CPU, two
   one-thread processes beside each other do more work than one two-thread process);
3. evaluates every run on ``split`` of the clean evaluation data and writes one row per point,
   with the point's labels, the headline metrics and, for a run with validation curves, the gain
   of its curve over its last 20% of samples (:func:`fgmm_lib.runs.curves.curve_gain`).

A finished run is not trained again, so a killed sweep resumes where it stopped; the CSV is
written atomically at the end.

:func:`sweep_points` builds the points of each sweep of :data:`SWEEPS` (:func:`noise_points`,
:func:`width_points`, :func:`temperature_points`, :func:`lr_points`), :func:`study_points` those of
the main study, and :func:`summary_table` turns a sweep's CSV into its table. The rules that choose
settings from a sweep's results on validation (:func:`fgmm_lib.study.selection.lr_factors`,
:func:`fgmm_lib.study.selection.best_temperatures`) are in :mod:`fgmm_lib.study.selection`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from fgmm_lib.data.dataset import SPLITS
from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.evaluation.protocol import evaluate
from fgmm_lib.io import check_writable_file, read_json, write_atomic, write_csv
from fgmm_lib.losses.scores import LOSSES
from fgmm_lib.runs.config import RESUMABLE_CHANGES, TrainConfig, complete_train_dict
from fgmm_lib.runs.curves import curve_gain, read_curves
from fgmm_lib.runs.folder import CHECKPOINT, COMPUTE, CONFIG, CURVES, mismatches
from fgmm_lib.study.results import compute_path, details_path, headline_metrics, metrics_path, run_name, write_metrics
from fgmm_lib.training.loop import pretrain

#: The noise knobs of the pretraining data (docs/study.md section 4).
NOISE_KNOBS = ("distractors", "filler_words", "misaligned_frames", "mismatched_narration")


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep.

    Attributes:
        name: the run folder's name (unique within a sweep).
        labels: the row's label columns (e.g. ``{"knob": "distractors", "level": 2, "loss": "max"}``).
        train: overrides of the ``train`` section (loss, batch_size, seed, width, temperatures...).
        data: overrides of the pretraining data's knobs (empty: the base data itself).
    """

    name: str
    labels: Mapping[str, Any]
    train: Mapping[str, Any]
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def check_grid(name: str, values: Sequence[Any], positive: bool = False) -> list[Any]:
    """A params list of distinct finite numbers (positive ones with ``positive``); ValueError naming ``name``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty list, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must hold finite numbers, got {value!r}")
        if positive and value <= 0:
            raise ValueError(f"{name} must hold positive values, got {value!r} in {list(values)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} repeats a value: {list(values)}")
    return list(values)


def _check_losses(losses: Sequence[str]) -> list[str]:
    if isinstance(losses, str) or not losses:
        raise ValueError(f"losses must be a non-empty list, got {losses!r}")
    unknown = [loss for loss in losses if loss not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss(es) {unknown}; known: {', '.join(LOSSES)}")
    return list(losses)


def number_text(value: Any) -> str:
    """A number as run names write it: floats in ``%g`` form (``0.5``, ``1``, ``1e-05``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_batch_sizes(name: str, values: Sequence[Any]) -> list[int]:
    values = check_grid(name, values, positive=True)
    bad = [value for value in values if not isinstance(value, int) or value < 2]
    if bad:
        raise ValueError(f"{name} must hold ints >= 2, got {bad}")
    return values


def batch_groups(name: str, runs: Sequence[Mapping[str, Any]]) -> list[tuple[int, list[str]]]:
    """Check a list of ``{batch_size: B, losses: [...]}`` groups; return (B, losses) pairs."""
    if isinstance(runs, (str, Mapping)) or not isinstance(runs, Sequence) or not runs:
        raise ValueError(f"{name} must be a non-empty list of {{batch_size, losses}} groups, got {runs!r}")
    for group in runs:
        if not isinstance(group, Mapping) or set(group) != {"batch_size", "losses"}:
            raise ValueError(f"{name} must hold groups with exactly the keys batch_size and losses, got {group!r}")
    batch_sizes = _check_batch_sizes(f"{name} batch sizes", [group["batch_size"] for group in runs])
    return [(batch_size, _check_losses(group["losses"])) for batch_size, group in zip(batch_sizes, runs)]


#: The loss whose lr factor a loss the lr grid lacks takes at the same batch size: the baseline's.
LR_FALLBACK_LOSS = "coarse"


def lr_family(loss: str) -> str:
    """The loss whose lr a variant shares: ``attention`` for ``attention_<variant>``, else the loss."""
    return "attention" if loss.startswith("attention_") else loss


def factor_for(factors: Mapping[tuple[str, int], float], loss: str, batch_size: int) -> float | None:
    """The lr factor ``loss`` trains at, at ``batch_size``, from :func:`fgmm_lib.study.selection.lr_factors`: the grid's own
    choice for the loss, else its family's (:func:`lr_family`), else :data:`LR_FALLBACK_LOSS`'s at
    that batch size; None (the rule's lr) where the grid has none of them at that batch size."""
    for key in ((loss, batch_size), (lr_family(loss), batch_size), (LR_FALLBACK_LOSS, batch_size)):
        if key in factors:
            return float(factors[key])
    return None


def study_points(runs: Sequence[Mapping[str, Any]], seeds: Sequence[int], lr: float | None = None,
                 lr_factors: Mapping[tuple[str, int], float] | None = None) -> list[SweepPoint]:
    """The main study: ``runs`` lists ``{batch_size, losses}`` groups, every loss of a group trained
    at its batch size with every seed of ``seeds``, or of the group's own ``seeds`` list where it has
    one. Run names are ``<loss>-b<batch_size>-s<seed>`` (:func:`fgmm_lib.study.results.run_name`). A
    loss trains at ``lr`` (the rule's base) times its factor in ``lr_factors`` (keys ``(loss,
    batch_size)``, :func:`fgmm_lib.study.selection.lr_factors`) as :func:`factor_for` reads it; a
    loss and batch size with none there at the rule's own learning rate."""

    seeds = check_grid("study.seeds", seeds)
    lr_factors = dict(lr_factors or {})
    if lr_factors and lr is None:
        raise ValueError("study_points: lr_factors need the rule's base lr")
    if isinstance(runs, (str, Mapping)) or not isinstance(runs, Sequence) or not runs:
        raise ValueError(f"study.runs must be a non-empty list of {{batch_size, losses}} groups, got {runs!r}")
    points = []
    for group in runs:
        own_seeds = seeds
        if isinstance(group, Mapping) and "seeds" in group:
            own_seeds = check_grid(f"study.runs seeds of the batch-{group.get('batch_size')} group", group["seeds"])
            group = {key: value for key, value in group.items() if key != "seeds"}
        [(batch_size, losses)] = batch_groups("study.runs", [group])
        for loss in losses:
            if any(point.labels["loss"] == loss and point.labels["batch_size"] == batch_size for point in points):
                raise ValueError(f"study.runs lists {loss} at batch {batch_size} twice")
            for seed in own_seeds:
                train = {"loss": loss, "batch_size": batch_size, "seed": int(seed)}
                factor = factor_for(lr_factors, loss, batch_size)
                if factor is not None:
                    train["lr"] = float(lr) * factor
                points.append(SweepPoint(name=run_name(loss, batch_size, int(seed)),
                                         labels={"loss": loss, "batch_size": batch_size, "seed": int(seed)},
                                         train=train))
    return points


def study_part(study: Mapping[str, Any], part: str) -> list[Mapping[str, Any]]:
    """The ``{batch_size, losses[, seeds]}`` groups of one part of ``study.runs``, which maps each
    part's name (one pipeline stage each) to its groups."""
    runs = study.get("runs")
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(f"study.runs must map part names to lists of {{batch_size, losses}} groups, got {runs!r}")
    if part not in runs:
        raise ValueError(f"study.runs has no part {part!r}; its parts: {', '.join(map(str, runs))}")
    return runs[part]


def base_lr(train: Mapping[str, Any]) -> float:
    """The rule's base learning rate: the ``train`` section's ``lr``, or TrainConfig's default."""

    return float(train.get("lr", next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "lr")))


def lr_points(runs: Sequence[Mapping[str, Any]], factors: Sequence[float], lr: float,
              seed: int = 0) -> list[SweepPoint]:
    """The learning-rate rule check: every (batch size, loss) of the ``{batch_size, losses}`` groups
    at the rule's learning rate times each factor (the training section's ``lr`` is the rule's
    base, scaled with the batch by its ``lr_scaling``)."""
    factors = check_grid("lr.factors", factors, positive=True)
    points = []
    for batch_size, losses in batch_groups("lr.runs", runs):
        for loss in losses:
            for factor in factors:
                points.append(SweepPoint(
                    name=f"{loss}-b{batch_size}-s{seed}-lr{number_text(float(factor))}",
                    labels={"loss": loss, "batch_size": batch_size, "lr_factor": float(factor), "seed": seed},
                    train={"loss": loss, "batch_size": batch_size, "seed": seed, "lr": lr * float(factor)}))
    return points


def noise_points(losses: Sequence[str], knobs: Mapping[str, Sequence[Any]], base: Mapping[str, Any],
                 batch_size: int, seed: int = 0) -> list[SweepPoint]:
    """The noise ablation: each knob at each of its levels, the other knobs at their ``base`` value,
    for every loss. A level equal to the base value is the base data; its runs are shared by every
    knob (one run, one row per knob)."""
    losses = _check_losses(losses)
    unknown = sorted(set(knobs) - set(NOISE_KNOBS))
    if unknown:
        raise ValueError(f"unknown noise knob(s) {unknown}; known: {', '.join(NOISE_KNOBS)}")
    points = []
    for knob, levels in knobs.items():
        for level in check_grid(f"noise.knobs.{knob}", levels):
            if level < 0:
                raise ValueError(f"noise.knobs.{knob} must hold levels >= 0, got {level!r}")
            data = {} if level == base.get(knob) else {knob: level}
            data_name = "base" if not data else f"{knob}-{number_text(level)}"
            for loss in losses:
                points.append(SweepPoint(
                    name=f"{loss}-b{batch_size}-s{seed}-{data_name}",
                    labels={"knob": knob, "level": level, "loss": loss, "batch_size": batch_size, "seed": seed},
                    train={"loss": loss, "batch_size": batch_size, "seed": seed}, data=data))
    return points


def width_points(losses: Sequence[str], widths: Sequence[float], batch_size: int, seed: int = 0) -> list[SweepPoint]:
    """The width ablation: every loss at every width multiplier of the video encoder."""
    losses = _check_losses(losses)
    return [SweepPoint(name=f"{loss}-b{batch_size}-s{seed}-w{number_text(float(width))}",
                       labels={"width": float(width), "loss": loss, "batch_size": batch_size, "seed": seed},
                       train={"loss": loss, "batch_size": batch_size, "seed": seed, "width": float(width)})
            for width in check_grid("width.widths", widths, positive=True) for loss in losses]


def temperature_points(loss: str, attn_temperatures: Sequence[float], weight_temperatures: Sequence[float],
                       learnable_from: Sequence[Sequence[float]], batch_size: int, seed: int = 0) -> list[SweepPoint]:
    """The (tau_a, tau_w) surface: a fixed grid, then learnable temperatures from each initial pair."""
    _check_losses([loss])
    attn = check_grid("temperature.attn_temperatures", attn_temperatures, positive=True)
    weight = check_grid("temperature.weight_temperatures", weight_temperatures, positive=True)
    points = []
    for tau_a in attn:
        for tau_w in weight:
            points.append(SweepPoint(
                name=f"{loss}-b{batch_size}-s{seed}-ta{number_text(float(tau_a))}-tw{number_text(float(tau_w))}",
                labels={"loss": loss, "attn_temperature": float(tau_a), "weight_temperature": float(tau_w),
                        "learnable": False, "batch_size": batch_size, "seed": seed},
                train={"loss": loss, "batch_size": batch_size, "seed": seed, "attn_temperature": float(tau_a),
                       "weight_temperature": float(tau_w), "learn_attention_temperatures": False}))
    for pair in learnable_from:
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise ValueError(f"temperature.learnable_from must hold [tau_a, tau_w] pairs, got {pair!r}")
        for value in pair:
            check_grid("temperature.learnable_from", [value], positive=True)
        tau_a, tau_w = pair
        points.append(SweepPoint(
            name=f"{loss}-b{batch_size}-s{seed}-learn-ta{number_text(float(tau_a))}-tw{number_text(float(tau_w))}",
            labels={"loss": loss, "attn_temperature": float(tau_a), "weight_temperature": float(tau_w),
                    "learnable": True, "batch_size": batch_size, "seed": seed},
            train={"loss": loss, "batch_size": batch_size, "seed": seed, "attn_temperature": float(tau_a),
                   "weight_temperature": float(tau_w), "learn_attention_temperatures": True}))
    return points


def _data_name(data: Mapping[str, Any]) -> str:
    return "base" if not data else "-".join(f"{k}-{number_text(v)}" for k, v in sorted(data.items()))


def _prepare_data(points: Sequence[SweepPoint], base_data: Path, data_dir: Path) -> dict[str, Path]:
    """Generate each distinct pretraining dataset of the sweep once; return data name -> folder."""

    base_params = read_json(base_data / "params.json", "dataset parameters")
    folders = {"base": base_data}
    for point in points:
        name = _data_name(point.data)
        if name in folders:
            continue
        config = GenerationConfig(**{**base_params, **point.data})
        folder = data_dir / name
        if not (folder / "params.json").is_file() or read_json(folder / "params.json") != dataclasses.asdict(config):
            generate_dataset(config, folder, vocab=base_data / "vocab.json", progress=False)
        folders[name] = folder
    return folders


def _finished(run: Path, config: Mapping[str, Any]) -> bool:
    """Whether ``run`` holds this ``config``'s run with all its epochs trained (as evaluation reads
    it: the compute record's ``epochs_done``). Such a run is evaluated, not resumed, so its compute
    record keeps the training's numbers. A run of another config is not finished: resuming it
    stops with the difference."""
    if not (run / COMPUTE).is_file() or not (run / CONFIG).is_file():
        return False
    saved = complete_train_dict(read_json(run / CONFIG, "run config").get("train", {}))
    if mismatches(saved, TrainConfig.from_dict(config).to_dict(), ignore=RESUMABLE_CHANGES):
        return False
    return read_json(run / COMPUTE, "compute record").get("epochs_done") == saved.get("epochs")


def _train_and_evaluate(config: dict[str, Any], eval_data: str, split: str, threads: int,
                        results_dir: str | None) -> dict[str, Any]:
    """Worker: train one run (unless finished), evaluate it; returns the evaluation record. With
    ``results_dir``, also writes the run's metrics, details, compute and curve files there."""
    import torch

    torch.set_num_threads(threads)
    run = Path(config["out"])
    if not _finished(run, config):
        pretrain(TrainConfig.from_dict(config), resume=(run / CHECKPOINT).is_file(), progress=False)
    if results_dir is None:
        return evaluate(run, eval_data, split=split, probe_split="train", progress=False)
    root = Path(results_dir)
    record = evaluate(run, eval_data, split=split, probe_split="train", progress=False,
                      out=details_path(run.name, root), compute_out=compute_path(run.name, root))
    write_metrics(record, metrics_path(run.name, root))
    if (run / CURVES).is_file():
        text = (run / CURVES).read_text()
        write_atomic(curve_path(run.name, root), lambda path: path.write_text(text))
    return record


def curve_path(name: str, root: str | Path = ".") -> Path:
    """Where the pipeline keeps a study run's validation curve: ``results/curves/<run>.csv``."""
    return Path(root) / "results" / "curves" / f"{name}.csv"


def _row(point: SweepPoint, run: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {**point.labels, "run": point.name}
    row.update(headline_metrics(record))
    compute = read_json(run / COMPUTE, "compute record")
    row["samples_seen"] = compute.get("samples_seen")
    row["steps"] = compute.get("steps")
    row["wall_s"] = compute.get("wall_s")
    temperatures = record.get("temperatures") or {}
    row["final_attn_temperature"] = temperatures.get("attn")
    row["final_weight_temperature"] = temperatures.get("weight")
    if (run / CURVES).is_file():
        curve = read_curves(run / CURVES, run=run.name)
        row["final_val_t2v_r10"] = float(curve["val_t2v_r10"].iloc[-1])
        row["gain_last_20pct"] = curve_gain(curve)
    return row


def run_sweep(points: Sequence[SweepPoint], train: Mapping[str, Any], base_data: str | Path, eval_data: str | Path,
              runs_dir: str | Path, out_csv: str | Path, split: str = "test", workers: int = 2,
              progress: bool = True, results_root: str | Path | None = None) -> pd.DataFrame:
    """Train and evaluate every point; write and return one row per point.

    Args:
        points: the runs (:func:`noise_points`, :func:`width_points`, :func:`temperature_points`).
        train: the base training config (the ``train`` section, without data and out).
        base_data: the pretraining data folder whose knobs the points' data overrides change.
        eval_data: the clean evaluation data (the base data's vocabulary).
        runs_dir: where the runs' folders (and generated datasets, under ``data/``) go.
        out_csv: the CSV to write (atomically, once every run is done).
        split: evaluation split, ``test`` for an ablation's final numbers, ``val`` for a choice
            of hyperparameters (the test split is then never read).
        workers: runs trained at once, each in a one-thread process.
        results_root: if given, every run's metrics, details, compute record and curve are also
            written under ``results_root/results/`` (:func:`fgmm_lib.study.results.metrics_path`, ...,
            :func:`curve_path`): the layout of the main study.
    """

    if split not in SPLITS or split == "train":
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not points:
        raise ValueError("a sweep needs at least one point")
    base_data, eval_data, runs_dir = Path(base_data), Path(eval_data), Path(runs_dir)
    for folder, what in ((base_data, "pretraining data"), (eval_data, "evaluation data")):
        if not (folder / "params.json").is_file():
            raise FileNotFoundError(f"{what} folder {folder} is not a dataset (no params.json)")
    out_csv = check_writable_file(out_csv, "sweep table")
    runs_dir.mkdir(parents=True, exist_ok=True)
    folders = _prepare_data(points, base_data, runs_dir / "data")

    # One run per distinct (name): points that share a run (the base level of every noise knob) share it.
    configs: dict[str, dict[str, Any]] = {}
    for point in points:
        config = {**train, **point.train, "data": str(folders[_data_name(point.data)]),
                  "out": str(runs_dir / point.name), "nproc": 1}
        TrainConfig.from_dict(config)  # every field checked before any work
        if point.name in configs and configs[point.name] != config:
            raise ValueError(f"sweep points named {point.name!r} differ in their runs; names must be unique")
        configs[point.name] = config

    root = None if results_root is None else str(results_root)
    import torch

    threads = 1 if workers > 1 else max(1, torch.get_num_threads())
    records: dict[str, dict[str, Any]] = {}
    bar = _progress_bar(len(configs), progress)
    if workers == 1:
        for name, config in configs.items():
            records[name] = _train_and_evaluate(config, str(eval_data), split, threads, root)
            bar.update(1)
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(_train_and_evaluate, config, str(eval_data), split, threads, root): name
                       for name, config in configs.items()}
            for future in concurrent.futures.as_completed(futures):
                records[futures[future]] = future.result()
                bar.update(1)
    bar.close()
    rows = [_row(point, runs_dir / point.name, records[point.name]) for point in points]
    table = pd.DataFrame(rows)
    write_csv(out_csv, table)
    return table


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep runs", unit="run", disable=not enabled)


#: The sweeps a notebook can run, with the split each is evaluated on and its label columns.
SWEEPS = {
    "noise": ("test", ("knob", "level", "loss")),
    "width": ("test", ("width", "loss")),
    "temperature": ("val", ("attn_temperature", "weight_temperature", "learnable")),
    "lr": ("val", ("batch_size", "loss", "lr_factor")),
}


def sweep_points(kind: str, section: Mapping[str, Any], settings: Mapping[str, Any], train: Mapping[str, Any],
                 data_params: Mapping[str, Any]) -> tuple[list[SweepPoint], str]:
    """The points of the sweep ``kind`` (its params ``section``), at the batch size and seed of the
    ``sweep`` settings, and the split it is evaluated on (:data:`SWEEPS`)."""
    if kind not in SWEEPS:
        raise ValueError(f"unknown sweep kind {kind!r}; known: {', '.join(SWEEPS)}")
    batch_size, seed = int(settings["batch_size"]), int(settings["seed"])
    if kind == "noise":
        points = noise_points(section["losses"], section["knobs"], data_params, batch_size, seed)
    elif kind == "width":
        points = width_points(section["losses"], section["widths"], batch_size, seed)
    elif kind == "temperature":
        points = temperature_points(section["loss"], section["attn_temperatures"], section["weight_temperatures"],
                                    section.get("learnable_from") or [], batch_size, seed)
    else:
        points = lr_points(section["runs"], section["factors"], base_lr(train), seed)
    return points, SWEEPS[kind][0]


def sweep_epochs(kind: str, params: Mapping[str, Any]) -> int:
    """The epochs of the sweep ``kind``'s runs, given the whole params file: ``sweep.epochs``,
    except for the lr sweep, which trains at the study's budget (``train.epochs`` times
    ``regime.choice.budget``) so that each batch size's factor is chosen where the study uses it."""
    if kind not in SWEEPS:
        raise ValueError(f"unknown sweep kind {kind!r}; known: {', '.join(SWEEPS)}")
    if kind != "lr":
        return int(params["sweep"]["epochs"])
    try:
        budget = params["regime"]["choice"]["budget"]
    except (KeyError, TypeError):
        raise ValueError("the lr sweep trains at regime.choice.budget, which the params file lacks") from None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"regime.choice.budget must be a positive int, got {budget!r}")
    return int(params["train"]["epochs"]) * budget


def summary_table(kind: str, table: pd.DataFrame,
                  metrics: Sequence[str] = ("t2v_R@10", "colour_top1", "digit_top1", "action_top1")) -> pd.DataFrame:
    """The sweep's table indexed by its labels, with the main metrics (and, where the runs had
    validation curves, the gain over their last 20% of samples)."""
    if kind not in SWEEPS:
        raise ValueError(f"unknown sweep kind {kind!r}; known: {', '.join(SWEEPS)}")
    labels = list(SWEEPS[kind][1])
    columns = [c for c in (*metrics, "final_val_t2v_r10", "gain_last_20pct") if c in table.columns]
    return table.set_index(labels)[columns].sort_index()
