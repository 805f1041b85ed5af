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

Formats (nothing is downloaded; point the importers at files you have): :func:`read_manifest`
reads a CSV or JSONL with ``video``, ``start``, ``end``, ``text`` and optional ``split`` /
``caption`` (the HowTo100M / WebVid shape); :mod:`fgmm_lib.data.datasets` reads the standard
downstream sets (UCF101, HMDB51, MSR-VTT, YouCook2, Flickr30k / COCO).
"""

from __future__ import annotations

import csv
import difflib
import functools
import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fgmm_lib.data.dataset import DATASET_FILES, check_dataset_target, jsonl_rows, text_lines, vocab_file
from fgmm_lib.data.video_io import decode_into, read_clips
from fgmm_lib.data.vocab import Vocabulary, split_words
from fgmm_lib.io import init_worker, output_lock, partial_folder, replace_folder, stop_processes, write_atomic

SPLITS = ("train", "val", "test")
#: A manifest's columns (CSV) or keys (JSONL): the first four are required.
MANIFEST_FIELDS = ("video", "start", "end", "text", "split", "caption")
SKIPPED_FILE = "skipped.csv"
#: Bounds of an import's clip shape: frames per clip, and a frame's side in pixels.
FRAMES_RANGE = (1, 256)
SIZE_RANGE = (8, 1024)
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


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, for error messages: ``a text``, ``a list``, ``an object``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def text_field(value: Any, where: str, name: str) -> str:
    """The words of the text field ``name`` (:func:`normalise_text`); a value that is not a text, or
    has no words, raises ValueError naming ``where`` and the field."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a text, got {json_type(value)} ({value!r:.60})")
    text = normalise_text(value) if value is not None else ""
    if not text:
        raise ValueError(f"{where}: field {name!r} has no words ({value!r})")
    return text


def split_field(value: Any, where: str, aliases: dict[str, str] | None = None) -> str:
    """``train``, ``val`` or ``test`` (case and surrounding spaces ignored; ``aliases`` map a set's own names)."""
    split = str(value).strip().lower() if isinstance(value, str) else None
    split = (aliases or {}).get(split, split)
    if split not in SPLITS:
        raise ValueError(f"{where}: field 'split' must be one of {', '.join(SPLITS)}, got {value!r}")
    return split


