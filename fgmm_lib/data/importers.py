"""Import real videos, narrations and the standard downstream sets into a dataset folder.

Every importer lists clips (a video file with a time span, or an image file) with their text,
split and, where the set has them, action labels and clean captions; :func:`import_clips` then
decodes them (PyAV for video, Pillow for images; see :mod:`fgmm_lib.data.video_io`), in worker
processes, into the folder format that :class:`fgmm_lib.data.dataset.NarratedDigits` reads:

- ``frames.npy``: uint8 ``[clips, T, S, S, 3]`` (T = 1 for images);
- ``meta.jsonl``: per clip ``index``, ``split``, ``narration`` (required), ``video`` (the source
  video: consecutive clips of one video are temporal neighbours), and where known ``caption``
  and ``captions`` (every clean caption of the clip), ``action`` and ``action_name``, plus where
  it came from (``file``, ``start``, ``end``);
- ``params.json``: ``source``, ``frames``, ``size``, ``max_words``, ``classes`` and the import's
  settings;
- ``vocab.json``: built from the train narrations, or a copy of ``vocab``;
- ``skipped.csv``: the clips that could not be read (missing, corrupt or too short), with why.

The import is resumable: decoded clips are kept in a work folder next to ``out``
(``.<name>.import``) and a repeated command carries on where a killed one stopped. ``out`` itself
only appears, complete, at the end (written under a temporary name and renamed).

Formats (nothing is downloaded; point the importers at files you have):

- :func:`read_manifest`: CSV or JSONL with ``video``, ``start``, ``end``, ``text`` and optional
  ``split`` / ``caption`` (the HowTo100M / WebVid shape);
- :func:`ucf101_clips`: ``classInd.txt``, ``trainlistNN.txt``, ``testlistNN.txt`` and the .avi files;
- :func:`hmdb51_clips`: the per-class ``<class>_test_splitN.txt`` files (1 = train, 2 = test);
- :func:`msrvtt_clips`: the caption JSON (``videos`` + ``sentences``) or a CSV ``video,caption``;
- :func:`youcook2_clips`: ``youcookii_annotations_*.json`` (annotated segments);
- :func:`karpathy_clips`: ``dataset_flickr30k.json`` / ``dataset_coco.json`` with the images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fgmm_lib.data.dataset import DATASET_FILES, check_dataset_target, jsonl_rows, vocab_file
from fgmm_lib.data.video_io import read_clips
from fgmm_lib.data.vocab import Vocabulary
from fgmm_lib.io import partial_folder, replace_folder

SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")
SKIPPED_FILE = "skipped.csv"
#: Seconds between two saves of the import's progress (decoded frames, then their record).
SAVE_EVERY_S = 2.0
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass
class Clip:
    """One clip to import: a video file and a time span, or an image file."""

    file: str
    split: str
    narration: str
    start: float | None = None  # seconds; None with end None: the whole video
    end: float | None = None
    caption: str | None = None
    captions: list[str] | None = None
    action: int | None = None
    action_name: str | None = None
    source: str | None = None  # source video id (default: the file); its clips are neighbours
    image: bool = False
    line: str = ""  # where the clip was listed (file, line), for skipped.csv

    def span(self) -> tuple[float, float | None]:
        return (0.0 if self.start is None else float(self.start), self.end)


@dataclass
class ImportResult:
    out: Path
    imported: int
    skipped: int
    seconds: float
    skipped_reasons: dict[str, int] = field(default_factory=dict)


def normalise_text(text: str) -> str:
    """Lowercase words, punctuation dropped: ``"Hello, World!"`` -> ``"hello world"``."""
    return " ".join(_WORD.findall(str(text).lower()))


def _text(value: Any, where: str, name: str) -> str:
    text = normalise_text(value) if value is not None else ""
    if not text:
        raise ValueError(f"{where}: field {name!r} has no words ({value!r})")
    return text


def _split(value: Any, where: str, aliases: dict[str, str] | None = None) -> str:
    split = str(value).strip().lower()
    split = (aliases or {}).get(split, split)
    if split not in SPLITS:
        raise ValueError(f"{where}: field 'split' must be one of {', '.join(SPLITS)}, got {value!r}")
    return split


def _seconds(value: Any, where: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {name!r} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: field {name!r} must be a non-negative finite number of seconds, got {value!r}")
    return number


# --------------------------------------------------------------------------------------------
# Manifests (HowTo100M / WebVid shape)
# --------------------------------------------------------------------------------------------


def _table_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV (with a header line) or JSONL file; blank lines are skipped."""
    if path.suffix.lower() in (".jsonl", ".json"):

        yield from jsonl_rows(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            for row in reader:
                if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
                    continue
                yield reader.line_num, {k.strip(): v for k, v in row.items() if k is not None}
    else:
        raise ValueError(f"{path}: a table must be .csv, .tsv or .jsonl")


def _required(row: dict[str, Any], names: Sequence[str], where: str) -> None:
    for name in names:
        if row.get(name) is None or (isinstance(row[name], str) and not row[name].strip()):
            raise ValueError(f"{where}: missing field {name!r}")


def read_manifest(path: str | Path) -> list[Clip]:
    """Clips of a CSV / JSONL manifest: ``video`` (a path, relative to the manifest's folder),
    ``start`` and ``end`` (seconds), ``text`` (the narration), and optional ``split`` (default
    train) and ``caption`` (a clean caption for retrieval). Bad rows raise ValueError naming the
    file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    clips = []
    for number, row in _table_rows(path):
        where = f"{path}, line {number}"
        _required(row, ("video", "start", "end", "text"), where)
        start = _seconds(row["start"], where, "start")
        end = _seconds(row["end"], where, "end")
        if end <= start:
            raise ValueError(f"{where}: field 'end' ({end}) must be greater than 'start' ({start})")
        video = Path(str(row["video"]).strip())
        video = video if video.is_absolute() else path.parent / video
        caption = row.get("caption")
        clips.append(Clip(
            file=str(video), start=start, end=end, narration=_text(row["text"], where, "text"),
            split=_split(row.get("split") or "train", where),
            caption=_text(caption, where, "caption") if caption not in (None, "") else None,
            line=f"{path.name}:{number}",
        ))
    if not clips:
        raise ValueError(f"{path}: the manifest lists no clips")
    return clips


# --------------------------------------------------------------------------------------------
# Downstream sets
# --------------------------------------------------------------------------------------------


def _class_words(name: str) -> str:
    """``ApplyEyeMakeup`` -> ``apply eye makeup``; ``brush_hair`` -> ``brush hair``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|_", " ", name)
    return normalise_text(spaced)


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]


