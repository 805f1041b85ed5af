"""Imports read their inputs strictly (issue 29): manifests, annotation files, images, options, resume,
and the evaluate / inspect_run notebooks on an imported folder. Tiny synthetic files, seconds each."""

from __future__ import annotations

import csv
import json
import os
import struct
import zlib
from pathlib import Path

import nbformat
import numpy as np
import papermill
import pytest

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

from fgmm_lib.cli.main import main  # noqa: E402
from fgmm_lib.data import datasets, importers  # noqa: E402
from fgmm_lib.data.video_io import read_clips, read_image  # noqa: E402
from fgmm_lib.study.records import probe_classes, record_lacks  # noqa: E402

pytestmark = pytest.mark.integration

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
HEADER = ["video", "start", "end", "text", "split"]


def write_video(path: Path, frames: int = 24, colour=(255, 0, 0), fps: int = 10) -> None:
    """A black 48 x 32 H.264 video with a coloured square moving right."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
    stream.options = {"crf": "0", "preset": "ultrafast"}
    for k in range(frames):
        image = np.zeros((32, 48, 3), dtype=np.uint8)
        image[12:20, 8 + k : 16 + k] = colour
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def write_csv(path: Path, rows, header=HEADER, encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def header_only_png(path: Path, width: int, height: int) -> None:
    """A PNG that claims ``width`` x ``height`` pixels in a few bytes (Pillow checks the size on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_video(root / "a.mp4")
    write_video(root / "b.mp4", colour=(0, 0, 255))
    return root


def no_import_leftovers(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("column", "known"), [("spilt", "split"), ("Split", "split"), ("captoin", "caption")])
def test_a_misspelled_optional_column_is_an_error_naming_it(tmp_path, column, known) -> None:
    manifest = write_csv(tmp_path / "m.csv", [["a.mp4", 0, 1, "the cat", "test"]],
                         header=["video", "start", "end", "text", column])
    message = rf"m.csv, line 1: unknown column\(s\) '{column}' \(did you mean '{known}'\?\)"
    with pytest.raises(ValueError, match=message):
        importers.read_manifest(manifest)
    jsonl = write_jsonl(tmp_path / "m.jsonl", [{"video": "a.mp4", "start": 0, "end": 1, "text": "a cat"},
                                               {"video": "a.mp4", "start": 1, "end": 2, "text": "a dog", column: "x"}])
    with pytest.raises(ValueError, match=rf"m.jsonl, line 2: unknown column\(s\) '{column}'"):
        importers.read_manifest(jsonl)


def test_other_unknown_columns_are_ignored_with_a_warning(tmp_path) -> None:
    manifest = write_csv(tmp_path / "m.csv", [["a.mp4", 0, 1, "the cat", "train", "http://x", "7"]],
                         header=[*HEADER, "url", "videoid"])
    with pytest.warns(UserWarning, match=r"column\(s\) 'url', 'videoid' are not manifest columns"):
        clips = importers.read_manifest(manifest)
    assert [clip.narration for clip in clips] == ["the cat"]


def test_a_row_with_more_fields_than_the_header_names_the_line(tmp_path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,start,end,text\nv.mp4,0,1,the dog\nv.mp4,0,1,the cat, sat on the mat\n")
    with pytest.raises(ValueError, match=r"m.csv, line 3: 5 fields, but the header has 4 .*quote a text"):
        importers.read_manifest(manifest)
    manifest.write_text('video,start,end,text\nv.mp4,0,1,"the cat, sat on the mat"\n')
    assert importers.read_manifest(manifest)[0].narration == "the cat sat on the mat"


def test_exact_duplicate_rows_warn_and_are_imported_once(tmp_path) -> None:
    rows = [["a.mp4", 0, 1, "the cat", "train"], ["a.mp4", 1, 2, "the dog", "train"],
            ["./a.mp4", 0, 1, "The cat!", "train"]]
    message = r"1 row\(s\) repeat an earlier row exactly and are imported once \(line\(s\) 4\)"
    with pytest.warns(UserWarning, match=message):
        clips = importers.read_manifest(write_csv(tmp_path / "m.csv", rows))
    assert [(clip.start, clip.narration) for clip in clips] == [(0.0, "the cat"), (1.0, "the dog")]


def test_a_span_in_two_splits_is_an_error_naming_both_lines(tmp_path) -> None:
    rows = [["a.mp4", 0, 1, "the cat", "train"], ["a.mp4", 1, 2, "the dog", "train"],
            ["a.mp4", 0, 1, "a cat sits", "test"]]
    with pytest.raises(ValueError, match=r"m.csv: lines 2 and 4 list the same span of a.mp4 \(0-1 s\) in the train "
                                         r"and the test split"):
        importers.read_manifest(write_csv(tmp_path / "m.csv", rows))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("start", True, r"field 'start' must be a number of seconds, got a boolean"),
        ("end", [1], r"field 'end' must be a number of seconds, got a list"),
        ("text", ["hello", "world"], r"field 'text' must be a text, got a list"),
        ("caption", {"a": 1}, r"field 'caption' must be a text, got an object"),
        ("video", 5, r"field 'video' must be a path \(a text\), got a number"),
        ("split", 1, r"field 'split' must be one of train, val, test, got 1"),
    ],
)
def test_jsonl_field_types_are_checked(tmp_path, field, value, message) -> None:
    good = {"video": "a.mp4", "start": 0, "end": 1, "text": "fine"}
    manifest = write_jsonl(tmp_path / "m.jsonl", [good, {**good, "start": 2, "end": 3, field: value}])
    with pytest.raises(ValueError, match=rf"m.jsonl, line 2: {message}"):
        importers.read_manifest(manifest)


