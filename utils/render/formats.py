"""The output formats, one row each: the CLI's choices and help, resume, the report and the
writers (:mod:`utils.render.outputs`) read this table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple


@dataclass(frozen=True)
class OutputFormat:
    """``name``: the ``--formats`` word and the file suffix; ``shows``: what the file holds;
    ``default``: written when ``--formats`` is not given; ``kind``: what is written and how the
    report shows it: ``picture`` (the frame grid or comparison figure, one RGB array),
    ``animation`` (the animation's RGB frames) or ``data`` (the raw map); ``encoder``: the
    function of :mod:`utils.render.encoders` that writes it, called as ``encoder(array, path)``
    for a picture or data and ``encoder(frames, path, changing=boxes)`` for an animation
    (``boxes``: where the frames differ, or None)."""

    name: str
    shows: str
    default: bool
    kind: str
    encoder: str

    @property
    def suffix(self) -> str:
        return "." + self.name


TABLE: Tuple[OutputFormat, ...] = (
    OutputFormat("png", "frame grid with title, legend, colour bars and per-frame chart", True,
                 "picture", "save_png"),
    OutputFormat("gif", "animation: frame and overlay side by side, cursor on the chart", True,
                 "animation", "save_gif"),
    OutputFormat("mp4", "the animation as H.264 video", False, "animation", "save_mp4"),
    OutputFormat("npy", "the raw map, float32 (T, H, W)", True, "data", "save_npy"),
)

# Colour maps offered: perceptually uniform sequential maps for unsigned maps (legible for
# colour-blind readers and, bright at the top, visible on green or dark scenes), diverging maps
# for signed ones; jet stays for comparison with older figures.
SEQUENTIAL_MAPS = ("inferno", "magma", "viridis", "cividis", "plasma", "jet")
DIVERGING_MAPS = ("RdBu_r", "PuOr_r", "coolwarm", "BrBG")
COLORMAPS = SEQUENTIAL_MAPS + DIVERGING_MAPS
NORMALIZATIONS = ("robust", "minmax", "none")

ALL_FORMATS: Tuple[str, ...] = tuple(f.name for f in TABLE)
FORMATS: Tuple[str, ...] = tuple(f.name for f in TABLE if f.default)
RENDERED: Tuple[str, ...] = tuple(f.name for f in TABLE if f.kind != "data")


def of_kind(kind: str, formats: Sequence[str]) -> Tuple[OutputFormat, ...]:
    """The rows of one kind among ``formats`` (names), in the table's order."""
    return tuple(f for f in TABLE if f.kind == kind and f.name in formats)


def suffixes(kind: str) -> Tuple[str, ...]:
    """File suffixes of one kind, in the table's order (``animation`` -> ``('.gif', '.mp4')``)."""
    return tuple(f.suffix for f in TABLE if f.kind == kind)
