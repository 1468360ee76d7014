"""Class lists and parsing the true label from a clip's name."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, List, Optional

_CLASSES_DIR = Path(__file__).resolve().parent.parent / "models" / "classes"


def parse_label(clip_name: str, class_names: Iterable[str]) -> Optional[str]:
    """The longest class name ``c`` such that ``clip_name`` starts with ``c + "-"``.

    ``"playing bass guitar-JVAw"`` gives ``"playing bass guitar"`` (not ``"playing bass"``),
    ``"turn-on-P01_01"`` gives the EPIC verb ``"turn-on"``. No match gives ``None``.
    """
    best = None
    for name in class_names:
        if clip_name.startswith(name + "-") and (best is None or len(name) > len(best)):
            best = name
    return best


def epic_class_names(kind: str) -> List[str]:
    """EPIC-Kitchens verb or noun class keys in class-id order (``kind``: "verb" or "noun")."""
    path = _CLASSES_DIR / f"EPIC_{kind}_classes.csv"
    with open(path, newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: int(row[f"{kind}_id"]))
    return [row["class_key"] for row in rows]


def resolve_class(query: str, class_names: List[str]) -> int:
    """Class index from a name (exact, then case-insensitive) or a decimal index."""
    if query in class_names:
        return class_names.index(query)
    lowered = [c.lower() for c in class_names]
    if query.lower() in lowered:
        return lowered.index(query.lower())
    if query.isdigit():
        index = int(query)
        if 0 <= index < len(class_names):
            return index
        raise ValueError(f"class index {index} out of range 0..{len(class_names) - 1}")
    close = [c for c in class_names if query.lower() in c.lower()][:5]
    hint = f"; similar: {', '.join(close)}" if close else ""
    raise ValueError(f"unknown class {query!r}{hint}")
