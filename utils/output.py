"""Writing results whole or not at all: every file goes to a temporary name in the same folder
and is renamed into place only when complete."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

SUMMARY_COLUMNS = ("clip", "output_set", "label", "prediction", "probability", "target", "method",
                   "model", "seconds", "status", "error", "key")


# Temporary names: ``.<stem>.tmp-<host>-<pid>.<8 random><suffix>``. The host and pid let
# :func:`cleanup_stale_temporaries` recognise files left by a killed run of this machine and leave
# those of a writer that is still alive (or runs on another machine sharing the folder) alone.
_TEMP_PATTERN = re.compile(r"^\.(?P<stem>.*)\.tmp-(?P<host>[A-Za-z0-9-]{1,24})-(?P<pid>\d+)"
                           r"\.(?P<token>[a-z0-9]{8})(?P<suffix>\.[^.]*)?$")


def _host_tag() -> str:
    """This machine's name reduced to ``[A-Za-z0-9-]``, at most 24 characters."""
    tag = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:24]
    return tag or "host"


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status`` where available; the
    fallback sets and restores it, which is not thread-safe, so it is only a fallback)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_name(path: Path, host: str) -> Path:
    # one call for the random part: in a busy process every system call may wait for the GIL
    return path.parent / f".{path.stem}.tmp-{host}-{os.getpid()}.{secrets.token_hex(4)}{path.suffix}"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds,
    delete it otherwise. Until the rename, ``path`` keeps its old content (or does not exist).
    The file gets the permissions a plain ``open`` would give it (created with ``0o666``, which
    the system reduces by the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = _host_tag()
    while True:
        temp = _temp_name(path, host)
        try:
            handle = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 16**8 names
            continue
    os.close(handle)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def is_stale_temporary(path: Path, older_than: Optional[float] = None) -> bool:
    """Whether ``path`` is a temporary of :func:`atomic_path` left by a process of this machine
    that is no longer alive (and, with ``older_than``, last modified before that time stamp)."""
    match = _TEMP_PATTERN.match(Path(path).name)
    if match is None or match["host"] != _host_tag():
        return False
    pid = int(match["pid"])
    if pid == os.getpid() or _pid_alive(pid):
        return False
    if older_than is not None:
        try:
            if Path(path).stat().st_mtime >= older_than:
                return False
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user
    except OSError:
        return True  # unknown: keep the file
    return True


def cleanup_stale_temporaries(folder: Path, older_than: Optional[float] = None) -> List[Path]:
    """Delete the temporaries that killed runs of :func:`atomic_path` left in ``folder`` (not
    recursive); returns the deleted paths. Temporaries of live processes, of other machines and
    files that merely look similar are kept."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") and entry.is_file() and not entry.is_symlink() \
                and is_stale_temporary(entry, older_than):
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:
                pass  # removed meanwhile by another cleaner
    return removed


def save_figure(figure: Figure, path: Path, dpi: int = 100) -> None:
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=dpi, format="png")
    figure.clear()  # release the artists now rather than at garbage collection


def save_gif(pictures: list, path: Path, frame_ms: int = 125) -> None:
    # Fast octree quantisation: ~40x faster than Pillow's default palette search for 16 frames
    # of 448x224, with no visible loss on smooth heat-map overlays.
    paletted = [p.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
                for p in pictures]
    with atomic_path(path) as temp:
        paletted[0].save(temp, format="GIF", save_all=True, append_images=paletted[1:],
                         duration=frame_ms, loop=0)


def save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.save(handle, np.asarray(array, dtype=np.float32))


def row_key(row: Mapping) -> str:
    """A summary row's identity: its first output's stem (unique per clip, target, output set
    and polarity), or ``<clip>#error`` for a failed clip."""
    outputs = [n for n in str(row.get("outputs") or "").split(";") if n]
    if outputs:
        return Path(outputs[0]).stem
    return f"{row.get('clip')}#{row.get('status') or 'error'}"


def write_summary(rows: Sequence[Mapping], path: Path) -> pd.DataFrame:
    """Merge ``rows`` into the summary CSV at ``path``, write it atomically and return it.

    A row replaces the earlier row with the same key (:func:`row_key`); a clip's error row is
    dropped once the clip succeeds. Rows of other targets or output sets of the same clip stay.
    Reads and rewrites the whole file: one writer at a time; :class:`utils.summary.SummaryStore`
    is the append-only, multi-process form the pipeline uses. An unreadable existing file raises
    :class:`utils.summary.SummaryError`."""
    from .summary import read_summary_csv  # summary.py builds on this module

    new = pd.DataFrame([{**row, "key": row_key(row)} for row in rows])
    for column in SUMMARY_COLUMNS:
        if column not in new.columns:
            new[column] = None
    if Path(path).is_file():
        old = read_summary_csv(Path(path))
        if "key" not in old.columns:
            old["key"] = [row_key(r) for r in old.to_dict("records")]
        new["clip"] = new["clip"].astype(str)
        succeeded = set(new.loc[new["status"] == "ok", "clip"])
        stale = old["key"].isin(set(new["key"])) | (
            old["clip"].isin(succeeded) & (old["status"] == "error"))
        merged = pd.concat([old[~stale], new], ignore_index=True)
    else:
        merged = new
    extra: List[str] = [c for c in merged.columns if c not in SUMMARY_COLUMNS]
    merged = merged[list(SUMMARY_COLUMNS) + extra]
    with atomic_path(Path(path)) as temp:
        merged.to_csv(temp, index=False)
    return merged