def test_a_non_utf8_manifest_names_the_file_and_line(tmp_path) -> None:
    rows = [["a.mp4", 0, 1, "the cat", "train"], ["a.mp4", 1, 2, "un café", "train"]]
    manifest = write_csv(tmp_path / "m.csv", rows, encoding="latin-1")
    with pytest.raises(ValueError, match=r"m.csv, line 3: not UTF-8 text \(byte 0xe9 at column 17\)"):
        importers.read_manifest(manifest)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes(b'{"video": "a.mp4", "start": 0, "end": 1, "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl, line 1: not UTF-8 text"):
        importers.read_manifest(jsonl)


def test_a_utf8_bom_csv_is_accepted(tmp_path) -> None:
    manifest = write_csv(tmp_path / "m.csv", [["a.mp4", 0, 1, "un café", "test"]], encoding="utf-8-sig")
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbf")
    (clip,) = importers.read_manifest(manifest)
    assert (Path(clip.file), clip.narration, clip.split) == (tmp_path / "a.mp4", "un café", "test")


# --------------------------------------------------------------------------------------------
# Annotation files of the downstream sets
# --------------------------------------------------------------------------------------------

GOOD_SENTENCES = [{"video_id": "video0", "caption": "a cat"}]
WRONG_SHAPES = [
    ("msrvtt", {"videos": ["video0"], "sentences": GOOD_SENTENCES}, r"a.json: videos\[0\] must be an object"),
    ("msrvtt", {"videos": [], "sentences": {"video0": "a cat"}}, r"a.json: key 'sentences' must be a list"),
    ("msrvtt", {"videos": [{"video_id": ["video0"], "split": "test"}], "sentences": GOOD_SENTENCES},
     r"a.json: videos\[0\]: field 'video_id' must be a text"),
    ("msrvtt", {"videos": [], "sentences": [{"video_id": ["video0"], "caption": "a cat"}]},
     r"a.json: sentences\[0\]: field 'video_id' must be a text"),
    ("youcook2", {"database": {"abc": "training"}}, r"a.json: database.abc must be an object"),
    ("youcook2", {"database": {"abc": {"subset": "training", "annotations": {"segment": [0, 1]}}}},
     r"a.json: database.abc: key 'annotations' must be a list"),
    *[("youcook2",
       {"database": {"abc": {"subset": "training", "annotations": [{"segment": segment, "sentence": "x"}]}}},
       r"a.json: database.abc.annotations\[0\]: field 'segment' must be a list \[start, end\] of two numbers")
      for segment in (5, "12", [1, 2, 3], [1], ["1", "2"], [True, 2])],
    ("karpathy", {"images": ["a.jpg"]}, r"a.json: images\[0\] must be an object"),
    ("karpathy", {"images": [{"filename": "a.jpg", "split": "test", "sentences": "a cat"}]},
     r"a.json: images\[0\]: key 'sentences' must be a list"),
    ("karpathy", {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"tokens": "a cat"}]}]},
     r"a.json: images\[0\].sentences\[0\]: field 'tokens' must be a list of texts"),
]


