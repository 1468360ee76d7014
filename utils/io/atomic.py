"""Writing results whole or not at all: every file goes to a temporary name in the same folder
and is renamed into place only when complete."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Iterator, List, Optional


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


def write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8) to ``path``, whole or not at all."""
    with atomic_path(Path(path)) as temp:
        Path(temp).write_text(text, encoding="utf-8")


def write_csv(frame, path: Path) -> None:
    """A pandas table to ``path`` without its index, whole or not at all."""
    with atomic_path(Path(path)) as temp:
        frame.to_csv(temp, index=False)