def _label_clip(file: Path, split: str, action: int, name: str, where: str) -> Clip:
    words = _class_words(name)
    return Clip(file=str(file), split=split, narration=words, caption=words, action=action, action_name=name,
                line=where)


def ucf101_clips(videos: str | Path, splits: str | Path, fold: int = 1) -> tuple[list[Clip], list[str]]:
    """UCF101 fold ``fold``: (clips, class names). ``videos`` holds ``<Class>/v_<Class>_gXX_cYY.avi``;
    ``splits`` holds ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt``. The text of a
    clip is its class name in words."""
    videos, splits = Path(videos), Path(splits)
    class_file = splits / "classInd.txt"
    classes: dict[str, int] = {}
    for number, parts in _lines(class_file):
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{class_file}, line {number}: expected '<index> <ClassName>', got {' '.join(parts)!r}")
        classes[parts[1]] = int(parts[0]) - 1
    names = [name for name, _ in sorted(classes.items(), key=lambda item: item[1])]
    clips = []
    for split, list_name in (("train", f"trainlist{fold:02d}.txt"), ("test", f"testlist{fold:02d}.txt")):
        list_file = splits / list_name
        for number, parts in _lines(list_file):
            where = f"{list_file.name}:{number}"
            name = parts[0].split("/")[0]
            if name not in classes:
                raise ValueError(f"{list_file}, line {number}: class {name!r} is not in {class_file}")
            clips.append(_label_clip(videos / parts[0], split, classes[name], name, where))
    return clips, names


