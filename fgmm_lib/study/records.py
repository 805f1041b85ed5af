"""One evaluation record (what :func:`fgmm_lib.evaluation.protocol.evaluate` returns and writes
as a details file): what it holds and what it lacks, for ``notebooks/evaluate.ipynb`` and
``notebooks/inspect_run.ipynb``.

A record of any dataset folder is read: Narrated Digits, or an import that has only some tasks'
fields (MSR-VTT has no action labels, so no probe; UCF101 has 101 classes, not Narrated Digits'
8). A task the record lacks is None in it, and its reason is in ``record["skipped"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from matplotlib.figure import Figure

from fgmm_lib.data.dataset import ACTIONS
from fgmm_lib.io import read_json
from fgmm_lib.study import plots
from fgmm_lib.study.tables import recall_at_k_table

#: The tasks of an evaluation record, by key.
TASKS = {
    "probe": "linear probe",
    "t2v": "text→video retrieval",
    "t2i": "text→image retrieval",
    "pointing": "pointing",
}


def record_lacks(record: Mapping[str, Any]) -> str:
    """One line naming the tasks ``record`` lacks and why (``""`` when it has them all)."""
    skipped = record.get("skipped") or {}
    missing = [task for task in TASKS if not record.get(task)]
    if not missing:
        return ""
    return "not evaluated: " + "; ".join(f"{TASKS[task]} ({skipped.get(task, 'not in the record')})"
                                         for task in missing)


def record_summary(record: Mapping[str, Any], run: str | Path | None = None) -> pd.DataFrame:
    """The sizes behind the record's numbers, one row each, for the tasks it has: evaluation
    clips, the probe's train / test clips and weight decay, retrieval queries and corpus."""
    rows: dict[str, Any] = {
        "run": Path(str(run if run is not None else record.get("run", ""))).name,
        "loss": record.get("loss"),
        "evaluation clips": record.get("clips"),
    }
    probe = record.get("probe")
    if probe:
        rows["probe train / test clips"] = f"{probe.get('train_clips')} / {probe.get('test_clips')}"
        rows["probe weight decay (chosen on a validation part of the train clips)"] = probe.get("weight_decay")
    for task, label in (("t2v", "text→video"), ("t2i", "text→image")):
        values = record.get(task)
        if values:
            rows[f"{label} queries / corpus"] = f"{values.get('queries')} / {values.get('corpus')}"
    return pd.Series(rows, name="value", dtype=object).to_frame()


def probe_classes(record: Mapping[str, Any]) -> list[str]:
    """Names of the probe's classes, one per row of its confusion matrix: the ``classes`` of the
    evaluated folder's ``params.json`` (an import of UCF101 or HMDB51), Narrated Digits' actions for
    a generated folder (or an unreadable one with 8 classes), else the class numbers."""
    count = len((record.get("probe") or {}).get("confusion") or ())
    try:
        params = read_json(Path(str(record.get("data"))) / "params.json", "dataset parameters")
    except (OSError, ValueError):
        params = None
    classes = params.get("classes") if isinstance(params, dict) else None
    if isinstance(classes, list) and len(classes) == count:
        return [str(name) for name in classes]
    imported = isinstance(params, dict) and "source" in params
    if count == len(ACTIONS) and not imported:
        return list(ACTIONS)
    return [str(number) for number in range(count)]


def record_figures(record: Mapping[str, Any], name: str) -> list[Figure]:
    """The plots of the tasks ``record`` has: recall at K (retrieval) and the probe's confusion matrix."""
    figures = []
    split = record.get("split")
    if any(isinstance(record.get(task), Mapping) for task in ("t2v", "t2i")):
        figures.append(plots.plot_recall_at_k(recall_at_k_table(record),
                                              title=f"{name}: zero-shot retrieval ({split} split)"))
    probe = record.get("probe")
    if isinstance(probe, Mapping) and probe.get("confusion"):
        figures.append(plots.plot_confusion_matrix(
            probe["confusion"], probe_classes(record),
            title=f"{name}: linear probe on {probe.get('test_clips')} {split!r} clips"))
    return figures