def seconds_field(value: Any, where: str, name: str) -> float:
    """A non-negative finite number of seconds: a JSON number, or a text that holds one (CSV)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {name!r} must be a number of seconds, got {json_type(value)} "
                         f"({value!r:.60})") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: field {name!r} must be a non-negative finite number of seconds, got {value!r}")
    return number


# --------------------------------------------------------------------------------------------
# Manifests (HowTo100M / WebVid shape)
# --------------------------------------------------------------------------------------------


def table_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV / TSV (with a header line) or JSONL file; blank lines are skipped.

    The text must be UTF-8 (a byte order mark, as Excel writes, is dropped): other bytes raise
    ValueError naming the file and the line, as does a CSV row with more fields than its header (a
    text holding an unquoted delimiter) and a header that names a column twice. A row with fewer
    fields than the header lacks the last ones (None)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from jsonl_rows(path)
        return
    if suffix not in (".csv", ".tsv"):
        raise ValueError(f"{path}: a table must be .csv, .tsv or .jsonl")
    delimiter = "\t" if suffix == ".tsv" else ","
    reader = csv.reader((line for _, line in text_lines(path)), delimiter=delimiter)
    header = [name.strip() for name in next(reader, [])]
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise ValueError(f"{path}, line 1: the header names column(s) {', '.join(map(repr, twice))} more than once")
    for row in reader:
        if not any(value.strip() for value in row):
            continue
        if len(row) > len(header):
            raise ValueError(
                f"{path}, line {reader.line_num}: {len(row)} fields, but the header has {len(header)} "
                f"({', '.join(header)}): quote a text that holds {delimiter!r} (\"the cat, sat on the mat\")")
        yield reader.line_num, {name: (row[i] if i < len(row) else None) for i, name in enumerate(header)}


def require_fields(row: dict[str, Any], names: Sequence[str], where: str) -> None:
    """ValueError naming ``where`` and the first of ``names`` that ``row`` lacks (or holds empty)."""
    for name in names:
        if row.get(name) is None or (isinstance(row[name], str) and not row[name].strip()):
            raise ValueError(f"{where}: missing field {name!r}")


def _check_fields(names: Iterable[str], where: str, ignored: set[str]) -> None:
    """An unknown field that looks like a manifest field the row lacks (``spilt``, ``Split``,
    ``captoin``) raises ValueError naming it; other unknown fields are added to ``ignored``."""
    names = set(names)
    unknown = sorted(names - set(MANIFEST_FIELDS))
    mistaken = {}
    for name in unknown:
        near = difflib.get_close_matches(name.strip().lower(), MANIFEST_FIELDS, n=1, cutoff=0.75)
        if near and near[0] not in names:
            mistaken[name] = near[0]
    if mistaken:
        raise ValueError(f"{where}: unknown column(s) " + ", ".join(
            f"{name!r} (did you mean {known!r}?)" for name, known in mistaken.items()) +
            f"; a manifest's columns are {', '.join(MANIFEST_FIELDS)}")
    ignored.update(unknown)


def read_manifest(path: str | Path) -> list[Clip]:
    """Clips of a CSV / JSONL manifest: ``video`` (a path, relative to the manifest's folder),
    ``start`` and ``end`` (seconds), ``text`` (the narration), and optional ``split`` (default
    train) and ``caption`` (a clean caption for retrieval). Bad rows raise ValueError naming the
    file, the line and the field (a JSON value of the wrong type too: ``"start": true``).

    An unknown column that looks like a missing manifest field (``spilt``, ``Split``,
    ``captoin``) is an error; other unknown columns are ignored with a warning. A row that repeats
    an earlier one exactly is imported once, with a warning; the same span of one video in two
    splits is an error naming both lines (it would leak test clips into pretraining)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    clips: list[Clip] = []
    checked: set[frozenset[str]] = set()
    ignored: set[str] = set()
    spans: dict[tuple[str, float, float], dict[str, int]] = {}  # span -> split -> first line
    rows: set[tuple[Any, ...]] = set()
    repeated: list[int] = []
    for number, row in table_rows(path):
        where = f"{path}, line {number}"
        if frozenset(row) not in checked:
            _check_fields(row, where if path.suffix.lower() in (".jsonl", ".json") else f"{path}, line 1", ignored)
            checked.add(frozenset(row))
        require_fields(row, MANIFEST_FIELDS[:4], where)
        start = seconds_field(row["start"], where, "start")
        end = seconds_field(row["end"], where, "end")
        if end <= start:
            raise ValueError(f"{where}: field 'end' ({end}) must be greater than 'start' ({start})")
        if not isinstance(row["video"], str):
            raise ValueError(f"{where}: field 'video' must be a path (a text), got {json_type(row['video'])}")
        video = Path(row["video"].strip())
        video = Path(os.path.normpath(video if video.is_absolute() else path.parent / video))
        caption = row.get("caption")
        clip = Clip(
            file=str(video), start=start, end=end, narration=text_field(row["text"], where, "text"),
            split=split_field(row.get("split") or "train", where),
            caption=text_field(caption, where, "caption") if caption not in (None, "") else None,
            line=f"{path.name}:{number}",
        )
        same = (clip.file, start, end, clip.split, clip.narration, clip.caption)
        if same in rows:
            repeated.append(number)
            continue
        rows.add(same)
        lines = spans.setdefault((clip.file, start, end), {})
        lines.setdefault(clip.split, number)
        if len(lines) > 1:
            (first, first_line), (second, second_line) = sorted(lines.items(), key=lambda item: item[1])[:2]
            raise ValueError(f"{path}: lines {first_line} and {second_line} list the same span of {row['video']} "
                             f"({start:g}-{end:g} s) in the {first} and the {second} split: a span belongs to "
                             f"one split (else test clips leak into pretraining)")
        clips.append(clip)
    if not clips:
        raise ValueError(f"{path}: the manifest lists no clips")
    if ignored:
        warnings.warn(f"{path}: column(s) {', '.join(map(repr, sorted(ignored)))} are not manifest columns "
                      f"({', '.join(MANIFEST_FIELDS)}) and are ignored", stacklevel=2)
    if repeated:
        shown = ", ".join(map(str, repeated[:5])) + (", ..." if len(repeated) > 5 else "")
        warnings.warn(f"{path}: {len(repeated)} row(s) repeat an earlier row exactly and are imported once "
                      f"(line(s) {shown})", stacklevel=2)
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

    def forget_changed(self, files: Sequence[str], stamps: dict[str, list[int] | None]) -> None:
        """Forget the clips (``files[position]``) whose file changed since it was decoded (its
        :func:`_stamp` differs from the one recorded then), so that they are decoded again; then
        record ``stamps``, taken before this run decodes anything."""
        recorded = self.path / "stamps.json"
        old = json.loads(recorded.read_text()) if recorded.is_file() else {}
        changed = [p for p in self.status if old.get(files[p], "unknown") != stamps.get(files[p])]
        if changed:
            for p in changed:
                del self.status[p]
            line = json.dumps({str(k): v for k, v in self.status.items()}) + "\n"
            write_atomic(self.path / "done.jsonl", lambda temporary: temporary.write_text(line))
        write_atomic(recorded, lambda temporary: temporary.write_text(json.dumps(stamps) + "\n"))

    def put(self, position: int, result: np.ndarray | str) -> None:
        """Record a decoded clip (its frames) or why it was skipped (a string)."""
        if not isinstance(result, str):
            self.frames[position] = result
        self.mark(position, "ok" if not isinstance(result, str) else result)

    def mark(self, position: int, status: str) -> None:
        """Record the status of a clip whose frames (if ``status`` is ``"ok"``) are already in ``frames.npy``."""
        self._pending[position] = status
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
    if workers <= 1:
        for file, image, spans, positions in tasks:
            for position, result in zip(positions, read_clips(file, image, spans, frames, size)):
                work.put(position, result)
            bar.update(len(positions))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # The workers ignore Ctrl-C and die with this process, however it dies (init_worker). When the
    # import stops (Ctrl-C, SIGTERM, an error), they are ended at once rather than waited for: the
    # clips they were decoding are not recorded as done, so a rerun decodes them again. A worker writes
    # its frames into the work folder's frames.npy itself and sends back only their statuses, a message of
    # a few hundred bytes that reaches the pipe in one write. (Frames sent through the pipe took long
    # to write, and a worker ended mid-write left half a message that the pool's reader thread then
    # waited for forever, which hung the interpreter's exit.)
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(os.getpid(),))
    try:
        frames_file = work.path / "frames.npy"
        futures = {pool.submit(decode_into, frames_file, positions, file, image, spans, frames, size): positions
                   for file, image, spans, positions in tasks}
        for future in as_completed(futures):
            positions = futures[future]
            for position, status in zip(positions, future.result()):
                work.mark(position, status)
            bar.update(len(positions))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_processes(set(multiprocessing.active_children()) - before)
        raise
    pool.shutdown()


