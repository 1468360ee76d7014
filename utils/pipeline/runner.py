"""The threaded run over a folder of clips: a reader thread, the model on the calling thread,
writer threads; every clip succeeds or fails on its own."""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from models import WeightsUnavailableError
from models.adapter import ModelAdapter

from utils.render import figures as visualize
from utils.render import report
from utils.io.summary import row_key
from utils.io.summary import SummaryError, SummaryStore
from utils.io.clips import ClipSource, ignore_decoder_deprecation
from utils.io.errors import SetupError
from utils.io.paths import clip_ids, printable
from utils.pipeline.settings import RunSettings
from utils.pipeline.options import CPU_BATCH, CUDA_BATCH
from utils.pipeline.setup import checked_outputs, decode_device
from utils.pipeline.stages import (ClipInput, ClipWork, check_run, compute_clips, error_row,
                                   finish_clip, read_clip, upscale_warning)

if TYPE_CHECKING:
    import pandas as pd




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
        import pandas as pd
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
        with checked_outputs(adapter, class_names):
            failed = ClipRunner(adapter, device, settings, class_names, folders, stores,
                                fingerprints, synonyms, compare_folder).run(todo)
        return RunCounts(len(todo) - failed, skipped, failed)
    finally:
        # summary.csv is derived from the part files: rebuilt at the end, even after Ctrl-C.
        for method, store in stores.items():
            if store.part_files():
                store.rebuild()
        write_reports(stores, folders, compare_folder)


PREFETCH = 2              # clips decoded ahead of the model
WRITER_THREADS = 2        # without writer processes: threads drawing and writing (PNG deflate,
                          # GIF and MP4 encoding and numpy release the GIL: two clips at once)
PENDING_PER_WRITER = 2    # computed clips waiting for their pictures and files, per writer


def default_batch_size(device: torch.device) -> int:
    """Clips per forward/backward when ``--batch_size`` is not given. On this project's 2-core
    CPU batching does not pay (measured for integrated gradients: batch 5 was 1.17x slower than
    one clip at a time), so 1; on CUDA 8 (measured on an H200, I3D Grad-CAM: 57.7 clips/s one
    at a time, 712 at 8, 941 at 32, so 8 takes most of the gain at a quarter of the memory)."""
    return CPU_BATCH if torch.device(device).type == "cpu" else CUDA_BATCH


def free_cores() -> int:
    """Cores this process may use (its CPU affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_writers(device: torch.device, clips: int) -> int:
    """Writer processes when ``--writers`` is not given: the cores the model leaves free (on
    the CPU its torch threads, on a GPU one core; one more for reading and the main thread).
    Fewer than two free cores, or a single clip, keep the writer threads (0): a process's start
    would cost more than it saves."""
    model_cores = torch.get_num_threads() if torch.device(device).type == "cpu" else 1
    free = free_cores() - model_cores - 1
    return min(free, clips) if free >= 2 and clips >= 2 else 0


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


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ------------------------------------------------------------------ writer processes

@dataclass(frozen=True)
class WriteJob:
    """What every clip of a run shares when it is written: sent with each clip to a writer
    process (a few kB pickled), so the processes keep nothing between clips."""

    adapter_name: str
    settings: RunSettings
    folders: Mapping[str, Path]
    compare_folder: Optional[Path] = None
    class_names: Tuple[str, ...] = ()


def start_writer_process() -> None:
    """A writer process's set-up: one torch thread, and Ctrl-C and SIGTERM (which reach the
    whole process group) left to the main process, so a writer finishes the clip it writes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


def writer_processes(count: int) -> ProcessPoolExecutor:
    """A pool of ``count`` writer processes for :func:`write_in_process`."""
    import multiprocessing
    # spawn: a forked child of a process running torch threads can hang
    return ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"),
                               initializer=start_writer_process)


def write_in_process(work: ClipWork, job: WriteJob) -> Tuple[Optional[Dict[str, List[dict]]],
                                                             float, Optional[BaseException],
                                                             List[str]]:
    """``finish_clip`` in a writer process: ``(rows, seconds, error, warnings)``. The clip's
    texts are drawn with fonts of its own (a process keeps no state between clips)."""
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rows = finish_clip(work, job.adapter_name, job.settings, job.folders,
                               job.compare_folder, visualize.Typesetter(), job.class_names)
            error = None
        except Exception as failure:  # noqa: BLE001 - reported on the clip's line
            rows, error = None, RuntimeError(_one_line(failure))
    notes = [" ".join(str(w.message).split()) for w in caught]
    return rows, time.perf_counter() - started, error, notes


def for_writer(work: ClipWork) -> ClipWork:
    """The clip as a writer process needs it: no model input (it may live on the GPU); the
    CPU tensors travel through shared memory (torch's pickling for processes), not copied
    through the pipe."""
    return replace(work, clip=replace(work.clip, tensor=None))


