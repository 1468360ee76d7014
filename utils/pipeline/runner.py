"""The threaded run over a folder of clips: a reader thread, the model on the calling thread,
writer threads; every clip succeeds or fails on its own."""
from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pandas as pd
import torch
from tqdm import tqdm

from models import WeightsUnavailableError
from models.adapter import ModelAdapter

from utils.render import figures as visualize
from utils.render import report
from utils.io.summary import row_key
from utils.io.summary import SummaryError, SummaryStore
from utils.io.clips import ClipSource
from utils.io.errors import SetupError
from utils.io.paths import clip_ids, printable
from utils.pipeline.settings import RunSettings
from utils.pipeline.stages import (ClipInput, ClipWork, check_run, compute_clips, error_row,
                                   finish_clip, read_clip, upscale_warning)




# ------------------------------------------------------------------------------ the run

SUMMARY_KEY = ("key",)


def open_summary(folder: Path) -> Tuple[SummaryStore, Optional[pd.DataFrame]]:
    """The folder's summary store (stale temporaries of killed runs removed) and its rows so far
    (``None`` when there are none); an unreadable summary is a :class:`SetupError`."""
    store = SummaryStore(folder, key_columns=SUMMARY_KEY)
    if not folder.is_dir():
        return store, None
    if store.path.exists() or store.path.is_symlink():
        try:
            if not store.path.is_file():
                raise IsADirectoryError(0, "not a regular file")
            with open(store.path, "rb") as handle:
                handle.read(1)
        except OSError as error:
            raise SetupError(f"cannot read summary {store.path} ({error.strerror or error}); "
                             "move it away or choose another --out_dir") from None
    store.cleanup_stale()
    try:
        if not store.path.is_file() and not store.part_files():
            return store, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = store.read()
    except SummaryError as error:
        raise SetupError(f"{error}; move it away or choose another --out_dir") from None
    return store, (summary.astype(str) if not summary.empty else None)


def clip_done(summary: Optional[pd.DataFrame], clip_id: str, folder: Path, fingerprint: str,
              formats: Sequence[str]) -> bool:
    """Whether ``clip_id`` has ok rows with this fingerprint whose outputs exist in every
    requested format."""
    if summary is None or not {"outputs", "settings", "status"} <= set(summary.columns):
        return False
    rows = summary[(summary["clip"] == clip_id) & (summary["settings"] == fingerprint)]
    if rows.empty or (rows["status"] != "ok").any():
        return False
    for outputs in rows["outputs"]:
        names = [n for n in str(outputs).split(";") if n]
        have = {Path(n).suffix.lstrip(".") for n in names}
        if not set(formats) <= have or not all((folder / n).is_file() for n in names):
            return False
    return True


REPORT_INTERVAL = 5.0      # seconds between rebuilds of index.html while clips finish


def write_reports(stores: Mapping[str, SummaryStore], folders: Mapping[str, Path],
                  compare_folder: Optional[Path]) -> None:
    """``index.html`` beside every method's summary, and with several methods one in the
    comparison folder with the methods side by side."""
    frames = {}
    for method, store in stores.items():
        if not store.part_files() and not store.path.is_file():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = store.read()
        report.write_report(folders[method], frame)
        frames[method] = frame.assign(folder=str(folders[method].resolve()))
    if compare_folder is not None and frames:
        compare_folder.mkdir(parents=True, exist_ok=True)
        report.write_report(compare_folder, pd.concat(list(frames.values()), ignore_index=True),
                            list(stores))


@dataclass(frozen=True)
class RunCounts:
    """What a run did with its clips: ``done`` now, ``skipped`` (done by an earlier run with the
    same settings) and ``failed``."""

    done: int
    skipped: int
    failed: int

    def text(self) -> str:
        return (f"{self.done} clip{'' if self.done == 1 else 's'} done now, {self.skipped} "
                f"skipped as already done, {self.failed} failed")


def run(clips: Sequence[ClipSource], load_adapter: Callable[[], ModelAdapter],
        device: torch.device, settings: RunSettings, class_names: Sequence[str],
        folders: Mapping[str, Path], synonyms=None,
        compare_folder: Optional[Path] = None) -> RunCounts:
    """Process every clip; returns how many were done, skipped and failed. ``load_adapter`` is called
    once, before the first clip that needs the model (a fully resumed run loads nothing);
    :class:`SetupError` / :class:`WeightsUnavailableError` from it stop the run."""
    ids = clip_ids(clips)
    opened = {m: open_summary(folders[m]) for m in settings.methods}
    stores = {m: opened[m][0] for m in settings.methods}
    summaries = {m: None if settings.overwrite else opened[m][1] for m in settings.methods}
    fingerprints = {m: settings.fingerprint(m) for m in settings.methods}
    todo = []
    for source, clip_id in zip(clips, ids):
        if not settings.overwrite and all(
                clip_done(summaries[m], clip_id, folders[m], fingerprints[m], settings.formats)
                for m in settings.methods):
            tqdm.write(f"skip: {clip_id}: outputs exist (use --overwrite to redo)", file=sys.stderr)
            continue
        todo.append((source, clip_id))
    skipped = len(clips) - len(todo)
    if not todo:
        return RunCounts(0, skipped, 0)
    adapter = load_adapter()
    check_run(adapter, settings)
    try:
        failed = _run_clips(todo, adapter, device, settings, class_names, folders, stores,
                            fingerprints, synonyms, compare_folder)
        return RunCounts(len(todo) - failed, skipped, failed)
    finally:
        # summary.csv is derived from the part files: rebuilt at the end, even after Ctrl-C.
        for method, store in stores.items():
            if store.part_files():
                store.rebuild()
        write_reports(stores, folders, compare_folder)


