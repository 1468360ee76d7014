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


# a recorded start time matches a decoded frame's to within this (the log rounds to 1 us)
TIME_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Resume:
    """Where a resumed run picks the stream up: frame ``index``, which starts at ``time`` s (as
    recorded), and the windows from number ``window`` on, the one before stopping at
    ``last_stop``."""

    window: int
    index: int
    time: float
    last_stop: int


def _open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except Exception as error:
        raise ClipError(f"cannot open video {path.name}: {error}") from None
    if not container.streams.video:
        container.close()
        raise ClipError(f"video {path.name} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _raw_frames(container, stream, name: str) -> Iterator[Tuple[object, Optional[str]]]:
    """Every frame in decode order as ``(av frame, None)``, or ``(None, error)`` for a packet
    that would not decode (one packet of video is one frame: lost, the stream goes on); a broken
    container ends the stream (an error when nothing came before)."""
    import av

    data_errors = (av.error.InvalidDataError, av.error.EOFError, ValueError)
    packets = container.demux(stream)
    produced = 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except data_errors as error:
            if produced == 0:
                raise ClipError(f"cannot decode video {name}: {error}") from None
            return
        try:
            decoded = packet.decode()
        except data_errors as error:
            if packet.size == 0:
                continue
            produced += 1
            yield None, " ".join(str(error).split())
            continue
        for frame in decoded:
            produced += 1
            yield frame, None


def _numbered(raw, index: int, last_time: Optional[float], period: float,
              resize: Optional[int], skip: int = 0) -> Iterator[StreamFrame]:
    """``raw``'s frames as :class:`StreamFrame` numbered from ``index``; those before ``skip``
    are counted, not converted nor yielded."""
    for frame, error in raw:
        time = None if frame is None else frame.time
        if time is None:
            time = (last_time + period) if last_time is not None else index * period
        time = float(time)
        if index >= skip:
            if frame is None:
                yield StreamFrame(index, time, None,
                                  f"frame {index} could not be decoded ({error})")
            else:
                yield StreamFrame(index, time, shrink(frame.to_ndarray(format="rgb24"), resize))
        index, last_time = index + 1, time


def _seeked_frames(path: Path, resize: Optional[int], fps: float, start: Resume
                   ) -> Iterator[StreamFrame]:
    """Frames from ``start.index`` on, after seeking to the nearest keyframe before its time;
    yields nothing when the frame at that time cannot be found (the caller decodes from the
    start instead)."""
    container, stream = _open_video(path)
    with container:
        if not stream.time_base:
            return
        # the recorded time to the nearest tick: the frame's own stamp (the seek lands on the
        # keyframe at or before it)
        offset = int(round(start.time / stream.time_base))
        try:
            container.seek(max(0, offset), stream=stream, backward=True, any_frame=False)
        except Exception:    # noqa: BLE001 - a container that cannot seek is decoded whole
            return
        raw = _raw_frames(container, stream, path.name)
        anchor = None
        try:
            for frame, _ in raw:
                if frame is None or frame.time is None:
                    return            # a frame before the anchor without a place in time
                if frame.time < start.time - TIME_TOLERANCE:
                    continue
                if abs(frame.time - start.time) <= TIME_TOLERANCE:
                    anchor = frame
                break
        except ClipError:
            return
        if anchor is None:
            return
        yield StreamFrame(start.index, float(anchor.time),
                          shrink(anchor.to_ndarray(format="rgb24"), resize))
        yield from _numbered(raw, start.index + 1, float(anchor.time), 1.0 / fps, resize)


def _video_frames(path: Path, resize: Optional[int], fps: float,
                  start: Optional[Resume] = None) -> Iterator[StreamFrame]:
    if start is not None and start.index > 0:
        seeked = _seeked_frames(path, resize, fps, start)
        first = next(seeked, None)
        if first is not None:
            yield first
            yield from seeked
            return
    container, stream = _open_video(path)
    with container:
        yield from _numbered(_raw_frames(container, stream, path.name), 0, None, 1.0 / fps,
                             resize, start.index if start is not None else 0)


def _folder_frames(folder: Path, resize: Optional[int], fps: float,
                   start: Optional[Resume] = None) -> Iterator[StreamFrame]:
    files = frame_files(folder)
    if not files:
        raise ClipError(f"folder {folder.name} holds no frames")
    rate = Fraction(fps).limit_denominator(10 ** 6)
    for index in range(start.index if start is not None else 0, len(files)):
        time = float(Fraction(index) / rate)
        try:
            yield StreamFrame(index, time, read_frame(files[index], resize))
        except ClipError as error:
            yield StreamFrame(index, time, None, str(error))


def stream_frames(source: ClipSource, resize: Optional[int], fps: float,
                  start: Optional[Resume] = None) -> Iterator[StreamFrame]:
    """Every frame of ``source`` in order, shrunk to ``resize`` as it is decoded; with
    ``start``, from frame ``start.index`` on (a video seeks to the keyframe before it when it
    can and decodes forward, a frame folder skips the files before it)."""
    if source.is_video:
        return _video_frames(source.path, resize, fps, start)
    return _folder_frames(source.path, resize, fps, start)


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


def sliding_windows(frames: Iterator[StreamFrame], window: int, stride: int, fps: float,
                    start: Optional[Resume] = None) -> Iterator[Window]:
    """Windows of ``window`` frames starting every ``stride`` frames; when the last of them
    ends before the stream does, one more window ends on the last frame (so every frame is
    covered), and a stream shorter than ``window`` is one window of all its frames. Holds one
    window of frames at a time. With ``start`` (``frames`` from ``start.index`` on), the windows
    from ``start.window`` on, numbered as in a run from the first frame."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be at least one frame")
    ring: collections.deque = collections.deque(maxlen=window)
    period = 1.0 / fps
    next_start, last_stop, count, emitted = 0, 0, 0, 0
    if start is not None:
        emitted, last_stop = start.window, start.last_stop
        next_start, count = start.window * stride, start.last_stop
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
