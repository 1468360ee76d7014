"""atomic_path: the target is never seen half written, failures leave nothing behind, files get
the umask's permissions, and stale temporaries of killed runs are recognised."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.io import atomic as output
from utils.io.atomic import atomic_path, cleanup_stale_temporaries, current_umask, is_stale_temporary

ROOT = Path(__file__).resolve().parent.parent


def test_target_absent_or_old_until_the_block_ends(tmp_path):
    target = tmp_path / "out" / "map.npy"
    with atomic_path(target) as temp:
        temp.write_bytes(b"first")
        assert not target.exists()                      # nothing at the target while writing
    assert target.read_bytes() == b"first"
    with atomic_path(target) as temp:
        temp.write_bytes(b"second, longer")
        assert target.read_bytes() == b"first"          # old content until the rename
    assert target.read_bytes() == b"second, longer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["map.npy"]


def test_failed_write_keeps_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(target) as temp:
            temp.write_text("half")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_temporary_name_carries_host_and_pid(tmp_path):
    with atomic_path(tmp_path / "clip.png") as temp:
        name = temp.name
        assert name.startswith(".clip.tmp-") and name.endswith(".png")
        assert f"-{os.getpid()}." in name
        assert output._TEMP_PATTERN.match(name)["pid"] == str(os.getpid())
        assert not is_stale_temporary(temp)              # ours, alive


_PERMISSIONS_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
os.umask(int(sys.argv[2], 8))
from pathlib import Path
from utils.io.atomic import atomic_path, current_umask
with atomic_path(Path(sys.argv[3])) as temp:
    temp.write_text("x")
print(oct(current_umask()), oct(os.stat(sys.argv[3]).st_mode & 0o777))
"""


@pytest.mark.parametrize("umask, mode", [("022", 0o644), ("077", 0o600), ("002", 0o664)])
def test_permissions_follow_the_umask(tmp_path, umask, mode):
    target = tmp_path / f"f{umask}.png"
    result = subprocess.run([sys.executable, "-c", _PERMISSIONS_SCRIPT, str(ROOT), umask,
                             str(target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen_umask, seen_mode = result.stdout.split()
    assert int(seen_umask, 8) == int(umask, 8)
    assert int(seen_mode, 8) == mode == stat.S_IMODE(target.stat().st_mode)


def test_umask_read_without_changing_it():
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027                  # still the same afterwards
    finally:
        os.umask(before)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_cleanup_removes_only_stale_temporaries(tmp_path):
    host = output._host_tag()
    dead = _dead_pid()
    stale = tmp_path / f".clip.tmp-{host}-{dead}.abcd1234.png"
    live = tmp_path / f".clip.tmp-{host}-{os.getpid()}.abcd1234.png"      # a writer alive
    parent = tmp_path / f".clip.tmp-{host}-{os.getppid()}.zzzz9999.gif"   # another live one
    foreign = tmp_path / f".clip.tmp-otherhost-{dead}.abcd1234.png"       # another machine
    legacy = tmp_path / ".clip.k2j3h4g5.png"                                # not our pattern
    fresh = tmp_path / f".map.tmp-{host}-{dead}.qqqq0000.npy"              # newer than cutoff
    user = tmp_path / ".clip.tmp-notes.txt"
    for path in (stale, live, parent, foreign, legacy, fresh, user):
        path.write_bytes(b"x")
    old = time.time() - 3600
    for path in (stale, live, parent, foreign, legacy, user):
        os.utime(path, (old, old))
    removed = cleanup_stale_temporaries(tmp_path, older_than=time.time() - 60)
    assert removed == [stale]
    assert not stale.exists()
    assert all(p.exists() for p in (live, parent, foreign, legacy, fresh, user))
    # without a cutoff the fresh one of the dead process goes too
    assert cleanup_stale_temporaries(tmp_path) == [fresh]
