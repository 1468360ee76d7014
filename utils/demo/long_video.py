"""Long videos with known class boundaries, for the windowed run: synthetic clips of different
classes (the class is the motion direction) joined end to end into one MP4, and the truth of
which class holds at each frame."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from utils.demo.synthetic import SyntheticConfig, class_names, generate_clip


@dataclass(frozen=True)
class Segment:
    label: str
    start: int         # first frame
    stop: int          # one past the last frame


def joined_frames(lengths: Sequence[int], seed: int = 0, frame_size: int = 112
                  ) -> Tuple[List[np.ndarray], List[Segment]]:
    """One synthetic clip per length, classes cycling with a random start and never the same
    twice in a row; ``(clips' frames, segments)``."""
    names = class_names()
    rng = np.random.default_rng(seed)
    clips, segments, start, previous = [], [], 0, None
    for index, length in enumerate(lengths):
        choices = [k for k in range(len(names)) if k != previous]
        k = int(rng.choice(choices))
        clip = generate_clip(index, seed=seed + 1000, class_index=k,
                             config=SyntheticConfig(frame_size=frame_size, num_frames=int(length)))
        clips.append(clip.frames)
        segments.append(Segment(names[k], start, start + int(length)))
        start, previous = start + int(length), k
    return clips, segments


def truth_json(segments: Sequence[Segment], fps: float) -> str:
    """The segments as the JSON that sits beside a joined video (``<video>.truth.json``)."""
    return json.dumps({"fps": fps, "segments": [s.__dict__ for s in segments]}, indent=1)


def truth_at(segments: Sequence[Segment], frame: float) -> str:
    """The class holding at (fractional) frame ``frame``."""
    for s in segments:
        if s.start <= frame < s.stop:
            return s.label
    return segments[-1].label


def window_truth(segments: Sequence[Segment], start: int, stop: int) -> str:
    """The class covering most of frames ``start .. stop-1`` (ties: the earlier)."""
    best, most = segments[0].label, -1
    for s in segments:
        overlap = min(stop, s.stop) - max(start, s.start)
        if overlap > most:
            best, most = s.label, overlap
    return best


def predicted_changes(starts: np.ndarray, ends: np.ndarray, predictions: Sequence[str]
                      ) -> List[float]:
    """Times where the top class changes between two consecutive windows: the later window's
    start when the windows do not overlap, the midpoint of their centres otherwise."""
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    centres = (starts + ends) / 2
    changes = []
    for i in range(1, len(predictions)):
        if predictions[i] != predictions[i - 1]:
            changes.append(float(starts[i]) if starts[i] >= ends[i - 1] - 1e-9
                           else float(centres[i - 1] + centres[i]) / 2)
    return changes


def boundary_errors(boundaries: Sequence[float], changes: Sequence[float]) -> List[float]:
    """For each true boundary (seconds), the distance to the nearest predicted change
    (``nan`` when the prediction never changes)."""
    if not changes:
        return [float("nan")] * len(boundaries)
    return [float(np.min(np.abs(np.asarray(changes) - b))) for b in boundaries]
