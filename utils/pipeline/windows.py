"""The windowed run over long videos (``--window`` / ``--stride``): the model slides over the
whole video instead of seeing it sampled to one clip.

Per video: ``<clip>_timeline.csv`` (one row per window: times, top predictions, the class
probabilities, the explained target's probability and where/when its evidence lies),
``<clip>_timeline.png`` (class probabilities over time), ``<clip>_timeline.mp4`` (the whole
video as the model sees it, each frame with the map of the window that covers it, over the
timeline with a cursor), ``<clip>_maps/`` (each window's map, ``(K, T, h, w)`` NPY at
reduced size, and its middle frame, PNG) and ``<clip>.explore.html`` (the timeline; a click
seeks to the covering window's frame and map). Frames are decoded once in order into a ring
buffer of one window; finished windows are recorded as they finish (``.<clip>_windows.jsonl``)
so a killed run resumes after the last finished window, the stream picked up there (a seek);
a window that fails is an error row of its own.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from models import WeightsUnavailableError
from models.adapter import ModelAdapter
from vis_methods.targets import ClassTarget

from utils.io.atomic import write_csv
from utils.io.clips import ClipError, ClipSource, preprocess, sample_indices
from utils.io.errors import ClipFailure, SetupError
from utils.io.labels import parse_label, resolve_class
from utils.io.paths import clip_ids
from utils.io.stream import (Resume, Span, Window, sliding_windows, stream_frames, video_fps,
                             window_plan)
from utils.io.summary import row_key
from utils.io.window_log import WindowLog
from utils.render import figures as visualize
from utils.render import timeline, timeline_page
from utils.render.encoders import Mp4Writer, save_figure, save_npy, save_png
from utils.render.explorer import page_name, write_page
from utils.pipeline.settings import RunSettings
from utils.pipeline.stages import explain_target

# Frame rate the models' clips had in training: Kinetics videos are mostly 25-30 fps and the
# Kinetics models here take consecutive frames; the synthetic clips are drawn at 25 by
# convention. A window of the model's clip length lasts clip_length / 25 s by default.
TRAINED_FPS = 25.0
TOP_PREDICTIONS = 5
MAP_SIDE = 28              # stored maps are pooled to this side (the MP4 upsamples them)
VIEW_SIDE = 112            # each window's middle frame is stored (for the page) at most this side
FULL_PROBABILITIES = 400   # every class's probability goes into the CSV up to this many classes


@dataclass(frozen=True)
class WindowSettings:
    """``window`` / ``stride``: ``None`` for the model's defaults; ``fps``: frame folders' rate."""

    window: Optional[Span] = None
    stride: Optional[Span] = None
    fps: float = 25.0
    trained_fps: float = TRAINED_FPS
    video: bool = True           # write the whole-video MP4


def check_settings(settings: RunSettings) -> None:
    """What a windowed run cannot do, as a :class:`SetupError` (exit 2 before any work)."""
    if len(settings.methods) != 1:
        raise SetupError("--window runs one method at a time")
    if settings.counterfactual or settings.regression_target is not None:
        raise SetupError("--window explains classifiers (no --counterfactual or "
                         "--regression_target)")


def fingerprint(settings: RunSettings, windows: WindowSettings) -> str:
    text = json.dumps({"run": settings.fingerprint(settings.methods[0]),
                       "window": str(windows.window), "stride": str(windows.stride),
                       "fps": windows.fps, "trained_fps": windows.trained_fps},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def window_inputs(window: Window, adapter: ModelAdapter, clip_length: int
                  ) -> tuple:
    """``(rgb (3, T, S, S) in [0, 1], model input (3, T, S, S), source offsets (T,))`` of a
    window: its frames sampled uniformly to the model's clip length."""
    offsets = sample_indices(window.stop - window.start, clip_length)
    rgb = preprocess(window.frames[offsets], adapter.resize, adapter.crop)
    if not torch.isfinite(rgb).all():
        raise ClipFailure("the window holds non-finite values")
    return rgb, adapter.normalize(rgb), offsets


def _targets(settings: RunSettings, probabilities: torch.Tensor, label_index: Optional[int],
             class_names: Sequence[str]) -> List[int]:
    if settings.topk:
        return probabilities.topk(min(settings.topk, len(probabilities))).indices.tolist()
    choice = settings.target
    if choice == "label":
        choice = "pred" if label_index is None else None
        if choice is None:
            return [label_index]
    if choice == "pred":
        return [int(probabilities.argmax())]
    try:
        return [resolve_class(choice, list(class_names))]
    except ValueError as error:
        raise ClipFailure(f"--target: {error}") from None