WRITER_DIED = "its writer process stopped unexpectedly (killed, or out of memory?)"


class ClipRunner:
    """Three stages at once: a reader thread decodes the next clips, the calling thread runs the
    model (several clips per forward/backward with ``settings.batch_size``), writers draw and
    write the finished ones (recorded in clip order): two threads, or ``settings.writers``
    processes. Queues are bounded, so memory does not grow with the number of clips; every
    clip still succeeds or fails on its own."""

    def __init__(self, adapter: ModelAdapter, device: torch.device, settings: RunSettings,
                 class_names: Sequence[str], folders: Mapping[str, Path],
                 stores: Mapping[str, SummaryStore], fingerprints: Mapping[str, str],
                 synonyms=None, compare_folder: Optional[Path] = None):
        self.adapter, self.device, self.settings = adapter, device, settings
        self.class_names, self.synonyms = class_names, synonyms
        self.folders, self.stores, self.fingerprints = folders, stores, fingerprints
        self.compare_folder = compare_folder
        self.router = _WarningRouter()
        self.fonts = visualize.Typesetter()      # texts repeated between clips drawn once per run
        self.clip_length = settings.clip_length or adapter.clip_length
        self.batch_size = settings.batch_size or default_batch_size(device)
        self.failures = 0
        self.upscale_warned = False
        self.last_report = time.monotonic()
        self.bar = None
        self.reads: collections.deque = collections.deque()
        self.writes: collections.deque = collections.deque()
        self.job = WriteJob(adapter.name, settings, dict(folders), compare_folder,
                            tuple(class_names))

    # ---- the jobs
    def read_job(self, source: ClipSource, clip_id: str):
        notes: List[str] = []
        with self.router.collecting(notes):
            try:
                clip = read_clip(source, clip_id, self.adapter, self.clip_length,
                                 torch.device("cpu"), decode_device(self.device))
                return clip, notes, None
            except Exception as error:  # reported on the clip's line
                return None, notes, error

    def finish_job(self, work: ClipWork, notes: List[str]):
        started = time.perf_counter()
        with self.router.collecting(notes):
            try:
                rows = finish_clip(work, self.adapter.name, self.settings, self.folders,
                                   self.compare_folder, self.fonts, self.class_names)
                return rows, time.perf_counter() - started, None, []
            except Exception as error:
                return None, time.perf_counter() - started, error, []

    def compute(self, group: List[Tuple[ClipInput, List[str]]]) -> List[Tuple]:
        """``(clip_id, work or None, notes, error, seconds)`` per clip of the group."""
        stop = (KeyboardInterrupt, SystemExit, WeightsUnavailableError, SetupError)
        started = time.perf_counter()
        notes: List[str] = []
        same_size = len({tuple(c.tensor.shape) for c, _ in group}) == 1
        if len(group) > 1 and same_size:
            with self.router.collecting(notes):
                try:
                    works = compute_clips([c for c, _ in group], self.adapter, self.settings,
                                          self.class_names, self.synonyms)
                except stop:
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
            with self.router.collecting(clip_notes):
                try:
                    work = compute_clips([clip], self.adapter, self.settings, self.class_names,
                                         self.synonyms)[0]
                    results.append((clip.clip_id, work, clip_notes, None,
                                    time.perf_counter() - started))
                except stop:
                    raise
                except Exception as error:  # one bad clip must not stop the batch
                    results.append((clip.clip_id, None, clip_notes, error,
                                    time.perf_counter() - started))
        return results

    # ---- recording, in clip order
    def record(self, clip_id: str, rows: Optional[Dict[str, List[dict]]], notes: List[str],
               error: Optional[BaseException], seconds: float) -> None:
        settings = self.settings
        for text in notes:
            tqdm.write(f"warning: {clip_id}: {printable(text)}", file=sys.stderr)
        if error is not None:
            self.failures += 1
            message = printable(_one_line(error))
            tqdm.write(f"error: {clip_id}: {message}", file=sys.stderr)
            rows = {m: [error_row(clip_id, m, settings.model_name, seconds, message)]
                    for m in settings.methods}
        elif any(r.get("status") == "error" for m in rows.values() for r in m):
            # Some methods failed on this clip, the others wrote their outputs.
            self.failures += 1
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
                row["settings"] = self.fingerprints[method]
                row["key"] = row_key(row)
            self.folders[method].mkdir(parents=True, exist_ok=True)
            self.stores[method].append(method_rows)
        self.bar.update(1)
        self.bar.set_postfix_str(clip_id[:40])
        if time.monotonic() - self.last_report >= REPORT_INTERVAL:
            write_reports(self.stores, self.folders, self.compare_folder)
            self.last_report = time.monotonic()

    def record_written(self, entry, future: Future) -> None:
        clip_id, notes, compute_seconds = entry
        try:
            rows, finish_seconds, error, more = future.result()
        except BrokenProcessPool:
            rows, finish_seconds, error, more = None, 0.0, RuntimeError(WRITER_DIED), []
        except Exception as failure:  # noqa: BLE001 - this clip fails, the run goes on
            rows, finish_seconds, error, more = None, 0.0, failure, []
        self.record(clip_id, rows, notes + list(more), error, compute_seconds + finish_seconds)

    def drain(self, limit: int) -> None:
        """Record finished writes in order until at most ``limit`` are pending."""
        while len(self.writes) > limit:
            entry, future = self.writes[0]
            # Waited for before leaving the queue: interrupted here, the clip is still recorded
            # by the run's clean-up once its writer finishes it.
            concurrent.futures.wait([future])
            self.writes.popleft()
            self.record_written(entry, future)

    # ---- the run
    def _submit_write(self, pools: List, work: ClipWork, notes: List[str]) -> Future:
        """Hands the clip to the writers: ``pools[-1]``, writer processes or threads. When a
        writer process has died the pool is broken: the clips it held fail (recorded by
        :meth:`record_written`), and threads write the rest of the run."""
        if isinstance(pools[-1], ProcessPoolExecutor):
            try:
                return pools[-1].submit(write_in_process, for_writer(work), self.job)
            except BrokenProcessPool:
                tqdm.write("warning: a writer process stopped unexpectedly; the clips it held "
                           "fail, threads write the others", file=sys.stderr)
                pools.append(ThreadPoolExecutor(WRITER_THREADS,
                                                thread_name_prefix="videovisual-write"))
        return pools[-1].submit(self.finish_job, work, notes)

    def _next_group(self, pending: Iterator, reader) -> List[Tuple[ClipInput, List[str]]]:
        group: List[Tuple[ClipInput, List[str]]] = []
        while self.reads and len(group) < self.batch_size:
            clip_id, future = self.reads.popleft()
            self._refill(pending, reader)
            clip, notes, error = future.result()
            if error is not None:
                self.drain(0)            # keep the summary in clip order
                self.record(clip_id, None, notes, error, 0.0)
                continue
            upscaled = upscale_warning(clip, self.adapter.resize)
            if upscaled and not self.upscale_warned:
                self.upscale_warned = True
                tqdm.write(f"warning: {upscaled}", file=sys.stderr)
            tensor = clip.tensor.to(self.device)
            if self.settings.precision == "bf16" and tensor.is_cuda:
                tensor = tensor.contiguous(memory_format=torch.channels_last_3d)
            group.append((replace(clip, tensor=tensor), notes))
        return group

    def _refill(self, pending: Iterator, reader) -> None:
        while len(self.reads) < PREFETCH + self.batch_size:
            item = next(pending, None)
            if item is None:
                return
            source, clip_id = item
            self.reads.append((clip_id, reader.submit(self.read_job, source, clip_id)))

    def run(self, todo: Sequence[Tuple[ClipSource, str]]) -> int:
        """Process ``todo`` (``(source, clip id)`` pairs); returns the number of failed clips."""
        settings = self.settings
        processes = (settings.writers if settings.writers is not None
                     else default_writers(self.device, len(todo)))
        pending_limit = PENDING_PER_WRITER * max(WRITER_THREADS, processes)
        self.bar = tqdm(total=len(todo), desc=f"{','.join(settings.methods)}/{settings.model_name}",
                        unit="clip", disable=not settings.progress or len(todo) < 2)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            ignore_decoder_deprecation()
            warnings.showwarning = self.router.show
            reader = ThreadPoolExecutor(1, thread_name_prefix="videovisual-read")
            pools = [writer_processes(processes) if processes else
                     ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="videovisual-write")]
            try:
                pending = iter(todo)
                self._refill(pending, reader)
                while self.reads:
                    group = self._next_group(pending, reader)
                    if not group:
                        continue
                    for clip_id, work, notes, error, seconds in self.compute(group):
                        if error is not None:
                            self.drain(0)
                            self.record(clip_id, None, notes, error, seconds)
                            continue
                        future = self._submit_write(pools, work, notes)
                        self.writes.append(((clip_id, notes, seconds), future))
                    self.drain(pending_limit)
                self.drain(0)
            finally:
                # Interrupted or not: the clip being written is finished and recorded, queued
                # ones are dropped, so no output exists without its summary row.
                reader.shutdown(wait=True, cancel_futures=True)
                for pool in pools:
                    pool.shutdown(wait=True, cancel_futures=True)
                for entry, future in self.writes:
                    if future.done() and not future.cancelled():
                        self.record_written(entry, future)
                self.bar.close()
        return self.failures
