"""Reading clips from video files (PyAV) and still images (Pillow) as uint8 arrays.

A clip of a video is ``frames`` frames sampled evenly over ``[start, end]`` seconds: frame ``i``
is the one on screen at ``start + (i + 0.5) * (end - start) / frames`` (the centre of the i-th
of ``frames`` equal stretches). Every frame is resized so that its shorter side is ``size``
pixels and centre-cropped to ``size`` x ``size``. An image is a clip of one frame.

The functions here return a reason string instead of raising for files that cannot be read
(missing, corrupt, too short), so that an import can list them and go on. This module imports
neither torch nor the rest of the library: worker processes start quickly.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

#: Slack, in frame durations, before a clip's end counts as lying beyond the end of its video.
END_TOLERANCE_FRAMES = 1.0


def sample_times(start: float, end: float, frames: int) -> np.ndarray:
    """The ``frames`` instants (seconds) at which a clip of ``[start, end]`` is sampled."""
    return start + (np.arange(frames) + 0.5) * ((end - start) / frames)


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling so that the shorter side is ``size`` (the other side >= size)."""
    scale = size / min(width, height)
    return max(size, int(round(width * scale))), max(size, int(round(height * scale)))


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window of an ``[H, W, 3]`` image (both sides >= size)."""
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def _rgb(image):
    """A Pillow image of any mode as 8-bit RGB: 16- and 32-bit grey (``I;16``, ``I``) scaled from
    0..65535, float grey (``F``) from 0..1 (or clipped to 0..255), palette, CMYK and the rest through
    Pillow; a transparent image (``LA``, ``RGBA``, ``PA``, a palette with transparency) is composited
    onto white, as a viewer shows it on a page."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max(initial=0.0))
        if mode.startswith("I;16") or (mode == "I" and peak > 255):
            values = values / 257.0
        elif mode == "F" and peak <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = image.convert("LA").convert("RGBA") if mode == "La" else image.convert("RGBA")
        page = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(page, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | Path, size: int) -> np.ndarray | str:
    """An image file as a one-frame clip, uint8 ``[1, size, size, 3]``, or the reason it cannot be read.

    Every Pillow mode is converted to 8-bit RGB (:func:`_rgb`). An image larger than Pillow's
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million pixels) is not
    decoded: its reason is "image too large"."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        return "missing file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                rgb = _rgb(image)
        rgb = rgb.resize(resized_shape(rgb.width, rgb.height, size), Image.Resampling.BILINEAR)
        array = np.asarray(rgb, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return f"image too large ({_short(error)})"
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return f"corrupt image ({_short(error)})"
    return centre_crop(array, size)[None].copy()


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def read_video_clips(
    path: str | Path, spans: Sequence[tuple[float, float | None]], frames: int, size: int
) -> list[np.ndarray | str]:
    """Clips of one video file: for each ``(start, end)`` in seconds (``end`` None = to the end
    of the video), uint8 ``[frames, size, size, 3]`` or the reason it cannot be read.

    The file is opened once; every clip seeks to its start and decodes forward.
    """
    import av

    path = Path(path)
    if not path.is_file():
        return ["missing file"] * len(spans)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        return [f"corrupt video ({_short(error)})"] * len(spans)
    try:
        if not container.streams.video:
            return ["no video stream"] * len(spans)
        stream = container.streams.video[0]
        duration = _duration(container, stream)
        results: list[np.ndarray | str] = []
        cursor = _Cursor(container, stream)
        for start, end in spans:
            if end is None:
                if duration is None:
                    results.append("unknown duration (the file states none)")
                    continue
                end = duration
            if duration is not None and end > duration + END_TOLERANCE_FRAMES * _frame_time(stream):
                results.append(f"too short (the video lasts {duration:.3f} s, the clip ends at {end:.3f} s)")
                continue
            try:
                results.append(_decode_span(cursor, start, end, frames, size))
            except (av.error.FFmpegError, OSError, ValueError) as error:
                results.append(f"corrupt video ({_short(error)})")
        return results
    finally:
        container.close()


def _frame_time(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return 1.0 / float(rate) if rate else 0.04


def _duration(container, stream) -> float | None:
    """Length of the video in seconds from the file's header, or None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