def _pooled(maps: torch.Tensor) -> np.ndarray:
    """``(T, H, W)`` -> ``(T, h, w)`` with the long side at most :data:`MAP_SIDE`."""
    height, width = maps.shape[-2:]
    factor = max(1, -(-max(height, width) // MAP_SIDE))
    if factor == 1:
        return maps.numpy()
    return F.avg_pool2d(maps[:, None], factor, ceil_mode=True)[:, 0].numpy()


class _Model:
    """The model's part for a batch of windows: probabilities and one map per target."""

    def __init__(self, adapter: ModelAdapter, settings: RunSettings, class_names: Sequence[str],
                 device: torch.device, clip_length: int):
        self.adapter, self.settings, self.class_names = adapter, settings, class_names
        self.device, self.clip_length = device, clip_length
        self.calls = 0           # batches through the model, for tests and benches
        self.windows = 0         # windows through the model

    def run(self, windows: Sequence[Window], label_index: Optional[int]) -> List[dict]:
        """Per window: ``probabilities (K,)``, ``targets [k]``, ``maps (R, T, H, W)`` shown
        polarity, ``offsets``. Raises when any window fails (the caller retries one by one)."""
        inputs = [window_inputs(w, self.adapter, self.clip_length) for w in windows]
        batch = torch.stack([x for _, x, _ in inputs]).to(self.device)
        self.calls += 1
        self.windows += len(windows)
        with torch.no_grad():
            output = self.adapter(batch).detach().float().cpu()
        if not torch.isfinite(output).all():
            raise ClipFailure("the model's output is not finite")
        probabilities = output.softmax(dim=1)
        targets = [_targets(self.settings, p, label_index, self.class_names)
                   for p in probabilities]
        ranks = max(len(t) for t in targets)
        method = self.settings.methods[0]
        options = self.settings.method_options.get(method, {})
        maps = []
        for rank in range(ranks):
            chosen = torch.tensor([t[min(rank, len(t) - 1)] for t in targets])
            result = explain_target(method, self.adapter, batch, ClassTarget(chosen), options,
                                    False)
            raw = result.maps.detach().float().cpu()
            raw = raw.sum(dim=1) if raw.dim() == 5 else raw            # (N, T, H, W)
            maps.append(torch.from_numpy(visualize.apply_polarity(raw.numpy(),
                                                                  self.settings.polarity)))
        stacked = torch.stack(maps, dim=1)                              # (N, R, T, H, W)
        return [{"probabilities": probabilities[i], "targets": targets[i], "maps": stacked[i],
                 "offsets": inputs[i][2], "view": _middle_view(inputs[i][0])}
                for i in range(len(windows))]


def _middle_view(rgb: torch.Tensor) -> np.ndarray:
    """The window's middle model frame (``uint8 (h, w, 3)``, long side at most
    :data:`VIEW_SIDE`): the picture its map is shown on in the explorer page."""
    frame = rgb[:, rgb.shape[1] // 2][None]
    factor = max(1, -(-max(frame.shape[-2:]) // VIEW_SIDE))
    if factor > 1:
        frame = F.avg_pool2d(frame, factor, ceil_mode=True)
    return visualize.to_uint8(frame[0].permute(1, 2, 0).numpy())


def _row(window: Window, computed: Optional[dict], error: Optional[str],
         class_names: Sequence[str], seconds: float, fps: float) -> dict:
    row = {"window": window.index, "start_frame": window.start, "stop_frame": window.stop,
           "start_s": round(window.start_time, 6), "end_s": round(window.end_time, 6),
           "status": "error" if error else "ok", "error": error or "",
           "seconds": round(seconds, 4)}
    if computed is None:
        return row
    probabilities = computed["probabilities"]
    top = probabilities.topk(min(TOP_PREDICTIONS, len(probabilities)))
    for rank, (p, k) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
        row[f"top{rank}"] = class_names[k] if k < len(class_names) else str(k)
        row[f"top{rank}_p"] = round(float(p), 6)
    offsets = computed["offsets"]
    for rank, (k, shown) in enumerate(zip(computed["targets"], computed["maps"]), start=1):
        suffix = "" if rank == 1 else f"_{rank}"
        row[f"target{suffix}"] = class_names[k] if k < len(class_names) else str(k)
        row[f"target_p{suffix}"] = round(float(probabilities[k]), 6)
        magnitude = shown.abs()
        row[f"evidence{suffix}"] = float(magnitude.mean())
        if float(magnitude.sum()) > 0:
            frame = int(magnitude.flatten(1).sum(dim=1).argmax())
            y, x = np.unravel_index(int(magnitude[frame].argmax()), magnitude.shape[-2:])
            row[f"peak_s{suffix}"] = round(window.start_time + float(offsets[frame]) / fps, 6)
            row[f"peak_x{suffix}"] = round((x + 0.5) / magnitude.shape[-1], 4)
            row[f"peak_y{suffix}"] = round((y + 0.5) / magnitude.shape[-2], 4)
    row["probabilities"] = [round(float(p), 6) for p in probabilities]
    return row


def timeline_table(rows: Sequence[dict], class_names: Sequence[str]) -> pd.DataFrame:
    """The CSV's table: one row per window, ``p:<class>`` columns for every class (up to
    :data:`FULL_PROBABILITIES` classes; else for those in some window's top 5)."""
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "probabilities"} for r in rows])
    vectors = [r.get("probabilities") for r in rows]
    if len(class_names) <= FULL_PROBABILITIES:
        keep = list(range(len(class_names)))
    else:
        keep = sorted({class_names.index(r[f"top{i}"]) for r in rows
                       for i in range(1, TOP_PREDICTIONS + 1) if r.get(f"top{i}") in class_names})
    columns = {f"p:{class_names[k]}": [v[k] if v is not None else np.nan for v in vectors]
               for k in keep}
    return pd.concat([frame, pd.DataFrame(columns)], axis=1)


def _probability_matrix(rows: Sequence[dict], count: int) -> np.ndarray:
    return np.array([r["probabilities"] if r.get("probabilities") is not None
                     else [np.nan] * count for r in rows], dtype=np.float64).reshape(len(rows), count)


def _write_video(source: ClipSource, adapter: ModelAdapter, rows: Sequence[dict],
                 maps_dir: Path, path: Path, fps: float, class_names: Sequence[str],
                 style: str, fonts: visualize.Typesetter, folder_fps: float) -> None:
    """Second pass over the video: every frame as the model sees it (resized, centre crop),
    the map of the covering window whose centre is nearest (the model frame nearest in time),
    the timeline strip and a cursor."""
    starts = np.array([r["start_frame"] for r in rows])
    stops = np.array([r["stop_frame"] for r in rows])
    start_s = np.array([r["start_s"] for r in rows])
    end_s = np.array([r["end_s"] for r in rows])
    probabilities = _probability_matrix(rows, len(class_names))
    shown = timeline.shown_classes(probabilities, class_names, len(timeline.PALETTE) - 1)
    duration = float(end_s.max())
    strip = timeline.strip_image(start_s, end_s, probabilities, shown, 448, duration)
    current = {"window": None, "map": None}
    with Mp4Writer(path, fps) as writer:
        for frame in stream_frames(source, adapter.resize, folder_fps):
            inside = np.flatnonzero((starts <= frame.index) & (frame.index < stops))
            if not len(inside):
                continue
            w = inside[np.argmin(np.abs((starts[inside] + stops[inside]) / 2 - frame.index))]
            row = rows[w]
            if frame.picture is None:
                continue
            view = preprocess(np.array(frame.picture[None]), adapter.resize, adapter.crop)
            picture = visualize.to_uint8(view.permute(1, 2, 3, 0).numpy())[0]
            display = None
            if row["status"] == "ok":
                if current["window"] != w:
                    stored = np.load(maps_dir / f"w{row['window']:06d}.npy")[0]   # rank 1
                    current.update(window=w, map=visualize.normalize_map(stored))
                offsets = sample_indices(row["stop_frame"] - row["start_frame"],
                                         current["map"].shape[0])
                j = int(np.argmin(np.abs(offsets - (frame.index - row["start_frame"]))))
                small = torch.from_numpy(current["map"][j][None, None])
                display = F.interpolate(small, size=picture.shape[:2], mode="bilinear",
                                        align_corners=False)[0, 0].numpy()
                text = (f"{frame.time:.2f} s: {row.get('top1', '')} {row.get('top1_p', 0):.2f}"
                        f"; map: {row.get('target', '')}")
                if not (display > 0).any():
                    text += " (map empty)"
            else:
                text = f"{frame.time:.2f} s: window {row['window']} failed"
            writer.write(timeline.video_frame(picture, display, style, strip, frame.time,
                                              duration, text, fonts))


@dataclass
class VideoResult:
    rows: List[dict]
    failed_windows: int
    outputs: List[str]


def _failure_text(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class _Recorder:
    """One video's windows through the model, batch by batch: maps and middle frames saved,
    rows recorded in the window log as they finish."""

    def __init__(self, clip_id: str, model: _Model, class_names: Sequence[str], fps: float,
                 label_index: Optional[int], log: WindowLog, maps_dir: Path,
                 after_batch: Optional[Callable[[int], None]]):
        self.clip_id, self.model, self.class_names, self.fps = clip_id, model, class_names, fps
        self.label_index, self.log, self.maps_dir = label_index, log, maps_dir
        self.after_batch = after_batch
        self.failed = 0

    def _compute(self, batch: Sequence[Window]) -> tuple:
        """``(computed, errors)`` by window index: the batch at once, else one at a time."""
        good = [w for w in batch if w.frames is not None]
        computed: Dict[int, dict] = {}
        errors: Dict[int, str] = {w.index: w.error for w in batch if w.frames is None}
        if len(good) > 1:
            try:
                computed = {w.index: c for w, c in zip(good, self.model.run(good,
                                                                             self.label_index))}
            except (KeyboardInterrupt, SystemExit, WeightsUnavailableError):
                raise
            except Exception:    # noqa: BLE001 - find the window that fails: one at a time
                computed = {}
        for w in good:
            if w.index in computed:
                continue
            try:
                computed[w.index] = self.model.run([w], self.label_index)[0]
            except (KeyboardInterrupt, SystemExit, WeightsUnavailableError):
                raise
            except Exception as error:    # one bad window must not stop the video
                errors[w.index] = _failure_text(error)
        return computed, errors

    def finish(self, batch: Sequence[Window]) -> None:
        started = time.perf_counter()
        computed, errors = self._compute(batch)
        seconds = (time.perf_counter() - started) / max(1, len(batch))
        rows = []
        for w in batch:
            c = computed.get(w.index)
            if c is not None:
                save_npy(_pooled_stack(c["maps"]), self.maps_dir / f"w{w.index:06d}.npy")
                save_png(c["view"], self.maps_dir / f"w{w.index:06d}.png")
            error = errors.get(w.index)
            if error:
                self.failed += 1
                tqdm.write(f"error: {self.clip_id}: window {w.index} ({w.start_time:.2f}-"
                           f"{w.end_time:.2f} s): {error}", file=sys.stderr)
            rows.append(_row(w, c, error, self.class_names, seconds, self.fps))
        self.log.append(rows)
        if self.after_batch is not None:
            self.after_batch(len(self.log.rows))


def _compact(row: dict) -> dict:
    # kept until the outputs are written: float32 arrays, not lists of Python floats
    if isinstance(row.get("probabilities"), list):
        row["probabilities"] = np.asarray(row["probabilities"], dtype=np.float32)
    return row


def resume_point(rows: Mapping[int, dict], size: int, step: int) -> Optional[Resume]:
    """Where to pick the stream up after windows ``0 .. k-1`` were recorded: the last of them's
    first frame (from there on every later window's frames, the last window ending on the
    video's last frame included); ``None`` when nothing is recorded or the record is not the
    windows of ``size`` and ``step`` (then the stream is read from the start)."""
    count = 0
    while count in rows:
        count += 1
    if count == 0:
        return None
    for i in range(count - 1):
        if (rows[i].get("start_frame"), rows[i].get("stop_frame")) != (i * step, i * step + size):
            return None
    last = rows[count - 1]
    try:
        return Resume(count, int(last["start_frame"]), float(last["start_s"]),
                      int(last["stop_frame"]))
    except (KeyError, TypeError, ValueError):
        return None


def _windowed_rows(source: ClipSource, recorder: _Recorder, size: int, step: int,
                   batch_size: int) -> List[dict]:
    """Every window's row in order: recorded ones read back (the stream picks up after them),
    the others computed in batches."""
    log, fps = recorder.log, recorder.fps
    start = resume_point(log.rows, size, step)
    seen = [_compact(log.rows[i]) for i in range(start.window)] if start else []
    failed = sum(r["status"] != "ok" for r in seen)
    pending: List[Window] = []
    frames = stream_frames(source, recorder.model.adapter.resize, fps, start)
    for window in sliding_windows(frames, size, step, fps, start):
        done = log.rows.get(window.index)
        if done is not None and done["start_frame"] == window.start \
                and done["stop_frame"] == window.stop:
            seen.append(_compact(done))
            failed += done["status"] != "ok"
            continue
        pending.append(window)
        if len(pending) >= batch_size:
            recorder.finish(pending)
            seen.extend(_compact(log.rows[w.index]) for w in pending)
            pending = []
    if pending:
        recorder.finish(pending)
        seen.extend(_compact(log.rows[w.index]) for w in pending)
    recorder.failed += failed
    return seen


def _label_index(source: ClipSource, clip_id: str, settings: RunSettings,
                 class_names: Sequence[str], synonyms) -> Optional[int]:
    label = parse_label(source.name, class_names, synonyms) if class_names else None
    label_index = class_names.index(label) if label is not None else None
    if settings.target == "label" and label_index is None and not settings.topk:
        tqdm.write(f"warning: {clip_id}: label unknown, explaining each window's prediction",
                   file=sys.stderr)
    return label_index


def run_video(source: ClipSource, clip_id: str, model: _Model, settings: RunSettings,
              windows: WindowSettings, class_names: Sequence[str], folder: Path,
              synonyms=None, fonts: Optional[visualize.Typesetter] = None,
              batch_size: int = 1, after_batch: Optional[Callable[[int], None]] = None
              ) -> VideoResult:
    """The windowed run of one video; windows already recorded with the same settings are
    not computed again (nor decoded, where the stream can start after them). ``after_batch``:
    called with the number of recorded windows after each batch (tests simulate a kill
    there)."""
    fps = video_fps(source, windows.fps)
    size, step = window_plan(fps, model.clip_length, windows.trained_fps, windows.window,
                             windows.stride)
    label_index = _label_index(source, clip_id, settings, class_names, synonyms)
    log = WindowLog(folder / f".{clip_id}_windows.jsonl", fingerprint(settings, windows),
                    fresh=settings.overwrite)
    maps_dir = folder / f"{clip_id}_maps"
    recorder = _Recorder(clip_id, model, class_names, fps, label_index, log, maps_dir,
                         after_batch)
    rows = _windowed_rows(source, recorder, size, step, batch_size)
    outputs = _write_outputs(source, clip_id, model.adapter, rows, settings, windows,
                             class_names, folder, maps_dir, fps, fonts or visualize.Typesetter())
    log.remove()
    return VideoResult(rows, recorder.failed, outputs)


def _pooled_stack(maps: torch.Tensor) -> np.ndarray:
    return np.stack([_pooled(m) for m in maps])


def _write_outputs(source, clip_id, adapter, rows, settings, windows, class_names, folder,
                   maps_dir, fps, fonts) -> List[str]:
    stem = f"{clip_id}_timeline"
    write_csv(timeline_table(rows, class_names), folder / f"{stem}.csv")
    outputs = [f"{stem}.csv"]
    starts = np.array([r["start_s"] for r in rows], dtype=float)
    ends = np.array([r["end_s"] for r in rows], dtype=float)
    probabilities = _probability_matrix(rows, len(class_names))
    target_p = np.array([r.get("target_p", np.nan) for r in rows], dtype=float)
    evidence = np.array([r.get("evidence", np.nan) for r in rows], dtype=float)
    what = "the label" if settings.target == "label" else (
        "each window's prediction" if settings.target == "pred" else settings.target)
    if settings.topk:
        what = "each window's top class"
    title = (f"{clip_id}: class probabilities of {adapter.name} per window "
             f"({len(rows)} windows of {rows[0]['stop_frame'] - rows[0]['start_frame']} frames)")
    figure = timeline.timeline_figure(starts, ends, probabilities, class_names, target_p,
                                      evidence, title, what)
    save_figure(figure, folder / f"{stem}.png")
    outputs.append(f"{stem}.png")
    style = visualize.overlay_style(False, settings.polarity)
    if windows.video:
        _write_video(source, adapter, rows, maps_dir, folder / f"{stem}.mp4", fps, class_names,
                     style, fonts, windows.fps)
        outputs.append(f"{stem}.mp4")
    data = timeline_page.page_data(rows, class_names, _page_views(rows, maps_dir), style,
                                   clip=clip_id, model=adapter.name,
                                   method=settings.methods[0], explained=what)
    write_page(folder / page_name(clip_id), timeline_page.page_html(data))
    return outputs


def _page_views(rows: Sequence[dict], maps_dir: Path) -> Iterator[tuple]:
    """Per window, for its explorer page: the stored middle frame and the map there (rank 1,
    normalised over the window as the MP4 shows it); ``None`` where the window has none."""
    for row in rows:
        stem = maps_dir / f"w{row['window']:06d}"
        picture = display = None
        if row["status"] == "ok" and stem.with_suffix(".npy").is_file():
            stored = np.load(stem.with_suffix(".npy"))[0]
            display = visualize.normalize_map(stored)[stored.shape[0] // 2]
            if stem.with_suffix(".png").is_file():
                with Image.open(stem.with_suffix(".png")) as image:
                    picture = np.asarray(image.convert("RGB"))
        yield picture, display


def _summary_row(source: ClipSource, clip_id: str, model: _Model, settings: RunSettings,
                 windows: WindowSettings, class_names: Sequence[str], folder: Path, synonyms,
                 fonts: visualize.Typesetter, print_fingerprint: str) -> tuple:
    """``(summary row, failed)`` of one video's windowed run; ``failed``: a window or the
    whole video failed."""
    started = time.perf_counter()
    row = {"clip": clip_id, "output_set": "windows", "method": settings.methods[0],
           "model": settings.model_name, "label": "", "settings": print_fingerprint}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = run_video(source, clip_id, model, settings, windows, class_names, folder,
                               synonyms, fonts, settings.batch_size or 1)
        ok = [r for r in result.rows if r["status"] == "ok"]
        tops = pd.Series([r["top1"] for r in ok]).value_counts()
        row.update(prediction=tops.index[0] if len(tops) else "",
                   probability=round(len(tops) and tops.iloc[0] / len(result.rows), 4),
                   target=settings.target, status="ok",
                   error=(f"{result.failed_windows} of {len(result.rows)} windows failed"
                          if result.failed_windows else ""),
                   outputs=";".join(result.outputs), windows=len(result.rows))
        failed = result.failed_windows > 0
        tqdm.write(f"{clip_id}: {len(result.rows)} windows, {result.failed_windows} failed; "
                   f"most often {row['prediction']}", file=sys.stderr)
    except (ClipError, ClipFailure, OSError, ValueError, RuntimeError) as error:
        failed = True
        message = _failure_text(error)
        tqdm.write(f"error: {clip_id}: {message}", file=sys.stderr)
        row.update(status="error", error=message)
    row["seconds"] = round(time.perf_counter() - started, 3)
    row["key"] = row_key(row)
    return row, failed


def run_windowed(clips: Sequence[ClipSource], load_adapter: Callable[[], ModelAdapter],
                 device: torch.device, settings: RunSettings, class_names: Sequence[str],
                 folder: Path, windows: WindowSettings, synonyms=None) -> int:
    """Every video windowed; returns the number of videos with a failed window or that
    failed as a whole. One summary row per video (``summary.csv``, ``index.html``) links its
    timeline."""
    from utils.pipeline.runner import clip_done, open_summary, write_reports

    check_settings(settings)
    store, summary = open_summary(folder)
    if settings.overwrite:
        summary = None
    print_fingerprint = fingerprint(settings, windows)
    formats = ("csv", "png") + (("mp4",) if windows.video else ())
    todo = []
    for source, clip_id in zip(clips, clip_ids(clips)):
        if clip_done(summary, clip_id, folder, print_fingerprint, formats):
            tqdm.write(f"skip: {clip_id}: outputs exist (use --overwrite to redo)",
                       file=sys.stderr)
            continue
        todo.append((source, clip_id))
    if not todo:
        return 0
    adapter = load_adapter()
    if adapter.task != "classification":
        raise SetupError("--window explains classifiers")
    model = _Model(adapter, settings, class_names, device,
                   settings.clip_length or adapter.clip_length)
    fonts = visualize.Typesetter()
    failures = 0
    try:
        for source, clip_id in todo:
            row, failed = _summary_row(source, clip_id, model, settings, windows, class_names,
                                       folder, synonyms, fonts, print_fingerprint)
            failures += failed
            folder.mkdir(parents=True, exist_ok=True)
            store.append([row])
    finally:
        if store.part_files():
            store.rebuild()
        write_reports({settings.methods[0]: store}, {settings.methods[0]: folder}, None)
    return failures


def iter_rows(path: Path) -> Iterator[dict]:
    """The rows of a timeline CSV as dicts (for benches and tests)."""
    yield from pd.read_csv(path).to_dict("records")
