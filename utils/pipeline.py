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

import collections
import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from models import WeightsUnavailableError
from models.adapter import ModelAdapter
from vis_methods import Attribution, explain, safe_name
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
    batch_size: Optional[int] = None
    precision: str = "float32"

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
                    "regression_target": self.regression_target, "polarity": self.polarity,
                    "precision": self.precision}
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


def predict(adapter: ModelAdapter, clip: ClipInput, class_names: Sequence[str],
            output: Optional[torch.Tensor] = None) -> Prediction:
    """The model's answer on ``clip``; ``output`` (the network's output on the clip, e.g. from
    the method's own forward pass) saves the forward pass."""
    if output is None:
        with torch.no_grad():
            output = adapter(clip.tensor)
    output = output.detach().float().cpu()
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

def explain_target(method: str, adapter: ModelAdapter, clips: torch.Tensor,
                   target: Callable[[torch.Tensor], torch.Tensor],
                   options: Mapping[str, object], progress: bool) -> Attribution:
    """``method`` on ``clips`` ``(N, C, T, H, W)``; a map with non-finite values is an error."""
    result = explain(method, adapter, clips, target, progress=progress, **options)
    if not torch.isfinite(result.maps).all():
        raise ClipFailure(f"{method} returned a map with non-finite values")
    return result


def render_outputs(folder: Path, stem: str, display_frames: np.ndarray, raw: torch.Tensor,
                   signed: bool, polarity: str, formats: Sequence[str],
                   caption: visualize.Caption, attention: Optional[np.ndarray],
                   time_steps: Optional[int] = None,
                   fonts: Optional[visualize.Typesetter] = None
                   ) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Write one output set (NPY, PNG, GIF, MP4), each file whole or not at all; returns the
    file names, the per-frame share of the map and the display map (normalised). ``fonts``:
    the run's :class:`visualize.Typesetter` (texts drawn once per run)."""
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
                                    importance, attention, time_steps, parallel=False, fonts=fonts)
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
    # Both the mask's mean and its part above 1/2 must be near the area: early on, a mask of
    # values near 1/2 can have the right part above 1/2 and far too large a mean.
    for key in ("final_area", "final_area_above_half"):
        achieved = cells.get(key)
        if isinstance(achieved, (int, float)) and abs(achieved - requested) > max(
                AREA_TOLERANCE_MIN, AREA_TOLERANCE * requested):
            problems.append(f"area {achieved:.3f} instead of {requested:g}")
            break
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


@dataclass
class OutputSet:
    """One map to write: everything the finish stage needs, computed by the compute stage."""

    method: str
    stem: str
    set_name: str
    set_index: int
    num_sets: int
    target: str
    raw: torch.Tensor
    signed: bool
    diagnostics: Mapping[str, object]
    seconds: float


@dataclass
class ClipWork:
    """A clip between the compute stage (model) and the finish stage (pictures, files, rows)."""

    clip: ClipInput
    label: Optional[str]
    prediction: Prediction
    outputs: List[OutputSet] = field(default_factory=list)


def _batchable(targets: Sequence[Target]) -> bool:
    """One plain class or regression target per clip: clips can share a forward/backward."""
    return len(targets) == 1 and isinstance(targets[0].fn, (ClassTarget, RegressionTarget))


def _stacked_target(targets: Sequence[Target]):
    """The targets of several clips (one each) as one batched target."""
    first = targets[0].fn
    if isinstance(first, ClassTarget):
        return ClassTarget(torch.cat([t.fn.classes.view(-1) for t in targets]))
    return RegressionTarget(torch.stack([t.fn.truth.view(-1) for t in targets]))


def _add_outputs(work: ClipWork, method: str, target: Target, result: Attribution, index: int,
                 settings: RunSettings, seconds: float) -> None:
    options = settings.method_options.get(method, {})
    diagnostics = result.diagnostics[index]
    for set_index, (set_name, raw) in enumerate(result.output_sets(index)):
        stem = work.clip.clip_id + target.suffix + (f"_{set_name}" if set_name else "")
        if settings.polarity != "positive":
            stem += f"_{settings.polarity}"
        stem = file_stem(stem)
        for message in extremal_warnings(method, options, diagnostics, set_index,
                                         len(result.names)):
            warnings.warn(f"{stem}: {message}")
        work.outputs.append(OutputSet(method, stem, set_name, set_index, len(result.names),
                                      target.name, raw.detach().float().cpu(), result.signed,
                                      diagnostics, seconds))


