"""Class lists, ``--classes`` files and parsing the true label from a clip's name.

Clip names carry their label before the first ``-``, as in the reference demo: Kinetics clips
``<class>-<youtube id>``, EPIC-Kitchens verb clips ``<verb>-<noun>-<id>`` and noun clips
``<noun>-<verb>-<id>``. Class names may themselves contain ``-`` (EPIC verbs "turn-on") or ``:``
(EPIC nouns "pan:dust"), so the label is found by prefix matching, not by splitting. EPIC clip
names use the narrated word, which is often a synonym ("stir" for the class "mix"); the class
CSVs list those synonyms ("instances"), and :func:`parse_label` uses them when given.
"""
from __future__ import annotations

import ast
import csv
import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

_CLASSES_DIR = Path(__file__).resolve().parent / "classes"

# class name -> its synonyms, or synonym -> class name
Synonyms = Union[Mapping[str, Iterable[str]], Mapping[str, str]]

_NAME_COLUMNS = ("name", "class_key", "key", "class", "label")
_SYNONYM_COLUMNS = ("instances", "verbs", "nouns", "synonyms")
_ID_COLUMNS = ("id", "verb_id", "noun_id", "class_id", "index")


def _synonym_to_class(synonyms: Synonyms) -> Dict[str, str]:
    """``{synonym: class}`` from either direction of mapping (string values: synonym -> class)."""
    lookup: Dict[str, str] = {}
    for key, value in synonyms.items():
        if isinstance(value, str):
            lookup.setdefault(key, value)
        else:
            for synonym in value:
                lookup.setdefault(synonym, key)
    return lookup


def parse_label(clip_name: str, class_names: Iterable[str],
                synonyms: Optional[Synonyms] = None) -> Optional[str]:
    """The class whose name (or synonym) is the longest prefix of ``clip_name`` followed by ``-``.

    ``"playing bass guitar-JVAw"`` gives ``"playing bass guitar"`` (not ``"playing bass"``),
    ``"turn-on-P01_01"`` gives the EPIC verb ``"turn-on"``. With ``synonyms`` (``{class:
    [synonyms]}`` as read from the EPIC CSVs, or ``{synonym: class}``) ``"stir-food-P03_05"``
    gives ``"mix"``. Class names and synonyms compete on length, so ``"take-off-lid-…"`` is
    "remove" (synonym "take-off") rather than "take"; on equal length a class name wins.
    Synonyms of classes not in ``class_names`` are ignored. No match gives ``None``.
    """
    names = list(class_names)
    known = set(names)
    best, best_length = None, -1
    for name in names:
        if len(name) > best_length and clip_name.startswith(name + "-"):
            best, best_length = name, len(name)
    if synonyms:
        for synonym, name in _synonym_to_class(synonyms).items():
            if (name in known and len(synonym) > best_length
                    and clip_name.startswith(synonym + "-")):
                best, best_length = name, len(synonym)
    return best


def epic_classes(kind: str) -> Tuple[List[str], Dict[str, List[str]]]:
    """EPIC-Kitchens verb or noun classes (``kind``: "verb" or "noun"): the class keys in
    class-id order and ``{class_key: [synonyms]}``."""
    if kind not in ("verb", "noun"):
        raise ValueError(f"EPIC-Kitchens class kind must be 'verb' or 'noun', not {kind!r}")
    names, synonyms = read_class_file(_CLASSES_DIR / f"EPIC_{kind}_classes.csv")
    return names, synonyms or {}


def epic_class_names(kind: str) -> List[str]:
    """EPIC-Kitchens verb or noun class keys in class-id order (``kind``: "verb" or "noun")."""
    return epic_classes(kind)[0]