def _check_size(name: str, value: int, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def _vocabulary(narrations: list[str], min_count: int, max_vocab: int, which: str) -> Vocabulary:
    """The vocabulary of the train ``narrations``; ValueError when there are none, or when
    ``min_count`` leaves no word (naming --min-count and the most frequent word's count)."""
    if not narrations:
        raise ValueError(f"no train clip {which} to build a vocabulary from: list train clips, "
                         f"or pass the pretraining vocabulary (--vocab)")
    vocab = Vocabulary.build(narrations, min_count=min_count, max_size=max_vocab or None)
    if len(vocab) <= 2:
        counts = Counter(word for text in narrations for word in split_words(text))
        word, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
        raise ValueError(f"the vocabulary would hold no word: --min-count {min_count} keeps none of the words of the "
                         f"{len(narrations)} train narrations {which} (the most frequent, {word!r}, is seen {count} "
                         f"time(s)); lower --min-count")
    return vocab


def _stamp(file: str) -> list[int] | None:
    """A file's size and modification time (ns), or None where it is missing: a changed stamp
    makes a resumed import decode the file again."""
    try:
        stat = os.stat(file)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def work_folder(out: str | Path) -> Path:
    """The work folder of an import into ``out``: ``.NAME.import`` beside it, kept until the import ends."""
    out = Path(out)
    return out.parent / f".{out.name}.import"


def _one_writer(function: Any) -> Any:
    """Run :func:`import_clips` holding the locks of its ``out`` and of its work folder
    (:func:`fgmm_lib.io.output_lock`): a second import, or any writer of ``out``, is refused."""
    @functools.wraps(function)
    def locked(clips: Sequence[Clip], out: str | Path, *args: Any, **kwargs: Any) -> Any:
        with output_lock(out), output_lock(work_folder(out), "import work folder"):
            return function(clips, out, *args, **kwargs)

    return locked


@_one_writer
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
    frames = _check_size("frames", frames, *FRAMES_RANGE)
    size = _check_size("size", size, *SIZE_RANGE)
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
    if reused is None:  # refused before any decoding; checked again on the clips that could be read
        _vocabulary([clip.narration for clip in clips if clip.split == "train"], min_count, max_vocab, "listed")
    check_dataset_target(out, (*DATASET_FILES, SKIPPED_FILE))
    out.parent.mkdir(parents=True, exist_ok=True)

    clips = _ordered(clips)
    settings = {"source": source, "frames": frames, "size": size, "max_words": max_words, "min_count": min_count,
                "max_vocab": max_vocab, "classes": list(classes) if classes is not None else None,
                "vocab": reused.fingerprint() if reused is not None else None}
    fingerprint = _fingerprint(clips, settings)
    work = _WorkFolder(out.parent / f".{out.name}.import", fingerprint, (len(clips), frames, size, size, 3))
    work.forget_changed([clip.file for clip in clips], {file: _stamp(file) for file in {clip.file for clip in clips}})
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
        try:
            reused = _vocabulary([clips[p].narration for p in kept if clips[p].split == "train"], min_count,
                                 max_vocab, "that could be read")
        except ValueError as error:  # a rerun would fail the same way: the decoded clips are removed
            shutil.rmtree(work.path, ignore_errors=True)
            train = [p for p in skipped if clips[p].split == "train"]
            examples = "; ".join(f"{clips[p].file}: {work.status[p]}" for p in train[:3])
            skipped_train = f" ({len(train)} train clips skipped: {examples})" if train else ""
            raise ValueError(f"{error}{skipped_train}") from None

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