def hmdb51_clips(videos: str | Path, splits: str | Path, fold: int = 1) -> tuple[list[Clip], list[str]]:
    """HMDB51 fold ``fold``: (clips, class names). ``splits`` holds ``<class>_test_split<N>.txt``
    (lines ``<video>.avi <1|2|0>``: 1 = train, 2 = test, 0 = unused); ``videos`` holds
    ``<class>/<video>.avi``. Classes are numbered in alphabetical order."""
    videos, splits = Path(videos), Path(splits)
    suffix = f"_test_split{fold}.txt"
    files = sorted(p for p in splits.glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"no HMDB51 split files *{suffix} in {splits}")
    names = [p.name[: -len(suffix)] for p in files]
    clips = []
    for action, (name, list_file) in enumerate(zip(names, files)):
        for number, parts in _lines(list_file):
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{list_file}, line {number}: expected '<video> <0|1|2>', got {' '.join(parts)!r}")
            if parts[1] == "0":
                continue
            split = "train" if parts[1] == "1" else "test"
            clips.append(_label_clip(videos / name / parts[0], split, action, name, f"{list_file.name}:{number}"))
    return clips, names


def _video_index(root: Path) -> dict[str, Path]:
    """Video files under ``root`` by file stem."""
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            index.setdefault(path.stem, path)
    return index


def _find(index: dict[str, Path], root: Path, key: str) -> str:
    return str(index.get(key, root / f"{key}.mp4"))


def _captioned_clip(file: str, split: str, texts: list[str], where: str, source: str | None = None,
                    start: float | None = None, end: float | None = None, image: bool = False) -> Clip:
    captions = list(dict.fromkeys(_text(t, where, "caption") for t in texts))
    return Clip(file=file, split=split, narration=captions[0], caption=captions[0], captions=captions,
                start=start, end=end, source=source, image=image, line=where)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def msrvtt_clips(annotations: str | Path, videos: str | Path, split: str = "test") -> list[Clip]:
    """MSR-VTT: one clip per video (the whole video), every caption of it a correct answer.

    ``annotations`` is the caption JSON (``{"videos": [{"video_id", "split"}], "sentences":
    [{"video_id", "caption"}]}``, splits train / validate / test) or a CSV with ``video`` and
    ``caption`` (and optional ``split``, default ``split``: the 1k-A test list has this shape)."""
    annotations, videos = Path(annotations), Path(videos)
    index = _video_index(videos)
    captions: dict[str, list[str]] = {}
    splits: dict[str, str] = {}
    where: dict[str, str] = {}
    if annotations.suffix.lower() == ".json":
        content = _load_json(annotations)
        if not isinstance(content, dict) or "sentences" not in content:
            raise ValueError(f"{annotations}: expected an MSR-VTT caption JSON with 'videos' and 'sentences'")
        for number, video in enumerate(content.get("videos", [])):
            spot = f"{annotations.name}: videos[{number}]"
            _required(video, ("video_id", "split"), spot)
            splits[video["video_id"]] = _split(video["split"], spot, {"validate": "val"})
        for number, sentence in enumerate(content["sentences"]):
            spot = f"{annotations.name}: sentences[{number}]"
            _required(sentence, ("video_id", "caption"), spot)
            captions.setdefault(sentence["video_id"], []).append(sentence["caption"])
            where.setdefault(sentence["video_id"], spot)
    else:
        for number, row in _table_rows(annotations):
            spot = f"{annotations}, line {number}"
            _required(row, ("video", "caption"), spot)
            key = str(row["video"]).strip()
            captions.setdefault(key, []).append(row["caption"])
            splits.setdefault(key, _split(row.get("split") or split, spot))
            where.setdefault(key, f"{annotations.name}:{number}")
    clips = []
    for key, texts in captions.items():
        clip_split = splits.get(key, _split(split, str(annotations)))
        clips.append(_captioned_clip(_find(index, videos, key), clip_split, texts, where[key], source=key))
    return clips


