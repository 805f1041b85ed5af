"""Downstream evaluation of a run with frozen encoders (docs/study.md section 5): :func:`evaluate`.

Four tasks, all on held-out clips of a clean evaluation set (every noise knob at 0, the
pretraining vocabulary):

- action recognition: a linear probe (multinomial logistic regression) on the clips' global
  video embeddings, trained on the probe split and reported on the evaluation split as top-1
  accuracy (micro: the fraction of clips classified correctly);
- text to video retrieval, zero-shot: the distinct clean captions of the split query its clips;
  every clip whose clean caption equals the query is a correct answer;
- text to image retrieval: "the <colour> <digit>" queries a corpus of still clips (one frame
  where the actor is visible, repeated over the clip's length); every still of that colour and
  digit is a correct answer;
- attention pointing: does the cell that the digit word's phrase attends to most fall inside
  the actor's box.

Retrieval scores are the run's own pair score (docs/study.md section 2): the cosine of the global
embeddings for ``coarse`` and ``milnce``, and the fine-grained aggregation with the run's
(possibly learned) temperatures for the fine-grained losses (``mean``, ``max``, ``attention`` and
the other attention aggregations of ``fgmm_lib.losses.scores.AGGREGATIONS``).

The linear probe uses the global video embedding (not the mean of the local tokens): it is the
pooled feature every loss trains (``coarse`` and ``milnce`` only ever see it), so all runs are
probed on the same kind of feature.

This module runs the four tasks on a run folder and a dataset folder: :func:`evaluate` (what
``fgmm evaluate`` runs). The metric primitives (retrieval, bootstrap intervals, the linear probe,
pointing) are in :mod:`fgmm_lib.evaluation.metrics`. Embedding a split, the pair-score matrix and the
two retrieval tasks (:func:`fgmm_lib.evaluation.embedding.caption_retrieval`,
:func:`fgmm_lib.evaluation.embedding.text_to_image`) are in :mod:`fgmm_lib.evaluation.embedding`.

Baselines: every retrieval result carries ``"chance"``, the exact R@K of a random ranking for
its relevance matrix; the probe and pointing carry their uniform chance levels. A randomly
initialised encoder already beats the latter two (random convolutional features carry motion,
and the actor's cells stand out from a plain background), so compare trained runs with an
untrained one as well.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fgmm_lib.data.dataset import ACTIONS, COLOURS, DIGIT_WORDS, SPLITS, NarratedDigits
from fgmm_lib.data.vocab import Vocabulary
from fgmm_lib.evaluation.embedding import caption_retrieval, embed_dataset, text_to_image
from fgmm_lib.evaluation.metrics import bootstrap_interval, digit_phrase_indices, linear_probe, pointing_accuracy
from fgmm_lib.io import check_writable_file, read_json, write_json
from fgmm_lib.losses.modules import PairLoss
from fgmm_lib.runs.folder import COMPUTE, load_run

# --------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------


def _clean_probe_rows(meta: Any) -> np.ndarray:
    """Bool mask of the clean single-actor clips: no distractor and the actor visible in every frame."""
    no_distractor = np.array([len(list(g)) == 0 for g in meta["distractor_glyphs"]], dtype=bool)
    all_visible = np.array([bool(np.all(np.asarray(v, dtype=bool))) for v in meta["visible"]], dtype=bool)
    return no_distractor & all_visible


def _open_eval_data(data: Path, run: Path, vocab: Any, run_data: dict[str, Any], split: str,
                    probe_split: str) -> tuple[Any, Any]:
    """The evaluation and probe splits of ``data``, checked against the run: same vocabulary, same
    clip shape (frames and size) as the run's pretraining data, and neither split empty. The probe
    split is None when the folder has no action labels; a folder of images (one frame per clip)
    passes the frames check, its frame being repeated to the run's clip length."""

    if not data.is_dir():
        raise FileNotFoundError(f"data folder {data} does not exist")
    data_vocab_path = data / "vocab.json"
    if not data_vocab_path.is_file():
        raise FileNotFoundError(f"data folder {data} has no vocabulary file {data_vocab_path}")
    data_fingerprint = Vocabulary.load(data_vocab_path).fingerprint()
    if data_fingerprint != vocab.fingerprint():
        raise ValueError(
            f"the data folder {data} was generated with another vocabulary than the run {run} was "
            f"trained with (vocabulary fingerprints {data_fingerprint[:12]}... vs {vocab.fingerprint()[:12]}...); "
            f"generate the evaluation data with the run's vocabulary (fgmm generate --vocab <the "
            f"pretraining data's vocab.json>, or fgmm import-* --vocab)"
        )
    test_set = NarratedDigits(data, split=split, vocab=vocab)
    for key in ("frames", "size"):
        trained, given = run_data.get(key), test_set.params.to_dict().get(key)
        if trained is not None and trained != given and not (key == "frames" and given == 1):
            raise ValueError(f"{data / 'params.json'}: {key}={given} but the run {run} was trained on clips with "
                             f"{key}={trained}; evaluate on data of the same clip shape")
    if len(test_set) == 0:
        raise ValueError(f"split {split!r} of {data} has no clips")
    if "action" not in test_set.fields:
        return test_set, None
    probe_set = NarratedDigits(data, split=probe_split, vocab=vocab)
    if len(probe_set) == 0:
        raise ValueError(f"probe split {probe_split!r} of {data} has no clips")
    return test_set, probe_set