def precision_context(precision: str, device: torch.device):
    """``bf16``: the model runs under bfloat16 autocast (channels-last 3-D input on CUDA); maps
    and scores come back in float32. ``float32``: no change."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def compute_clips(clips: Sequence[ClipInput], adapter: ModelAdapter, settings: RunSettings,
                  class_names: Sequence[str], synonyms=None) -> List[ClipWork]:
    with precision_context(settings.precision, clips[0].tensor.device):
        works = _compute_clips(clips, adapter, settings, class_names, synonyms)
    for work in works:
        for item in work.outputs:
            item.raw = item.raw.float()
    return works


# Methods whose first forward pass is the clip itself through the unchanged network: when the
# target does not depend on the prediction, the prediction is read from that pass.
SHARED_FORWARD = frozenset({"grad", "grad*input", "guided_backprop", "deconvnet", "grad_cam",
                            "grad_cam_pp", "xgrad_cam", "layer_cam", "cam", "guided_grad_cam"})


class _FirstOutput:
    """A target that keeps the network's output of its first call on ``rows`` samples."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], rows: int):
        self.fn, self.rows, self.output = fn, rows, None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.output is None and output.shape[0] == self.rows:
            self.output = output.detach()
        return self.fn(output)


def _needs_prediction(settings: RunSettings, task: str, label: Optional[str]) -> bool:
    if task != "classification" or settings.topk or settings.target == "pred":
        return True
    return settings.target == "label" and label is None


def _compute_clips(clips: Sequence[ClipInput], adapter: ModelAdapter, settings: RunSettings,
                   class_names: Sequence[str], synonyms=None) -> List[ClipWork]:
    """The model's part for one or more clips (same size): predict, choose targets, explain.
    Clips with one plain target each share every method's forward/backward (exact for every
    method: maps do not depend on the batch, see the method context); others run alone. With
    a method of :data:`SHARED_FORWARD` first and a target known without the prediction, the
    prediction comes from the method's own forward pass (one forward per clip saved)."""
    works, targets_of = [], []
    share = settings.methods[0] in SHARED_FORWARD
    for clip in clips:
        label = parse_label(clip.source.name, class_names, synonyms) if class_names else None
        prediction = None
        if not (share and not _needs_prediction(settings, adapter.task, label)):
            prediction = predict(adapter, clip, class_names)
        targets = choose_targets(settings, adapter.task, class_names, label,
                                 prediction.probabilities if prediction else None, clip.source,
                                 prediction.output.shape[1] if prediction else len(class_names))
        if adapter.task == "regression":
            label = _vector_text(targets[0].fn.truth)
        works.append(ClipWork(clip, label, prediction))
        targets_of.append(targets)
    together = len(clips) > 1 and all(_batchable(t) for t in targets_of)
    pending = [w for w in works if w.prediction is None]
    for index_method, method in enumerate(settings.methods):
        options = settings.method_options.get(method, {})
        capture = index_method == 0 and bool(pending)
        if together:
            batch = torch.cat([w.clip.tensor for w in works])
            started = time.perf_counter()
            target = _stacked_target([t[0] for t in targets_of])
            if capture:
                target = _FirstOutput(target, len(works))
            result = explain_target(method, adapter, batch, target, options, settings.progress)
            if capture:
                for index, work in enumerate(works):
                    if work.prediction is None:
                        shared = target.output[index:index + 1] if target.output is not None \
                            else None
                        work.prediction = predict(adapter, work.clip, class_names, shared)
            seconds = (time.perf_counter() - started) / len(works)
            for index, (work, targets) in enumerate(zip(works, targets_of)):
                _add_outputs(work, method, targets[0], result, index, settings, seconds)
            continue
        for work, targets in zip(works, targets_of):
            for target in targets:
                started = time.perf_counter()
                watched = target
                if capture and work.prediction is None:
                    watched = replace(target, fn=_FirstOutput(target.fn, 1))
                result = explain_target(method, adapter, work.clip.tensor, watched.fn, options,
                                        settings.progress)
                if watched is not target:
                    work.prediction = predict(adapter, work.clip, class_names, watched.fn.output)
                _add_outputs(work, method, target, result, 0, settings,
                             time.perf_counter() - started)
    for work in works:
        if work.prediction is None:
            work.prediction = predict(adapter, work.clip, class_names)
    return works


