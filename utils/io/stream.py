"""Streaming decode of long videos into sliding windows: frames are read in order, shrunk to the
model's short side as they arrive and kept in a ring buffer of one window, so memory follows the
window, not the video's length.

Times are the container's own (PyAV ``frame.time``: presentation time stamps); frame folders
have none, so frame ``i`` starts at ``i / fps``.
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

from utils.io.clips import ClipError, ClipSource, frame_files, read_frame, shrink

_SPAN = re.compile(r"^\s*(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>s?)\s*$")


@dataclass(frozen=True)
class Span:
    """A window length or stride: ``value`` frames, or ``value`` seconds when ``seconds``."""

    value: float
    seconds: bool

    def frames(self, fps: float) -> int:
        """Source frames this span covers at ``fps`` (at least one)."""
        count = self.value * fps if self.seconds else self.value
        return max(1, int(round(count)))

    def __str__(self) -> str:
        return f"{self.value:g}s" if self.seconds else f"{int(self.value)}"


def parse_span(text: str) -> Span:
    """``"16"``: 16 frames; ``"2s"`` or ``"0.64s"``: seconds. Raises ``ValueError``."""
    match = _SPAN.match(str(text))
    if match is None:
        raise ValueError(f"expected a number of frames (16) or seconds (2s), got {text!r}")
    seconds = match["unit"] == "s"
    value = float(match["value"])
    if value <= 0 or (not seconds and value != int(value)):
        raise ValueError(f"expected a positive whole number of frames or seconds, got {text!r}")
    return Span(value, seconds)


@dataclass(frozen=True)
class StreamFrame:
    """One decoded frame: its index in the stream, its start time in seconds, the picture
    (``uint8 (H, W, 3)`` at the model's short side) or ``None`` with ``error`` when it could not
    be decoded."""

    index: int
    time: float
    picture: Optional[np.ndarray]
    error: Optional[str] = None


@dataclass(frozen=True)
class Window:
    """Source frames ``start .. stop-1`` of a video. ``start_time``: the first frame's time;
    ``end_time``: the last frame's time plus one frame period. ``frames``: ``(stop - start, H, W,
    3)``, ``None`` when a frame failed (``error`` says which)."""

    index: int
    start: int
    stop: int
    start_time: float
    end_time: float
    frames: Optional[np.ndarray]
    error: Optional[str] = None


def video_fps(source: ClipSource, folder_fps: float) -> float:
    """Frames per second: the container's average rate for videos, ``folder_fps`` for frame
    folders (and for videos whose container states no rate)."""
    if not source.is_video:
        return float(folder_fps)
    import av

    try:
        with av.open(str(source.path)) as container:
            if not container.streams.video:
                raise ClipError(f"video {source.path.name} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except ClipError:
        raise
    except Exception as error:   # FFmpeg errors of any kind: one line
        raise ClipError(f"cannot open video {source.path.name}: {error}") from None
    return float(rate) if rate else float(folder_fps)


def _video_frames(path: Path, resize: Optional[int], fps: float) -> Iterator[StreamFrame]:
    import av

    period = 1.0 / fps
    try:
        container = av.open(str(path))
    except Exception as error:
        raise ClipError(f"cannot open video {path.name}: {error}") from None
    with container:
        if not container.streams.video:
            raise ClipError(f"video {path.name} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index, last_time = 0, None
        data_errors = (av.error.InvalidDataError, av.error.EOFError, ValueError)
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except data_errors as error:       # a broken container ends the stream here
                if index == 0:
                    raise ClipError(f"cannot decode video {path.name}: {error}") from None
                break
            try:
                decoded = packet.decode()
            except data_errors as error:
                if packet.size == 0:
                    continue
                # one packet of video is one frame: that frame is lost, the stream goes on
                time = (last_time + period) if last_time is not None else index * period
                yield StreamFrame(index, time, None, f"frame {index} could not be decoded "
                                                     f"({' '.join(str(error).split())})")
                index, last_time = index + 1, time
                continue
            for frame in decoded:
                time = frame.time
                if time is None:
                    time = (last_time + period) if last_time is not None else index * period
                yield StreamFrame(index, float(time), shrink(frame.to_ndarray(format="rgb24"),
                                                              resize))
                index, last_time = index + 1, float(time)


def _folder_frames(folder: Path, resize: Optional[int], fps: float) -> Iterator[StreamFrame]:
    files = frame_files(folder)
    if not files:
        raise ClipError(f"folder {folder.name} holds no frames")
    for index, path in enumerate(files):
        time = float(Fraction(index) / Fraction(fps).limit_denominator(10 ** 6))
        try:
            yield StreamFrame(index, time, read_frame(path, resize))
        except ClipError as error:
            yield StreamFrame(index, time, None, str(error))


def stream_frames(source: ClipSource, resize: Optional[int], fps: float) -> Iterator[StreamFrame]:
    """Every frame of ``source`` in order, shrunk to ``resize`` as it is decoded."""
    if source.is_video:
        return _video_frames(source.path, resize, fps)
    return _folder_frames(source.path, resize, fps)


def _window(index: int, ring: List[StreamFrame], period: float) -> Window:
    bad = next((f for f in ring if f.picture is None), None)
    start_time, end_time = ring[0].time, ring[-1].time + period
    if bad is not None:
        return Window(index, ring[0].index, ring[-1].index + 1, start_time, end_time, None,
                      bad.error)
    shapes = {f.picture.shape for f in ring}
    if len(shapes) > 1:
        return Window(index, ring[0].index, ring[-1].index + 1, start_time, end_time, None,
                      f"frames differ in size {sorted(shapes)}")
    return Window(index, ring[0].index, ring[-1].index + 1, start_time, end_time,
                  np.stack([f.picture for f in ring]))


def sliding_windows(frames: Iterator[StreamFrame], window: int, stride: int, fps: float
                    ) -> Iterator[Window]:
    """Windows of ``window`` frames starting every ``stride`` frames; when the last of them
    ends before the stream does, one more window ends on the last frame (so every frame is
    covered), and a stream shorter than ``window`` is one window of all its frames. Holds one
    window of frames at a time."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be at least one frame")
    ring: collections.deque = collections.deque(maxlen=window)
    period = 1.0 / fps
    next_start, last_stop, count, emitted = 0, 0, 0, 0
    for frame in frames:
        ring.append(frame)
        count = frame.index + 1
        if count - next_start == window:
            yield _window(emitted, list(ring), period)
            emitted, last_stop = emitted + 1, count
            next_start += stride
    if count == 0:
        raise ClipError("the video holds no frames")
    if last_stop < count:
        yield _window(emitted, list(ring), period)


def window_plan(fps: float, clip_length: int, trained_fps: float, window: Optional[Span],
                stride: Optional[Span]) -> Tuple[int, int]:
    """``(window, stride)`` in source frames. The default window lasts what the model's clip
    lasted in training (``clip_length / trained_fps`` seconds); the default stride is the
    window (windows side by side)."""
    size = window.frames(fps) if window is not None else \
        Span(clip_length / trained_fps, True).frames(fps)
    step = stride.frames(fps) if stride is not None else size
    return size, step
