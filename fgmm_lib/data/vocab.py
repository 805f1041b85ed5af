"""The word-level :class:`Vocabulary` of a dataset folder and of a run (their ``vocab.json``).

Texts are lowercased and split on whitespace (:func:`split_words`). Id 0 pads and id 1 stands for
words outside the vocabulary. :meth:`Vocabulary.fingerprint` checks that two components share a
vocabulary. The dataset folder and its reader are in :mod:`fgmm_lib.data.dataset`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


def split_words(text: str) -> list[str]:
    return text.lower().split()


class Vocabulary:
    """Word-level tokenizer: lowercase, split on whitespace; id 0 pads, id 1 stands for unknown words."""

    PAD = 0
    UNK = 1
    PAD_WORD = "<pad>"
    UNK_WORD = "<unk>"

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:2] != [self.PAD_WORD, self.UNK_WORD]:
            raise ValueError(f"a vocabulary starts with {self.PAD_WORD!r}, {self.UNK_WORD!r}; got {words[:2]!r}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary lists each word once")
        self.words: list[str] = words
        self._ids = {word: i for i, word in enumerate(words)}

    @classmethod
    def build(cls, narrations: Iterable[str], min_count: int = 1, max_size: int | None = None) -> "Vocabulary":
        """Vocabulary of the words in ``narrations`` (sorted, after the two special words).

        Only words seen at least ``min_count`` times are kept; with ``max_size``, the vocabulary
        holds at most that many entries (special words included): the most frequent words win,
        ties going to the alphabetically first. Words left out are encoded as unknown.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must be >= 2 (the two special words), got {max_size}")
        counts: dict[str, int] = {}
        for text in narrations:
            for word in split_words(text):
                counts[word] = counts.get(word, 0) + 1
        for special in (cls.PAD_WORD, cls.UNK_WORD):
            counts.pop(special, None)
        kept = sorted((word for word, count in counts.items() if count >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[: max_size - 2]
        return cls([cls.PAD_WORD, cls.UNK_WORD, *sorted(kept)])

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read a vocab.json written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        try:
            content = json.loads(path.read_text())
            words = content["words"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a vocabulary file (expected {{\"words\": [...]}}): {error}") from error
        if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
            raise ValueError(f"{path}: 'words' must be a list of strings")
        try:
            return cls(words)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    def save(self, path: str | Path) -> None:
        """Write the word list as JSON (deterministic bytes)."""
        Path(path).write_text(json.dumps({"words": self.words}, sort_keys=True, indent=0) + "\n")

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, fingerprint={self.fingerprint()[:12]})"

    def fingerprint(self) -> str:
        """sha256 (hex) of the word list, to check that two components share a vocabulary."""
        return hashlib.sha256(json.dumps(self.words).encode("utf-8")).hexdigest()

    def _encode_ids(self, text: str, max_words: int) -> list[int]:
        words = split_words(text)
        if not words:
            raise ValueError(f"cannot encode {text!r}: the text has no words")
        return [self._ids.get(word, self.UNK) for word in words[:max_words]]

    def encode_batch(self, texts: Sequence[str], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode several texts: (ids int64 [n, max_words], mask bool [n, max_words], True = real word)."""
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        ids = np.full((len(texts), max_words), self.PAD, dtype=np.int64)
        for row, text in enumerate(texts):
            encoded = self._encode_ids(text, max_words)
            ids[row, : len(encoded)] = encoded
        ids_tensor = torch.from_numpy(ids)
        return ids_tensor, ids_tensor != self.PAD

    def encode(self, text: str, max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one text, truncated / padded to ``max_words``: (ids int64 [L], mask bool [L])."""
        ids, mask = self.encode_batch([text], max_words)
        return ids[0], mask[0]

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> list[str]:
        """Words of ``ids``, padding dropped."""
        values = ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else list(ids)
        out = []
        for value in values:
            if value == self.PAD:
                continue
            if not 0 <= value < len(self.words):
                raise ValueError(f"token id {value} is outside the vocabulary (size {len(self.words)})")
            out.append(self.words[value])
        return out