def finish_clip(work: ClipWork, adapter_name: str, settings: RunSettings,
                folders: Mapping[str, Path],
                compare_folder: Optional[Path] = None,
                fonts: Optional[visualize.Typesetter] = None) -> Dict[str, List[dict]]:
    """Pictures, files and summary rows of one computed clip (no model needed: this stage runs
    beside the next clips' computation). ``fonts``: the run's shared
    :class:`visualize.Typesetter`, if any."""
    clip, label, prediction = work.clip, work.label, work.prediction
    display_frames = clip.rgb.permute(1, 2, 3, 0).numpy()                 # (T, H, W, 3)
    rows: Dict[str, List[dict]] = {m: [] for m in settings.methods}
    compare: Dict[str, list] = {}
    for item in work.outputs:
        layer = visualize.layer_text(item.diagnostics)
        extra = tuple(e for e in (item.set_name, layer) if e)
        caption = visualize.Caption(clip.clip_id, label, prediction.text, prediction.probability,
                                    item.target, item.method, adapter_name, settings.polarity,
                                    extra)
        outputs, importance, display = render_outputs(
            folders[item.method], item.stem, display_frames, item.raw, item.signed,
            settings.polarity, settings.formats, caption, prediction.attention,
            visualize.map_time_steps(item.diagnostics), fonts)
        if compare_folder is not None:
            compare.setdefault(item.stem, []).append(
                (item.method, display, visualize.overlay_style(item.signed, settings.polarity),
                 caption))
        row = {"clip": clip.clip_id, "output_set": item.set_name, "label": label or "",
               "prediction": prediction.text,
               "probability": (round(prediction.probability, 5)
                               if prediction.probability == prediction.probability else ""),
               "target": item.target, "method": item.method, "model": adapter_name,
               "seconds": round(item.seconds, 3), "status": "ok", "error": "",
               "frame_importance": ";".join(f"{v:.4f}" for v in importance),
               "outputs": ";".join(outputs)}
        if prediction.attention is not None:
            row["attention"] = ";".join(f"{v:.4f}" for v in prediction.attention)
        row.update(_diagnostic_cells(item.diagnostics, item.set_index, item.num_sets))
        rows[item.method].append(row)
    for stem, entries in compare.items():
        if len(entries) < 2:
            continue
        caption = entries[0][3]
        lines = [caption.clip, "   ".join(p for p in (f"label: {caption.label or 'unknown'}",
                                                     caption.prediction_text(),
                                                     f"explained: {caption.target}") if p),
                 f"{', '.join(e[0] for e in entries)} / {caption.model}"]
        render.write_comparison(compare_folder, stem, settings.formats, display_frames,
                                [(m, d, style) for m, d, style, _ in entries], lines, fonts)
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
        text = " ".join(str(message).split())
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
    state = {"failures": 0, "last_report": time.monotonic()}
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
                                   fonts), \
                    time.perf_counter() - started, None
            except Exception as error:
                return None, time.perf_counter() - started, error

    def record(clip_id: str, rows: Optional[Dict[str, List[dict]]], notes: List[str],
               error: Optional[BaseException], seconds: float) -> None:
        for text in notes:
            tqdm.write(f"warning: {clip_id}: {text}", file=sys.stderr)
        if error is not None:
            state["failures"] += 1
            message = " ".join(str(error).split()) or type(error).__name__
            tqdm.write(f"error: {clip_id}: {message}", file=sys.stderr)
            rows = {m: [_error_row(clip_id, m, settings.model_name, seconds, message)]
                    for m in settings.methods}
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
