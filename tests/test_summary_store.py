"""SummaryStore: append-only part files, merging (latest batch per key), atomic rebuild, clear
errors for corrupt files, concurrent writers that lose no rows, stale temporaries."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Mapping, Sequence

import numpy as np
import pandas as pd
import pytest

from utils.io import atomic as output
from utils.io.atomic import atomic_path
from utils.io.summary import SUMMARY_COLUMNS, read_summary_csv, row_key
from utils.io.summary import SummaryError, SummaryStore

ROOT = Path(__file__).resolve().parent.parent



def write_summary(rows: Sequence[Mapping], path: Path) -> pd.DataFrame:
    """The single-writer summary of earlier versions (merge ``rows`` into the CSV at ``path``):
    kept here to write the old files a store must read.

    A row replaces the earlier row with the same key (:func:`row_key`); a clip's error row is
    dropped once the clip succeeds. Rows of other targets or output sets of the same clip stay.
    Reads and rewrites the whole file: one writer at a time; :class:`utils.io.summary.SummaryStore`
    is the append-only, multi-process form the pipeline uses. An unreadable existing file raises
    :class:`utils.io.summary.SummaryError`."""

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


def _row(clip, target="t", status="ok", **extra):
    return {"clip": clip, "target": target, "status": status, "method": "grad_cam", **extra}


def test_append_read_rebuild_roundtrip(tmp_path):
    store = SummaryStore(tmp_path)
    store.append([_row("a-1", seconds=0.5, outputs="a-1.png;a-1.npy", settings="00123")])
    store.append([_row("b-2", seconds=np.float32(1.25), probability=float("nan"),
                       gap=np.int64(3), settings="00123")])
    frame = store.read()
    assert list(frame.columns[:len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS)
    assert list(frame.columns[len(SUMMARY_COLUMNS):]) == ["outputs", "settings", "gap"]
    assert frame["clip"].tolist() == ["a-1", "b-2"]
    assert frame["seconds"].tolist() == [0.5, 1.25]
    assert frame["probability"].tolist() == ["", ""]          # NaN and missing: empty cells
    assert frame["settings"].tolist() == ["00123", "00123"]   # text, leading zeros kept
    assert not (tmp_path / "summary.csv").exists()            # read() writes nothing
    rebuilt = store.rebuild()
    on_disk = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False,
                          dtype={"clip": str, "settings": str})
    pd.testing.assert_frame_equal(rebuilt, on_disk)
    pd.testing.assert_frame_equal(frame, on_disk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.parts"]


def test_latest_batch_of_a_clip_replaces_its_rows(tmp_path):
    first = SummaryStore(tmp_path)
    first.append([_row("a-1", "x"), _row("a-1", "y")])
    first.append([_row("b-1", "x")])
    second = SummaryStore(tmp_path)                 # a later run, its own part file
    second.append([_row("a-1", "", status="error", error="bad frame")])
    frame = second.read()
    assert frame[["clip", "target", "status"]].values.tolist() == [
        ["b-1", "x", "ok"], ["a-1", "", "error"]]
    # keyed by clip and target instead, the other targets stay
    by_target = SummaryStore(tmp_path, key_columns=("clip", "target")).read()
    assert by_target[["clip", "target"]].values.tolist() == [
        ["a-1", "x"], ["a-1", "y"], ["b-1", "x"], ["a-1", ""]]
    # a rerun of a-1 with two targets replaces the error row by both
    first.append([_row("a-1", "x"), _row("a-1", "z")])
    assert first.read()[["clip", "target"]].values.tolist() == [
        ["b-1", "x"], ["a-1", "x"], ["a-1", "z"]]


def test_existing_summary_rows_kept_and_overridden(tmp_path):
    write_summary([_row("old-1", seconds=2), _row("a-1", seconds=9)], tmp_path / "summary.csv")
    store = SummaryStore(tmp_path)
    store.append([_row("a-1", seconds=1)])
    frame = store.rebuild()
    assert frame[["clip", "seconds"]].values.tolist() == [["old-1", 2], ["a-1", 1]]
    # summary.csv now holds the part rows too: a second rebuild changes nothing
    pd.testing.assert_frame_equal(SummaryStore(tmp_path).rebuild(), frame)


def test_part_file_grows_by_one_line_per_row_without_reading(tmp_path):
    (tmp_path / "summary.csv").write_bytes(b"\x00\x01garbage")    # never read by append
    store = SummaryStore(tmp_path)
    store.append([_row("a-1")])
    size = store.part_path.stat().st_size
    store.append([_row("b-1")])
    lines = store.part_path.read_text().splitlines()
    assert len(lines) == 2 and store.part_path.stat().st_size == size + len(lines[1]) + 1
    assert json.loads(lines[1])["row"]["clip"] == "b-1"
    assert oct(store.part_path.stat().st_mode & 0o777) == oct(0o666 & ~output.current_umask())


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    (b"hello world\nthis is not, a summary\n", "no column clip"),
])
def test_corrupt_summary_csv_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "summary.csv"
    path.write_bytes(content)
    with pytest.raises(SummaryError, match=message) as caught:
        SummaryStore(tmp_path).read()
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(SummaryError, match=message):
        write_summary([_row("a-1")], path)                  # the old writer says the same


def test_garbage_summary_replaced_when_parts_exist(tmp_path):
    store = SummaryStore(tmp_path)
    store.append([_row("a-1")])
    (tmp_path / "summary.csv").write_bytes(b"\x00\xff" * 20)
    with pytest.warns(UserWarning, match="rebuilt from summary.parts"):
        frame = store.rebuild()
    assert frame["clip"].tolist() == ["a-1"]
    assert pd.read_csv(tmp_path / "summary.csv")["clip"].tolist() == ["a-1"]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x00\x01\x02\x03\n", "binary file"),
    (b'{"v": 1, "order": [1, 1], "row": {"clip": "a"}}\nnot json\n', "line 2 is not a summary"),
    (b'{"v": 1, "order": [1, 1], "row": {"target": "a"}}\n', "line 1 lacks key column clip"),
])
def test_corrupt_part_file_names_the_file(tmp_path, content, message):
    parts = tmp_path / "summary.parts"
    parts.mkdir()
    bad = parts / "otherhost-1-abcd.jsonl"
    bad.write_bytes(content)
    with pytest.raises(SummaryError, match=message) as caught:
        SummaryStore(tmp_path).read()
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)


def test_incomplete_last_line_of_a_killed_writer_is_skipped(tmp_path):
    store = SummaryStore(tmp_path)
    store.append([_row("a-1")])
    with open(store.part_path, "ab") as handle:
        handle.write(b'{"v": 1, "order": [9, 9], "row": {"cl')
    with pytest.warns(UserWarning, match="incomplete last line ignored"):
        assert store.read()["clip"].tolist() == ["a-1"]


_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from utils.io.summary import SummaryStore
folder, tag, count, go = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
store = SummaryStore(folder)
(go.parent / f"ready-{tag}").touch()
while not go.exists():
    time.sleep(0.005)
for i in range(count):
    store.append([{"clip": f"{tag}-{i}", "target": "t", "status": "ok", "seconds": i}])
store.rebuild()
"""