def youcook2_clips(annotations: str | Path, videos: str | Path) -> list[Clip]:
    """YouCook2: one clip per annotated segment (``database.<id>.annotations[].segment`` and
    ``sentence``); subsets training / validation / testing become train / val / test. Videos are
    found under ``videos`` by their YouTube id (any depth, any video extension)."""
    annotations, videos = Path(annotations), Path(videos)
    content = _load_json(annotations)
    if not isinstance(content, dict) or not isinstance(content.get("database"), dict):
        raise ValueError(f"{annotations}: expected a YouCook2 annotation JSON with a 'database' object")
    index = _video_index(videos)
    aliases = {"training": "train", "validation": "val", "testing": "test"}
    clips = []
    for key, video in content["database"].items():
        spot = f"{annotations.name}: database.{key}"
        _required(video, ("subset",), spot)
        split = _split(video["subset"], spot, aliases)
        for number, segment in enumerate(video.get("annotations", [])):
            place = f"{spot}.annotations[{number}]"
            _required(segment, ("segment", "sentence"), place)
            start, end = (_seconds(value, place, "segment") for value in segment["segment"])
            if end <= start:
                raise ValueError(f"{place}: field 'segment' must end after it starts, got {segment['segment']}")
            clips.append(_captioned_clip(_find(index, videos, key), split, [segment["sentence"]], place,
                                         source=key, start=start, end=end))
    return clips


def karpathy_clips(annotations: str | Path, images: str | Path) -> list[Clip]:
    """Flickr30k / COCO in the Karpathy split (``dataset_flickr30k.json``, ``dataset_coco.json``):
    one one-frame clip per image, its five sentences the correct answers; ``restval`` joins train.
    An image is at ``images/<filepath>/<filename>`` (COCO) or ``images/<filename>``."""
    annotations, images = Path(annotations), Path(images)
    content = _load_json(annotations)
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise ValueError(f"{annotations}: expected a Karpathy-split JSON with an 'images' list")
    clips = []
    for number, image in enumerate(content["images"]):
        spot = f"{annotations.name}: images[{number}]"
        _required(image, ("filename", "split", "sentences"), spot)
        texts = [s.get("raw") or " ".join(s.get("tokens", [])) for s in image["sentences"] if isinstance(s, dict)]
        if not texts:
            raise ValueError(f"{spot}: field 'sentences' holds no sentence")
        folder = images / image["filepath"] if image.get("filepath") else images
        clips.append(_captioned_clip(str(folder / image["filename"]), _split(image["split"], spot, {"restval": "train"}),
                                     texts, spot, image=True))
    return clips


# --------------------------------------------------------------------------------------------
# Decoding into a folder
# --------------------------------------------------------------------------------------------


def _ordered(clips: Sequence[Clip]) -> list[Clip]:
    """Clips grouped by source video (in order of first appearance), then by split, in time order."""
    first: dict[str, int] = {}
    for clip in clips:
        first.setdefault(clip.source or clip.file, len(first))

    def key(i: int) -> tuple[int, int, float, int]:
        clip = clips[i]
        return first[clip.source or clip.file], SPLITS.index(clip.split), clip.span()[0], i

    order = sorted(range(len(clips)), key=key)
    return [clips[i] for i in order]


def _groups(clips: Sequence[Clip]) -> list[tuple[str, bool, list[int]]]:
    """(file, image, positions) of the clips read from each file, in order."""
    groups: dict[tuple[str, bool], list[int]] = {}
    for position, clip in enumerate(clips):
        groups.setdefault((clip.file, clip.image), []).append(position)
    return [(file, image, positions) for (file, image), positions in groups.items()]


