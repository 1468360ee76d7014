"""The run summary as an append-only store that several processes can write at once.

Each process appends its rows to its own part file ``summary.parts/<host>-<pid>-<random>.jsonl``
(one JSON object per line, flushed and fsynced per append), so recording a clip costs the same
whatever the number of clips already done, and two runs writing into one output folder lose
nothing. ``summary.csv`` is derived: :meth:`SummaryStore.rebuild` merges the part files (and the
rows of an existing ``summary.csv`` that no part file holds, e.g. one written before part files
existed) and replaces ``summary.csv`` atomically under a file lock.

Merging: rows are grouped by their key (``key_columns``, by default the clip name). For each key
the rows of the latest :meth:`SummaryStore.append` call that holds that key replace all earlier
rows of that key, so a clip that is explained again (or fails again) replaces its old rows, as a
rerun of one process does.
"""
from __future__ import annotations

import io
import json
import math
import os
import secrets
import socket
import time
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from utils.io.atomic import atomic_path, cleanup_stale_temporaries
from utils.io.errors import interrupted
from utils.io.paths import printable

try:  # advisory file locks; absent on Windows, where rebuilds are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

SUMMARY_COLUMNS = ("clip", "output_set", "label", "prediction", "probability", "target", "method",
                   "model", "seconds", "status", "error", "key")
KEY_COLUMNS: Tuple[str, ...] = ("clip",)
PART_SUFFIX = ".jsonl"
_FORMAT_VERSION = 1


class SummaryError(ValueError):
    """A summary file that cannot be read (empty, garbage, binary, missing key columns)."""


def _plain(value):
    """JSON-ready form of a cell: numpy scalars to Python, paths and the rest to text."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        # Text from file names that are not UTF-8 cannot be written as UTF-8: their odd bytes
        # are kept as \xHH rather than stopping the run.
        return printable(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _plain(str(value))


def read_summary_csv(path: Path, key_columns: Sequence[str] = KEY_COLUMNS) -> pd.DataFrame:
    """Read a summary CSV (every cell as text, empty cells as ``""``); :class:`SummaryError`
    names the file when it is empty, binary, not CSV or lacks the key columns."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536)
    except OSError as error:
        raise SummaryError(f"cannot read summary {path}: {error.strerror or error}") from None
    if not head.strip():
        raise SummaryError(f"summary {path} is empty")
    if b"\x00" in head:
        raise SummaryError(f"summary {path} is a binary file, not CSV")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        if interrupted():     # Ctrl-C inside pandas' parser comes out as a ParserError
            raise KeyboardInterrupt from None
        reason = " ".join(str(error).split())
        raise SummaryError(f"summary {path} is not a readable CSV file: {reason}") from None
    missing = [c for c in key_columns if c not in frame.columns]
    if missing:
        raise SummaryError(f"summary {path} is not a summary file: no column "
                           f"{', '.join(missing)}")
    return frame


def order_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``SUMMARY_COLUMNS`` first (added empty when missing), the others in first-seen order."""
    frame = frame.copy()
    for column in SUMMARY_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    extra = [c for c in frame.columns if c not in SUMMARY_COLUMNS]
    return frame[list(SUMMARY_COLUMNS) + extra]


def _as_read_back(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame exactly as ``pd.read_csv`` of the written summary would return it."""
    text = frame.to_csv(index=False)
    dtypes = {c: str for c in ("clip", "settings") if c in frame.columns}
    return pd.read_csv(io.StringIO(text), keep_default_na=False, dtype=dtypes)


