"""The dataset folder: its files, its parameters (:class:`DatasetParams`) and the :class:`NarratedDigits` reader.

A dataset folder holds ``frames.npy`` (uint8 ``[clips, T, H, W, 3]``, memory-mapped),
``meta.jsonl`` (one row per clip), ``params.json`` (how it was made; at least ``frames``,
``size`` and ``max_words``) and ``vocab.json`` (a :class:`fgmm_lib.data.vocab.Vocabulary`).
:mod:`fgmm_lib.data.generate` writes Narrated Digits folders; training and evaluation read any
folder through :class:`NarratedDigits`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from fgmm_lib.data.vocab import Vocabulary, split_words

#: The Narrated Digits label names: ``action``, ``colour`` and ``digit`` of meta.jsonl index them.
ACTIONS = (
    "moves left",
    "moves right",
    "moves up",
    "moves down",
    "grows",
    "shrinks",
    "rotates",
    "blinks",
)
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "val", "test")

#: Files of a dataset folder.
DATASET_FILES = ("frames.npy", "meta.jsonl", "params.json", "vocab.json")


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetParams:
    """What a reader needs from ``params.json``: clip shape and text length; every other key of the
    file (how the folder was made, e.g. a Narrated Digits ``GenerationConfig``) is kept in ``extra``."""

    frames: int
    size: int
    max_words: int
    clips: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "DatasetParams":
        """Read ``params.json``; a missing key or a non-positive integer raises ValueError naming the file."""
        try:
            values = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(values).__name__}")
        required = {}
        for key in ("frames", "size", "max_words", "clips"):
            value = values.get(key)
            if value is None and key == "clips":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{path}: {key!r} must be a positive integer, got {value!r}")
            required[key] = value
        extra = {key: value for key, value in values.items() if key not in required}
        return cls(**required, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The whole params.json content."""
        known = {"frames": self.frames, "size": self.size, "max_words": self.max_words}
        if self.clips is not None:
            known["clips"] = self.clips
        return {**self.extra, **known}


# --------------------------------------------------------------------------------------------

#: Keys every row of meta.jsonl has.
REQUIRED_META_KEYS = ("index", "split", "narration")
#: Keys a folder may have, in every row or in none; each evaluation task needs some of them.
OPTIONAL_META_KEYS = (
    "video", "caption", "captions", "action", "action_name", "boxes", "visible", "digit", "colour", "glyph",
)


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of a UTF-8 text file, line endings kept; a leading byte
    order mark (as Excel writes it) is dropped. Bytes that are not UTF-8 raise ValueError naming
    the file, the line and the column."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}, line {number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                                 f"{error.start + 1}); save the file as UTF-8") from None


def jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSON Lines file (UTF-8, with or without a
    byte order mark); a bad line raises ValueError naming the file and the line."""
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error})") from error
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: a row must be a JSON object, got {type(row).__name__}")
        yield number, row


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _row_problem(row: dict[str, Any], frames: int, classes: int | None = None) -> str | None:
    """What is wrong with one meta.jsonl row (None when nothing is), naming the field.

    The required keys must be there; an optional one is checked when the row has it. An action
    lies below ``classes`` (Narrated Digits rows, those with a digit: below the 8 actions)."""
    missing = [key for key in REQUIRED_META_KEYS if key not in row]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    if row["split"] not in SPLITS:
        return f"split {row['split']!r} is not one of {', '.join(SPLITS)} (lowercase)"
    for key in ("narration", "caption"):
        if key in row and (not isinstance(row[key], str) or not row[key].split()):
            return f"{key} must be a text with at least one word, got {row[key]!r}"
    if "captions" in row and (not isinstance(row["captions"], list) or not row["captions"]
                              or not all(isinstance(c, str) and c.split() for c in row["captions"])):
        return f"captions must be a non-empty list of texts, got {row['captions']!r}"
    for key, names in (("digit", DIGIT_WORDS), ("colour", COLOURS)):
        if key in row and (not _is_int(row[key]) or not 0 <= row[key] < len(names)):
            return f"{key} must be an integer in [0, {len(names)}), got {row[key]!r}"
    for key in ("index", "video", "action"):
        if key in row and (not _is_int(row[key]) or row[key] < 0):
            return f"{key} must be a non-negative integer, got {row[key]!r}"
    classes = len(ACTIONS) if classes is None and "digit" in row else classes
    if "action" in row and classes is not None and row["action"] >= classes:
        return f"action must be an integer in [0, {classes}), got {row['action']!r}"
    boxes = row.get("boxes", [[0, 0, 0, 0]] * frames)
    if (not isinstance(boxes, list) or len(boxes) != frames
            or not all(isinstance(box, list) and len(box) == 4
                       and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box) for box in boxes)):
        return f"boxes must be {frames} boxes (one per frame) of 4 numbers [x0, y0, x1, y1]"
    visible = row.get("visible", [True] * frames)
    if not isinstance(visible, list) or len(visible) != frames or not all(isinstance(v, bool) for v in visible):
        return f"visible must be {frames} booleans (one per frame)"
    if "distractor_glyphs" in row and not isinstance(row["distractor_glyphs"], list):
        return "distractor_glyphs must be a list"
    return None


def _read_meta(path: Path, frames: int, classes: int | None = None) -> list[dict[str, Any]]:
    """Rows of meta.jsonl, each checked; a bad row raises ValueError naming the file, line and field.
    An optional key must be in every row or in none."""
    rows, lines = [], []
    for number, row in jsonl_rows(path):
        problem = _row_problem(row, frames, classes)
        if problem:
            raise ValueError(f"{path}, line {number}: {problem}")
        rows.append(row)
        lines.append(number)
    for key in OPTIONAL_META_KEYS:
        has = [key in row for row in rows]
        if any(has) and not all(has):
            first = lines[has.index(not has[0])]
            raise ValueError(f"{path}, line {first}: key {key!r} is in some rows and not in others (all or none)")
    return rows


class NarratedDigits(torch.utils.data.Dataset):
    """A dataset folder (or one of its splits) as a torch Dataset: Narrated Digits or imported data.

    Every clip has a narration and a split; :attr:`fields` names the optional keys of
    :data:`OPTIONAL_META_KEYS` that the folder has. Where a clip has no caption, its caption
    tokens are its narration's; no action, digit or colour gives the label -1; no boxes give
    zero boxes, every frame visible; no ``video`` makes every clip its own source video.

    ``split`` is one of :data:`SPLITS`, or None for every clip. ``vocab`` defaults to the folder's
    vocab.json. ``neighbours`` sets the candidate narrations of MIL-NCE: K = 1 + 2 * neighbours
    (own narration, then those of the clips at offsets -1, +1, -2, +2, ... in the same video;
    missing neighbours repeat the own narration).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        vocab: Vocabulary | None = None,
        neighbours: int = 1,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
            raise ValueError(f"neighbours must be a non-negative integer, got {neighbours!r}")
        required = DATASET_FILES if vocab is None else tuple(f for f in DATASET_FILES if f != "vocab.json")
        for name in required:
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"{self.root / name} is missing: not a complete dataset folder")
        self.split = split
        self.neighbours = neighbours

        self.params = DatasetParams.load(self.root / "params.json")

        frames_path = self.root / "frames.npy"
        try:
            frames = np.load(frames_path, mmap_mode="r")
        except (ValueError, OSError) as error:
            raise ValueError(f"{frames_path}: cannot be read as a .npy array ({error})") from error
        expected = (self.params.frames, self.params.size, self.params.size, 3)
        if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[1:] != expected:
            raise ValueError(
                f"{frames_path}: expected uint8 [clips, {', '.join(map(str, expected))}] as params.json says, "
                f"got {frames.dtype} {list(frames.shape)}"
            )
        classes = self.params.extra.get("classes")
        rows = _read_meta(self.root / "meta.jsonl", self.params.frames,
                          len(classes) if isinstance(classes, list) else None)
        if self.params.clips is not None and self.params.clips != frames.shape[0]:
            raise ValueError(
                f"{self.root / 'params.json'} says clips={self.params.clips} but {frames_path} holds "
                f"{frames.shape[0]} clips: params.json does not describe this folder's data"
            )
        if len(rows) != frames.shape[0]:
            raise ValueError(
                f"{self.root / 'meta.jsonl'} has {len(rows)} rows but {frames_path} holds {frames.shape[0]} clips"
            )
        if [row["index"] for row in rows] != list(range(len(rows))):
            raise ValueError(f"{self.root / 'meta.jsonl'}: rows must be in index order 0..{len(rows) - 1}")
        self._frames: np.ndarray | None = frames
        self.vocab = vocab if vocab is not None else Vocabulary.load(self.root / "vocab.json")

        self.fields = frozenset(key for key in OPTIONAL_META_KEYS if rows and key in rows[0])
        selected = [row for row in rows if split is None or row["split"] == split]
        self.meta = pd.DataFrame(selected, columns=list(dict.fromkeys([*REQUIRED_META_KEYS, *(rows[0] if rows else ())])))
        if "video" not in self.fields:
            self.meta["video"] = self.meta["index"]
        caption_column = "caption" if "caption" in self.fields else "narration"
        self.indices = self.meta["index"].to_numpy(dtype=np.int64)
        length = self.params.max_words
        if selected:
            self._tokens, self._token_mask = (
                t.numpy() for t in self.vocab.encode_batch(self.meta["narration"].tolist(), length)
            )
            self._caption_tokens, self._caption_mask = (
                t.numpy() for t in self.vocab.encode_batch(self.meta[caption_column].tolist(), length)
            )
        else:
            self._tokens = self._caption_tokens = np.zeros((0, length), dtype=np.int64)
            self._token_mask = self._caption_mask = np.zeros((0, length), dtype=bool)
        frames_count = self.params.frames
        shape = (len(selected), frames_count)
        try:
            self._boxes = (np.asarray([row["boxes"] for row in selected], dtype=np.float32).reshape(*shape, 4)
                           if "boxes" in self.fields else np.zeros((*shape, 4), dtype=np.float32))
            self._visible = (np.asarray([row["visible"] for row in selected], dtype=bool).reshape(shape)
                             if "visible" in self.fields else np.ones(shape, dtype=bool))
        except ValueError as error:
            raise ValueError(f"{self.root / 'meta.jsonl'}: 'boxes' must be [{frames_count}, 4] and 'visible' "
                             f"[{frames_count}] per clip ({error})") from error
        self._labels = {
            key: (self.meta[key].to_numpy(dtype=np.int64) if key in self.fields or key == "index"
                  else np.full(len(selected), -1, dtype=np.int64))
            for key in ("action", "digit", "colour", "index")
        }
        self._candidates = self._candidate_positions()

    def _candidate_positions(self) -> np.ndarray:
        """[len, K] positions (in this split) of each clip's candidate narrations."""
        count = len(self.indices)
        position = np.arange(count)
        video = self.meta["video"].to_numpy(dtype=np.int64)
        offsets = [0]
        for step in range(1, self.neighbours + 1):
            offsets += [-step, step]
        columns = []
        for offset in offsets:
            target = position + offset
            inside = (target >= 0) & (target < count)
            target = np.where(inside, target, position)
            same = inside & (video[target] == video) & (self.indices[target] == self.indices + offset)
            columns.append(np.where(same, target, position))
        return np.stack(columns, axis=1) if count else np.zeros((0, len(offsets)), dtype=np.int64)

    @property
    def frames(self) -> np.ndarray:
        """The memory-mapped frames of the whole folder, uint8 [clips, T, H, W, 3]."""
        if self._frames is None:
            self._frames = np.load(self.root / "frames.npy", mmap_mode="r")
        return self._frames

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_frames"] = None  # reopened lazily: never pickle the memory map's contents
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def unknown_words(self, field: str = "narration") -> list[str]:
        """Words of this split's ``field`` texts ("narration" or "caption") that the vocabulary lacks
        (they are encoded as ``<unk>``), sorted."""
        known = set(self.vocab.words)
        return sorted({word for text in self.meta[field] for word in split_words(str(text))} - known)

    def get_batch(self, positions: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Items at ``positions`` (in this split) stacked along a new dimension 0."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        count = len(self)
        if positions.size and (positions.min() < -count or positions.max() >= count):
            raise IndexError(f"positions out of range for a dataset of {count} clips")
        positions = np.where(positions < 0, positions + count, positions)
        clips = np.asarray(self.frames[self.indices[positions]])  # [B, T, H, W, 3]
        video = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).to(torch.float32).div_(255.0).contiguous()
        candidates = self._candidates[positions]
        batch = {
            "video": video,
            "tokens": torch.from_numpy(self._tokens[positions]),
            "token_mask": torch.from_numpy(self._token_mask[positions]),
            "caption_tokens": torch.from_numpy(self._caption_tokens[positions]),
            "caption_mask": torch.from_numpy(self._caption_mask[positions]),
            "candidate_tokens": torch.from_numpy(self._tokens[candidates]),
            "candidate_mask": torch.from_numpy(self._token_mask[candidates]),
            "boxes": torch.from_numpy(self._boxes[positions]),
            "visible": torch.from_numpy(self._visible[positions]),
        }
        for key, values in self._labels.items():
            batch[key] = torch.from_numpy(values[positions])
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        if not isinstance(position, (int, np.integer)) or isinstance(position, bool):
            raise TypeError(f"index must be an integer, got {type(position).__name__}")
        if not -len(self) <= position < len(self):
            raise IndexError(f"index {position} out of range for a dataset of {len(self)} clips")
        return {key: value[0] for key, value in self.get_batch([position]).items()}


def vocab_file(vocab: str | Path) -> Path:
    path = Path(vocab)
    if path.is_dir():
        path = path / "vocab.json"
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary to reuse not found: {path}")
    return path


def check_dataset_target(out: Path, files: Sequence[str] = DATASET_FILES) -> None:
    """Refuse to replace anything but a dataset folder this module wrote: its four files (or the
    given ``files``) and nothing else."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path exists and is not a folder: {out}")
    if not out.is_dir():
        return
    entries = sorted(entry.name for entry in out.iterdir())
    if entries and entries != sorted(files):
        others = [name for name in entries if name not in files]
        what = f"it holds {', '.join(others[:5])}" if others else f"it lacks {', '.join(sorted(set(files) - set(entries)))}"
        raise FileExistsError(
            f"refusing to replace {out}: only a dataset folder holding exactly {', '.join(files)} is "
            f"replaced, and {what}; choose another --out or remove it yourself"
        )
