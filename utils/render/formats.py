"""The output formats, one row each: the CLI's choices and help, resume and the report read
this table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class OutputFormat:
    """``name``: the ``--formats`` word and the file suffix; ``shows``: what the file holds;
    ``default``: written when ``--formats`` is not given; ``kind``: how the report shows it
    (``picture``, ``animation`` or ``data``)."""

    name: str
    shows: str
    default: bool
    kind: str

    @property
    def suffix(self) -> str:
        return "." + self.name


TABLE: Tuple[OutputFormat, ...] = (
    OutputFormat("png", "frame grid with title, legend, colour bars and per-frame chart", True,
                 "picture"),
    OutputFormat("gif", "animation: frame and overlay side by side, cursor on the chart", True,
                 "animation"),
    OutputFormat("mp4", "the animation as H.264 video", False, "animation"),
    OutputFormat("npy", "the raw map, float32 (T, H, W)", True, "data"),
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


def suffixes(kind: str) -> Tuple[str, ...]:
    """File suffixes of one kind, in the table's order (``animation`` -> ``('.gif', '.mp4')``)."""
    return tuple(f.suffix for f in TABLE if f.kind == kind)
