"""Tests of fgmm_lib.data.generate and fgmm_lib.data.dataset: the Narrated Digits generator, the vocabulary and the Dataset."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fgmm_lib.data import generate
from fgmm_lib.data.dataset import ACTIONS, COLOURS, DATASET_FILES, DIGIT_WORDS, SPLITS, NarratedDigits
from fgmm_lib.data.generate import (
    FILLER_WORDS,
    KNOBS,
    GenerationConfig,
    _other_combos,
    _plan,
    _render_clips,
    generate_dataset,
    glyph_split,
    load_glyphs,
)
from fgmm_lib.data.vocab import Vocabulary

SMALL = dict(clips=40, frames=8, size=32, clips_per_video=4)


def make(root: Path, name: str, **overrides) -> Path:
    """Generate a small dataset into root/name."""
    return generate_dataset(GenerationConfig(**{**SMALL, **overrides}), root / name, progress=False)


def read_meta(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "meta.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("narrated_digits")


@pytest.fixture(scope="module")
def default_set(store) -> Path:
    return make(store, "default", seed=3)


@pytest.fixture(scope="module")
def clean_set(store) -> Path:
    return make(store, "clean", seed=5, distractors=0, misaligned_frames=0.0, filler_words=0.0, mismatched_narration=0.0)


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_same_bytes_and_another_seed_differs(store, default_set):
    again = make(store, "default_again", seed=3)
    for name in DATASET_FILES:
        assert (default_set / name).read_bytes() == (again / name).read_bytes(), name
    other = make(store, "other_seed", seed=4)
    assert (other / "frames.npy").read_bytes() != (default_set / "frames.npy").read_bytes()
    assert (other / "meta.jsonl").read_bytes() != (default_set / "meta.jsonl").read_bytes()


def test_params_json_round_trips(default_set):
    params = json.loads((default_set / "params.json").read_text())
    assert GenerationConfig.from_dict(params) == GenerationConfig(**SMALL, seed=3)


def test_frames_file_is_memory_mappable_uint8(default_set):
    frames = np.load(default_set / "frames.npy", mmap_mode="r")
    assert isinstance(frames, np.memmap)
    assert frames.dtype == np.uint8 and frames.shape == (40, 8, 32, 32, 3)
    assert frames.max() > 200  # drawn glyphs reach full intensity


def test_meta_rows_follow_the_contract(default_set):
    rows = read_meta(default_set)
    images, labels = load_glyphs()
    assert [row["index"] for row in rows] == list(range(40))
    for row in rows:
        assert row["caption"] == f"the {COLOURS[row['colour']]} {DIGIT_WORDS[row['digit']]} {ACTIONS[row['action']]}"
        assert row["action_name"] == ACTIONS[row["action"]] and row["colour_name"] == COLOURS[row["colour"]]
        assert labels[row["glyph"]] == row["digit"]
        assert row["video"] == row["index"] // SMALL["clips_per_video"]
        assert len(row["boxes"]) == 8 and all(len(box) == 4 for box in row["boxes"])
        assert len(row["visible"]) == 8 and len(row["distractor_glyphs"]) == 1
        for box, visible in zip(row["boxes"], row["visible"]):
            x0, y0, x1, y1 = box
            if visible:
                assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            else:
                assert box == [0, 0, 0, 0]


# ------------------------------------------------------------------ knobs


def test_every_knob_can_be_zero(clean_set):
    params = json.loads((clean_set / "params.json").read_text())
    assert all(params[knob] == 0 for knob in KNOBS)
    assert len(read_meta(clean_set)) == 40


def test_without_distractors_or_misalignment_every_lit_pixel_is_in_the_actor_box(clean_set):
    frames = np.load(clean_set / "frames.npy")
    for row in read_meta(clean_set):
        assert all(row["visible"])
        for t, (x0, y0, x1, y1) in enumerate(row["boxes"]):
            lit = frames[row["index"], t].max(axis=-1) > 0
            inside = np.zeros_like(lit)
            inside[y0:y1, x0:x1] = True
            assert not (lit & ~inside).any(), (row["index"], t)
            # the box is tight: lit pixels touch all four of its edges
            assert lit[y0, x0:x1].any() and lit[y1 - 1, x0:x1].any()
            assert lit[y0:y1, x0].any() and lit[y0:y1, x1 - 1].any()


def test_the_actor_box_follows_the_action(clean_set):
    boxes = {row["index"]: np.asarray(row["boxes"], dtype=float) for row in read_meta(clean_set)}
    rows = read_meta(clean_set)
    seen = set()
    for row in rows:
        box = boxes[row["index"]]
        centre_x, centre_y = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        name = row["action_name"]
        seen.add(name)
        if name == "moves left":
            assert centre_x[-1] < centre_x[0] - 6
        elif name == "moves right":
            assert centre_x[-1] > centre_x[0] + 6
        elif name == "moves up":
            assert centre_y[-1] < centre_y[0] - 6
        elif name == "moves down":
            assert centre_y[-1] > centre_y[0] + 6
        elif name == "grows":
            assert area[-1] > 2 * area[0]
        elif name == "shrinks":
            assert area[0] > 2 * area[-1]
    assert len(seen) >= 6


def test_blinking_actor_alternates_intensity(store):
    root = make(store, "blink", seed=1, clips=80, distractors=0, misaligned_frames=0.0)
    frames = np.load(root / "frames.npy").astype(float)
    blinkers = [row["index"] for row in read_meta(root) if row["action_name"] == "blinks"]
    assert blinkers
    for index in blinkers:
        brightness = frames[index].reshape(8, -1).sum(axis=1)
        ratio = brightness[1:] / brightness[:-1]
        assert np.all((ratio > 2.5) | (ratio < 0.4))  # on, off, on, ... or off, on, off, ...


def test_distractors_light_pixels_outside_the_actor_box_and_differ_from_the_actor(store):
    root = make(store, "two_distractors", seed=5, distractors=2, misaligned_frames=0.0)
    frames = np.load(root / "frames.npy")
    outside = 0
    _, labels = load_glyphs()
    rows = read_meta(root)
    for row in rows:
        assert len(row["distractor_glyphs"]) == 2
        for t, (x0, y0, x1, y1) in enumerate(row["boxes"]):
            lit = frames[row["index"], t].max(axis=-1) > 0
            lit[y0:y1, x0:x1] = False
            outside += int(lit.any())
    assert outside > 0.5 * 40 * 8
    # a distractor never shares the actor's (colour, digit)
    plan = _plan(GenerationConfig(**SMALL, seed=5, distractors=2, misaligned_frames=0.0))
    actor = plan.colour[:, -1:, :] * 10 + labels[plan.glyph[:, -1:, :]]
    others = plan.colour[:, :-1, :] * 10 + labels[plan.glyph[:, :-1, :]]
    assert (others != actor).all()
    # the same seed keeps the actors when only the number of distractors changes
    clean_rows = read_meta(make(store, "zero_distractors_seed5", seed=5, distractors=0, misaligned_frames=0.0))
    assert [r["caption"] for r in clean_rows] == [r["caption"] for r in rows]
    assert [r["boxes"] for r in clean_rows] == [r["boxes"] for r in rows]


def test_other_digits_are_uniform_over_the_pairs_that_differ_from_the_actor():
    rng = np.random.default_rng(0)
    avoid = np.arange(80)  # every (colour, digit) pair as colour * 10 + digit
    colour, digit = _other_combos(rng, avoid, (80, 4000))
    combo = colour * 10 + digit
    assert (combo != avoid[:, None]).all()
    counts = np.stack([np.bincount(row, minlength=80) for row in combo])
    counts[np.arange(80), avoid] = -1
    assert counts[counts >= 0].min() > 0.3 * 4000 / 79 and counts.max() < 1.7 * 4000 / 79


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_misaligned_frames_replace_one_contiguous_stretch(store, fraction):
    root = make(store, f"misaligned_{fraction}", seed=7, distractors=0, misaligned_frames=fraction)
    aligned = make(store, "misaligned_0", seed=7, distractors=0, misaligned_frames=0.0)
    expected = int(np.floor(fraction * 8 + 0.5))
    frames, reference = np.load(root / "frames.npy"), np.load(aligned / "frames.npy")
    reference_rows = read_meta(aligned)
    for row, ref_row in zip(read_meta(root), reference_rows):
        hidden = np.flatnonzero(~np.asarray(row["visible"]))
        assert len(hidden) == expected
        assert np.array_equal(hidden, np.arange(hidden[0], hidden[0] + expected))  # contiguous
        for t in range(8):
            if row["visible"][t]:
                assert np.array_equal(frames[row["index"], t], reference[row["index"], t])
                assert row["boxes"][t] == ref_row["boxes"][t]
            else:
                assert row["boxes"][t] == [0, 0, 0, 0]
                assert frames[row["index"], t].any()  # unrelated content, not an empty frame
                assert not np.array_equal(frames[row["index"], t], reference[row["index"], t])


def test_misaligned_frames_zero_keeps_every_frame_visible(clean_set):
    assert all(all(row["visible"]) for row in read_meta(clean_set))


def test_filler_words_zero_gives_the_caption(clean_set):
    for row in read_meta(clean_set):
        assert row["narration"] == row["caption"]
        assert not row["mismatched"]


def test_filler_words_one_fills_every_gap(store):
    root = make(store, "all_fillers", seed=2, filler_words=1.0, mismatched_narration=0.0)
    caption_words = {w for a in ACTIONS for w in a.split()} | set(COLOURS) | set(DIGIT_WORDS) | {"the"}
    assert not caption_words & set(FILLER_WORDS)
    for row in read_meta(root):
        words, caption = row["narration"].split(), row["caption"].split()
        assert len(words) == 2 * len(caption) > len(caption)
        assert words[1::2] == caption
        assert all(word in FILLER_WORDS for word in words[0::2])


def test_filler_words_between_zero_and_one_fill_some_gaps(store):
    rows = read_meta(make(store, "some_fillers", seed=2, clips=80, filler_words=0.3, mismatched_narration=0.0))
    inserted = sum(len(r["narration"].split()) - len(r["caption"].split()) for r in rows)
    gaps = sum(len(r["caption"].split()) for r in rows)
    assert 0.15 < inserted / gaps < 0.45
    for row in rows:  # removing the fillers gives back the caption
        assert [w for w in row["narration"].split() if w not in FILLER_WORDS] == row["caption"].split()


def test_narration_knobs_leave_the_frames_unchanged(store):
    plain = make(store, "narration_plain", seed=9, filler_words=0.0, mismatched_narration=0.0)
    noisy = make(store, "narration_noisy", seed=9, filler_words=0.8, mismatched_narration=0.7)
    assert (plain / "frames.npy").read_bytes() == (noisy / "frames.npy").read_bytes()
    assert [r["caption"] for r in read_meta(plain)] == [r["caption"] for r in read_meta(noisy)]


@pytest.mark.parametrize("clips_per_video", [4, 1])
def test_mismatched_narration_one_describes_another_clip(store, clips_per_video):
    root = make(
        store, f"all_mismatched_{clips_per_video}", seed=11, clips_per_video=clips_per_video,
        filler_words=0.0, mismatched_narration=1.0,
    )
    rows = read_meta(root)
    for row in rows:
        assert row["mismatched"]
        assert row["narration"] != row["caption"]
        donors = [other for other in rows if other["caption"] == row["narration"] and other["index"] != row["index"]]
        assert donors, row
        assert any(d["split"] == row["split"] for d in donors)
        if clips_per_video > 1:
            assert any(d["video"] == row["video"] for d in donors)


def test_mismatched_narration_zero_and_half(store, default_set, clean_set):
    assert not any(row["mismatched"] for row in read_meta(clean_set))
    rows = read_meta(make(store, "half_mismatched", seed=4, filler_words=0.0, mismatched_narration=0.5))
    swapped = [row for row in rows if row["mismatched"]]
    assert 10 <= len(swapped) <= 30
    for row in rows:
        assert (row["narration"] != row["caption"]) == row["mismatched"]


# ------------------------------------------------------------------ splits


def test_glyph_split_is_fixed_disjoint_and_covers_every_digit():
    split = glyph_split()
    images, labels = load_glyphs()
    sets = {name: set(split[name].tolist()) for name in SPLITS}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert set().union(*sets.values()) == set(range(len(images)))
    for name in SPLITS:
        assert set(labels[split[name]].tolist()) == set(range(10))


def test_splits_use_disjoint_glyphs_across_seeds(store, default_set):
    other = make(store, "split_seed_8", seed=8)
    used = {name: set() for name in SPLITS}
    for root in (default_set, other):
        rows = read_meta(root)
        for row in rows:
            used[row["split"]].update([row["glyph"], *row["distractor_glyphs"]])
            assert set([row["glyph"], *row["distractor_glyphs"]]) <= set(glyph_split()[row["split"]].tolist())
        by_video = {}
        for row in rows:
            by_video.setdefault(row["video"], set()).add(row["split"])
        assert all(len(splits) == 1 for splits in by_video.values())  # a source video stays in one split
        assert {row["split"] for row in rows} == set(SPLITS)
    assert not used["train"] & used["test"] and not used["train"] & used["val"] and not used["val"] & used["test"]


# ------------------------------------------------------------------ vocabulary


def test_vocabulary_encode_decode_and_round_trip(tmp_path):
    vocab = Vocabulary.build(["the red seven moves left", "okay the Blue two grows"])
    assert vocab.words[:2] == ["<pad>", "<unk>"]
    assert vocab.words[2:] == sorted(vocab.words[2:])
    ids, mask = vocab.encode("the red two flies", max_words=6)
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool and ids.shape == mask.shape == (6,)
    assert mask.tolist() == [True] * 4 + [False] * 2
    assert ids[3].item() == Vocabulary.UNK and ids[4:].tolist() == [Vocabulary.PAD] * 2
    assert vocab.decode(ids) == ["the", "red", "two", "<unk>"]
    truncated, truncated_mask = vocab.encode("the red seven moves left", max_words=3)
    assert vocab.decode(truncated) == ["the", "red", "seven"] and truncated_mask.all()
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.fingerprint() == vocab.fingerprint() and len(loaded) == len(vocab)
    assert Vocabulary.build(["the red seven"]).fingerprint() != vocab.fingerprint()
    with pytest.raises(ValueError, match="no words"):
        vocab.encode("   ", max_words=4)
    with pytest.raises(ValueError, match="max_words"):
        vocab.encode("the red", max_words=0)


def test_dataset_vocabulary_is_built_from_train_narrations(default_set):
    rows = read_meta(default_set)
    vocab = Vocabulary.load(default_set / "vocab.json")
    train_words = {w for row in rows if row["split"] == "train" for w in row["narration"].split()}
    assert set(vocab.words[2:]) == train_words


def test_generation_can_reuse_a_vocabulary(store, default_set):
    reused = generate_dataset(
        GenerationConfig(**SMALL, seed=21, filler_words=0.0), store / "reused_vocab",
        vocab=default_set / "vocab.json", progress=False,
    )
    assert (reused / "vocab.json").read_bytes() == (default_set / "vocab.json").read_bytes()
    shared = Vocabulary.load(default_set / "vocab.json")
    dataset = NarratedDigits(reused, "test", vocab=shared)
    assert dataset.vocab.fingerprint() == shared.fingerprint()
    with pytest.raises(FileNotFoundError, match="missing_vocab.json"):
        generate_dataset(GenerationConfig(**SMALL), store / "never", vocab=store / "missing_vocab.json", progress=False)
    assert not (store / "never").exists()


# ------------------------------------------------------------------ dataset


def test_dataset_items_have_the_documented_shapes_and_values(default_set):
    dataset = NarratedDigits(default_set, "train")
    frames = np.load(default_set / "frames.npy")
    rows = read_meta(default_set)
    assert len(dataset) == sum(row["split"] == "train" for row in rows) == len(dataset.meta)
    assert dataset.params.to_dict() == GenerationConfig(**SMALL, seed=3).to_dict()
    item = dataset[0]
    expected = {
        "video": ((3, 8, 32, 32), torch.float32), "tokens": ((16,), torch.int64), "token_mask": ((16,), torch.bool),
        "caption_tokens": ((16,), torch.int64), "caption_mask": ((16,), torch.bool),
        "candidate_tokens": ((3, 16), torch.int64), "candidate_mask": ((3, 16), torch.bool),
        "action": ((), torch.int64), "digit": ((), torch.int64), "colour": ((), torch.int64),
        "index": ((), torch.int64), "boxes": ((8, 4), torch.float32), "visible": ((8,), torch.bool),
    }
    assert {key: (tuple(value.shape), value.dtype) for key, value in item.items()} == expected
    for position in (0, len(dataset) - 1):
        item = dataset[position]
        index = int(dataset.indices[position])
        row = rows[index]
        assert item["index"].item() == index and row["split"] == "train"
        reference = torch.from_numpy(frames[index]).permute(3, 0, 1, 2).double() / 255
        assert torch.allclose(item["video"].double(), reference, atol=1e-6)
        assert 0.0 <= item["video"].min() and item["video"].max() <= 1.0
        assert dataset.vocab.decode(item["tokens"]) == row["narration"].split()
        assert dataset.vocab.decode(item["caption_tokens"]) == row["caption"].split()
        assert item["token_mask"].sum().item() == len(row["narration"].split())
        assert (item["action"].item(), item["digit"].item(), item["colour"].item()) == (
            row["action"], row["digit"], row["colour"]
        )
        assert item["boxes"].tolist() == row["boxes"] and item["visible"].tolist() == row["visible"]


def test_get_batch_equals_stacked_items(default_set):
    dataset = NarratedDigits(default_set, "train", neighbours=2)
    positions = [3, 0, len(dataset) - 1, 3, -1]
    batch = dataset.get_batch(positions)
    items = [dataset[p] for p in positions]
    for key, value in batch.items():
        assert value.shape[0] == len(positions)
        assert torch.equal(value, torch.stack([item[key] for item in items])), key
    with pytest.raises(IndexError):
        dataset.get_batch([len(dataset)])
    with pytest.raises(IndexError):
        dataset[len(dataset)]


@pytest.mark.parametrize("neighbours", [0, 1, 2])
def test_candidates_are_own_narration_then_neighbours_of_the_same_video(store, neighbours):
    root = make(store, "candidates", seed=13, clips=48, clips_per_video=4, filler_words=0.5)
    dataset = NarratedDigits(root, None, neighbours=neighbours)
    rows = read_meta(root)
    offsets = [0] + [sign * step for step in range(1, neighbours + 1) for sign in (-1, 1)]
    batch = dataset.get_batch(np.arange(len(dataset)))
    assert batch["candidate_tokens"].shape == (48, 1 + 2 * neighbours, 16)
    for position in range(len(dataset)):
        own = rows[position]
        for k, offset in enumerate(offsets):
            other = position + offset
            same_video = 0 <= other < 48 and rows[other]["video"] == own["video"]
            expected = rows[other if same_video else position]["narration"]
            ids, mask = dataset.vocab.encode(expected, 16)
            assert torch.equal(batch["candidate_tokens"][position, k], ids)
            assert torch.equal(batch["candidate_mask"][position, k], mask)


def test_dataset_over_a_split_keeps_neighbours_inside_the_split(default_set):
    for split in SPLITS:
        dataset = NarratedDigits(default_set, split)
        assert set(dataset.meta["split"]) == {split}
        candidates = dataset._candidates
        videos = dataset.meta["video"].to_numpy()
        assert (videos[candidates] == videos[:, None]).all()


def test_dataset_pickles_without_the_frames(default_set):
    dataset = NarratedDigits(default_set, "train")
    payload = pickle.dumps(dataset)
    assert len(payload) < np.load(default_set / "frames.npy", mmap_mode="r").nbytes
    restored = pickle.loads(payload)
    assert torch.equal(restored[1]["video"], dataset[1]["video"])


def test_dataloader_batches(default_set):
    loader = torch.utils.data.DataLoader(NarratedDigits(default_set, "train"), batch_size=5, shuffle=False)
    batch = next(iter(loader))
    assert batch["video"].shape == (5, 3, 8, 32, 32) and batch["candidate_tokens"].shape == (5, 3, 16)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("missing", DATASET_FILES)
def test_missing_dataset_file_is_named(store, default_set, missing):
    broken = store / f"without_{missing}"
    shutil.copytree(default_set, broken, dirs_exist_ok=True)
    (broken / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        NarratedDigits(broken, "train")


def test_missing_folder_and_bad_split_are_reported(store, default_set):
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        NarratedDigits(store / "no_such_folder")
    with pytest.raises(ValueError, match="split"):
        NarratedDigits(default_set, "training")
    with pytest.raises(ValueError, match="neighbours"):
        NarratedDigits(default_set, "train", neighbours=-1)


def test_mismatched_lengths_name_both_files(store, default_set):
    broken = store / "short_meta"
    shutil.copytree(default_set, broken, dirs_exist_ok=True)
    lines = (broken / "meta.jsonl").read_text().splitlines(keepends=True)
    (broken / "meta.jsonl").write_text("".join(lines[:-1]))
    with pytest.raises(ValueError, match=r"meta\.jsonl.*39.*frames\.npy.*40"):
        NarratedDigits(broken, "train")


def test_frames_that_disagree_with_params_are_reported(store, default_set):
    broken = store / "wrong_frames"
    shutil.copytree(default_set, broken, dirs_exist_ok=True)
    np.save(broken / "frames.npy", np.zeros((40, 8, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"frames\.npy"):
        NarratedDigits(broken, "train")


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match="'blur'"):
        GenerationConfig.from_dict({"clips": 10, "blur": 0.5})
    with pytest.raises(TypeError):
        GenerationConfig(blur=0.5)


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"size": 0}, "size"),
        ({"size": -32}, "size"),
        ({"clips": 0}, "clips"),
        ({"frames": 0}, "frames"),
        ({"max_words": 0}, "max_words"),
        ({"clips_per_video": 0}, "clips_per_video"),
        ({"distractors": -1}, "distractors"),
        ({"filler_words": 1.5}, "filler_words"),
        ({"misaligned_frames": -0.1}, "misaligned_frames"),
        ({"mismatched_narration": 2.0}, "mismatched_narration"),
        ({"val_fraction": 0.0}, "val"),
        ({"test_fraction": 0.95}, "split"),
        ({"clips": 2}, "split"),
        ({"distractors": 30}, "distractors"),
        ({"frames": 2.5}, "frames"),
        ({"seed": True}, "seed"),
        ({"actor_colours": 0}, "actor_colours"),
        ({"actor_colours": 9}, "actor_colours"),
        ({"glyph_scale": 0.0}, "glyph_scale"),
        ({"glyph_scale": 0.7}, "glyph_scale"),
        ({"glyph_scale": 0.6, "distractors": 2}, "distractors"),
    ],
)
def test_bad_parameters_are_named(overrides, name):
    with pytest.raises(ValueError, match=name):
        GenerationConfig(**{**SMALL, **overrides})


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"count": 0}
    render = _render_clips

    def failing_render(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:
            raise RuntimeError("disk full")
        return render(*args, **kwargs)

    monkeypatch.setattr(generate, "_render_clips", failing_render)
    config = GenerationConfig(**{**SMALL, "clips": 1200})  # several rendering chunks
    with pytest.raises(RuntimeError, match="disk full"):
        generate_dataset(config, tmp_path / "dataset", progress=False)
    assert calls["count"] == 2
    assert list(tmp_path.iterdir()) == []


def test_regeneration_replaces_a_dataset_but_never_another_folder(tmp_path):
    out = make(tmp_path, "dataset", seed=1)
    first = (out / "frames.npy").read_bytes()
    make(tmp_path, "dataset", seed=2)
    assert (out / "frames.npy").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes"):
        make(tmp_path, "notes")
    assert (precious / "todo.txt").read_text() == "keep me"


def test_a_failed_replacement_keeps_the_old_dataset(tmp_path, monkeypatch):
    out = make(tmp_path, "dataset", seed=1)
    before = {name: (out / name).read_bytes() for name in DATASET_FILES}
    monkeypatch.setattr(generate, "_render_clips", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        make(tmp_path, "dataset", seed=2)
    assert {name: (out / name).read_bytes() for name in DATASET_FILES} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_both_configs_read_values_the_same_way():
    """GenerationConfig and TrainConfig go through one converter: numbers as strings, unknown keys."""
    from fgmm_lib.runs.config import TrainConfig

    generation = GenerationConfig.from_dict({"clips": "40", "filler_words": "3e-1"})
    assert generation.clips == 40 and generation.filler_words == pytest.approx(0.3)
    train = TrainConfig.from_dict({"data": "d", "out": "o", "lr": "2e-3", "epochs": "3"})
    assert train.lr == pytest.approx(0.002) and train.epochs == 3
    for cls, values in ((GenerationConfig, {"clips": "many"}), (TrainConfig, {"data": "d", "out": "o", "lr": "fast"})):
        with pytest.raises(ValueError, match=f"{cls.__name__}\\."):
            cls.from_dict(values)
    for cls in (GenerationConfig, TrainConfig):
        with pytest.raises(ValueError, match=f"unknown {cls.__name__} key"):
            cls.from_dict({"data": "d", "out": "o", "colour_depth": 8})


def test_actor_colours_and_glyph_scale_shape_the_clips(store, clean_set):
    """Actors take only the first actor_colours colours; a larger glyph_scale draws larger digits that
    stay on the canvas whatever the action (the clean clips' actor boxes lie inside it)."""
    big = make(store, "big", seed=5, distractors=0, misaligned_frames=0.0, filler_words=0.0,
               mismatched_narration=0.0, actor_colours=2, glyph_scale=0.5)
    rows = read_meta(big)
    assert {row["colour"] for row in rows} <= {0, 1} and len({row["colour"] for row in rows}) == 2
    assert all(row["caption"].split()[1] in COLOURS[:2] for row in rows)

    def mean_area(folder):
        boxes = np.asarray([row["boxes"] for row in read_meta(folder)], dtype=float)
        assert (boxes >= 0).all() and (boxes <= SMALL["size"]).all()
        return float(((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).mean())

    assert mean_area(big) > 1.5 * mean_area(clean_set)
    params = json.loads((big / "params.json").read_text())
    assert params["actor_colours"] == 2 and params["glyph_scale"] == 0.5