PREFETCH = 2              # clips decoded ahead of the model
WRITERS = 2               # threads drawing and writing (PNG deflate, GIF and MP4 encoding and
                          # numpy release the GIL, so two clips are drawn at once)
PENDING_WRITES = 4        # computed clips waiting for their pictures and files
CPU_BATCH, CUDA_BATCH = 1, 8


def default_batch_size(device: torch.device) -> int:
    """Clips per forward/backward when ``--batch_size`` is not given. On this project's 2-core
    CPU batching does not pay (measured for integrated gradients: batch 5 was 1.17x slower than
    one clip at a time), so 1; on CUDA 8 (measured on an H200, I3D Grad-CAM: 57.7 clips/s one
    at a time, 712 at 8, 941 at 32, so 8 takes most of the gain at a quarter of the memory)."""
    return CPU_BATCH if torch.device(device).type == "cpu" else CUDA_BATCH


class _WarningRouter:
    """Sends each warning to the clip whose work raised it, whichever thread runs that work:
    a job collects into its own list (thread-local), and the run prints them on the clip's line."""

    def __init__(self):
        self.local = threading.local()

    @contextlib.contextmanager
    def collecting(self, into: List[str]) -> Iterator[List[str]]:
        previous = getattr(self.local, "into", None)
        self.local.into = into
        try:
            yield into
        finally:
            self.local.into = previous

    def show(self, message, category, filename, lineno, file=None, line=None) -> None:
        into = getattr(self.local, "into", None)
        text = printable(" ".join(str(message).split()))
        if into is None:
            tqdm.write(f"warning: {text}", file=sys.stderr)
        else:
            into.append(text)


