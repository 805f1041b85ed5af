"""Importing real data: tiny videos and images written here, decoded, imported, trained and evaluated on."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

av = pytest.importorskip("av")

from fgmm_lib.cli.main import main  # noqa: E402
from fgmm_lib.data import importers  # noqa: E402
from fgmm_lib.data.dataset import NarratedDigits  # noqa: E402
from fgmm_lib.data.video_io import read_clips, read_video_clips, sample_times  # noqa: E402
from fgmm_lib.data.vocab import Vocabulary  # noqa: E402

FPS = 10
WIDTH, HEIGHT = 48, 32  # a 32 x 32 import crops 8 columns on each side
SQUARE = 8
RED = (255, 0, 0)


def write_video(path, frames: int = 24, codec: str = "libx264", colour=RED, fps: int = FPS) -> None:
    """A black video with a square whose left edge is at x = 8 + k in frame k (x = k after the crop)."""
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": "0", "preset": "ultrafast"}
    else:  # mpeg4 in avi, as UCF101 and HMDB51 ship: intra-only, finest quantiser
        stream.gop_size = 1
        stream.options = {"qmin": "1", "qmax": "1"}
    for k in range(frames):
        image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        image[12 : 12 + SQUARE, 8 + k : 8 + k + SQUARE] = colour
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def square_left(frame: np.ndarray) -> float:
    """Left edge of the red square in a decoded [S, S, 3] frame (weighted centroid minus half its width)."""
    weight = np.clip(frame[..., 0].astype(float) - frame[..., 1], 0, None).sum(axis=0)
    return float((weight * np.arange(frame.shape[1])).sum() / weight.sum()) - (SQUARE - 1) / 2


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_video(root / "a.mp4", frames=25)
    write_video(root / "b.avi", frames=25, codec="mpeg4")
    (root / "corrupt.mp4").write_bytes(b"\x00not a video" * 64)
    return root


@pytest.mark.parametrize("name", ["a.mp4", "b.avi"])
def test_decoded_frames_show_the_square_where_and_when_it_was(media, name) -> None:
    start, end, frames = 0.25, 1.85, 4
    clip, whole = read_video_clips(media / name, [(start, end), (0.0, None)], frames, 32)
    assert clip.shape == (4, 32, 32, 3) and clip.dtype == np.uint8
    shown = [math.floor(t * FPS) for t in sample_times(start, end, frames)]
    assert shown == [4, 8, 12, 16]
    assert [square_left(f) for f in clip] == pytest.approx(shown, abs=0.25)
    # the whole video (2.5 s) sampled at 0.3125, 0.9375, 1.5625, 2.1875 s
    assert [square_left(f) for f in whole] == pytest.approx([3, 9, 15, 21], abs=0.25)


def test_unreadable_inputs_give_reasons(media, tmp_path) -> None:
    assert read_video_clips(tmp_path / "nothing.mp4", [(0, 1)], 4, 32) == ["missing file"]
    assert read_video_clips(media / "corrupt.mp4", [(0, 1)], 4, 32)[0].startswith("corrupt video")
    assert read_video_clips(media / "a.mp4", [(1.0, 9.0)], 4, 32)[0].startswith("too short")
    assert read_clips(tmp_path / "nothing.png", True, [(0, None)], 4, 32) == ["missing file"]


def _manifest(media, path, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "start", "end", "text", "split"])
        writer.writerows(rows)


NARRATED = [  # two videos listed out of order; clips of one video end up consecutive, in time order
    ("a.mp4", 1.2, 1.8, "Now we move it right!", "train"),
    ("b.avi", 0.0, 0.6, "and the red square, again", "train"),
    ("a.mp4", 0.0, 0.6, "the red square moves right", "train"),
    ("b.avi", 0.8, 1.4, "so it moves right", "train"),
    ("a.mp4", 0.4, 1.0, "it moves right", "train"),
    ("b.avi", 1.6, 2.2, "okay it moves", "train"),
    ("a.mp4", 0.3, 0.9, "the red square moves", "test"),
    ("b.avi", 0.3, 0.9, "red square moves right", "test"),
]
BROKEN = [
    ("missing.mp4", 0.0, 1.0, "never read", "train"),
    ("corrupt.mp4", 0.0, 1.0, "never read", "train"),
    ("a.mp4", 2.0, 5.0, "too long a clip", "train"),
]


@pytest.fixture(scope="module")
def pretraining(media, tmp_path_factory):
    """An import of the narrated manifest with two workers, and what the command printed."""
    root = tmp_path_factory.mktemp("pretraining")
    _manifest(media, media / "narrated.csv", NARRATED + BROKEN)
    out = root / "narrated"
    code = main(["import-videos", "--manifest", str(media / "narrated.csv"), "--out", str(out), "--frames", "4",
                 "--size", "32", "--workers", "2", "--quiet"])
    assert code == 0
    return out


def test_import_videos_writes_a_folder_that_the_reader_takes(pretraining, media) -> None:
    assert sorted(p.name for p in pretraining.iterdir()) == [
        "frames.npy", "meta.jsonl", "params.json", "skipped.csv", "vocab.json"]
    assert [p.name for p in pretraining.parent.iterdir()] == ["narrated"]  # no work or temporary folder left
    dataset = NarratedDigits(pretraining, split=None)
    assert dataset.frames.shape == (8, 4, 32, 32, 3)
    meta = dataset.meta
    assert [(row.file.split("/")[-1], row.start) for row in meta.itertuples()] == [
        ("a.mp4", 0.0), ("a.mp4", 0.4), ("a.mp4", 1.2), ("a.mp4", 0.3), ("b.avi", 0.0), ("b.avi", 0.8),
        ("b.avi", 1.6), ("b.avi", 0.3)]
    assert meta["narration"][2] == "now we move it right"  # lowercased, punctuation dropped
    assert dataset.fields == {"video"}
    # the square in every stored frame is where the decoder puts it
    for row in meta.itertuples():
        expected = [math.floor(t * FPS) for t in sample_times(row.start, row.end, 4)]
        assert [square_left(f) for f in dataset.frames[row.index]] == pytest.approx(expected, abs=0.25)
    # consecutive clips of one video are each other's MIL-NCE candidates; videos do not mix
    train = NarratedDigits(pretraining, split="train", neighbours=1)
    assert train._candidates.tolist() == [[0, 0, 1], [1, 0, 2], [2, 1, 2], [3, 3, 4], [4, 3, 5], [5, 4, 5]]
    with open(pretraining / "skipped.csv") as handle:
        skipped = {row["file"].split("/")[-1]: row for row in csv.DictReader(handle)}
    assert sorted(skipped) == ["a.mp4", "corrupt.mp4", "missing.mp4"]
    assert skipped["missing.mp4"]["reason"] == "missing file"
    assert skipped["corrupt.mp4"]["reason"].startswith("corrupt video")
    assert skipped["a.mp4"]["reason"].startswith("too short") and skipped["a.mp4"]["listed_at"] == "narrated.csv:12"
    vocab = Vocabulary.load(pretraining / "vocab.json")
    assert "never" not in vocab.words and "right" in vocab.words  # from the train clips that were read


def test_a_killed_import_leaves_no_folder_and_resumes(pretraining, media, tmp_path, monkeypatch) -> None:
    _manifest(media, tmp_path / "m.csv", [(str(media / f), s, e, t, sp) for f, s, e, t, sp in NARRATED + BROKEN])
    clips = importers.read_manifest(tmp_path / "m.csv")
    out = tmp_path / "out"
    monkeypatch.setattr(importers, "SAVE_EVERY_S", 0.0)
    calls = []

    def killed_after_one_file(file, image, spans, frames, size):
        if calls:
            raise KeyboardInterrupt
        calls.append(file)
        return read_clips(file, image, spans, frames, size)

    monkeypatch.setattr(importers, "read_clips", killed_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        importers.import_clips(clips, out, source="videos", frames=4, size=32, progress=False)
    assert not out.exists() and (tmp_path / ".out.import" / "done.jsonl").is_file()

    resumed = []
    monkeypatch.setattr(importers, "read_clips", lambda file, *rest: resumed.append(file) or read_clips(file, *rest))
    result = importers.import_clips(clips, out, source="videos", frames=4, size=32, progress=False)
    assert calls[0] not in resumed and len(resumed) == 3  # b.avi, missing and corrupt only
    assert (result.imported, result.skipped) == (8, 3)
    assert np.array_equal(np.load(out / "frames.npy"), np.load(pretraining / "frames.npy"))  # 1 worker = 2 workers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "out"]


def test_nothing_readable_exits_non_zero(media, tmp_path, capsys) -> None:
    _manifest(media, tmp_path / "m.csv", [(str(media / f), s, e, t, sp) for f, s, e, t, sp in BROKEN])
    assert main(["import-videos", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "nothing could be read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"video": "a.mp4", "start": 0, "end": 1}, r"m.jsonl, line 2: missing field 'text'"),
        ({"video": "a.mp4", "start": -1, "end": 1, "text": "x"}, r"line 2: field 'start' must be a non-negative"),
        ({"video": "a.mp4", "start": 2, "end": 2, "text": "x"}, r"line 2: field 'end' \(2.0\) must be greater"),
        ({"video": "a.mp4", "start": 0, "end": 1, "text": "x", "split": "dev"}, r"line 2: field 'split' must be"),
        ({"video": "a.mp4", "start": 0, "end": 1, "text": "?!"}, r"line 2: field 'text' has no words"),
    ],
)
def test_bad_manifest_rows_name_file_line_and_field(tmp_path, row, message) -> None:
    good = {"video": "a.mp4", "start": 0, "end": 1, "text": "fine"}
    (tmp_path / "m.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message):
        importers.read_manifest(tmp_path / "m.jsonl")


def test_vocabulary_build_min_count_and_cap() -> None:
    texts = ["a a a b b c", "A B d"]
    assert Vocabulary.build(texts).words == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert Vocabulary.build(texts, min_count=2).words == ["<pad>", "<unk>", "a", "b"]
    assert Vocabulary.build(texts, max_size=3).words == ["<pad>", "<unk>", "a"]
    assert Vocabulary.build(texts, min_count=2).encode("c a", 3)[0].tolist() == [Vocabulary.UNK, 2, 0]


# --------------------------------------------------------------------------------------------
# Downstream sets, then pretraining and evaluation on the imports
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def downstream(media, pretraining, tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("downstream")
    vocab = str(pretraining / "vocab.json")
    common = ["--frames", "4", "--size", "32", "--vocab", vocab, "--quiet"]
    folders = {}

    # UCF101: two classes, two train and one test video each
    ucf = root / "ucf"
    (ucf / "lists").mkdir(parents=True)
    (ucf / "lists" / "classInd.txt").write_text("1 MoveRight\n2 MoveDown\n")
    train, test = [], []
    for c, name in enumerate(("MoveRight", "MoveDown")):
        (ucf / "videos" / name).mkdir(parents=True)
        for g in range(3):
            file = f"v_{name}_g0{g}_c01.avi"
            write_video(ucf / "videos" / name / file, frames=12, codec="mpeg4", colour=(RED if c == 0 else (0, 0, 255)))
            (train if g < 2 else test).append(f"{name}/{file}" + (f" {c + 1}" if g < 2 else ""))
    (ucf / "lists" / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (ucf / "lists" / "testlist01.txt").write_text("\n".join(test) + "\n")
    folders["ucf"] = root / "ucf_import"
    assert main(["import-ucf101", "--videos", str(ucf / "videos"), "--splits", str(ucf / "lists"),
                 "--out", str(folders["ucf"]), *common]) == 0

    # HMDB51: the per-class split files (1 = train, 2 = test, 0 = unused)
    hmdb = root / "hmdb"
    (hmdb / "splits").mkdir(parents=True)
    for name in ("run", "wave"):
        (hmdb / "videos" / name).mkdir(parents=True)
        for v in range(3):
            write_video(hmdb / "videos" / name / f"{name}{v}.avi", frames=12, codec="mpeg4")
        (hmdb / "splits" / f"{name}_test_split1.txt").write_text(f"{name}0.avi 1\n{name}1.avi 2\n{name}2.avi 0\n")
    folders["hmdb"] = root / "hmdb_import"
    assert main(["import-hmdb51", "--videos", str(hmdb / "videos"), "--splits", str(hmdb / "splits"),
                 "--out", str(folders["hmdb"]), *common]) == 0

    # MSR-VTT: the caption JSON, several captions per video
    msr = root / "msrvtt"
    msr.mkdir()
    for v in range(3):
        write_video(msr / f"video{v}.mp4", frames=12)
    (msr / "videodatainfo.json").write_text(json.dumps({
        "videos": [{"video_id": f"video{v}", "split": "test"} for v in range(3)],
        "sentences": [{"video_id": f"video{v}", "caption": text} for v in range(3)
                      for text in (f"a red square number {v}", "the square moves right")],
    }))
    folders["msrvtt"] = root / "msrvtt_import"
    assert main(["import-msrvtt", "--annotations", str(msr / "videodatainfo.json"), "--videos", str(msr),
                 "--out", str(folders["msrvtt"]), *common]) == 0

    # YouCook2: annotated segments of a video found at any depth
    you = root / "youcook2"
    (you / "raw" / "validation" / "101").mkdir(parents=True)
    write_video(you / "raw" / "validation" / "101" / "abc123.mp4")
    (you / "annotations.json").write_text(json.dumps({"database": {"abc123": {
        "subset": "validation", "duration": 2.4,
        "annotations": [{"segment": [0, 1], "sentence": "square moves right"},
                        {"segment": [1, 2], "sentence": "it moves right again"}]}}}))
    folders["youcook2"] = root / "youcook2_import"
    assert main(["import-youcook2", "--annotations", str(you / "annotations.json"), "--videos", str(you / "raw"),
                 "--out", str(folders["youcook2"]), *common]) == 0

    # Flickr30k-style Karpathy JSON with PNG images
    kar = root / "flickr"
    (kar / "images").mkdir(parents=True)
    entries = []
    for i, colour in enumerate((RED, (0, 0, 255), (0, 255, 0), RED)):
        image = np.zeros((40, 60, 3), dtype=np.uint8)
        image[10:30, 20:40] = colour
        Image.fromarray(image).save(kar / "images" / f"{i}.png")
        entries.append({"filename": f"{i}.png", "split": "test" if i < 3 else "restval",
                        "sentences": [{"raw": f"A square, number {i}."}, {"raw": "a coloured square"}]})
    (kar / "dataset_flickr30k.json").write_text(json.dumps({"dataset": "flickr30k", "images": entries}))
    folders["karpathy"] = root / "karpathy_import"
    assert main(["import-karpathy", "--annotations", str(kar / "dataset_flickr30k.json"), "--images",
                 str(kar / "images"), "--out", str(folders["karpathy"]), *common]) == 0
    return folders


def test_downstream_imports_have_their_splits_and_labels(downstream) -> None:
    ucf = NarratedDigits(downstream["ucf"], split=None)
    assert ucf.params.extra["classes"] == ["MoveRight", "MoveDown"] and ucf.fields >= {"action", "caption"}
    assert ucf.meta.groupby("split")["action"].apply(list).to_dict() == {"test": [0, 1], "train": [0, 0, 1, 1]}
    assert ucf.meta["caption"][0] == "move right"
    # the class colour survives decoding
    assert ucf.frames[0, ..., 0].mean() > ucf.frames[0, ..., 2].mean()
    assert ucf.frames[3, ..., 2].mean() > ucf.frames[3, ..., 0].mean()
    hmdb = NarratedDigits(downstream["hmdb"], split=None)
    assert sorted(zip(hmdb.meta["split"], hmdb.meta["action_name"])) == [
        ("test", "run"), ("test", "wave"), ("train", "run"), ("train", "wave")]
    msr = NarratedDigits(downstream["msrvtt"], split="test")
    assert len(msr) == 3 and list(msr.meta["captions"][1]) == ["a red square number 1", "the square moves right"]
    you = NarratedDigits(downstream["youcook2"], split="val")
    assert list(you.meta["narration"]) == ["square moves right", "it moves right again"]
    assert you._candidates.tolist() == [[0, 0, 1], [1, 0, 1]]
    kar = NarratedDigits(downstream["karpathy"], split=None)
    assert kar.frames.shape == (4, 1, 32, 32, 3) and list(kar.meta["split"]) == ["test"] * 3 + ["train"]
    assert kar.frames[0, 0, 16, 16].tolist() == [255, 0, 0] and kar.frames[0, 0, 0, 0].tolist() == [0, 0, 0]
    for folder in downstream.values():
        assert (folder / "vocab.json").read_text() == (downstream["ucf"] / "vocab.json").read_text()


@pytest.mark.filterwarnings("ignore:the clean captions")  # words of the tiny sets the tiny run never read
def test_pretrain_and_evaluate_on_the_imports(pretraining, downstream, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(pretraining), "--out", str(run), "--loss", "attention", "--batch-size",
                 "3", "--epochs", "1", "--dim", "16", "--width", "0.25", "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    expectations = {  # folder: (split, tasks that run)
        "ucf": ("test", {"probe", "t2v"}),
        "hmdb": ("test", {"probe", "t2v"}),
        "msrvtt": ("test", {"t2v"}),
        "youcook2": ("val", {"t2v"}),
        "karpathy": ("test", {"t2i"}),
    }
    for name, (split, tasks) in expectations.items():
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "--run", str(run), "--data", str(downstream[name]), "--split", split,
                     "--out", str(out), "--quiet"]) == 0, name
        metrics = json.loads(out.read_text())
        ran = {task for task in ("probe", "t2v", "t2i", "pointing") if metrics[task] is not None}
        assert ran == tasks, name
        assert set(metrics["skipped"]) == {"probe", "t2v", "t2i", "pointing"} - tasks
        err = capsys.readouterr().err
        assert "pointing skipped: needs boxes" in err
    assert metrics["t2i"]["queries"] == 4 and metrics["t2i"]["corpus"] == 3  # 3 own captions + the shared one


def test_import_benchmark_writes_its_table(tmp_path) -> None:
    from fgmm_lib.bench.imports import bench_import

    table = bench_import(out_dir=tmp_path, videos=2, clips_per_video=2, seconds=2.0, source_size=(64, 48),
                         workers=(1,), batch_size=2, batches=2, rounds=1, progress=False)
    assert list(table["measure"]) == ["import", "read imported", "read narrated digits"]
    assert (table["clips_per_s"] > 0).all() and table["clips"][0] == 4
    assert (tmp_path / "import.csv").is_file()


def test_import_benchmark_reads_a_batch_no_larger_than_a_small_import(tmp_path) -> None:
    from fgmm_lib.bench.imports import bench_import

    table = bench_import(out_dir=tmp_path, videos=2, clips_per_video=2, seconds=2.0, source_size=(64, 48),
                         workers=(1,), batch_size=32, batches=2, rounds=1, progress=False)
    assert (table["clips_per_s"] > 0).all()
