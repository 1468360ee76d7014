"""The record of a windowed run's finished windows, so that a killed run resumes from the last
finished window: one JSON line per window, appended and flushed to disk as windows finish. The
first line holds the settings' fingerprint; a record of other settings is started afresh. A line
cut short by a kill is ignored (that window is redone)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence


class WindowLog:
    """Rows of finished windows of one video under ``path``, keyed by their ``window`` index."""

    def __init__(self, path: Path, fingerprint: str, fresh: bool = False):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.rows: Dict[int, dict] = {}
        if not fresh and self.path.is_file():
            self.rows = self._read()
        if not self.rows:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8") as handle:
                handle.write(json.dumps({"fingerprint": fingerprint}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def _read(self) -> Dict[int, dict]:
        rows: Dict[int, dict] = {}
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().split("\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            return {}
        if not isinstance(header, dict) or header.get("fingerprint") != self.fingerprint:
            return {}
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except ValueError:
                continue               # the line a kill cut short
            if isinstance(row, dict) and isinstance(row.get("window"), int):
                rows[row["window"]] = row
        return rows

    def append(self, rows: Sequence[dict]) -> None:
        """Record finished windows (on disk before this returns)."""
        if not rows:
            return
        text = "".join(json.dumps(row, default=float) + "\n" for row in rows)
        with open(self.path, "a", encoding="utf-8") as handle:
            if handle.tell() and not self._ends_with_newline():
                handle.write("\n")     # after a torn line, start a fresh one
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        for row in rows:
            self.rows[int(row["window"])] = row

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def ordered(self) -> List[dict]:
        return [self.rows[k] for k in sorted(self.rows)]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