class SummaryStore:
    """Summary rows of one output folder.

    ``folder``: the output folder; ``name``: the derived CSV (``summary.csv``), whose part files
    live in ``<stem>.parts/``; ``key_columns``: the columns that identify a row (see the module
    text for how rows of one key replace each other).
    """

    def __init__(self, folder: Path, key_columns: Sequence[str] = KEY_COLUMNS,
                 name: str = "summary.csv"):
        if not key_columns:
            raise ValueError("key_columns must name at least one column")
        self.folder = Path(folder)
        self.key_columns = tuple(key_columns)
        self.path = self.folder / name
        stem = Path(name).stem
        self.parts_dir = self.folder / f"{stem}.parts"
        # The lock lives in the part folder, so the output folder holds no hidden files.
        self.lock_path = self.parts_dir / ".lock"
        self.started = time.time()
        host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:24]
        self._part_name = f"{host or 'host'}-{os.getpid()}-{secrets.token_hex(4)}{PART_SUFFIX}"
        self._pid = os.getpid()
        self._sequence = 0

    # -- writing ----------------------------------------------------------------------------
    @property
    def part_path(self) -> Path:
        """This store's own part file (a forked child gets a new one)."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._part_name = (self._part_name.rsplit("-", 2)[0] +
                               f"-{self._pid}-{secrets.token_hex(4)}{PART_SUFFIX}")
            self._sequence = 0
        return self.parts_dir / self._part_name

    def append(self, rows: Iterable[Mapping]) -> None:
        """Record ``rows`` (one batch: together they replace earlier rows of their keys).
        One write and one fsync per call; the part file is created whole with its first batch."""
        rows = [dict(r) for r in rows]
        if not rows:
            return
        for row in rows:
            missing = [c for c in self.key_columns if c not in row]
            if missing:
                raise ValueError(f"summary row lacks key column {', '.join(missing)}: {row}")
        path = self.part_path
        self._sequence += 1
        order = [time.time_ns(), self._sequence]
        lines = "".join(json.dumps({"v": _FORMAT_VERSION, "order": order,
                                    "row": {str(k): _plain(v) for k, v in row.items()}},
                                   ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
        data = lines.encode("utf-8")
        if not path.exists():
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temp:
                with open(temp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            _fsync_dir(self.parts_dir)
            return
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # -- reading ----------------------------------------------------------------------------
    def part_files(self) -> List[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(p for p in self.parts_dir.iterdir()
                      if p.suffix == PART_SUFFIX and not p.name.startswith(".") and p.is_file())

    def _read_part(self, path: Path) -> List[Tuple[tuple, dict]]:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise SummaryError(f"cannot read summary part {path}: {error.strerror or error}") \
                from None
        if not data:
            raise SummaryError(f"summary part {path} is empty")
        if b"\x00" in data:
            raise SummaryError(f"summary part {path} is a binary file, not JSON lines")
        lines = data.split(b"\n")
        if lines[-1]:
            # A writer killed in the middle of its last write; the complete lines still count.
            warnings.warn(f"summary part {path}: incomplete last line ignored")
        entries = []
        for number, line in enumerate(lines[:-1], start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
                order = (int(record["order"][0]), path.name, int(record["order"][1]))
                row = record["row"]
                if not isinstance(row, dict):
                    raise TypeError("row is not an object")
            except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as error:
                reason = " ".join(str(error).split())
                raise SummaryError(f"summary part {path} line {number} is not a summary "
                                   f"record: {reason}") from None
            missing = [c for c in self.key_columns if c not in row]
            if missing:
                raise SummaryError(f"summary part {path} line {number} lacks key column "
                                   f"{', '.join(missing)}")
            entries.append((order, row))
        return entries

    def _key(self, row: Mapping) -> tuple:
        return tuple("" if row.get(c) is None else str(row.get(c)) for c in self.key_columns)

    def _merged_rows(self) -> List[dict]:
        entries: List[Tuple[tuple, dict]] = []
        parts = self.part_files()
        for part in parts:
            entries.extend(self._read_part(part))
        if self.path.is_file():
            try:
                base = read_summary_csv(self.path, self.key_columns)
            except SummaryError as error:
                if not parts:
                    raise
                warnings.warn(f"{error}; it is rebuilt from {self.parts_dir.name}/")
            else:
                # Rows of summary.csv come before every part row: a part row of the same key wins.
                entries = [((-1, "", 0), row) for row in base.to_dict("records")] + entries
        latest: Dict[tuple, tuple] = {}  # key -> order (= batch) of its latest append
        for order, row in entries:
            key = self._key(row)
            if key not in latest or order > latest[key]:
                latest[key] = order
        kept = [(order, i, row) for i, (order, row) in enumerate(entries)
                if latest[self._key(row)] == order]
        kept.sort(key=lambda item: (item[0], item[1]))
        rows = [row for _, _, row in kept]
        # A clip's error row is resolved by a later successful row of the same clip (whatever
        # the key columns): the error no longer describes the folder.
        last_ok = {str(row.get("clip")): i for i, row in enumerate(rows) if row.get("status") == "ok"}
        return [row for i, row in enumerate(rows)
                if not (row.get("status") == "error" and last_ok.get(str(row.get("clip")), -1) > i)]

    def read(self) -> pd.DataFrame:
        """The merged summary (``SUMMARY_COLUMNS`` first), typed as ``pd.read_csv`` of
        ``summary.csv`` with ``keep_default_na=False`` would type it. Writes nothing."""
        rows = self._merged_rows()
        if not rows:
            return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
        return _as_read_back(order_columns(pd.DataFrame(rows)))

    def rebuild(self) -> pd.DataFrame:
        """Merge, write ``summary.csv`` atomically under the folder's lock, return the frame.
        A garbage ``summary.csv`` is replaced when part files exist (with a warning)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            frame = self.read()
            with atomic_path(self.path) as temp:
                frame.to_csv(temp, index=False)
        return frame

    def cleanup_stale(self, older_than: Optional[float] = None) -> List[Path]:
        """Delete temporaries of killed runs in the folder and in the part folder: only names of
        ``atomic_path``'s pattern, of this machine, whose process is gone and which were last
        modified before ``older_than`` (default: when this store was made). Returns them."""
        cutoff = self.started if older_than is None else older_than
        removed = cleanup_stale_temporaries(self.folder, cutoff)
        removed += cleanup_stale_temporaries(self.parts_dir, cutoff)
        return removed

    def _locked(self):
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        return _FileLock(self.lock_path)


class _FileLock:
    """Exclusive ``flock`` on a lock file for the duration of a ``with`` block."""

    def __init__(self, path: Path):
        self.path = path
        self._descriptor: Optional[int] = None

    def __enter__(self):
        self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        try:
            if fcntl is not None:
                fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        finally:
            os.close(self._descriptor)
            self._descriptor = None
        return False


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def row_key(row: Mapping) -> str:
    """A summary row's identity: its first output's stem (unique per clip, target, output set
    and polarity), or ``<clip>#error`` for a failed clip."""
    outputs = [n for n in str(row.get("outputs") or "").split(";") if n]
    if outputs:
        return Path(outputs[0]).stem
    return f"{row.get('clip')}#{row.get('status') or 'error'}"