@pytest.mark.parametrize("count, processes", [(100, 2), (150, 2), (100, 4)])
def test_concurrent_writers_lose_no_rows(tmp_path, count, processes):
    go = tmp_path / "go"
    folder = tmp_path / "out"
    tags = "pqrs"[:processes]
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(ROOT), str(folder), tag,
                                 str(count), str(go)], stderr=subprocess.PIPE, text=True)
               for tag in tags]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready-{t}").exists() for t in tags):
        assert time.time() < deadline and all(w.poll() is None for w in writers)
        time.sleep(0.01)
    go.touch()                # both imported and waiting: they append at the same time
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    expected = {f"{tag}-{i}" for tag in tags for i in range(count)}
    frame = SummaryStore(folder).read()
    assert len(frame) == processes * count and set(frame["clip"]) == expected
    on_disk = pd.read_csv(folder / "summary.csv", dtype={"clip": str})
    assert len(on_disk) == processes * count and set(on_disk["clip"]) == expected
    parts = sorted((folder / "summary.parts").glob("*.jsonl"))
    assert len(parts) == processes
    # the two writers really overlapped in time
    spans = [[json.loads(line)["order"][0] for line in p.read_text().splitlines()] for p in parts]
    assert max(min(s) for s in spans) < min(max(s) for s in spans)


def test_cleanup_stale_temporaries_of_killed_runs(tmp_path):
    host = output._host_tag()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f".clip-1.tmp-{host}-{child.pid}.a1b2c3d4.png"
    stale_part = tmp_path / "summary.parts" / f".{host}-{child.pid}-ab12.tmp-{host}-" \
                                              f"{child.pid}.a1b2c3d4.jsonl"
    mine = tmp_path / f".clip-2.tmp-{host}-{os.getpid()}.a1b2c3d4.png"
    stale_part.parent.mkdir()
    for path in (stale, stale_part, mine):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 600, time.time() - 600))
    store = SummaryStore(tmp_path)
    assert sorted(store.cleanup_stale()) == sorted([stale, stale_part])
    assert mine.exists() and not stale.exists() and not stale_part.exists()