def _fingerprint(clips: Sequence[Clip], settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for clip in clips:
        digest.update(json.dumps(asdict(clip), sort_keys=True).encode())
    return digest.hexdigest()


class _WorkFolder:
    """The resumable state of an import: decoded frames and a record of what is done."""

    def __init__(self, path: Path, fingerprint: str, shape: tuple[int, ...]) -> None:
        self.path = path
        state = path / "state.json"
        fresh = not (state.is_file() and (path / "frames.npy").is_file()
                     and json.loads(state.read_text()).get("fingerprint") == fingerprint)
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            self.frames = np.lib.format.open_memmap(path / "frames.npy", mode="w+", dtype=np.uint8, shape=shape)
            state.write_text(json.dumps({"fingerprint": fingerprint, "shape": list(shape)}) + "\n")
        else:
            self.frames = np.load(path / "frames.npy", mmap_mode="r+")
        self.status: dict[int, str] = {}
        done = path / "done.jsonl"
        if done.is_file():
            for line in done.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed import
                    break
                self.status.update({int(k): v for k, v in record.items()})
        self._pending: dict[int, str] = {}
        self._saved = time.monotonic()

    def put(self, position: int, result: np.ndarray | str) -> None:
        if isinstance(result, str):
            self._pending[position] = result
        else:
            self.frames[position] = result
            self._pending[position] = "ok"
        if time.monotonic() - self._saved > SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        """Flush the frames, then record the clips they hold: a record never runs ahead of its frames."""
        if self._pending:
            self.frames.flush()
            with open(self.path / "done.jsonl", "a") as handle:
                handle.write(json.dumps({str(k): v for k, v in self._pending.items()}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self.status.update(self._pending)
            self._pending = {}
        self._saved = time.monotonic()


def _run_groups(tasks: list[tuple[str, bool, list[tuple[float, float | None]], list[int]]], frames: int, size: int,
                workers: int, work: _WorkFolder, bar: Any) -> None:
    def store(positions: list[int], results: list[np.ndarray | str]) -> None:
        for position, result in zip(positions, results):
            work.put(position, result)
        bar.update(len(positions))

    if workers <= 1:
        for file, image, spans, positions in tasks:
            store(positions, read_clips(file, image, spans, frames, size))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(read_clips, file, image, spans, frames, size): positions
                   for file, image, spans, positions in tasks}
        try:
            for future in as_completed(futures):
                store(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _check_size(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def import_clips(
    clips: Sequence[Clip],
    out: str | Path,
    source: str,
    frames: int = 8,
    size: int = 32,
    workers: int = 1,
    vocab: str | Path | None = None,
    min_count: int = 1,
    max_vocab: int = 0,
    max_words: int = 16,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> ImportResult:
    """Decode ``clips`` into the dataset folder ``out`` (see the module's docstring).

    ``frames`` (T) and ``size`` (S) set the clip shape (images always give T = 1); ``workers``
    processes decode (1 = in this process). The vocabulary is ``vocab`` (a vocab.json or a folder
    holding one) or built from the train narrations of the clips read: words seen at least
    ``min_count`` times, at most ``max_vocab`` words in all (0 = no cap; the most frequent are
    kept), others encoded as ``<unk>``. Raises ValueError when no clip could be read.
    """
    from tqdm.auto import tqdm


    started = time.monotonic()
    out = Path(out)
    frames = _check_size("frames", frames, 1)
    size = _check_size("size", size, 1)
    workers = _check_size("workers", workers, 1)
    min_count = _check_size("min_count", min_count, 1)
    max_vocab = _check_size("max_vocab", max_vocab, 0)
    max_words = _check_size("max_words", max_words, 1)
    if 0 < max_vocab < 3:
        raise ValueError(f"max_vocab must be 0 (no cap) or >= 3 (<pad>, <unk> and a word), got {max_vocab}")
    if not clips:
        raise ValueError("there are no clips to import")
    images = {clip.image for clip in clips}
    if len(images) != 1:
        raise ValueError("a dataset folder holds either videos or images, not both")
    frames = 1 if images == {True} else frames
    reused = Vocabulary.load(vocab_file(vocab)) if vocab is not None else None
    check_dataset_target(out, (*DATASET_FILES, SKIPPED_FILE))
    out.parent.mkdir(parents=True, exist_ok=True)

    clips = _ordered(clips)
    settings = {"source": source, "frames": frames, "size": size, "max_words": max_words, "min_count": min_count,
                "max_vocab": max_vocab, "classes": list(classes) if classes is not None else None,
                "vocab": reused.fingerprint() if reused is not None else None}
    fingerprint = _fingerprint(clips, settings)
    work = _WorkFolder(out.parent / f".{out.name}.import", fingerprint, (len(clips), frames, size, size, 3))
    resumed = len(work.status)
    tasks = []
    for file, image, positions in _groups(clips):
        todo = [p for p in positions if p not in work.status]
        if todo:
            tasks.append((file, image, [clips[p].span() for p in todo], todo))
    with tqdm(total=len(clips), initial=resumed, unit="clip", desc=f"import {source}", disable=not progress) as bar:
        try:
            _run_groups(tasks, frames, size, workers, work, bar)
        finally:
            work.save()

    kept = [p for p in range(len(clips)) if work.status[p] == "ok"]
    skipped = [p for p in range(len(clips)) if work.status[p] != "ok"]
    reasons: dict[str, int] = {}
    for p in skipped:
        kind = work.status[p].split(" (")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    if not kept:
        examples = "; ".join(f"{clips[p].file}: {work.status[p]}" for p in skipped[:3])
        shutil.rmtree(work.path, ignore_errors=True)
        raise ValueError(f"nothing could be read: all {len(clips)} clips were skipped ({examples})")
    if reused is None:
        train = [clips[p].narration for p in kept if clips[p].split == "train"]
        if not train:
            raise ValueError("no train clip to build a vocabulary from: pass the pretraining vocabulary (--vocab)")
        reused = Vocabulary.build(train, min_count=min_count, max_size=max_vocab or None)

    tmp = partial_folder(out)
    try:
        if skipped:
            stored = np.lib.format.open_memmap(tmp / "frames.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(kept), frames, size, size, 3))
            step = max(1, (64 << 20) // max(1, work.frames[0].nbytes))
            for begin in range(0, len(kept), step):
                stored[begin : begin + step] = work.frames[kept[begin : begin + step]]
            stored.flush()
            del stored
        else:
            work.frames.flush()
            os.replace(work.path / "frames.npy", tmp / "frames.npy")
        sources: dict[str, int] = {}
        with open(tmp / "meta.jsonl", "w") as handle:
            for index, p in enumerate(kept):
                clip = clips[p]
                row: dict[str, Any] = {
                    "index": index, "split": clip.split, "narration": clip.narration,
                    "video": sources.setdefault(clip.source or clip.file, len(sources)),
                    "file": clip.file, "start": clip.start, "end": clip.end,
                }
                for name in ("caption", "captions", "action", "action_name"):
                    if getattr(clip, name) is not None:
                        row[name] = getattr(clip, name)
                handle.write(json.dumps(row, sort_keys=True) + "\n")
        with open(tmp / SKIPPED_FILE, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["listed_at", "file", "start", "end", "reason"])
            for p in skipped:
                clip = clips[p]
                writer.writerow([clip.line, clip.file, clip.start, clip.end, work.status[p]])
        params = {**settings, "clips": len(kept), "skipped": len(skipped), "fingerprint": fingerprint}
        params.pop("vocab")
        (tmp / "params.json").write_text(json.dumps(params, sort_keys=True, indent=2) + "\n")
        reused.save(tmp / "vocab.json")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(work.path, ignore_errors=True)
    return ImportResult(out=out, imported=len(kept), skipped=len(skipped), seconds=time.monotonic() - started,
                        skipped_reasons=reasons)
