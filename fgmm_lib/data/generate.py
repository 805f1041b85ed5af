"""Narrated Digits generator: the generated narrated-video data of the study (docs/study.md section 4).

A clip is ``frames`` frames of a ``size`` x ``size`` black canvas on which coloured handwritten
digits (scikit-learn's bundled 8x8 digits, upscaled) move. One of them, the *actor*, performs one of
:data:`ACTIONS`; its clean caption says so ("the red seven moves left"). Four knobs model uncurated
narrated video:

- ``distractors``: other digits in the clip (different colour or digit) that the narration never
  mentions;
- ``filler_words``: ASR-like words ("okay", "um", ...) inserted into the narration;
- ``misaligned_frames``: one contiguous stretch of frames replaced by an unrelated scene;
- ``mismatched_narration``: the narration describes a neighbouring clip of the same source video.

Consecutive clips form a source video: they share the actor (digit, colour and glyph) and the
distractor digits, while each clip draws its own action, positions and noise. All clips of a video
belong to the same split, and the splits use disjoint glyphs (a fixed permutation of
``load_digits``, independent of the seed).

Random draws come from separate streams (split, actor, distractors, misaligned frames, filler
words, mismatched narration), so changing one knob leaves everything the other knobs control
unchanged: the frames do not depend on ``filler_words`` or ``mismatched_narration``, and the actor
of every clip does not depend on ``distractors`` or ``misaligned_frames``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from fgmm_lib.config import config_from_dict, field_types
from fgmm_lib.data.dataset import ACTIONS, COLOURS, DIGIT_WORDS, SPLITS, check_dataset_target, vocab_file
from fgmm_lib.data.vocab import Vocabulary
from fgmm_lib.io import partial_folder, replace_folder

KNOBS = ("distractors", "filler_words", "misaligned_frames", "mismatched_narration")

#: RGB (0..255) of each entry of :data:`COLOURS`; every colour has a channel at 255.
COLOUR_RGB = np.array(
    [
        [255, 40, 40],  # red
        [40, 255, 40],  # green
        [60, 110, 255],  # blue
        [255, 255, 0],  # yellow
        [255, 0, 255],  # magenta
        [0, 255, 255],  # cyan
        [255, 140, 0],  # orange
        [255, 255, 255],  # white
    ],
    dtype=np.float32,
)

#: Single-word ASR-like fillers; none of them occurs in a clean caption.
FILLER_WORDS = ("okay", "so", "um", "uh", "now", "like", "well", "yeah", "basically", "actually", "alright")

#: Seed of the fixed glyph permutation (independent of ``GenerationConfig.seed``).
GLYPH_SPLIT_SEED = 20211223
#: Fractions of the 1,797 glyphs reserved for the validation and test splits.
GLYPH_SPLIT_FRACTIONS = {"val": 0.1, "test": 0.2}

GLYPH_SCALE = 11.0 / 32.0  # side of an upscaled glyph, as a fraction of the canvas side
MOVE_DISTANCE = 0.375  # distance travelled by "moves ...", as a fraction of the canvas side
SCALE_RANGE = (0.6, 1.4)  # glyph scale at the start / end of "grows" (reversed for "shrinks")
#: The largest glyph_scale whose every action keeps the digit on the canvas (moving, grown or rotated).
MAX_GLYPH_SCALE = min(1.0 - MOVE_DISTANCE, 1.0 / SCALE_RANGE[1], 1.0 / math.sqrt(2.0))
ROTATION_DEGREES = 135.0  # total turn of "rotates" (direction drawn per clip)
BLINK_DIM = 0.25  # intensity of the "off" frames of "blinks"
PLACEMENT_CANDIDATES = 8  # random starts tried per distractor; the one farthest from the other digits wins
CAPTION_MAX_WORDS = 5  # "the red seven moves left"
MIN_SIZE = 16  # smallest canvas on which a glyph stays legible
MIN_FRAMES = 2  # an action needs at least two frames to be seen
_STREAMS = ("split", "actor", "distractor", "misaligned", "filler", "mismatch")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class GenerationConfig:
    """Parameters of a Narrated Digits dataset; validated on construction."""

    clips: int = field(default=2000, metadata=_help("total number of clips over all splits"))
    seed: int = field(default=0, metadata=_help("random seed; the same config gives the same bytes"))
    frames: int = field(default=8, metadata=_help("frames per clip (T)"))
    size: int = field(default=32, metadata=_help("canvas height = width in pixels"))
    clips_per_video: int = field(
        default=4,
        metadata=_help("consecutive clips that form one source video (temporal neighbours, for MIL-NCE)"),
    )
    val_fraction: float = field(default=0.1, metadata=_help("fraction of source videos in the validation split"))
    test_fraction: float = field(default=0.2, metadata=_help("fraction of source videos in the test split"))
    max_words: int = field(default=16, metadata=_help("narrations are padded / truncated to this many tokens (L)"))
    distractors: int = field(
        default=1, metadata=_help("extra digits per clip that the narration never mentions (spatial noise)")
    )
    filler_words: float = field(
        default=0.3,
        metadata=_help("probability of a filler word ('okay', 'so', 'um', ...) before each narration word"),
    )
    misaligned_frames: float = field(
        default=0.25,
        metadata=_help("fraction of each clip's frames (one contiguous stretch) replaced by unrelated content"),
    )
    mismatched_narration: float = field(
        default=0.1,
        metadata=_help("probability that a clip's narration describes another clip of the same video"),
    )
    actor_colours: int = field(
        default=len(COLOURS),
        metadata=_help("actors take one of the first this many colours (distractors any colour); fewer colours "
                       "leave more clips in a batch that only the digit tells apart"),
    )
    glyph_scale: float = field(
        default=GLYPH_SCALE,
        metadata=_help("side of a digit at scale 1, as a fraction of the canvas side"),
    )

    def __post_init__(self) -> None:
        for name, kind in field_types(GenerationConfig).items():
            value = getattr(self, name)
            if kind is int:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ValueError(f"GenerationConfig.{name} must be an integer, got {value!r}")
                object.__setattr__(self, name, int(value))
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                    raise ValueError(f"GenerationConfig.{name} must be a number, got {value!r}")
                if not math.isfinite(float(value)):
                    raise ValueError(f"GenerationConfig.{name} must be finite, got {value!r}")
                object.__setattr__(self, name, float(value))
        minimum = {"clips": 1, "frames": MIN_FRAMES, "size": MIN_SIZE, "clips_per_video": 1,
                   "max_words": CAPTION_MAX_WORDS, "seed": 0, "distractors": 0, "actor_colours": 1}
        reasons = {
            "frames": "an action needs at least two frames",
            "size": "a glyph needs at least this many pixels to stay legible",
            "max_words": "the longest clean caption has 5 words",
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if value < low:
                why = f" ({reasons[name]})" if name in reasons else ""
                raise ValueError(f"GenerationConfig.{name} must be >= {low}{why}, got {value}")
        for name in ("val_fraction", "test_fraction", "filler_words", "misaligned_frames", "mismatched_narration"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"GenerationConfig.{name} must lie in [0, 1], got {value}")
        counts = split_video_counts(self)
        for split, count in counts.items():
            if count < 1:
                raise ValueError(
                    f"GenerationConfig: the {split} split would be empty ({self.videos} source videos with "
                    f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}); "
                    "raise clips or change the fractions"
                )
        if self.actor_colours > len(COLOURS):
            raise ValueError(f"GenerationConfig.actor_colours must be <= {len(COLOURS)} (the colours the "
                             f"vocabulary names), got {self.actor_colours}")
        if not 0.0 < self.glyph_scale <= MAX_GLYPH_SCALE:
            raise ValueError(f"GenerationConfig.glyph_scale must lie in (0, {MAX_GLYPH_SCALE:g}] (a moving, growing "
                             f"or rotating digit must stay on the canvas), got {self.glyph_scale:g}")
        capacity = max_distractors(self.size, self.glyph_scale)
        if self.distractors > capacity:
            raise ValueError(
                f"GenerationConfig.distractors={self.distractors} is too many for a {self.size}x{self.size} canvas: "
                f"at most {capacity} (the actor and its distractors must fit in the canvas area)"
            )

    @property
    def videos(self) -> int:
        """Number of source videos (the last one may hold fewer clips)."""
        return -(-self.clips // self.clips_per_video)

    @property
    def misaligned_count(self) -> int:
        """Frames per clip replaced by unrelated content: misaligned_frames * frames rounded half up."""
        return int(math.floor(self.misaligned_frames * self.frames + 0.5))

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict (what params.json holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GenerationConfig":
        """Build a config from a mapping (params.yaml, params.json, CLI options): unknown keys raise a
        ValueError naming them; numbers given as strings are converted (see :mod:`fgmm_lib.config`)."""
        return config_from_dict(cls, values)


def split_video_counts(config: GenerationConfig) -> dict[str, int]:
    """Number of source videos in each split: val and test rounded, train the rest."""
    videos = -(-config.clips // config.clips_per_video)
    val = int(round(config.val_fraction * videos))
    test = int(round(config.test_fraction * videos))
    return {"train": videos - val - test, "val": val, "test": test}


def glyph_size(size: int, scale: float = GLYPH_SCALE) -> float:
    """Side in pixels of an upscaled glyph at scale 1 on a ``size`` canvas (``scale`` of its side)."""
    return scale * size


def max_distractors(size: int, scale: float = GLYPH_SCALE) -> int:
    """Most distractors a ``size`` canvas takes: all glyphs together cover at most the canvas area."""
    return max(0, int((size / glyph_size(size, scale)) ** 2) - 1)


def caption_for(colour: int, digit: int, action: int) -> str:
    """The clean caption of an actor, e.g. ``caption_for(0, 7, 0) == "the red seven moves left"``."""
    return f"the {COLOURS[colour]} {DIGIT_WORDS[digit]} {ACTIONS[action]}"


@functools.lru_cache(maxsize=1)
def load_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (images float32 [1797, 8, 8] in [0, 1], labels int64 [1797])."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    images.setflags(write=False)
    labels = digits.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=1)
def glyph_split() -> dict[str, np.ndarray]:
    """The fixed split of glyph indices: {"train", "val", "test"} -> sorted disjoint index arrays."""
    images, _ = load_glyphs()
    count = len(images)
    order = np.random.default_rng(GLYPH_SPLIT_SEED).permutation(count)
    n_test = int(round(GLYPH_SPLIT_FRACTIONS["test"] * count))
    n_val = int(round(GLYPH_SPLIT_FRACTIONS["val"] * count))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    result = {}
    for split in SPLITS:
        part = np.sort(parts[split])
        part.setflags(write=False)
        result[split] = part
    return result


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _glyph_table() -> tuple[np.ndarray, np.ndarray]:
    """Padded table [3 splits, 10 digits, longest] of glyph indices and its lengths [3, 10]."""
    _, labels = load_glyphs()
    pools = glyph_split()
    lists = [[pools[split][labels[pools[split]] == digit] for digit in range(10)] for split in SPLITS]
    longest = max(len(pool) for row in lists for pool in row)
    table = np.zeros((len(SPLITS), 10, longest), dtype=np.int64)
    lengths = np.zeros((len(SPLITS), 10), dtype=np.int64)
    for s, row in enumerate(lists):
        for digit, pool in enumerate(row):
            table[s, digit, : len(pool)] = pool
            lengths[s, digit] = len(pool)
    return table, lengths


def _pick_glyphs(split_ids: np.ndarray, digits: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """A glyph of each ``digits`` entry from its split's pool, chosen by ``uniform`` in [0, 1)."""
    table, lengths = _glyph_table()
    split_ids = np.broadcast_to(split_ids, digits.shape)
    slot = np.floor(uniform * lengths[split_ids, digits]).astype(np.int64)
    return table[split_ids, digits, slot]


