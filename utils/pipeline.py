"""The pipeline behind ``main.py``, in stages: read, predict, choose targets, explain, render,
write. Each stage is a small function of plain values, so stages can be tested alone and run in
other orders or processes.

Every clip is independent: an error is reported on one line naming the clip, recorded in
``summary.csv``, and the next clip still runs. Outputs are named uniquely per (clip, target,
output set): the clip id (a video keeps its extension when a folder of the same name exists),
the target whenever it is not the clip's label, the output set's name (e.g. ``area_0.05``) and
the polarity when it is not ``positive``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from models import ModelSpec, WeightsUnavailableError
from models.adapter import ModelAdapter
from vis_methods import METHODS, Attribution, explain, safe_name
from vis_methods.targets import ClassTarget, Counterfactual, RegressionTarget

from . import visualize
from .labels import parse_label, resolve_class
from . import render, report
from .output import row_key, save_npy
from .summary import SummaryError, SummaryStore
from .video import ClipSource, load_frames, preprocess

FORMATS = ("png", "gif", "npy")          # the default; "mp4" on request
ALL_FORMATS = ("png", "gif", "mp4", "npy")


class ClipFailure(RuntimeError):
    """A per-clip error whose message is already user-facing."""


class SetupError(RuntimeError):
    """A problem that stops the run before any clip (bad weights, target, layer ...): exit 2."""


@dataclass(frozen=True)
class Target:
    """One thing to explain for a clip: ``fn`` scores the model output, ``name`` is shown,
    ``suffix`` goes into file names ('' when the target is the clip's label)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    suffix: str = ""


@dataclass(frozen=True)
class RunSettings:
    """What a run does. ``methods``: one or more method names, each with its resolved options
    in ``method_options`` (name -> options). ``model_identity``: the model name, the identity
    of its weights, the pretraining dataset and the preprocessing."""

    methods: Tuple[str, ...]
    model_name: str
    out_dir: Path
    formats: Sequence[str] = FORMATS
    polarity: str = "positive"
    target: str = "label"
    topk: Optional[int] = None
    counterfactual: bool = False
    regression_target: Optional[str] = None
    clip_length: Optional[int] = None
    overwrite: bool = False
    method_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    model_identity: Mapping[str, object] = field(default_factory=dict)
    progress: bool = True
    save_label: Optional[str] = None

    @property
    def method(self) -> str:
        return self.methods[0]

    def fingerprint(self, method: str) -> str:
        """Short hash of everything that changes a clip's outputs for ``method``: the method
        and its resolved options, the model identity (name, weights, pretraining dataset,
        preprocessing), clip length, target choice and polarity. A rerun skips a clip only when
        its earlier outputs carry the same fingerprint."""
        relevant = {"method": method,
                    "options": dict(sorted(self.method_options.get(method, {}).items())),
                    "model": dict(sorted(self.model_identity.items())),
                    "clip_length": self.clip_length, "target": self.target, "topk": self.topk,
                    "counterfactual": self.counterfactual,
                    "regression_target": self.regression_target, "polarity": self.polarity}
        text = json.dumps(relevant, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def weights_identity(weights: Optional[Path], default: str = "") -> str:
    """The weights in the fingerprint: a local file by path, size and modification time (a
    changed file redoes the clips), the default weights by the spec's id."""
    if weights is None:
        return f"default:{default}"
    path = Path(weights).resolve()
    try:
        stat = path.stat()
    except OSError:
        return f"file:{path}"
    return f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"


def model_folder_name(model: str) -> str:
    """The output folder of a model: its registry name, or for ``path/to/file.py:builder`` the
    file's name and the builder (``file.py_builder``)."""
    if model.startswith("hf:"):
        model = "hf_" + Path(model[3:].rstrip("/")).name
    elif ":" in model:
        source, _, function = model.rpartition(":")
        model = f"{Path(source).name}_{function}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)


def output_dir(out_dir: Path, method: str, model: str, save_label: Optional[str]) -> Path:
    folder = Path(out_dir) / safe_name(method) / model
    return folder / save_label if save_label else folder


def check_save_label(save_label: Optional[str]) -> None:
    """``--save_label`` is a sub-folder: relative, without ``..``."""
    if save_label is None:
        return
    parts = Path(save_label).parts
    if not parts or Path(save_label).is_absolute() or ".." in parts:
        raise SetupError(f"--save_label {save_label!r} must be a relative folder name without '..'")


MAX_STEM = 160


def file_stem(text: str) -> str:
    """An output file's stem for a clip id plus suffixes: characters that cannot or should not
    be in a file name (path separators, ``;`` which separates outputs in ``summary.csv``,
    control characters) become ``_``; a stem longer than :data:`MAX_STEM` characters keeps its
    start and a hash of the whole, so the temporary name of the atomic writer still fits the
    file system's 255-byte limit."""
    cleaned = "".join("_" if (c in '/\\;' or ord(c) < 32 or c == "\x7f") else c for c in text)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    if cleaned != text:
        # Two ids that differ only in replaced characters must not share a file.
        cleaned += "-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]
    if len(cleaned.encode("utf-8")) > MAX_STEM:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
        head = cleaned.encode("utf-8")[:MAX_STEM - 11].decode("utf-8", errors="ignore")
        cleaned = f"{head}-{digest}"
    return cleaned


def _safe_fragment(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def clip_ids(clips: Sequence[ClipSource]) -> List[str]:
    """One id per clip, unique in the run: the folder's name or the video's stem; a video keeps
    its extension when another clip has the same stem (``X/`` and ``X.mp4`` -> ``X``, ``X.mp4``)."""
    stems = [c.name for c in clips]
    ids = []
    for clip, stem in zip(clips, stems):
        if clip.is_video and stems.count(stem) > 1:
            ids.append(clip.path.name)
        else:
            ids.append(stem)
    return ids


# ------------------------------------------------------------------------------ sharding

@dataclass(frozen=True)
class Shard:
    """This process's share of the clips: every ``count``-th clip from ``index``."""

    index: int = 0
    count: int = 1
    source: str = "single process"

    def select(self, items: Sequence) -> list:
        return list(items[self.index::self.count])


def shard_from(flag: Optional[str], environ: Mapping[str, str] = os.environ) -> Shard:
    """The shard of this process: ``--shard I/N`` (any scheduler), else torchrun's ``RANK`` /
    ``WORLD_SIZE``, else a SLURM array's ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``
    (task ids counted from ``SLURM_ARRAY_TASK_MIN``), else the whole folder. Launching is the
    engine's job (torchrun, SLURM); we only read what it sets."""
    if flag is not None:
        try:
            index, count = (int(v) for v in flag.split("/"))
        except ValueError:
            raise SetupError(f"--shard {flag!r} must be I/N, e.g. 0/4") from None
        if count < 1 or not 0 <= index < count:
            raise SetupError(f"--shard {flag!r}: need 0 <= I < N")
        return Shard(index, count, f"--shard {flag}")
    if int(environ.get("WORLD_SIZE", "1") or 1) > 1:
        return Shard(int(environ.get("RANK", "0")), int(environ["WORLD_SIZE"]), "torchrun")
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        count = int(environ["SLURM_ARRAY_TASK_COUNT"])
        index = int(environ["SLURM_ARRAY_TASK_ID"]) - first
        if not 0 <= index < count:
            raise SetupError(f"SLURM array task {environ['SLURM_ARRAY_TASK_ID']} is outside "
                             f"{first}..{first + count - 1}")
        return Shard(index, count, "SLURM array")
    return Shard()


# ------------------------------------------------------------------------------ stage: read

@dataclass(frozen=True)
class ClipInput:
    """A decoded clip: ``rgb (3, T, H, W)`` in [0, 1] and the model input ``(1, 3, T, H, W)``."""

    source: ClipSource
    clip_id: str
    rgb: torch.Tensor
    tensor: torch.Tensor


def read_clip(source: ClipSource, clip_id: str, adapter: ModelAdapter, clip_length: int,
              device: torch.device) -> ClipInput:
    # Frames are shrunk to the model's short side as they are decoded: memory follows the model
    # input, not the source.
    frames, _ = load_frames(source, clip_length, resize=adapter.resize)
    rgb = preprocess(frames, adapter.resize, adapter.crop)                # (3, T, H, W)
    if not torch.isfinite(rgb).all():
        raise ClipFailure("the clip holds non-finite values")
    tensor = adapter.normalize(rgb).unsqueeze(0).to(device)
    return ClipInput(source, clip_id, rgb, tensor)


# --------------------------------------------------------------------------- stage: predict

@dataclass(frozen=True)
class Prediction:
    """The model's answer on a clip: class probabilities (classifiers), the shown prediction
    and its probability, and the model's temporal attention resampled to the clip's frames."""

    output: torch.Tensor
    probabilities: Optional[torch.Tensor]
    text: str
    probability: float
    attention: Optional[np.ndarray]


def _vector_text(values: torch.Tensor) -> str:
    """A regression vector for titles and ``summary.csv``: ``(0.31, -2.48)``."""
    return "(" + ", ".join(f"{float(v):.2f}" for v in values.flatten()) + ")"


def predict(adapter: ModelAdapter, clip: ClipInput, class_names: Sequence[str]) -> Prediction:
    with torch.no_grad():
        output = adapter(clip.tensor).float().cpu()
    if not torch.isfinite(output).all():
        raise ClipFailure("the model's output is not finite")
    probabilities, text, probability = None, "", float("nan")
    if adapter.task == "classification":
        probabilities = output.softmax(dim=1)[0]
        top = int(probabilities.argmax())
        text = class_names[top] if top < len(class_names) else str(top)
        probability = float(probabilities[top])
    else:
        text = _vector_text(output[0])
    attention = None
    if adapter.has_temporal_attention:
        with torch.no_grad():
            weights = adapter.temporal_attention(clip.tensor)[0].float().cpu().numpy()
        frames = clip.rgb.shape[1]
        attention = np.interp(np.linspace(0, len(weights) - 1, frames),
                              np.arange(len(weights)), weights)
    return Prediction(output, probabilities, text, probability, attention)


# --------------------------------------------------------------------------- stage: targets

def parse_regression_values(value: str) -> torch.Tensor:
    try:
        truth = torch.tensor([float(v) for v in value.split(",")], dtype=torch.float32)
    except ValueError:
        raise SetupError(f"--regression_target {value!r} is neither 'sidecar' nor "
                         "comma-separated numbers") from None
    if not torch.isfinite(truth).all():
        raise SetupError(f"--regression_target {value!r} holds non-finite values")
    return truth


def read_regression_truth(clip: ClipSource, value: str) -> torch.Tensor:
    """``value``: comma-separated numbers, or ``sidecar``: the clip's ``ground_truth.json``
    (key ``regression_target``) or ``regression_target.json`` / ``<video>.regression.json``."""
    if value != "sidecar":
        return parse_regression_values(value)
    if clip.is_video:
        candidates = [clip.path.with_suffix(".regression.json")]
    else:
        candidates = [clip.path / "ground_truth.json", clip.path / "regression_target.json"]
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                truth = data.get("regression_target") if isinstance(data, dict) else data
                if truth is not None:
                    truth = torch.tensor(truth, dtype=torch.float32).flatten()
            except (ValueError, TypeError) as error:
                raise ClipFailure(f"{path.name} is not a usable regression target: {error}") from None
            if truth is not None:
                if not torch.isfinite(truth).all():
                    raise ClipFailure(f"{path.name} holds non-finite values")
                return truth
    raise ClipFailure(f"no regression target sidecar ({', '.join(p.name for p in candidates)})")


def choose_targets(settings: RunSettings, task: str, class_names: Sequence[str],
                   label: Optional[str], probabilities: Optional[torch.Tensor],
                   clip: ClipSource, output_size: int) -> List[Target]:
    """Targets for one clip from ``--target``, ``--topk``, ``--counterfactual`` and
    ``--regression_target``. ``probabilities``: ``(K,)`` for classifiers."""
    if task == "regression":
        if settings.regression_target is None:
            raise ClipFailure("a regression model needs --regression_target VALUES|sidecar")
        truth = read_regression_truth(clip, settings.regression_target)
        if truth.numel() != output_size:
            raise ClipFailure(f"the regression target has {truth.numel()} values; the model "
                              f"outputs {output_size}")
        targets = [Target("-loss(output, truth)", RegressionTarget(truth))]
    else:
        label_index = class_names.index(label) if label is not None else None
        if settings.topk:
            top = probabilities.topk(min(settings.topk, len(class_names))).indices.tolist()
            targets = [Target(class_names[k], ClassTarget(torch.tensor([k])),
                              f"_top{rank + 1}_{_safe_fragment(class_names[k])}")
                       for rank, k in enumerate(top)]
        else:
            choice = settings.target
            if choice == "label" and label_index is None:
                tqdm.write(f"warning: {clip.name}: label unknown, explaining the prediction",
                           file=sys.stderr)
                choice = "pred"
            if choice == "label":
                index = label_index
            elif choice == "pred":
                index = int(probabilities.argmax())
            else:
                try:
                    index = resolve_class(choice, list(class_names))
                except ValueError as error:
                    raise ClipFailure(f"--target: {error}") from None
            suffix = "" if index == label_index else f"_{_safe_fragment(class_names[index])}"
            targets = [Target(class_names[index], ClassTarget(torch.tensor([index])), suffix)]
    if settings.counterfactual:
        targets = [Target(f"counterfactual of {t.name}", Counterfactual(t.fn),
                          t.suffix + "_counterfactual") for t in targets]
    return targets


# -------------------------------------------------------------------- stages: explain, render

def explain_target(method: str, adapter: ModelAdapter, clip: ClipInput, target: Target,
                   options: Mapping[str, object], progress: bool) -> Attribution:
    result = explain(method, adapter, clip.tensor, target.fn, progress=progress, **options)
    if not torch.isfinite(result.maps).all():
        raise ClipFailure(f"{method} returned a map with non-finite values")
    return result


def render_outputs(folder: Path, stem: str, display_frames: np.ndarray, raw: torch.Tensor,
                   signed: bool, polarity: str, formats: Sequence[str],
                   caption: visualize.Caption, attention: Optional[np.ndarray],
                   time_steps: Optional[int] = None) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Write one output set (NPY, PNG, GIF, MP4), each file whole or not at all; returns the
    file names, the per-frame share of the map and the display map (normalised)."""
    saliency = visualize.reduce_channels(raw.float().cpu().numpy())
    if saliency.shape != display_frames.shape[:3]:
        raise ClipFailure(f"the method returned a map of shape {tuple(saliency.shape)}, "
                          f"expected {display_frames.shape[:3]}")
    shown = visualize.apply_polarity(saliency, polarity)
    display = visualize.normalize_map(shown)
    importance = visualize.frame_importance(shown)
    outputs = []
    if "npy" in formats:
        save_npy(saliency, folder / f"{stem}.npy")
        outputs.append(f"{stem}.npy")
    outputs += render.write_visuals(folder, stem, formats, display_frames, display,
                                    visualize.overlay_style(signed, polarity), caption,
                                    importance, attention, time_steps)
    return outputs, importance, display


# Extremal perturbations: warn when the mask misses its area by more than this (relative, at
# least AREA_TOLERANCE_MIN absolute) or the kept region scores the target below this probability.
AREA_TOLERANCE = 0.25
AREA_TOLERANCE_MIN = 0.02
KEPT_PROBABILITY_MIN = 0.5
EXTREMAL_METHODS = ("2d_ep", "3d_ep", "step")


def extremal_warnings(method: str, options: Mapping[str, object],
                      diagnostics: Mapping[str, object], set_index: int,
                      num_sets: int) -> List[str]:
    """Why an extremal perturbation's mask should not be trusted (empty when it converged)."""
    if method not in EXTREMAL_METHODS:
        return []
    cells = _diagnostic_cells(diagnostics, set_index, num_sets)
    areas = options.get("perturb_area") or (0.1,)
    requested = float(areas[set_index] if set_index < len(areas) else areas[0])
    problems = []
    achieved = cells.get("final_area_above_half")
    if isinstance(achieved, (int, float)) and abs(achieved - requested) > max(
            AREA_TOLERANCE_MIN, AREA_TOLERANCE * requested):
        problems.append(f"area {achieved:.3f} instead of {requested:g}")
    kept = cells.get("final_probability")
    if options.get("ep_variant", "preserve") != "delete" and isinstance(kept, (int, float)) \
            and kept < KEPT_PROBABILITY_MIN:
        problems.append(f"the kept region scores the target at p = {kept:.2f}")
    if not problems:
        return []
    return [f"{method}: {' and '.join(problems)} after {cells.get('iterations', '?')} iterations; "
            "the mask may not have converged: try more --num_iter"]


def _diagnostic_cells(diagnostics: Mapping[str, object], set_index: int,
                      num_sets: int) -> Dict[str, object]:
    """A clip's diagnostics for one output set, as ``summary.csv`` cells."""
    cells: Dict[str, object] = {}
    for key, value in diagnostics.items():
        if num_sets > 1 and isinstance(value, list) and len(value) == num_sets:
            value = value[set_index]
        if isinstance(value, list):
            value = ";".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value)
        if isinstance(value, (int, float, str, bool)):
            cells[key] = value
    return cells


def process_clip(source: ClipSource, clip_id: str, adapter: ModelAdapter, device: torch.device,
                 settings: RunSettings, class_names: Sequence[str],
                 folders: Mapping[str, Path], synonyms=None,
                 compare_folder: Optional[Path] = None) -> Dict[str, List[dict]]:
    """Every stage for one clip and every method; returns summary rows per method. With
    several methods and ``compare_folder``, also the comparison figure and animation."""
    compare: Optional[dict] = {} if compare_folder is not None else None
    clip_length = settings.clip_length or adapter.clip_length
    clip = read_clip(source, clip_id, adapter, clip_length, device)
    label = parse_label(source.name, class_names, synonyms) if class_names else None
    prediction = predict(adapter, clip, class_names)
    targets = choose_targets(settings, adapter.task, class_names, label,
                             prediction.probabilities, source, prediction.output.shape[1])
    if adapter.task == "regression":
        label = _vector_text(targets[0].fn.truth)
    display_frames = clip.rgb.permute(1, 2, 3, 0).numpy()                 # (T, H, W, 3)
    rows: Dict[str, List[dict]] = {}
    for method in settings.methods:
        options = settings.method_options.get(method, {})
        method_rows = []
        for target in targets:
            started = time.perf_counter()
            result = explain_target(method, adapter, clip, target, options, settings.progress)
            seconds = time.perf_counter() - started
            diagnostics = result.diagnostics[0]
            for set_index, (set_name, raw) in enumerate(result.output_sets(0)):
                stem = clip_id + target.suffix + (f"_{set_name}" if set_name else "")
                if settings.polarity != "positive":
                    stem += f"_{settings.polarity}"
                stem = file_stem(stem)
                layer = visualize.layer_text(diagnostics)
                extra = tuple(e for e in (set_name, layer) if e)
                caption = visualize.Caption(clip_id, label, prediction.text,
                                            prediction.probability, target.name, method,
                                            adapter.name, settings.polarity, extra)
                outputs, importance, display = render_outputs(
                    folders[method], stem, display_frames, raw, result.signed, settings.polarity,
                    settings.formats, caption, prediction.attention,
                    visualize.map_time_steps(diagnostics))
                for message in extremal_warnings(method, options, diagnostics, set_index,
                                                 len(result.names)):
                    warnings.warn(f"{stem}: {message}")
                if compare is not None:
                    compare.setdefault(stem, []).append(
                        (method, display, visualize.overlay_style(result.signed,
                                                                  settings.polarity), caption))
                row = {"clip": clip_id, "output_set": set_name, "label": label or "",
                       "prediction": prediction.text,
                       "probability": (round(prediction.probability, 5)
                                       if prediction.probability == prediction.probability else ""),
                       "target": target.name, "method": method, "model": adapter.name,
                       "seconds": round(seconds, 3), "status": "ok", "error": "",
                       "frame_importance": ";".join(f"{v:.4f}" for v in importance),
                       "outputs": ";".join(outputs)}
                if prediction.attention is not None:
                    row["attention"] = ";".join(f"{v:.4f}" for v in prediction.attention)
                row.update(_diagnostic_cells(diagnostics, set_index, len(result.names)))
                method_rows.append(row)
        rows[method] = method_rows
    if compare:
        for stem, entries in compare.items():
            caption = entries[0][3]
            lines = [caption.clip, "   ".join(p for p in (f"label: {caption.label or 'unknown'}",
                                                         caption.prediction_text(),
                                                         f"explained: {caption.target}") if p),
                     f"{', '.join(e[0] for e in entries)} / {caption.model}"]
            render.write_comparison(compare_folder, stem, settings.formats, display_frames,
                                    [(m, d, style) for m, d, style, _ in entries], lines)
    return rows


# ------------------------------------------------------------------------------ the run

SUMMARY_KEY = ("key",)


def open_summary(folder: Path) -> Tuple[SummaryStore, Optional[pd.DataFrame]]:
    """The folder's summary store (stale temporaries of killed runs removed) and its rows so far
    (``None`` when there are none); an unreadable summary is a :class:`SetupError`."""
    store = SummaryStore(folder, key_columns=SUMMARY_KEY)
    if not folder.is_dir():
        return store, None
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


def _error_row(clip_id: str, method: str, model: str, seconds: float, message: str) -> dict:
    return {"clip": clip_id, "output_set": "", "method": method, "model": model, "target": "",
            "seconds": round(seconds, 3), "status": "error", "error": message}


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


def run(clips: Sequence[ClipSource], load_adapter: Callable[[], ModelAdapter],
        device: torch.device, settings: RunSettings, class_names: Sequence[str],
        folders: Mapping[str, Path], synonyms=None,
        compare_folder: Optional[Path] = None) -> int:
    """Process every clip; returns the number of clips that failed. ``load_adapter`` is called
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
    if not todo:
        return 0
    adapter = load_adapter()
    try:
        return _run_clips(todo, adapter, device, settings, class_names, folders, stores,
                          fingerprints, synonyms, compare_folder)
    finally:
        # summary.csv is derived from the part files: rebuilt at the end, even after Ctrl-C.
        for method, store in stores.items():
            if store.part_files():
                store.rebuild()
        write_reports(stores, folders, compare_folder)


def _run_clips(todo, adapter, device, settings, class_names, folders, stores,
               fingerprints, synonyms, compare_folder) -> int:
    failures = 0
    last_report = time.monotonic()
    bar = tqdm(todo, desc=f"{','.join(settings.methods)}/{settings.model_name}", unit="clip",
               disable=not settings.progress or len(todo) < 2)
    for source, clip_id in bar:
        bar.set_postfix_str(clip_id[:40])
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rows = process_clip(source, clip_id, adapter, device, settings, class_names,
                                    folders, synonyms, compare_folder)
                if settings.progress:
                    first = next(iter(rows.values()))[0]
                    probability = (f" ({float(first['probability']):.2f})"
                                   if first.get("probability") not in ("", None) else "")
                    tqdm.write(f"{clip_id}: label {first['label'] or 'unknown'}; prediction "
                               f"{first['prediction']}{probability}; "
                               f"{time.perf_counter() - started:.2f} s", file=sys.stderr)
            except (KeyboardInterrupt, SystemExit, WeightsUnavailableError):
                raise
            except Exception as error:  # one bad clip must not stop the batch
                failures += 1
                message = " ".join(str(error).split()) or type(error).__name__
                tqdm.write(f"error: {clip_id}: {message}", file=sys.stderr)
                rows = {m: [_error_row(clip_id, m, settings.model_name,
                                       time.perf_counter() - started, message)]
                        for m in settings.methods}
        for warning in caught:
            text = " ".join(str(warning.message).split())
            tqdm.write(f"warning: {clip_id}: {text}", file=sys.stderr)
        for method, method_rows in rows.items():
            for row in method_rows:
                row["settings"] = fingerprints[method]
                row["key"] = row_key(row)
            folders[method].mkdir(parents=True, exist_ok=True)
            stores[method].append(method_rows)
        if time.monotonic() - last_report >= REPORT_INTERVAL:
            write_reports(stores, folders, compare_folder)
            last_report = time.monotonic()
    return failures