def _synonym_list(text: str, path: Path, row_number: int) -> List[str]:
    """A synonyms cell: a Python/JSON list literal (EPIC CSVs) or ``;``/``|``-separated names."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{path}: row {row_number}: synonyms {text[:40]!r} are not a "
                             "list literal") from None
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: row {row_number}: synonyms must be a list of strings")
        return list(value)
    separator = ";" if ";" in text else "|"
    return [part.strip() for part in text.split(separator) if part.strip()]


def _read_csv(path: Path, text: str) -> Tuple[List[str], Optional[Dict[str, List[str]]]]:
    rows = list(csv.DictReader(text.splitlines()))
    columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    lowered = {c.lower(): c for c in columns}
    name_column = next((lowered[c] for c in _NAME_COLUMNS if c in lowered), None)
    if name_column is None:
        raise ValueError(f"{path}: a CSV class file needs a column named one of "
                         f"{', '.join(_NAME_COLUMNS)}; found {', '.join(columns) or 'none'}")
    id_column = next((lowered[c] for c in _ID_COLUMNS if c in lowered), None)
    synonym_column = next((lowered[c] for c in _SYNONYM_COLUMNS if c in lowered), None)
    if id_column is not None:
        try:
            rows.sort(key=lambda row: int(row[id_column]))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: column {id_column!r} must hold integers") from None
    names = [(row[name_column] or "").strip() for row in rows]
    synonyms = None
    if synonym_column is not None:
        synonyms = {name: _synonym_list(row[synonym_column] or "", path, i + 2)
                    for i, (name, row) in enumerate(zip(names, rows))}
    return names, synonyms


def read_class_file(path: Union[str, Path]) -> Tuple[List[str], Optional[Dict[str, List[str]]]]:
    """Class names (in output order) and synonyms from a ``--classes`` file.

    Formats, chosen by content:

    - a JSON list of names (``["run", "walk"]``), or a JSON object ``{"classes": [...],
      "synonyms": {class: [synonyms]}}``;
    - CSV with a header holding a ``name`` column (or ``class_key`` / ``key``), optionally an id
      column (``id``, ``verb_id``, ``noun_id``) that sets the order and a synonyms column
      (``instances``, ``verbs``, ``nouns``) holding a list literal, as in the EPIC-Kitchens
      class CSVs;
    - plain text, one name per line (blank lines and lines starting with ``#`` skipped).

    Returns ``(names, synonyms)``; ``synonyms`` is ``{class: [synonyms]}`` or ``None`` when the
    file has none. Raises ``ValueError`` (one line) for a missing, empty or malformed file and
    for duplicate names.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"class file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.strip()
    synonyms: Optional[Dict[str, List[str]]] = None
    if stripped.startswith("[") or stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}") from None
        if isinstance(value, dict):
            synonyms = value.get("synonyms")
            value = value.get("classes")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: JSON class files hold a list of strings "
                             "(or {\"classes\": [...], \"synonyms\": {...}})")
        names = [v.strip() for v in value]
    elif _looks_like_csv(stripped):
        names, synonyms = _read_csv(path, text)
    else:
        names = [line.strip() for line in text.splitlines()
                 if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise ValueError(f"class file {path} lists no classes")
    if any(not name for name in names):
        raise ValueError(f"class file {path} has an empty class name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"class file {path} lists {', '.join(map(repr, duplicates[:5]))} "
                         "more than once")
    if synonyms is not None and not isinstance(synonyms, dict):
        raise ValueError(f"{path}: synonyms must map class names to lists of names")
    return names, synonyms


def _looks_like_csv(text: str) -> bool:
    """A header line naming one of the known name columns, comma separated."""
    header = text.splitlines()[0] if text else ""
    if "," not in header:
        return False
    columns = [c.strip().strip('"').lower() for c in header.split(",")]
    return any(c in _NAME_COLUMNS for c in columns)


def check_class_count(num_outputs: int, class_names: Sequence[str],
                      source: str = "the class list") -> None:
    """Raise a one-line ``ValueError`` unless the model has one output per class name."""
    if num_outputs != len(class_names):
        raise ValueError(f"the model has {num_outputs} outputs but {source} names "
                         f"{len(class_names)} classes; pass a --classes file with one name per "
                         "output, in output order")


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