def _probe_rows(probe_set: Any, test_set: Any, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the clips the linear probe uses (checked before any work): on Narrated Digits the
    clean single-actor clips, elsewhere every clip."""
    if "distractor_glyphs" not in test_set.meta:
        return np.ones(len(probe_set), dtype=bool), np.ones(len(test_set), dtype=bool)
    train_keep = _clean_probe_rows(probe_set.meta)
    test_keep = _clean_probe_rows(test_set.meta)
    dropped_train, dropped_test = int((~train_keep).sum()), int((~test_keep).sum())
    if dropped_train or dropped_test:
        warnings.warn(
            f"linear probe: dropped {dropped_train} of {len(train_keep)} {probe_set.split!r} clips and "
            f"{dropped_test} of {len(test_keep)} {test_set.split!r} clips of {data} that have distractors or "
            f"misaligned frames (the probe uses clean single-actor clips)",
            stacklevel=3,
        )
    if not train_keep.any() or not test_keep.any():
        raise ValueError(
            f"no clean single-actor clips left for the linear probe in {data} "
            f"({int(train_keep.sum())} {probe_set.split!r}, {int(test_keep.sum())} {test_set.split!r}); "
            f"evaluate on data generated with distractors=0 and misaligned_frames=0"
        )
    return train_keep, test_keep


def _attribute_classes() -> dict[str, int]:
    return {"action": len(ACTIONS), "colour": len(COLOURS), "digit": len(DIGIT_WORDS)}


def _one_probe(probe_train: dict[str, Tensor], test: dict[str, Tensor], train_rows: Tensor, test_rows: Tensor,
               attribute: str, classes: int) -> dict[str, Any]:
    """A linear probe of ``attribute`` on the global video embeddings, with the chance level and a
    bootstrap interval over the test clips of its top-1."""
    probe = linear_probe(
        probe_train["video_global"][train_rows], probe_train[attribute][train_rows],
        test["video_global"][test_rows], test[attribute][test_rows], num_classes=classes,
    )
    correct = torch.tensor(probe["predicted"]) == test[attribute][test_rows]
    return {**{key: value for key, value in probe.items() if key != "predicted"},
            "chance": 1.0 / classes, "ci95": bootstrap_interval(correct.double())}


def _probe_task(probe_train: dict[str, Tensor], test: dict[str, Tensor], train_keep: np.ndarray,
                test_keep: np.ndarray, classes: int, fields: frozenset[str] | set[str] = frozenset()
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The action probe (``probe``) and one probe per attribute the folder has (``probe_attributes``)."""
    train_rows = torch.from_numpy(np.nonzero(train_keep)[0])
    test_rows = torch.from_numpy(np.nonzero(test_keep)[0])
    action = _one_probe(probe_train, test, train_rows, test_rows, "action", classes)
    probe = {
        "action_top1": action["top1"],
        "chance": 1.0 / classes,
        "ci95": {"action_top1": action["ci95"]},
        "confusion": action["confusion"],
        "weight_decay": action["weight_decay"],
        "train_clips": action["train_size"],
        "test_clips": action["test_size"],
        "dropped_train_clips": int((~train_keep).sum()),
        "dropped_test_clips": int((~test_keep).sum()),
    }
    attributes = {"action": {key: action[key] for key in ("top1", "chance", "ci95", "weight_decay")}}
    for attribute, count in _attribute_classes().items():
        if attribute == "action" or attribute not in fields:
            continue
        result = _one_probe(probe_train, test, train_rows, test_rows, attribute, count)
        attributes[attribute] = {key: result[key] for key in ("top1", "chance", "ci95", "weight_decay")}
    return probe, attributes


def _pointing_task(model: Any, loss_module: PairLoss, test: dict[str, Tensor], captions: list[str],
                   params: Any) -> dict[str, Any]:
    """Where the digit word's phrase looks, against the actor's box."""
    frames, size = int(params.frames), int(params.size)
    return pointing_accuracy(
        loss_module, test["video_tokens"], test["caption_phrases"], test["caption_mask"],
        digit_phrase_indices(captions, test["digit"], int(params.max_words)),
        test["boxes"], test["visible"], model.video.grid(frames, size, size), (frames, size, size),
    )


def _skipped_tasks(test_set: Any, loss_module: PairLoss) -> dict[str, str]:
    """The tasks that ``test_set`` lacks the fields for, each with the reason."""
    fields = test_set.fields
    images = int(test_set.params.frames) == 1
    skipped = {}
    if "action" not in fields:
        skipped["probe"] = "needs action labels ('action' in meta.jsonl: fgmm import-ucf101 / import-hmdb51)"
    if "caption" not in fields:
        skipped["t2i" if images else "t2v"] = "needs clean captions ('caption' in meta.jsonl)"
    if images:
        skipped["t2v"] = "needs clips of several frames: this folder holds images (its caption retrieval is t2i)"
    elif not {"digit", "colour"} <= fields:
        skipped["t2i"] = "needs images (a one-frame folder: fgmm import-karpathy) or digit and colour labels"
    if not loss_module.has_attention:
        skipped["pointing"] = "needs attention maps, which the run's loss does not have"
    elif not {"boxes", "digit"} <= fields:
        skipped["pointing"] = "needs boxes and the word that names the boxed object ('boxes' and 'digit' in meta.jsonl)"
    return skipped


class _RepeatFrames:
    """A dataset whose one-frame clips (images) are repeated to ``frames`` frames, as stills are."""

    def __init__(self, dataset: Any, frames: int) -> None:
        self.dataset, self.frames, self.split = dataset, frames, dataset.split

    def __len__(self) -> int:
        return len(self.dataset)

    def get_batch(self, positions: Any) -> dict[str, Tensor]:
        batch = self.dataset.get_batch(positions)
        if self.frames > 1 and batch["video"].shape[2] == 1:
            batch["video"] = batch["video"].expand(-1, -1, self.frames, -1, -1).contiguous()
            batch["boxes"] = batch["boxes"].expand(-1, self.frames, -1)
            batch["visible"] = batch["visible"].expand(-1, self.frames)
        return batch


def _run_compute(run: Path, config: Any) -> tuple[dict[str, Any] | None, bool]:
    """The run's compute record and whether the run finished its epochs (warns when it did not)."""
    compute = read_json(run / COMPUTE) if (run / COMPUTE).is_file() else None
    finished = bool(compute) and compute.get("epochs_done") == config.epochs
    if not finished:
        warnings.warn(f"run {run} did not finish its {config.epochs} epochs (no complete {COMPUTE}): "
                      f"these metrics describe a partial run; resume it with fgmm pretrain --resume", stacklevel=3)
    return compute, finished


def evaluate(
    run: str | Path,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    probe_split: str = "train",
    progress: bool = True,
    batch_size: int = 256,
    device: str | None = None,
    compute_out: str | Path | None = None,
) -> dict[str, Any]:
    """Run every downstream task of docs/study.md section 5 for the run folder ``run`` on ``data``.

    Args:
        run: a pretraining run folder (read with :func:`fgmm_lib.runs.folder.load_run`).
        data: a dataset folder with the run's vocabulary and clip shape: a clean Narrated Digits
            folder (every noise knob at 0) or an imported one (``fgmm import-* --vocab``).
        split: the held-out split that retrieval, pointing and the probe's test use.
        out: if given, the metrics are also written there as JSON (atomically; checked for
            writability before any work). It holds metrics only.
        probe_split: the split the linear probe is trained on; it must differ from ``split``.
        progress: show progress bars.
        batch_size: clips per forward pass.
        device: where the encoders run (default: CUDA if available, else CPU).
        compute_out: if given, the run's compute record (FLOPs, wall time, samples seen) with its
            loss, batch size and seed is written there as JSON, beside the metrics.

    Returns a dict::

        {"run", "data", "loss", "split", "probe_split", "clips", "finished",
         "temperatures": {"attn", "weight"} (the run's tau_a and tau_w, as used for scoring),
         "probe": {"action_top1", "chance", "ci95": {"action_top1": [lo, hi]}, "confusion",
                   "weight_decay", "train_clips", "test_clips", "dropped_train_clips",
                   "dropped_test_clips"},
         "probe_attributes": {"action" | "colour" | "digit": {"top1", "chance", "ci95": [lo, hi],
                                                             "weight_decay"}},
         "t2v": {"R@1", "R@5", "R@10", "median_rank", "mean_rank", "queries", "corpus", "chance": {R@K},
                 "ci95": {R@K: [lo, hi]},
                 "attributes": {"action" | "colour" | "digit": {the same keys but "attributes"}}},
         "t2i": {the keys of t2v but "attributes"},
         "pointing": {"accuracy", "chance", "clips"},
         "skipped": {task: why it did not run}}

    What the encoders learned, per attribute (docs/study.md section 7, "Honest about the regime"):

    - ``probe_attributes``: one linear probe per attribute the folder labels (``action`` always
      with the probe, ``colour`` and ``digit`` where ``meta.jsonl`` has them), the protocol of the
      action probe (:func:`linear_probe` on the global video embeddings, trained on
      ``probe_split``, micro top-1 on the same clean clips of ``split``); chance is 1 / classes
      (8 actions, 8 colours, 10 digits);
    - ``t2v["attributes"]``: the caption queries' ranking of the clips judged on one attribute at
      a time (:func:`attribute_retrieval`): a hit at K for attribute ``a`` is any clip among the
      caption's top K with the caption's value of ``a`` ("the red seven moves left" is answered,
      for ``colour``, by every red clip). R@1 is then the fraction of queries whose best clip has
      the right value; chance is the exact hit rate of a random ranking for that relevance.

    Intervals: ``ci95`` are 95% percentile bootstrap intervals (:func:`bootstrap_interval`,
    :data:`BOOTSTRAP_RESAMPLES` resamples, seed :data:`BOOTSTRAP_SEED`) over the queries for
    retrieval, over the test clips for the probes. They hold the evaluation set's sampling error
    for this one run, not the spread over seeds.

    A task whose fields the folder lacks is None and listed in ``"skipped"`` (pointing needs
    boxes, the probe action labels, ...). Caption retrieval is ``t2v`` on a folder of clips and
    ``t2i`` on a folder of images (one frame per clip, repeated to the run's clip length); every
    caption of a clip (``captions``) is a query it answers. On Narrated Digits, ``t2i`` queries
    "the <colour> <digit>" stills.
    """

    for name, value in (("split", split), ("probe_split", probe_split)):
        if value not in SPLITS:
            raise ValueError(f"{name} must be one of {SPLITS}, got {value!r}")
    if split == probe_split:
        raise ValueError(f"probe_split and split are both {split!r}: a linear probe trained and tested on the "
                         f"same clips measures memorisation; train it on another split (e.g. train)")
    run, data = Path(run), Path(data)
    out_path = check_writable_file(out, "metrics file") if out is not None else None
    compute_path = check_writable_file(compute_out, "compute file") if compute_out is not None else None
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    model, loss_module, config, vocab = load_run(run)
    run_data = read_json(run / "config.json").get("data_params", {})
    test_set, probe_set = _open_eval_data(data, run, vocab, run_data, split, probe_split)
    skipped = _skipped_tasks(test_set, loss_module)
    if probe_set is not None:
        train_keep, test_keep = _probe_rows(probe_set, test_set, data)
    fields = test_set.fields
    captions = [str(c) for c in test_set.meta["caption"]] if "caption" in fields else []
    caption_lists = [list(c) for c in test_set.meta["captions"]] if "captions" in fields else [[c] for c in captions]
    unknown = sorted({w for texts in caption_lists for c in texts for w in c.lower().split()} - set(vocab.words))
    if unknown:
        warnings.warn(f"the clean captions of {data} use words that the vocabulary of {run} does not know "
                      f"(encoded as unknown): {unknown[:50]}; its pretraining data did not cover them", stacklevel=2)
    compute, finished = _run_compute(run, config)

    device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device_name)
    images = int(test_set.params.frames) == 1
    clip_frames = int(run_data.get("frames") or 1) if images else 0
    stills = "t2i" not in skipped and not images
    test = embed_dataset(model, _RepeatFrames(test_set, clip_frames), batch_size=batch_size, progress=progress,
                         stills=stills)
    max_words = int(test_set.params.max_words)
    temperatures = loss_module.logged_temperatures()
    tasks: dict[str, Any] = {"probe": None, "probe_attributes": None, "t2v": None, "t2i": None, "pointing": None}
    if probe_set is not None:
        probe_train = embed_dataset(model, _RepeatFrames(probe_set, clip_frames), batch_size=batch_size,
                                    progress=progress, stills=False)
        classes = (len(ACTIONS) if "digit" in fields
                   else len(test_set.params.extra.get("classes") or ())
                   or int(max(probe_train["action"].max(), test["action"].max())) + 1)
        tasks["probe"], tasks["probe_attributes"] = _probe_task(probe_train, test, train_keep, test_keep, classes,
                                                                fields)
    caption_task = "t2i" if images else "t2v"
    if caption_task not in skipped:
        tasks[caption_task] = caption_retrieval(model, loss_module, vocab, test, caption_lists,
                                                 "captions" in fields, max_words, device_name, fields)
    if stills:
        tasks["t2i"] = text_to_image(model, loss_module, vocab, test, max_words, device_name)
    if "pointing" not in skipped:
        tasks["pointing"] = _pointing_task(model, loss_module, test, captions, test_set.params)
    result: dict[str, Any] = {
        "run": str(run),
        "data": str(data),
        "loss": config.loss,
        "split": split,
        "probe_split": probe_split,
        "clips": len(test_set),
        "finished": finished,
        "temperatures": {"attn": temperatures["attn_temperature"], "weight": temperatures["weight_temperature"]},
        **tasks,
        "skipped": skipped,
    }
    if out_path is not None:
        write_json(out_path, result)
    if compute_path is not None:
        write_json(compute_path, {**(compute or {}), "loss": config.loss, "batch_size": config.batch_size,
                                  "seed": config.seed, "finished": finished})
    return result