@pytest.mark.parametrize(("reader", "content", "message"), WRONG_SHAPES)
def test_annotation_json_of_the_wrong_shape_names_the_file_and_key(tmp_path, reader, content, message) -> None:
    (tmp_path / "a.json").write_text(json.dumps(content))
    (tmp_path / "videos").mkdir()
    read = {"msrvtt": datasets.msrvtt_clips, "youcook2": datasets.youcook2_clips,
            "karpathy": datasets.karpathy_clips}[reader]
    with pytest.raises(ValueError, match=message):
        read(tmp_path / "a.json", tmp_path / "videos")


def test_annotation_files_of_the_right_shape_still_read(tmp_path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "y.json").write_text(json.dumps({"database": {"abc": {"subset": "validation", "annotations": [
        {"segment": [0, 1.5], "sentence": "Cut the onion."}]}}}))
    (clip,) = datasets.youcook2_clips(tmp_path / "y.json", tmp_path / "videos")
    assert (clip.split, clip.start, clip.end, clip.narration) == ("val", 0.0, 1.5, "cut the onion")
    entry = {"filename": "a.jpg", "filepath": "val2014", "split": "restval",
             "sentences": [{"tokens": ["a", "cat"]}, {"raw": "A dog."}]}
    (tmp_path / "k.json").write_text(json.dumps({"images": [entry]}))
    (clip,) = datasets.karpathy_clips(tmp_path / "k.json", tmp_path / "images")
    assert (Path(clip.file), clip.split) == (tmp_path / "images/val2014/a.jpg", "train")
    assert clip.captions == ["a cat", "a dog"]


# --------------------------------------------------------------------------------------------
# Options, vocabulary and failed imports
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [("--size", "100000"), ("--size", "4"), ("--frames", "0"),
                                               ("--frames", "1000")])