def _other_combos(rng: np.random.Generator, avoid: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(colour, digit) pairs, uniform over the 79 pairs that differ from ``avoid`` (colour * 10 + digit)."""
    combo = rng.integers(0, len(COLOURS) * 10 - 1, size=shape)
    avoid = avoid.reshape(avoid.shape + (1,) * (len(shape) - avoid.ndim))
    combo = combo + (combo >= avoid)
    return combo // 10, combo % 10


def _trajectories(
    rng: np.random.Generator,
    actions: np.ndarray,
    frames: int,
    size: int,
    side: float,
    avoid: np.ndarray | None = None,
    candidates: int = 1,
) -> dict[str, np.ndarray]:
    """Per-frame centre, scale, angle and intensity (each float32 [n, m, T]) of objects ``actions`` [n, m].

    The start is drawn so that the glyph's square stays on the canvas for the whole clip. With
    ``candidates`` > 1, each object takes, of that many random starts, the one whose path keeps
    farthest (closest approach over all frames) from the centres ``avoid`` [n, a, T, 2] and from
    the objects placed before it in the same row, so that digits overlap less.
    """
    count, objects = actions.shape
    start_u = rng.random((count, objects, candidates, 2))
    direction = np.where(rng.random((count, objects)) < 0.5, -1.0, 1.0)
    phase = rng.integers(0, 2, size=(count, objects))

    progress = np.linspace(0.0, 1.0, frames)
    half = side / 2.0
    distance = MOVE_DISTANCE * size
    low, high = SCALE_RANGE
    name = np.asarray(ACTIONS)[actions]  # [n, m]

    shift_x = np.select([name == "moves left", name == "moves right"], [-distance, distance], 0.0)
    shift_y = np.select([name == "moves up", name == "moves down"], [-distance, distance], 0.0)
    reach = half * np.select([np.isin(name, ["grows", "shrinks"]), name == "rotates"], [high, math.sqrt(2.0)], 1.0)
    x_low, x_high = reach - np.minimum(shift_x, 0.0), size - reach - np.maximum(shift_x, 0.0)
    y_low, y_high = reach - np.minimum(shift_y, 0.0), size - reach - np.maximum(shift_y, 0.0)
    x0 = x_low[..., None] + start_u[..., 0] * (x_high - x_low)[..., None]  # [n, m, K]
    y0 = y_low[..., None] + start_u[..., 1] * (y_high - y_low)[..., None]
    paths = np.stack(
        [
            x0[..., None] + shift_x[..., None, None] * progress,
            y0[..., None] + shift_y[..., None, None] * progress,
        ],
        axis=-1,
    )  # [n, m, K, T, 2]

    placed = np.zeros((count, 0, frames, 2)) if avoid is None else np.asarray(avoid, dtype=np.float64)
    chosen = []
    rows = np.arange(count)
    for index in range(objects):
        if placed.shape[1] and candidates > 1:
            gaps = np.linalg.norm(paths[:, index, :, None] - placed[:, None], axis=-1)  # [n, K, a, T]
            best = gaps.min(axis=(2, 3)).argmax(axis=1)
        else:
            best = np.zeros(count, dtype=np.int64)
        path = paths[rows, index, best]  # [n, T, 2]
        chosen.append(path)
        placed = np.concatenate([placed, path[:, None]], axis=1)
    centre = np.stack(chosen, axis=1) if objects else np.zeros((count, 0, frames, 2))

    scale = np.ones((count, objects, frames))
    scale = np.where((name == "grows")[..., None], low + (high - low) * progress, scale)
    scale = np.where((name == "shrinks")[..., None], high - (high - low) * progress, scale)
    turn = direction[..., None] * math.radians(ROTATION_DEGREES) * progress
    angle = np.where((name == "rotates")[..., None], turn, 0.0)
    on = (np.arange(frames) + phase[..., None]) % 2 == 0
    intensity = np.where((name == "blinks")[..., None] & ~on, BLINK_DIM, 1.0)

    result = {"cx": centre[..., 0], "cy": centre[..., 1], "scale": scale, "angle": angle, "intensity": intensity}
    return {key: value.astype(np.float32) for key, value in result.items()}


def _insert_fillers(words: list[str], uniform: np.ndarray, choice: np.ndarray, probability: float) -> list[str]:
    """Insert a filler word before each word (the start and every gap) with ``probability``."""
    out: list[str] = []
    for slot, word in enumerate(words):
        if uniform[slot] < probability:
            out.append(FILLER_WORDS[choice[slot]])
        out.append(word)
    return out


@dataclass
class _Plan:
    """Every random draw of a dataset, before rendering; arrays over clips (C), object slots (O), frames (T)."""

    split: np.ndarray  # [C] split id
    video: np.ndarray  # [C]
    actor_digit: np.ndarray  # [C]
    actor_colour: np.ndarray  # [C]
    actor_glyph: np.ndarray  # [C]
    action: np.ndarray  # [C]
    distractor_glyphs: np.ndarray  # [C, distractors]
    glyph: np.ndarray  # [C, O, T] per-frame object of each slot (actor last)
    colour: np.ndarray  # [C, O, T]
    motion: dict[str, np.ndarray]  # each [C, O, T]
    visible: np.ndarray  # [C, T]
    captions: list[str]
    narrations: list[str]
    mismatched: np.ndarray  # [C]
    glyph_side: float  # pixels of a glyph at scale 1


def _plan(config: GenerationConfig) -> _Plan:
    streams = dict(
        zip(_STREAMS, (np.random.default_rng(child) for child in np.random.SeedSequence(config.seed).spawn(len(_STREAMS))))
    )
    clips, frames, size = config.clips, config.frames, config.size
    side = glyph_size(size, config.glyph_scale)
    videos = config.videos
    n_distractors = config.distractors
    slots = n_distractors + 1
    video = np.arange(clips) // config.clips_per_video

    # splits, per source video
    counts = split_video_counts(config)
    labels = np.concatenate([np.full(counts[split], s) for s, split in enumerate(SPLITS)])
    video_split = streams["split"].permutation(labels)
    split = video_split[video]

    # actor: identity per video, action and motion per clip
    rng = streams["actor"]
    actor_digit_v = rng.integers(0, 10, size=videos)
    actor_colour_v = rng.integers(0, config.actor_colours, size=videos)
    actor_glyph_v = _pick_glyphs(video_split, actor_digit_v, rng.random(videos))
    action = rng.integers(0, len(ACTIONS), size=clips)
    actor_motion = _trajectories(rng, action[:, None], frames, size, side)
    actor_combo = actor_colour_v * 10 + actor_digit_v

    # distractors: identities per video, actions and motion per clip
    rng = streams["distractor"]
    d_colour_v, d_digit_v = _other_combos(rng, actor_combo, (videos, n_distractors))
    d_glyph_v = _pick_glyphs(video_split[:, None], d_digit_v, rng.random((videos, n_distractors)))
    d_action = rng.integers(0, len(ACTIONS), size=(clips, n_distractors))
    actor_centres = np.stack([actor_motion["cx"], actor_motion["cy"]], axis=-1)  # [C, 1, T, 2]
    d_motion = _trajectories(rng, d_action, frames, size, side, avoid=actor_centres, candidates=PLACEMENT_CANDIDATES)

    # misaligned stretch: an unrelated scene with as many digits, none equal to the actor
    rng = streams["misaligned"]
    stretch = config.misaligned_count
    stretch_start = rng.integers(0, frames - stretch + 1, size=clips)
    u_colour, u_digit = _other_combos(rng, actor_combo[video], (clips, slots))
    u_glyph = _pick_glyphs(split[:, None], u_digit, rng.random((clips, slots)))
    u_action = rng.integers(0, len(ACTIONS), size=(clips, slots))
    u_motion = _trajectories(rng, u_action, frames, size, side, candidates=PLACEMENT_CANDIDATES)
    t = np.arange(frames)[None, :]
    misaligned = (t >= stretch_start[:, None]) & (t < stretch_start[:, None] + stretch)  # [C, T]

    # slots: distractors first, the actor last (drawn on top)
    def per_frame(values: np.ndarray) -> np.ndarray:  # [C, O] -> [C, O, T]
        return np.repeat(values[:, :, None], frames, axis=2)

    aligned_glyph = per_frame(np.concatenate([d_glyph_v[video], actor_glyph_v[video][:, None]], axis=1))
    aligned_colour = per_frame(np.concatenate([d_colour_v[video], actor_colour_v[video][:, None]], axis=1))
    cut = misaligned[:, None, :]
    glyph = np.where(cut, per_frame(u_glyph), aligned_glyph)
    colour = np.where(cut, per_frame(u_colour), aligned_colour)
    motion = {}
    for key in actor_motion:
        aligned = np.concatenate([d_motion[key], actor_motion[key]], axis=1)
        motion[key] = np.where(cut, u_motion[key], aligned)

    actor_digit, actor_colour = actor_digit_v[video], actor_colour_v[video]
    captions = [caption_for(c, d, a) for c, d, a in zip(actor_colour.tolist(), actor_digit.tolist(), action.tolist())]

    # mismatched narration: a neighbour of the same video (or any clip of the split) with another caption
    rng = streams["mismatch"]
    swap = rng.random(clips) < config.mismatched_narration
    pick = rng.random(clips)
    caption_array = np.asarray(captions, dtype=object)
    base = list(captions)
    mismatched = np.zeros(clips, dtype=bool)
    for i in np.flatnonzero(swap).tolist():
        own = captions[i]
        same_video = np.flatnonzero(video == video[i])
        pools = [
            [j for j in (i - 1, i + 1) if j in set(same_video.tolist())],
            same_video.tolist(),
            np.flatnonzero(split == split[i]).tolist(),
        ]
        for pool in pools:
            donors = [j for j in pool if caption_array[j] != own]
            if donors:
                base[i] = captions[donors[int(pick[i] * len(donors))]]
                mismatched[i] = True
                break

    rng = streams["filler"]
    filler_u = rng.random((clips, CAPTION_MAX_WORDS))
    filler_choice = rng.integers(0, len(FILLER_WORDS), size=(clips, CAPTION_MAX_WORDS))
    narrations = [
        " ".join(_insert_fillers(text.split(), filler_u[i], filler_choice[i], config.filler_words))
        for i, text in enumerate(base)
    ]

    return _Plan(
        split=split,
        video=video,
        actor_digit=actor_digit,
        actor_colour=actor_colour,
        actor_glyph=actor_glyph_v[video],
        action=action,
        distractor_glyphs=d_glyph_v[video],
        glyph=glyph,
        colour=colour,
        motion=motion,
        visible=~misaligned,
        captions=captions,
        narrations=narrations,
        mismatched=mismatched,
        glyph_side=side,
    )


@functools.lru_cache(maxsize=1)
def _padded_glyphs() -> np.ndarray:
    """Glyphs with a one-pixel zero border, flattened: float32 [1797 * 100]."""
    images, _ = load_glyphs()
    padded = np.zeros((len(images), 10, 10), dtype=np.float32)
    padded[:, 1:9, 1:9] = images
    return padded.reshape(-1)


def _render(
    glyph: np.ndarray, colour: np.ndarray, motion: Mapping[str, np.ndarray], size: int, side: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw object slots onto black canvases.

    glyph, colour and each motion entry are [C, O, T]; slots are composited in order (alpha
    blending, the glyph's bilinearly upscaled ink as alpha). Returns the canvas float32
    [C, T, S, S, 3] in 0..255 and the last slot's alpha float32 [C, T, S, S].
    """
    flat = _padded_glyphs()
    clips, slots, frames = glyph.shape
    centres = np.arange(size, dtype=np.float32) + 0.5
    canvas = np.zeros((clips, frames, size, size, 3), dtype=np.float32)
    side = np.float32(side)
    alpha = np.zeros((clips, frames, size, size), dtype=np.float32)
    for slot in range(slots):
        cos = np.cos(motion["angle"][:, slot])[..., None, None]
        sin = np.sin(motion["angle"][:, slot])[..., None, None]
        per_pixel = (np.float32(8.0) / (motion["scale"][:, slot] * side))[..., None, None]  # glyph px / canvas px
        dx = centres[None, None, None, :] - motion["cx"][:, slot][..., None, None]  # [C, T, 1, S]
        dy = centres[None, None, :, None] - motion["cy"][:, slot][..., None, None]  # [C, T, S, 1]
        # glyph coordinates of every canvas pixel centre, in the padded glyph's pixel-centre frame
        u = np.clip((cos * dx + sin * dy) * per_pixel + np.float32(4.5), 0.0, 9.0)
        v = np.clip((cos * dy - sin * dx) * per_pixel + np.float32(4.5), 0.0, 9.0)
        u0 = np.minimum(np.floor(u), np.float32(8.0))
        v0 = np.minimum(np.floor(v), np.float32(8.0))
        fu = u - u0
        fv = v - v0
        index = (v0 * np.float32(10.0) + u0).astype(np.int32) + (glyph[:, slot] * 100).astype(np.int32)[..., None, None]
        top = flat[index] + fu * (flat[index + 1] - flat[index])
        bottom = flat[index + 10] + fu * (flat[index + 11] - flat[index + 10])
        alpha = (top + fv * (bottom - top)) * motion["intensity"][:, slot][..., None, None]
        rgb = COLOUR_RGB[colour[:, slot]][:, :, None, None, :]  # [C, T, 1, 1, 3]
        canvas += alpha[..., None] * (rgb - canvas)
    return canvas, alpha


def _boxes(alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Tight box (x0, y0, x1, y1; exclusive ends) of the pixels an object lights in the uint8 frame.

    ``alpha`` [C, T, S, S], ``colour`` [C, T] colour ids; an object with no lit pixel gets zeros.
    """
    peak = COLOUR_RGB.max(axis=1)[colour][..., None, None]
    lit = np.rint(alpha * peak) > 0
    size = lit.shape[-1]
    rows = lit.any(axis=3)  # [C, T, S] over y
    cols = lit.any(axis=2)  # [C, T, S] over x
    boxes = np.stack(
        [cols.argmax(-1), rows.argmax(-1), size - cols[..., ::-1].argmax(-1), size - rows[..., ::-1].argmax(-1)],
        axis=-1,
    )
    return np.where(rows.any(-1)[..., None], boxes, 0).astype(np.int64)


def _render_clips(plan: _Plan, start: int, stop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [n, T, S, S, 3] and actor boxes int64 [n, T, 4] of clips ``start:stop`` of ``plan``."""
    motion = {key: value[start:stop] for key, value in plan.motion.items()}
    canvas, actor_alpha = _render(plan.glyph[start:stop], plan.colour[start:stop], motion, size, plan.glyph_side)
    frames = np.rint(np.minimum(canvas, 255.0)).astype(np.uint8)
    boxes = _boxes(actor_alpha, plan.colour[start:stop, -1])
    boxes[~plan.visible[start:stop]] = 0
    return frames, boxes


def generate_dataset(
    config: GenerationConfig, out: str | Path, vocab: str | Path | None = None, progress: bool = True
) -> Path:
    """Generate a Narrated Digits dataset into the folder ``out`` and return its path.

    Writes frames.npy (uint8 [clips, T, H, W, 3]), meta.jsonl (one row per clip), params.json
    (``config``) and vocab.json (built from the train narrations, or a copy of the vocabulary
    file ``vocab`` names). The folder is written next to ``out`` under a temporary name and renamed
    into place, so ``out`` is either the complete new dataset or untouched. An existing folder at
    ``out`` is replaced only when it is a dataset folder and nothing else (exactly
    :data:`~fgmm_lib.data.dataset.DATASET_FILES`); any other content makes it refuse, naming the folder.
    """
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
    out = Path(out)
    reused = Vocabulary.load(vocab_file(vocab)) if vocab is not None else None
    check_dataset_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    plan = _plan(config)
    clips, frames, size = config.clips, config.frames, config.size
    chunk = max(1, (1 << 20) // (frames * size * size))
    tmp = partial_folder(out)
    try:
        video_frames = np.lib.format.open_memmap(
            tmp / "frames.npy", mode="w+", dtype=np.uint8, shape=(clips, frames, size, size, 3)
        )
        boxes = np.zeros((clips, frames, 4), dtype=np.int64)
        with tqdm(total=clips, unit="clip", desc="Narrated Digits", disable=not progress) as bar:
            for start in range(0, clips, chunk):
                stop = min(clips, start + chunk)
                video_frames[start:stop], boxes[start:stop] = _render_clips(plan, start, stop, size)
                bar.update(stop - start)
        video_frames.flush()
        del video_frames

        with open(tmp / "meta.jsonl", "w") as handle:
            for i in range(clips):
                row = {
                    "index": i,
                    "video": int(plan.video[i]),
                    "split": SPLITS[plan.split[i]],
                    "narration": plan.narrations[i],
                    "caption": plan.captions[i],
                    "action": int(plan.action[i]),
                    "action_name": ACTIONS[plan.action[i]],
                    "digit": int(plan.actor_digit[i]),
                    "colour": int(plan.actor_colour[i]),
                    "colour_name": COLOURS[plan.actor_colour[i]],
                    "glyph": int(plan.actor_glyph[i]),
                    "boxes": boxes[i].tolist(),
                    "visible": plan.visible[i].tolist(),
                    "mismatched": bool(plan.mismatched[i]),
                    "distractor_glyphs": plan.distractor_glyphs[i].tolist(),
                }
                handle.write(json.dumps(row, sort_keys=True) + "\n")
        (tmp / "params.json").write_text(json.dumps(config.to_dict(), sort_keys=True, indent=2) + "\n")
        train = [text for text, s in zip(plan.narrations, plan.split) if SPLITS[s] == "train"]
        (reused if reused is not None else Vocabulary.build(train)).save(tmp / "vocab.json")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
