"""The study's results folder: where each run's evaluation goes, what its metrics file holds, the losses' order.

:func:`fgmm_lib.evaluation.protocol.evaluate` returns one nested record per run. The pipeline keeps it in
three files, so that ``dvc metrics show`` lists only the numbers a reader compares:

- ``results/metrics/<run>.json`` (:func:`metrics_path`), a DVC metrics file: the headline
  metrics of :data:`METRICS`, flat (``{"action_top1": 0.7, "t2v_R@1": 0.4, ...}``), written by
  :func:`write_metrics`; a metric the run does not have (pointing for the losses without
  attention) is null;
- ``results/details/<run>.json`` (:func:`details_path`): the whole record (chance levels,
  95% bootstrap intervals (:func:`interval`), the per-attribute retrieval of
  :data:`ATTRIBUTE_METRICS`, the probe's confusion matrix, query and corpus sizes, temperatures,
  the evaluated split);
- ``results/compute/<run>.json`` (:func:`compute_path`): the run's compute record with its loss,
  batch size and seed (``evaluate(..., compute_out=...)``).

Run names are ``<loss>-b<batch_size>-s<seed>`` (:data:`RUN_NAME`, :func:`run_name`,
:func:`parse_run_name`). :data:`LOSS_ORDER` is the order in which every table and legend lists the
losses (those of :data:`fgmm_lib.losses.scores.LOSSES`, the coarse baselines first), and
:func:`ordered_losses` sorts loss names by it. This module reads and writes plain files only (no
model, no plot), so the evaluation stages depend on it and not on the tables
(:mod:`fgmm_lib.study.tables`) or the plots (:mod:`fgmm_lib.study.plots`).
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from fgmm_lib.io import partial_folder, replace_folder, write_json
from fgmm_lib.losses.scores import LOSSES

#: Every loss of the study, in the order tables and legends list them (coarse baselines first).
LOSS_ORDER = LOSSES


@dataclass(frozen=True)
class Metric:
    """One downstream metric: where it sits in an evaluation record and how to read it."""

    path: tuple[str, ...]
    label: str
    higher_is_better: bool = True
    unit_interval: bool = True  # a rate or an accuracy in [0, 1] (ranks are not)


#: The downstream metrics of docs/study.md section 5, by column name, in display order: the keys of a
#: metrics file and the metric columns of every table.
METRICS: dict[str, Metric] = {
    "action_top1": Metric(("probe", "action_top1"), "action top-1 (linear probe)"),
    "t2v_R@1": Metric(("t2v", "R@1"), "text→video R@1"),
    "t2v_R@5": Metric(("t2v", "R@5"), "text→video R@5"),
    "t2v_R@10": Metric(("t2v", "R@10"), "text→video R@10"),
    "t2v_median_rank": Metric(("t2v", "median_rank"), "text→video median rank", higher_is_better=False,
                              unit_interval=False),
    "t2i_R@1": Metric(("t2i", "R@1"), "text→image R@1"),
    "t2i_R@5": Metric(("t2i", "R@5"), "text→image R@5"),
    "t2i_R@10": Metric(("t2i", "R@10"), "text→image R@10"),
    "t2i_median_rank": Metric(("t2i", "median_rank"), "text→image median rank", higher_is_better=False,
                              unit_interval=False),
    "pointing": Metric(("pointing", "accuracy"), "pointing accuracy"),
    "colour_top1": Metric(("probe_attributes", "colour", "top1"), "colour top-1 (linear probe)"),
    "digit_top1": Metric(("probe_attributes", "digit", "top1"), "digit top-1 (linear probe)"),
}

#: Caption retrieval judged on one attribute (``t2v.attributes.<attribute>``, see
#: :func:`fgmm_lib.evaluation.metrics.attribute_retrieval`): kept in the details file only, so that the
#: metrics files stay narrow; :func:`fgmm_lib.study.tables.load_runs` reads them from there.
ATTRIBUTE_METRICS: dict[str, Metric] = {
    f"t2v_{attribute}_R@{k}": Metric(("t2v", "attributes", attribute, f"R@{k}"),
                                     f"text→video R@{k}, {attribute} only")
    for attribute in ("colour", "digit", "action") for k in (1, 10)
}


def chance_path(path: Sequence[str]) -> tuple[str, ...]:
    """Where a metric's chance level sits beside it: ``t2v.chance.R@1`` for ``t2v.R@1``,
    ``probe.chance`` for ``probe.action_top1``, ``probe_attributes.colour.chance``, ..."""
    *parent, key = path
    return (*parent, "chance", key) if key.startswith("R@") else (*parent, "chance")


def interval(record: Mapping[str, Any], path: Sequence[str]) -> tuple[float, float] | None:
    """The 95% bootstrap interval evaluation stored beside a metric (``t2v.ci95.R@10``,
    ``probe.ci95.action_top1``, ``probe_attributes.colour.ci95``), or None where there is none."""
    *parent, key = path
    found = lookup(record, (*parent, "ci95"))
    if isinstance(found, Mapping):
        found = found.get(key)
    if isinstance(found, (list, tuple)) and len(found) == 2:
        low, high = (_finite(value) for value in found)
        if low is not None and high is not None:
            return low, high
    return None


RUN_NAME = re.compile(r"^(?P<loss>[a-z][a-z_]*)-b(?P<batch_size>\d+)-s(?P<seed>\d+)$")
METRICS_DIR = Path("results/metrics")
DETAILS_DIR = Path("results/details")
COMPUTE_DIR = Path("results/compute")
#: The folders under ``results/`` that hold one record per study run, with the records' suffix
#: (the validation curves are :func:`fgmm_lib.study.sweep.curve_path`).
RECORD_FOLDERS = {"metrics": ".json", "details": ".json", "compute": ".json", "curves": ".csv"}


def run_name(loss: str, batch_size: int, seed: int) -> str:
    """``<loss>-b<batch_size>-s<seed>``, the name of a run folder and of its results files."""
    return f"{loss}-b{int(batch_size)}-s{int(seed)}"


def parse_run_name(name: str | Path) -> dict[str, Any] | None:
    """``{"loss", "batch_size", "seed"}`` of a run named ``<loss>-b<batch_size>-s<seed>`` (the last
    component of ``name``, without a ``.json`` suffix), or None for another name."""
    stem = Path(str(name)).name
    stem = stem[:-5] if stem.endswith(".json") else stem
    found = RUN_NAME.match(stem)
    if found is None:
        return None
    return {"loss": found.group("loss"), "batch_size": int(found.group("batch_size")), "seed": int(found.group("seed"))}


def metrics_path(name: str, root: str | Path = ".") -> Path:
    """``results/metrics/<name>.json`` under ``root``."""
    return Path(root) / METRICS_DIR / f"{name}.json"


def details_path(name: str, root: str | Path = ".") -> Path:
    """``results/details/<name>.json`` under ``root``."""
    return Path(root) / DETAILS_DIR / f"{name}.json"


def compute_path(name: str, root: str | Path = ".") -> Path:
    """``results/compute/<name>.json`` under ``root``."""
    return Path(root) / COMPUTE_DIR / f"{name}.json"


def lookup(record: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path`` in a nested record, or None where a key is missing."""
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def headline_metrics(record: Mapping[str, Any]) -> dict[str, float | None]:
    """The flat metrics of an evaluation record: one entry per :data:`METRICS` name (None where the
    run has no such metric).

    Raises:
        ValueError: the record holds none of the metrics (it is not an evaluation record).
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"an evaluation record must be a mapping, got {type(record).__name__}")
    values = {name: _finite(lookup(record, metric.path)) for name, metric in METRICS.items()}
    if all(value is None for value in values.values()):
        raise ValueError("the record holds none of the downstream metrics (not a record of fgmm_lib.evaluation.protocol.evaluate)")
    return values


def write_metrics(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write the :func:`headline_metrics` of ``record`` to the metrics file ``path`` (atomically)."""
    return write_json(path, headline_metrics(record))


