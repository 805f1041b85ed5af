"""Replication: do the headline verdicts hold on data generated afresh? (docs/study.md section 7)

The study's settings are rerun with the same model seeds on a second pretraining dataset (the
``data_pretrain`` knobs, another seed) and evaluated on a second evaluation dataset (the
``data_eval`` knobs, another seed). With the study's own runs that gives four (pretraining data,
evaluation data) settings; :func:`replication_table` states each headline pair's paired difference
in every setting, side by side.

:func:`replication_points` names the runs on the second pretraining data, :func:`fresh_dataset`
generates the second evaluation data, :func:`evaluation_rows` evaluates finished runs on one
evaluation dataset, :func:`replication_table` compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.evaluation.protocol import evaluate
from fgmm_lib.io import read_json
from fgmm_lib.study.results import headline_metrics
from fgmm_lib.study.stats import paired_differences
from fgmm_lib.study.sweep import SweepPoint, study_points

#: The headline pairs: (configuration, reference), each a (loss, batch size).
HEADLINE_PAIRS = ((("attention", 8), ("coarse", 256)), (("attention", 8), ("coarse", 8)),
                  (("coarse", 256), ("coarse", 8)))


def replication_points(runs: Sequence[Mapping[str, Any]], seeds: Sequence[int], pretrain_seed: int,
                       lr: float | None = None, lr_factors: Mapping[tuple[str, int], float] | None = None) -> list[SweepPoint]:
    """The study's points (:func:`fgmm_lib.study.sweep.study_points`) trained on pretraining data
    generated with ``pretrain_seed``: named ``<loss>-b<batch>-s<seed>-d<pretrain_seed>``."""
    if isinstance(pretrain_seed, bool) or not isinstance(pretrain_seed, int) or pretrain_seed < 0:
        raise ValueError(f"replication.pretrain_seed must be an int >= 0, got {pretrain_seed!r}")
    return [SweepPoint(name=f"{point.name}-d{pretrain_seed}", labels=dict(point.labels), train=dict(point.train),
                       data={"seed": pretrain_seed})
            for point in study_points(runs, seeds, lr=lr, lr_factors=lr_factors)]


def fresh_dataset(base_data: str | Path, seed: int, folder: str | Path, vocab: str | Path) -> Path:
    """``base_data``'s knobs generated afresh from ``seed`` into ``folder`` with the vocabulary ``vocab``
    (kept if ``folder`` already holds exactly that dataset)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"a replication data seed must be an int >= 0, got {seed!r}")
    config = GenerationConfig(**{**read_json(Path(base_data) / "params.json", "dataset parameters"), "seed": seed})
    folder = Path(folder)
    if not (folder / "params.json").is_file() or read_json(folder / "params.json") != config.to_dict():
        generate_dataset(config, folder, vocab=vocab, progress=False)
    return folder


def evaluation_rows(runs: Mapping[str, tuple[Mapping[str, Any], str | Path]], eval_data: str | Path,
                    split: str = "test") -> pd.DataFrame:
    """Evaluate finished runs on ``eval_data``: ``runs`` maps a row name to (labels, run folder).
    One row per run: its labels, ``run`` and the headline metrics."""
    rows = []
    for name, (labels, folder) in runs.items():
        record = evaluate(folder, eval_data, split=split, probe_split="train", progress=False)
        rows.append({**labels, "run": name, **headline_metrics(record)})
    return pd.DataFrame(rows)


def replication_table(settings: Mapping[str, pd.DataFrame], metric: str = "t2v_R@10",
                      pairs: Sequence[tuple[Sequence[Any], Sequence[Any]]] = HEADLINE_PAIRS) -> pd.DataFrame:
    """Each headline pair's paired difference (same model seed) in every setting.

    ``settings`` maps a setting's name (e.g. ``"study data"``) to its runs table (columns ``loss``,
    ``batch_size``, ``seed`` and ``metric``). Returns one row per (pair, setting): ``comparison``
    ("attention b8 - coarse b256"), ``setting``, ``n``, ``mean``, ``ci95_low``, ``ci95_high``,
    ``verdict`` (:func:`fgmm_lib.study.stats.tie_or_difference`), and ``replicates``: whether the
    verdict equals the first setting's."""
    if not settings:
        raise ValueError("replication_table needs at least one setting")
    rows = []
    for config, reference in pairs:
        first, wanted = None, {tuple(config), tuple(reference)}
        for setting, table in settings.items():
            keep = table[[pair in wanted for pair in zip(table["loss"], table["batch_size"])]] if len(table) else table
            difference = paired_differences(keep, metric, reference=tuple(reference)) if len(keep) else keep
            label = f"{config[0]} b{config[1]} - {reference[0]} b{reference[1]}"
            if difference.empty:
                rows.append({"comparison": label, "setting": setting, "metric": metric, "n": 0, "mean": float("nan"),
                             "ci95_low": float("nan"), "ci95_high": float("nan"), "verdict": "no pairs",
                             "replicates": None})
                continue
            found = difference.iloc[0]
            first = found["verdict"] if first is None else first
            rows.append({"comparison": label, "setting": setting, "metric": metric, "n": int(found["n"]),
                         "mean": found["mean"], "ci95_low": found["ci95_low"], "ci95_high": found["ci95_high"],
                         "verdict": found["verdict"], "replicates": found["verdict"] == first})
    return pd.DataFrame(rows)