def test_size_and_frames_are_bounded(media, tmp_path, capsys, option, value) -> None:
    manifest = write_csv(tmp_path / "m.csv", [[str(media / "a.mp4"), 0, 1, "the cat", "train"]])
    with pytest.raises(SystemExit) as stop:
        main(["import-videos", "--manifest", str(manifest), "--out", str(tmp_path / "out"), option, value, "--quiet"])
    assert stop.value.code == 2
    low, high = (8, 1024) if option == "--size" else (1, 256)
    assert f"argument {option}: must be an integer from {low} to {high}, got {value}" in capsys.readouterr().err
    name = option.removeprefix("--")
    with pytest.raises(ValueError, match=rf"{name} must be an integer .*{low}"):
        importers.import_clips(importers.read_manifest(manifest), tmp_path / "out", "videos", **{name: int(value)},
                               progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_a_vocabulary_with_no_word_is_refused_naming_min_count(media, tmp_path, capsys) -> None:
    manifest = write_csv(tmp_path / "m.csv", [[str(media / "a.mp4"), 0, 1, "the cat", "train"],
                                              [str(media / "a.mp4"), 1, 2, "the dog", "train"]])
    assert main(["import-videos", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--min-count", "99",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--min-count 99 keeps none of the words of the 2 train narrations listed" in err
    assert "the most frequent, 'the', is seen 2 time(s)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # refused before any decoding


def test_a_failed_import_leaves_no_work_folder(media, tmp_path, capsys) -> None:
    # the train clips' words are seen twice as listed, once among the clips that could be read
    rows = [[str(media / "a.mp4"), 0, 1, "the cat", "train"], [str(tmp_path / "gone.mp4"), 0, 1, "the cat", "train"],
            [str(media / "b.mp4"), 0, 1, "a dog", "test"]]
    manifest = write_csv(tmp_path / "m.csv", rows)
    assert main(["import-videos", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--min-count", "2",
                 "--quiet"]) == 2
    assert "train narrations that could be read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]
    # no train clip could be read at all
    manifest = write_csv(tmp_path / "m.csv", rows[1:])
    assert main(["import-videos", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no train clip that could be read" in err and "gone.mp4: missing file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_a_resumed_import_decodes_a_replaced_video_again(media, tmp_path, monkeypatch) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "b.mp4").write_bytes(b"\x00not a video" * 64)  # corrupt until it is replaced
    for name in ("c.mp4", "a.mp4"):
        (videos / name).write_bytes((media / "a.mp4").read_bytes())
    manifest = write_csv(tmp_path / "m.csv", [["videos/b.mp4", 0, 1, "b clip", "train"],
                                              ["videos/c.mp4", 0, 1, "c clip", "train"],
                                              ["videos/a.mp4", 0, 1, "a clip", "train"]])
    clips = importers.read_manifest(manifest)
    out = tmp_path / "out"
    monkeypatch.setattr(importers, "SAVE_EVERY_S", 0.0)
    first = []

    def killed_at_the_third_file(file, *rest):
        if len(first) == 2:
            raise KeyboardInterrupt
        first.append(Path(file).name)
        return read_clips(file, *rest)

    monkeypatch.setattr(importers, "read_clips", killed_at_the_third_file)
    with pytest.raises(KeyboardInterrupt):
        importers.import_clips(clips, out, source="videos", frames=4, size=32, progress=False)
    assert first == ["b.mp4", "c.mp4"] and not out.exists()

    (videos / "b.mp4").write_bytes((media / "b.mp4").read_bytes())  # now a valid video
    resumed = []
    monkeypatch.setattr(importers, "read_clips",
                        lambda file, *rest: resumed.append(Path(file).name) or read_clips(file, *rest))
    result = importers.import_clips(clips, out, source="videos", frames=4, size=32, progress=False)
    assert sorted(resumed) == ["a.mp4", "b.mp4"]  # c.mp4 unchanged: not decoded again
    assert (result.imported, result.skipped) == (3, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "out", "videos"]


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def test_a_16_bit_grayscale_png_keeps_its_grey_level(tmp_path) -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(30000, 36000, size=(40, 40)).astype(np.uint16)  # mean ~33000 of 65535: ~129 of 255
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    frame = read_image(tmp_path / "g16.png", 32)
    assert frame.shape == (1, 32, 32, 3) and frame.dtype == np.uint8
    assert abs(frame.mean() - values.mean() / 257) < 1.0 and 127 < frame.mean() < 131


@pytest.mark.parametrize(
    ("image", "rgb"),
    [
        (lambda: Image.fromarray(np.full((40, 40), 1000, dtype=np.uint16)), [4, 4, 4]),  # I;16
        (lambda: Image.fromarray(np.full((40, 40), 51400, dtype=np.int32)), [200, 200, 200]),  # I, 16-bit range
        (lambda: Image.new("LA", (40, 40), (90, 255)), [90, 90, 90]),
        (lambda: Image.new("LA", (40, 40), (0, 0)), [255, 255, 255]),  # transparent: onto white
        (lambda: Image.new("RGB", (40, 40), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE), [0, 200, 0]),
        (lambda: Image.new("RGBA", (40, 40), (0, 0, 255, 255)), [0, 0, 255]),
        (lambda: Image.new("RGBA", (40, 40), (0, 0, 0, 128)), [127, 127, 127]),  # half black over white
        (lambda: Image.new("CMYK", (40, 40), (0, 255, 255, 0)), [255, 0, 0]),
    ],
)
def test_image_modes_are_converted_to_rgb(tmp_path, image, rgb) -> None:
    picture = image()
    path = tmp_path / ("m.tif" if picture.mode in ("I", "CMYK") else "m.png")
    picture.save(path)
    frame = read_image(path, 32)
    assert np.abs(frame[0, 16, 16].astype(int) - rgb).max() <= 1, (picture.mode, frame[0, 16, 16])


def test_a_decompression_bomb_is_skipped_and_the_import_goes_on(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(images / "fine.png")
    header_only_png(images / "bomb.png", 20000, 18000)  # 360 M pixels: Pillow raises
    header_only_png(images / "large.png", 10000, 10000)  # 100 M pixels: Pillow warns
    entries = [{"filename": name, "split": "test", "sentences": [{"raw": f"picture {name}"}]}
               for name in ("fine.png", "bomb.png", "large.png")]
    (tmp_path / "k.json").write_text(json.dumps({"images": entries}))
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"words": ["<pad>", "<unk>", "picture"]}))
    out = tmp_path / "out"
    assert main(["import-karpathy", "--annotations", str(tmp_path / "k.json"), "--images", str(images),
                 "--out", str(out), "--vocab", str(vocab), "--quiet"]) == 0
    with open(out / "skipped.csv") as handle:
        skipped = {Path(row["file"]).name: row["reason"] for row in csv.DictReader(handle)}
    assert sorted(skipped) == ["bomb.png", "large.png"]
    assert all(reason.startswith("image too large (Image size") for reason in skipped.values())
    assert np.load(out / "frames.npy").shape == (1, 1, 32, 32, 3)
    assert no_import_leftovers(tmp_path)


# --------------------------------------------------------------------------------------------
# The evaluate and inspect_run notebooks on imported folders
# --------------------------------------------------------------------------------------------


def execute(root: Path, name: str, **parameters) -> nbformat.NotebookNode:
    output = root / f"{name}-{len(list(root.glob(f'{name}-*.ipynb')))}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output), parameters=parameters,
                               kernel_name="python3", cwd=str(root), progress_bar=False)
    return nbformat.read(output, as_version=4)


def images_in(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.fixture(scope="module")
def imported_world(media, tmp_path_factory):
    """A repository root in miniature with an imported folder without ``action`` and a run on it,
    evaluated through notebooks/evaluate.ipynb."""
    root = tmp_path_factory.mktemp("imported-world")
    (root / "dvc.yaml").write_text("stages: {}\n")
    rows = [(media / video, start, start + 0.6, text, split, text)
            for video, text in (("a.mp4", "the red square moves right"), ("b.mp4", "the blue square moves right"))
            for start, split in ((0.0, "train"), (0.5, "train"), (1.0, "train"), (1.6, "test"))]
    manifest = write_csv(root / "m.csv", rows, header=[*HEADER, "caption"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")
        patch.setenv("OMP_NUM_THREADS", "1")
        assert main(["import-videos", "--manifest", str(manifest), "--out", str(root / "data/imported"),
                     "--frames", "4", "--size", "32", "--quiet"]) == 0
        assert main(["pretrain", "--data", str(root / "data/imported"), "--out", str(root / "runs/imported"),
                     "--loss", "attention", "--batch-size", "3", "--epochs", "1", "--dim", "16", "--width", "0.25",
                     "--device", "cpu", "--quiet"]) == 0
        executed = execute(root, "evaluate", run="runs/imported", data="data/imported",
                           metrics_out="results/metrics/imported.json", details_out="results/details/imported.json",
                           compute_out="results/compute/imported.json", split="test")
        yield root, executed


def test_evaluate_notebook_on_an_import_without_action(imported_world) -> None:
    root, executed = imported_world
    details = json.loads((root / "results/details/imported.json").read_text())
    assert details["probe"] is None and details["t2v"]["queries"] == 2
    assert json.loads((root / "results/metrics/imported.json").read_text())["action_top1"] is None
    assert "not evaluated: linear probe (needs action labels" in printed(executed)
    summary = executed.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "text→video queries / corpus" in summary and "probe" not in summary


def test_inspect_run_notebook_on_imported_details(imported_world, tmp_path) -> None:
    root, _ = imported_world
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")
        patch.setenv("OMP_NUM_THREADS", "1")
        executed = execute(root, "inspect_run", run="runs/imported", details="results/details/imported.json")
        assert images_in(executed) == 2  # the training curves and recall at K; no probe, so no confusion matrix
        assert "not evaluated: linear probe (needs action labels" in printed(executed)

        # a UCF101 import: 101 classes, named in its params.json
        names = [f"Class{number}" for number in range(101)]
        (root / "data/ucf").mkdir(parents=True, exist_ok=True)
        (root / "data/ucf/params.json").write_text(json.dumps({"source": "ucf101", "classes": names}))
        record = json.loads((root / "results/details/imported.json").read_text())
        confusion = np.diag(np.arange(101) % 3 + 1).tolist()
        record.update(data="data/ucf", probe={"action_top1": 1.0, "chance": 1 / 101, "confusion": confusion,
                                              "ci95": {"action_top1": [1.0, 1.0]}, "weight_decay": 0.001,
                                              "train_clips": 300, "test_clips": 202})
        record["skipped"].pop("probe")
        (root / "results/details/ucf.json").write_text(json.dumps(record))
        executed = execute(root, "inspect_run", run="runs/imported", details="results/details/ucf.json")
        assert images_in(executed) == 3
        assert "not evaluated: linear probe" not in printed(executed)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert probe_classes(record) == names
    finally:
        os.chdir(cwd)


def test_records_name_the_probe_classes_and_what_is_missing(tmp_path) -> None:
    eight = np.eye(8, dtype=int).tolist()
    assert probe_classes({"data": str(tmp_path / "gone"), "probe": {"confusion": eight}})[0] == "moves left"
    (tmp_path / "params.json").write_text(json.dumps({"source": "hmdb51", "classes": None}))
    assert probe_classes({"data": str(tmp_path), "probe": {"confusion": eight}}) == [str(i) for i in range(8)]
    assert record_lacks({"probe": {}, "t2v": {"R@1": 0.5}, "t2i": None, "pointing": None,
                         "skipped": {"t2i": "needs images", "pointing": "needs boxes"}}) == (
        "not evaluated: linear probe (not in the record); text→image retrieval (needs images); "
        "pointing (needs boxes)")