def ordered_losses(losses: Sequence[str]) -> list[str]:
    """The distinct losses of ``losses`` in the study's order (unknown names last, sorted)."""
    present = list(dict.fromkeys(str(loss) for loss in losses))
    return [loss for loss in LOSS_ORDER if loss in present] + sorted(set(present) - set(LOSS_ORDER))


def collect_records(parts: Sequence[str | Path], root: str | Path = ".") -> list[str]:
    """Gather the run records that each part of the study wrote under ``<part>/results/`` (its
    ``results_root``) into ``root/results/``: every folder of :data:`RECORD_FOLDERS` is rebuilt
    from the parts' files and then replaces the old one whole, so no record of a run that left the
    study stays behind and a kill leaves the old or the new folder. Returns the run names, sorted.

    Raises:
        FileNotFoundError: a part holds no metrics records (naming the part).
        ValueError: two parts hold a run of the same name (naming both), or no part is given.
    """
    if not parts:
        raise ValueError("collect_records needs at least one part of the study")
    owners: dict[str, Path] = {}
    for part in map(Path, parts):
        names = sorted(path.stem for path in (part / METRICS_DIR).glob("*.json") if parse_run_name(path.stem))
        if not names:
            raise FileNotFoundError(f"study part {part} holds no run records (no {part / METRICS_DIR}/<run>.json)")
        for name in names:
            if name in owners:
                raise ValueError(f"run {name} is in two parts of the study: {owners[name]} and {part}")
            owners[name] = part
    sources = {folder: [part / "results" / folder / f"{name}{suffix}" for name, part in owners.items()]
               for folder, suffix in RECORD_FOLDERS.items()}
    for folder, paths in sources.items():  # every record is checked before any folder is replaced
        for path in paths:
            if folder != "curves" and not path.is_file():  # a run trained without validation has no curve
                raise FileNotFoundError(f"run {path.stem} of study part {path.parents[2]} has no {folder} record ({path})")
    for folder, paths in sources.items():
        target = Path(root) / "results" / folder
        partial = partial_folder(target)
        try:
            for path in paths:
                if path.is_file():
                    shutil.copyfile(path, partial / path.name)
            replace_folder(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return sorted(owners)
