"""Readers of the standard downstream sets: each lists the clips of one set for
:func:`fgmm_lib.data.importers.import_clips` (nothing is downloaded; point them at files you have).

- :func:`ucf101_clips`: ``classInd.txt``, ``trainlistNN.txt``, ``testlistNN.txt`` and the .avi files;
- :func:`hmdb51_clips`: the per-class ``<class>_test_splitN.txt`` files (1 = train, 2 = test);
- :func:`msrvtt_clips`: the caption JSON (``videos`` + ``sentences``) or a CSV ``video,caption``;
- :func:`youcook2_clips`: ``youcookii_annotations_*.json`` (annotated segments);
- :func:`karpathy_clips`: ``dataset_flickr30k.json`` / ``dataset_coco.json`` with the images.

Each annotation file is checked against the shape its set ships in: a value of the wrong JSON type
(a list where an object belongs, a text where a list of numbers belongs, ...) raises ValueError
naming the file and the key (``dataset.json: images[3]: field 'sentences' must be a list``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from fgmm_lib.data.dataset import text_lines
from fgmm_lib.data.importers import (
    Clip,
    json_type,
    normalise_text,
    require_fields,
    seconds_field,
    split_field,
    table_rows,
    text_field,
)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")


def _class_words(name: str) -> str:
    """``ApplyEyeMakeup`` -> ``apply eye makeup``; ``brush_hair`` -> ``brush hair``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|_", " ", name)
    return normalise_text(spaced)


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return [(n, line.split()) for n, line in text_lines(path) if line.strip()]


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


def _captioned_clip(file: str, split: str, texts: list[Any], where: str, source: str | None = None,
                    start: float | None = None, end: float | None = None, image: bool = False) -> Clip:
    captions = list(dict.fromkeys(text_field(t, where, "caption") for t in texts))
    return Clip(file=file, split=split, narration=captions[0], caption=captions[0], captions=captions,
                start=start, end=end, source=source, image=image, line=where)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
                         f"save the file as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else ValueError naming ``where``."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object, got {json_type(value)} ({_short(value)})")
    return value


def _list(value: Any, where: str, name: str, what: str = "objects") -> list[Any]:
    """``value`` (the key ``name`` at ``where``) if it is a JSON list, else ValueError naming both."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: key {name!r} must be a list of {what}, got {json_type(value)} ({_short(value)})")
    return value


def _key(value: Any, where: str, name: str) -> str:
    """An id (a text, or an integer) as a text; another type raises ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: field {name!r} must be a text (an id), got {json_type(value)} ({_short(value)})")
    return str(value).strip()


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
        for number, video in enumerate(_list(content.get("videos", []), str(annotations), "videos")):
            spot = f"{annotations.name}: videos[{number}]"
            require_fields(_object(video, spot), ("video_id", "split"), spot)
            splits[_key(video["video_id"], spot, "video_id")] = split_field(video["split"], spot, {"validate": "val"})
        for number, sentence in enumerate(_list(content["sentences"], str(annotations), "sentences")):
            spot = f"{annotations.name}: sentences[{number}]"
            require_fields(_object(sentence, spot), ("video_id", "caption"), spot)
            key = _key(sentence["video_id"], spot, "video_id")
            captions.setdefault(key, []).append(text_field(sentence["caption"], spot, "caption"))
            where.setdefault(key, spot)
    else:
        for number, row in table_rows(annotations):
            spot = f"{annotations}, line {number}"
            require_fields(row, ("video", "caption"), spot)
            key = _key(row["video"], spot, "video")
            captions.setdefault(key, []).append(row["caption"])
            splits.setdefault(key, split_field(row.get("split") or split, spot))
            where.setdefault(key, f"{annotations.name}:{number}")
    clips = []
    for key, texts in captions.items():
        clip_split = splits.get(key, split_field(split, str(annotations)))
        clips.append(_captioned_clip(_find(index, videos, key), clip_split, texts, where[key], source=key))
    return clips


def _segment(value: Any, where: str) -> tuple[float, float]:
    """A YouCook2 ``segment``: ``[start, end]``, two numbers of seconds, end after start."""
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{where}: field 'segment' must be a list [start, end] of two numbers of seconds, "
                         f"got {json_type(value)} ({_short(value)})")
    start, end = (seconds_field(v, where, "segment") for v in value)
    if end <= start:
        raise ValueError(f"{where}: field 'segment' must end after it starts, got {value}")
    return start, end


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
        require_fields(_object(video, spot), ("subset",), spot)
        split = split_field(video["subset"], spot, aliases)
        for number, segment in enumerate(_list(video.get("annotations", []), spot, "annotations", "segments")):
            place = f"{spot}.annotations[{number}]"
            require_fields(_object(segment, place), ("segment", "sentence"), place)
            start, end = _segment(segment["segment"], place)
            clips.append(_captioned_clip(_find(index, videos, key), split, [segment["sentence"]], place,
                                         source=key, start=start, end=end))
    return clips


def _sentence_texts(sentences: Sequence[Any], where: str) -> list[str]:
    """The texts of a Karpathy ``sentences`` list: each one's ``raw``, else its ``tokens`` joined."""
    texts = []
    for number, sentence in enumerate(sentences):
        place = f"{where}.sentences[{number}]"
        _object(sentence, place)
        raw, tokens = sentence.get("raw"), sentence.get("tokens")
        if raw is not None and not isinstance(raw, str):
            raise ValueError(f"{place}: field 'raw' must be a text, got {json_type(raw)} ({_short(raw)})")
        if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
            raise ValueError(f"{place}: field 'tokens' must be a list of texts, got {_short(tokens)}")
        texts.append(raw or " ".join(tokens or []))
    return texts


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
        require_fields(_object(image, spot), ("filename", "split", "sentences"), spot)
        texts = _sentence_texts(_list(image["sentences"], spot, "sentences"), spot)
        if not texts:
            raise ValueError(f"{spot}: field 'sentences' holds no sentence")
        names = [_key(image[name], spot, name) for name in ("filepath", "filename") if image.get(name) is not None]
        split = split_field(image["split"], spot, {"restval": "train"})
        clips.append(_captioned_clip(str(images.joinpath(*names)), split, texts, spot, image=True))
    return clips