class _Cursor:
    """Forward decoding through one video stream: a clip that starts at or shortly after the last
    decoded frame continues from it; any other clip seeks (to the keyframe before its start)."""

    #: A clip starting more than this many seconds after the last decoded frame seeks instead.
    SEEK_AHEAD_S = 5.0

    def __init__(self, container, stream) -> None:
        self.container, self.stream = container, stream
        self.frames = None
        self.pending: list = []  # decoded frames (in time order) that the next clip may start on

    def from_time(self, start: float):
        """Frames from the one on screen at ``start`` (seconds, stream time) onwards."""
        if not (self.frames is not None and self.pending
                and self.pending[0].time <= start <= self.pending[-1].time + self.SEEK_AHEAD_S):
            self.container.seek(int(math.floor(start / self.stream.time_base)), stream=self.stream, backward=True)
            self.frames = self.container.decode(self.stream)
            self.pending = []
        pending, self.pending = self.pending, []
        yield from pending
        for frame in self.frames:
            if frame.time is not None:
                yield frame


def _decode_span(cursor: _Cursor, start: float, end: float, frames: int, size: int) -> np.ndarray | str:
    """Frames on screen at :func:`sample_times` of ``[start, end]``: uint8 ``[frames, size, size, 3]``."""
    stream = cursor.stream
    origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    targets = sample_times(start, end, frames) + origin
    chosen: list[np.ndarray] = []

    def array_of(frame) -> np.ndarray:
        width, height = resized_shape(frame.width, frame.height, size)
        rgb = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
        return centre_crop(rgb, size)

    previous, cached, last_time = None, None, None
    for frame in cursor.from_time(origin + start):
        last_time = frame.time
        while len(chosen) < frames and targets[len(chosen)] < frame.time:
            if previous is None:  # the first frame after the seek starts after the target
                previous = frame
            if cached is None:
                cached = array_of(previous)
            chosen.append(cached)
        if len(chosen) == frames:
            cursor.pending = [previous, frame]  # the next clip may start on either
            break
        previous, cached = frame, None
    else:
        if previous is None:
            return "no decodable frame"
        limit = last_time + (1.0 + END_TOLERANCE_FRAMES) * _frame_time(stream)
        if targets[-1] >= limit:
            return f"too short (the last frame is at {last_time - origin:.3f} s, the clip ends at {end:.3f} s)"
        chosen.extend([cached if cached is not None else array_of(previous)] * (frames - len(chosen)))
    return np.stack(chosen)


def read_clips(
    path: str | Path, image: bool, spans: Sequence[tuple[float, float | None]], frames: int, size: int
) -> list[np.ndarray | str]:
    """Clips of one file: :func:`read_image` for an image (one clip, T = 1), else :func:`read_video_clips`."""
    if image:
        return [read_image(path, size)] * len(spans)
    return read_video_clips(path, spans, frames, size)


#: Longest reason a worker sends back for one skipped clip: the statuses of a file stay small.
REASON_CHARS = 120


def decode_into(frames_file: Path, positions: list[int], file: str, image: bool,
                spans: list[tuple[float, float | None]], frames: int, size: int) -> list[str]:
    """Decode the clips of one file into rows ``positions`` of ``frames_file`` (a ``.npy`` of an import's
    work folder, opened as a memory map); return each clip's status: ``"ok"`` or why it was skipped.

    What an import's worker processes run: this module imports neither torch nor the rest of the
    package, so a worker starts in a fraction of a second."""
    results = read_clips(file, image, spans, frames, size)
    stored = np.load(frames_file, mmap_mode="r+")
    statuses, reasons = [], {}
    for position, result in zip(positions, results):
        if isinstance(result, str):
            reason = result[:REASON_CHARS]
            statuses.append(reasons.setdefault(reason, reason))  # one object per reason: pickled once
        else:
            stored[position] = result
            statuses.append("ok")
    stored.flush()
    del stored
    return statuses