def _run_clips(todo, adapter, device, settings, class_names, folders, stores,
               fingerprints, synonyms, compare_folder) -> int:
    """Three stages at once: a reader thread decodes the next clips, the calling thread runs the
    model (several clips per forward/backward with ``settings.batch_size``), writer threads
    draw and write the finished ones (recorded in clip order). Queues are bounded, so memory does not grow with the
    number of clips; every clip still succeeds or fails on its own."""
    router = _WarningRouter()
    fonts = visualize.Typesetter()      # texts repeated between clips drawn once per run
    clip_length = settings.clip_length or adapter.clip_length
    batch_size = settings.batch_size or default_batch_size(device)
    state = {"failures": 0, "last_report": time.monotonic(), "upscale_warned": False}
    bar = tqdm(total=len(todo), desc=f"{','.join(settings.methods)}/{settings.model_name}",
               unit="clip", disable=not settings.progress or len(todo) < 2)

    def read_job(source: ClipSource, clip_id: str):
        notes: List[str] = []
        with router.collecting(notes):
            try:
                return read_clip(source, clip_id, adapter, clip_length, torch.device("cpu")), \
                    notes, None
            except Exception as error:  # reported on the clip's line
                return None, notes, error

    def finish_job(work: ClipWork, notes: List[str]):
        started = time.perf_counter()
        with router.collecting(notes):
            try:
                return finish_clip(work, adapter.name, settings, folders, compare_folder,
                                   fonts, class_names), \
                    time.perf_counter() - started, None
            except Exception as error:
                return None, time.perf_counter() - started, error

    def record(clip_id: str, rows: Optional[Dict[str, List[dict]]], notes: List[str],
               error: Optional[BaseException], seconds: float) -> None:
        for text in notes:
            tqdm.write(f"warning: {clip_id}: {printable(text)}", file=sys.stderr)
        if error is not None:
            state["failures"] += 1
            message = printable(" ".join(str(error).split()) or type(error).__name__)
            tqdm.write(f"error: {clip_id}: {message}", file=sys.stderr)
            rows = {m: [error_row(clip_id, m, settings.model_name, seconds, message)]
                    for m in settings.methods}
        elif any(r.get("status") == "error" for m in rows.values() for r in m):
            # Some methods failed on this clip, the others wrote their outputs.
            state["failures"] += 1
            for method_rows in rows.values():
                for row in method_rows:
                    if row.get("status") == "error":
                        tqdm.write(f"error: {clip_id}: {printable(row['error'])}",
                                   file=sys.stderr)
        elif settings.progress:
            first = next((r[0] for r in rows.values() if r), None)
            if first is not None:
                probability = (f" ({float(first['probability']):.2f})"
                               if first.get("probability") not in ("", None) else "")
                tqdm.write(f"{clip_id}: label {first['label'] or 'unknown'}; prediction "
                           f"{first['prediction']}{probability}; {seconds:.2f} s",
                           file=sys.stderr)
        for method, method_rows in rows.items():
            for row in method_rows:
                row["settings"] = fingerprints[method]
                row["key"] = row_key(row)
            folders[method].mkdir(parents=True, exist_ok=True)
            stores[method].append(method_rows)
        bar.update(1)
        bar.set_postfix_str(clip_id[:40])
        if time.monotonic() - state["last_report"] >= REPORT_INTERVAL:
            write_reports(stores, folders, compare_folder)
            state["last_report"] = time.monotonic()

    def compute(group: List[Tuple[ClipInput, List[str]]]) -> List[Tuple]:
        """``(clip_id, work or None, notes, error, seconds)`` per clip of the group."""
        started = time.perf_counter()
        notes: List[str] = []
        same_size = len({tuple(c.tensor.shape) for c, _ in group}) == 1
        if len(group) > 1 and same_size:
            with router.collecting(notes):
                try:
                    works = compute_clips([c for c, _ in group], adapter, settings, class_names,
                                          synonyms)
                except (KeyboardInterrupt, SystemExit, WeightsUnavailableError):
                    raise
                except Exception:  # noqa: BLE001 - find the clip that fails: one at a time
                    works = None
            if works is not None:
                seconds = (time.perf_counter() - started) / len(group)
                group[0][1].extend(notes)
                return [(c.clip_id, w, n, None, seconds) for (c, n), w in zip(group, works)]
        results = []
        for clip, clip_notes in group:
            started = time.perf_counter()
            with router.collecting(clip_notes):
                try:
                    work = compute_clips([clip], adapter, settings, class_names, synonyms)[0]
                    results.append((clip.clip_id, work, clip_notes, None,
                                    time.perf_counter() - started))
                except (KeyboardInterrupt, SystemExit, WeightsUnavailableError):
                    raise
                except Exception as error:  # one bad clip must not stop the batch
                    results.append((clip.clip_id, None, clip_notes, error,
                                    time.perf_counter() - started))
        return results

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = router.show
        reader = ThreadPoolExecutor(1, thread_name_prefix="videovisual-read")
        writer = ThreadPoolExecutor(WRITERS, thread_name_prefix="videovisual-write")
        reads: collections.deque = collections.deque()
        writes: collections.deque = collections.deque()
        try:
            pending = iter(todo)

            def refill() -> None:
                while len(reads) < PREFETCH + batch_size:
                    item = next(pending, None)
                    if item is None:
                        return
                    source, clip_id = item
                    reads.append((clip_id, reader.submit(read_job, source, clip_id)))

            def drain(limit: int) -> None:
                while len(writes) > limit:
                    clip_id, future, notes, compute_seconds = writes[0]
                    rows, finish_seconds, error = future.result()
                    writes.popleft()
                    record(clip_id, rows, notes, error, compute_seconds + finish_seconds)

            refill()
            while reads:
                group: List[Tuple[ClipInput, List[str]]] = []
                while reads and len(group) < batch_size:
                    clip_id, future = reads.popleft()
                    refill()
                    clip, notes, error = future.result()
                    if error is not None:
                        drain(0)            # keep the summary in clip order
                        record(clip_id, None, notes, error, 0.0)
                        continue
                    upscaled = upscale_warning(clip, adapter.resize)
                    if upscaled and not state["upscale_warned"]:
                        state["upscale_warned"] = True
                        tqdm.write(f"warning: {upscaled}", file=sys.stderr)
                    tensor = clip.tensor.to(device)
                    if settings.precision == "bf16" and tensor.is_cuda:
                        tensor = tensor.contiguous(memory_format=torch.channels_last_3d)
                    group.append((replace(clip, tensor=tensor), notes))
                if not group:
                    continue
                for clip_id, work, notes, error, seconds in compute(group):
                    if error is not None:
                        drain(0)
                        record(clip_id, None, notes, error, seconds)
                        continue
                    writes.append((clip_id, writer.submit(finish_job, work, notes), notes,
                                   seconds))
                drain(PENDING_WRITES)
            drain(0)
        finally:
            # Interrupted or not: the clip being written is finished and recorded, queued ones
            # are dropped, so no output exists without its summary row.
            reader.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True, cancel_futures=True)
            for clip_id, future, notes, seconds in writes:
                if future.done() and not future.cancelled():
                    rows, finish_seconds, error = future.result()
                    record(clip_id, rows, notes, error, seconds + finish_seconds)
            bar.close()
    return state["failures"]
