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

import contextlib
import json
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from models import WeightsUnavailableError
from models.adapter import ModelAdapter
from vis_methods import METHODS, Attribution, explain
from vis_methods import scores as faithfulness
from vis_methods.attention import attention_unsupported
from vis_methods.targets import ClassTarget, Counterfactual, RegressionTarget

from utils.render import figures as visualize
from utils.io.labels import parse_label, resolve_class
from utils.render import outputs as render
from utils.render import explorer
from utils.io.clips import ClipSource, load_frames, preprocess
from utils.io.errors import ClipFailure, SetupError
from utils.io.paths import file_stem, readable_name, safe_fragment
from utils.pipeline.settings import RunSettings, Target




# ------------------------------------------------------------------------------ stage: read

@dataclass(frozen=True)
class ClipInput:
    """A decoded clip: ``rgb (3, T, H, W)`` in [0, 1] and the model input ``(1, 3, T, H, W)``;
    ``short_side``: the decoded frames' short side before preprocessing (below the model's
    resize, the frames were upscaled)."""

    source: ClipSource
    clip_id: str
    rgb: torch.Tensor
    tensor: torch.Tensor
    short_side: Optional[int] = None


def read_clip(source: ClipSource, clip_id: str, adapter: ModelAdapter, clip_length: int,
              device: torch.device, decode_device: Optional[torch.device] = None) -> ClipInput:
    """``decode_device``: where a frame folder's JPEGs are decoded
    (``utils.pipeline.setup.decode_device``); None: Pillow on the CPU."""
    # Frames are shrunk to the model's short side as they are decoded: memory follows the model
    # input, not the source.
    frames, _ = load_frames(source, clip_length, resize=adapter.resize,
                            decode_device=decode_device)
    rgb = preprocess(frames, adapter.resize, adapter.crop)                # (3, T, H, W)
    if not torch.isfinite(rgb).all():
        raise ClipFailure("the clip holds non-finite values")
    tensor = adapter.normalize(rgb).unsqueeze(0).to(device)
    return ClipInput(source, clip_id, rgb, tensor, int(min(frames.shape[1:3])))


def upscale_warning(clip: ClipInput, resize: Optional[int]) -> Optional[str]:
    """Words for a clip whose frames are smaller than the model's resize (so they are
    enlarged, which changes what the model sees), else None."""
    if resize is None or clip.short_side is None or clip.short_side >= resize:
        return None
    return (f"{clip.clip_id}: frames of {clip.short_side} px (short side) are upscaled to the "
            f"model's resize of {resize} px; pass --resize {clip.short_side} to keep their size "
            "(said once per run)")


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
                              f"_top{rank + 1}_{safe_fragment(class_names[k])}", k)
                       for rank, k in enumerate(top)]
        else:
            choice = settings.target
            if choice == "label" and label_index is None:
                tqdm.write(f"warning: {readable_name(clip.name)}: label unknown, explaining "
                           "the prediction",
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
            suffix = "" if index == label_index else f"_{safe_fragment(class_names[index])}"
            targets = [Target(class_names[index], ClassTarget(torch.tensor([index])), suffix,
                              index)]
    if settings.counterfactual:
        targets = [Target(f"counterfactual of {t.name}", Counterfactual(t.fn),
                          t.suffix + "_counterfactual", t.index) for t in targets]
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


def display_style(settings: RunSettings, signed: bool) -> visualize.Style:
    """The colours of a map under the run's polarity, colour map and opacity."""
    return visualize.overlay_style(signed, settings.polarity, settings.colormap, settings.opacity)


def shown_map(raw: torch.Tensor, polarity: str) -> np.ndarray:
    """The map the pictures show and the scores rate: channels summed, then ``polarity``."""
    return visualize.apply_polarity(visualize.reduce_channels(raw.float().cpu().numpy()), polarity)


def render_outputs(folder: Path, stem: str, display_frames: np.ndarray, raw: torch.Tensor,
                   signed: bool, polarity: str, formats: Sequence[str],
                   caption: visualize.Caption, attention: Optional[np.ndarray],
                   time_steps: Optional[int] = None,
                   fonts: Optional[visualize.Typesetter] = None,
                   style: Optional[visualize.Style] = None, normalize: str = "robust",
                   scores: Sequence[visualize.ScoreCurve] = ()
                   ) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Write one output set (NPY, PNG, GIF, MP4), each file whole or not at all; returns the
    file names, the per-frame share of the map and the display map (normalised). ``fonts``:
    the run's :class:`visualize.Typesetter` (texts drawn once per run); ``style``: default
    :func:`visualize.overlay_style`; ``normalize``: :func:`visualize.normalize_map`'s mode;
    the caption's ``problem`` is stamped on the pictures."""
    saliency = visualize.reduce_channels(raw.float().cpu().numpy())
    if saliency.shape != display_frames.shape[:3]:
        raise ClipFailure(f"the method returned a map of shape {tuple(saliency.shape)}, "
                          f"expected {display_frames.shape[:3]}")
    shown = visualize.apply_polarity(saliency, polarity)
    display = visualize.normalize_map(shown, mode=normalize)
    importance = visualize.frame_importance(shown)
    outputs = render.write_data(folder, stem, formats, saliency)
    drawing = render.DrawOptions(importance, attention, time_steps, parallel=False, fonts=fonts,
                                 scores=scores)
    outputs += render.write_visuals(folder, stem, formats, display_frames, display,
                                    style or visualize.overlay_style(signed, polarity), caption,
                                    drawing)
    return outputs, importance, display


from utils.pipeline.options import SCORE_GAMES  # noqa: E402,F401 - the games --score offers
RANDOM_MAP_SEED = 0


def score_map(adapter: ModelAdapter, clip: torch.Tensor, shown: np.ndarray, target,
              games: Sequence[str], steps: int) -> Dict[str, tuple]:
    """Deletion and/or insertion of ``shown`` ``(T, H, W)`` on ``clip`` ``(1, C, T, H, W)``
    (:mod:`vis_methods.scores`, as in the evaluation: blurred replacement, ``steps`` steps) and
    of a random map (uniform noise, seeded) on the same clip: ``game -> (auc, curve,
    random_auc, random_curve)``. ``target``: a class index (its softmax probability is
    scored) or a callable ``output -> (N,)``. Costs ``2 (steps + 1)`` forward passes per game."""
    random_map = np.random.default_rng(RANDOM_MAP_SEED).random(shown.shape)
    results = {}
    for game in games:
        function = faithfulness.deletion if game == "deletion" else faithfulness.insertion
        auc, curve = function(adapter, clip, shown, target, steps)
        random_auc, random_curve = function(adapter, clip, random_map, target, steps)
        results[game] = (auc, curve, random_auc, random_curve)
    return results


# Extremal perturbations: warn when the mask misses its area by more than this (relative, at
# least AREA_TOLERANCE_MIN absolute) or the kept region scores the target below this probability.
AREA_TOLERANCE = 0.25
AREA_TOLERANCE_MIN = 0.02
KEPT_PROBABILITY_MIN = 0.5


def extremal_warnings(method: str, options: Mapping[str, object],
                      diagnostics: Mapping[str, object], set_index: int,
                      num_sets: int) -> List[str]:
    """Why an extremal perturbation's mask should not be trusted (empty when it converged)."""
    if not METHODS[method].extremal:
        return []
    cells = _diagnostic_cells(diagnostics, set_index, num_sets)
    areas = options["perturb_area"]
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
    if options["ep_variant"] != "delete" and isinstance(kept, (int, float)) \
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
    target_index: Optional[int] = None
    target_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    counterfactual: bool = False
    scores: Dict[str, tuple] = field(default_factory=dict)     # see score_map


@dataclass
class ClipWork:
    """A clip between the compute stage (model) and the finish stage (pictures, files, rows)."""

    clip: ClipInput
    label: Optional[str]
    prediction: Prediction
    outputs: List[OutputSet] = field(default_factory=list)
    errors: Dict[str, str] = field(default_factory=dict)   # method -> why it failed on the clip


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
                                      diagnostics, seconds, target.index, target.fn,
                                      isinstance(target.fn, Counterfactual)))


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
        if settings.scores:
            for work in works:
                for item in work.outputs:
                    if item.counterfactual:
                        continue      # a map against the class: no game scores it
                    target = item.target_index if item.target_index is not None else item.target_fn
                    started = time.perf_counter()
                    item.scores = score_map(adapter, work.clip.tensor,
                                            shown_map(item.raw, settings.polarity), target,
                                            settings.scores, settings.score_steps)
                    item.seconds += time.perf_counter() - started
    for work in works:
        for item in work.outputs:
            item.raw = item.raw.float()
    return works


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
    a method that shares the prediction's forward pass first and a target known without the prediction, the
    prediction comes from the method's own forward pass (one forward per clip saved)."""
    works, targets_of = [], []
    share = METHODS[settings.methods[0]].shares_forward
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
            try:
                _explain_batch(method, options, capture, works, targets_of, adapter, settings,
                               class_names)
                continue
            except _PASSED_ON:
                raise
            except Exception:  # noqa: BLE001 - find the clip that fails: one clip at a time
                for work in works:
                    work.outputs = [o for o in work.outputs if o.method != method]
        for work, targets in zip(works, targets_of):
            # Each method stands alone: one that fails on this clip is recorded for that
            # method only, and the clip's other methods still write their outputs.
            try:
                _explain_clip(method, options, capture, work, targets, adapter, settings,
                              class_names)
            except _PASSED_ON:
                raise
            except Exception as error:  # noqa: BLE001 - recorded as the method's error row
                work.outputs = [o for o in work.outputs if o.method != method]
                work.errors[method] = " ".join(str(error).split()) or type(error).__name__
    for work in works:
        if work.prediction is None:
            work.prediction = predict(adapter, work.clip, class_names)
    return works


TOP_CLASSES = 5


def class_facts(probabilities: Optional[torch.Tensor], class_names: Sequence[str],
                index: Optional[int]) -> Tuple[float, Optional[int], List[Tuple[str, float]]]:
    """``(probability of class index, its rank (1 = the prediction), the top classes with
    their probabilities)`` from a classifier's softmax; NaN, None, [] without one."""
    if probabilities is None:
        return float("nan"), None, []
    probabilities = probabilities.float()
    top = probabilities.topk(min(TOP_CLASSES, probabilities.numel()))
    names = [class_names[k] if k < len(class_names) else str(k) for k in top.indices.tolist()]
    classes = list(zip(names, top.values.tolist()))
    if index is None:
        return float("nan"), None, classes
    value = float(probabilities[index])
    return value, 1 + int((probabilities > probabilities[index]).sum()), classes


def score_curves(scores: Mapping[str, tuple]) -> List[visualize.ScoreCurve]:
    """What :func:`score_map` found, for the figure."""
    return [visualize.ScoreCurve(game, auc, curve, random_auc, random_curve, game == "deletion")
            for game, (auc, curve, random_auc, random_curve) in scores.items()]


def score_cells(scores: Mapping[str, tuple]) -> Dict[str, object]:
    """``summary.csv`` cells of :func:`score_map`'s results: each game's AUC, the random map's
    AUC and both curves (';'-separated)."""
    cells: Dict[str, object] = {}
    for game, (auc, curve, random_auc, random_curve) in scores.items():
        cells[f"{game}_auc"] = round(float(auc), 5)
        cells[f"{game}_random_auc"] = round(float(random_auc), 5)
        cells[f"{game}_curve"] = ";".join(f"{v:.4f}" for v in curve)
        cells[f"{game}_random_curve"] = ";".join(f"{v:.4f}" for v in random_curve)
    return cells


def _write_explorer(views: Mapping[str, List[dict]], folders: Mapping[str, Path],
                    frames: np.ndarray, clip_id: str, label: Optional[str],
                    prediction: Prediction, model: str) -> None:
    """The clip's explorer page (every map of every method) beside each method's outputs."""
    if not views:
        return
    data = explorer.page_data(frames, [v for entries in views.values() for v in entries],
                              clip=clip_id, label=label or "", prediction=prediction.text,
                              probability=prediction.probability, model=model,
                              attention=prediction.attention)
    page = explorer.viewer_html(data)
    for method in views:
        explorer.write_page(folders[method] / explorer.page_name(file_stem(clip_id)), page)


# Errors that stop the run rather than one method on one clip.
_PASSED_ON = (KeyboardInterrupt, SystemExit, WeightsUnavailableError, SetupError)


def _explain_batch(method, options, capture, works, targets_of, adapter, settings,
                   class_names) -> None:
    """``method`` on several clips in one forward/backward (one plain target each)."""
    batch = torch.cat([w.clip.tensor for w in works])
    started = time.perf_counter()
    target = _stacked_target([t[0] for t in targets_of])
    if capture:
        target = _FirstOutput(target, len(works))
    result = explain_target(method, adapter, batch, target, options, settings.progress)
    if capture:
        for index, work in enumerate(works):
            if work.prediction is None:
                shared = target.output[index:index + 1] if target.output is not None else None
                work.prediction = predict(adapter, work.clip, class_names, shared)
    seconds = (time.perf_counter() - started) / len(works)
    for index, (work, targets) in enumerate(zip(works, targets_of)):
        _add_outputs(work, method, targets[0], result, index, settings, seconds)


def _explain_clip(method, options, capture, work, targets, adapter, settings,
                  class_names) -> None:
    """``method`` on one clip, every target of it."""
    for target in targets:
        started = time.perf_counter()
        watched = target
        if capture and work.prediction is None:
            watched = replace(target, fn=_FirstOutput(target.fn, 1))
        result = explain_target(method, adapter, work.clip.tensor, watched.fn, options,
                                settings.progress)
        if watched is not target:
            work.prediction = predict(adapter, work.clip, class_names, watched.fn.output)
        _add_outputs(work, method, target, result, 0, settings, time.perf_counter() - started)


def check_run(adapter: ModelAdapter, settings: RunSettings) -> None:
    """What fails every clip, checked once the model is loaded and before the first clip: an
    attention method on a network without attention, a ``--regression_target`` whose length
    is not the network's output size. Raises :class:`SetupError` (one line)."""
    for method in settings.methods:
        if method in METHODS and METHODS[method].module == "attention":
            reason = attention_unsupported(adapter)
            if reason is not None:
                raise SetupError(f"{method}: {reason}")
    if adapter.task == "regression" and settings.regression_target not in (None, "sidecar"):
        truth = parse_regression_values(settings.regression_target)
        size = adapter.crop or 112
        length = settings.clip_length or adapter.clip_length or 16
        probe = torch.zeros(1, 3, length, size, size, device=next(
            (p.device for p in adapter.parameters()), torch.device("cpu")))
        with torch.no_grad():
            outputs = adapter(adapter.normalize(probe)).shape[-1]
        if truth.numel() != outputs:
            raise SetupError(f"--regression_target has {truth.numel()} values; the model "
                             f"outputs {outputs}")


def error_row(clip_id: str, method: str, model: str, seconds: float, message: str) -> dict:
    """The summary row of a clip (or one method of it) that failed."""
    return {"clip": clip_id, "output_set": "", "method": method, "model": model, "target": "",
            "seconds": round(seconds, 3), "status": "error", "error": message}


def _finish_output(work: ClipWork, item: OutputSet, adapter_name: str, settings: RunSettings,
                   folders: Mapping[str, Path], comparing: bool,
                   fonts: Optional[visualize.Typesetter], class_names: Sequence[str]
                   ) -> Tuple[dict, Optional[tuple], Optional[str], dict]:
    """One output set's files and summary row, its entry in the comparison figure, what is
    wrong with its map (None when nothing) and its view in the clip's explorer page."""
    clip, label, prediction = work.clip, work.label, work.prediction
    display_frames = clip.rgb.permute(1, 2, 3, 0).numpy()                 # (T, H, W, 3)
    layer = visualize.layer_text(item.diagnostics)
    extra = tuple(e for e in (item.set_name, layer) if e)
    style = display_style(settings, item.signed)
    problem = visualize.map_problem(shown_map(item.raw, settings.polarity))
    target_probability, rank, top = class_facts(prediction.probabilities, class_names,
                                                item.target_index)
    caption = visualize.Caption(
        clip.clip_id, label, prediction.text, prediction.probability, item.target,
        item.method, adapter_name, settings.polarity, extra, target_probability, rank,
        tuple(top), visualize.scale_text(style, settings.normalize, display_frames.shape[0]),
        problem)
    outputs, importance, display = render_outputs(
        folders[item.method], item.stem, display_frames, item.raw, item.signed,
        settings.polarity, settings.formats, caption, prediction.attention,
        visualize.map_time_steps(item.diagnostics), fonts, style, settings.normalize,
        score_curves(item.scores))
    entry = (item.method, display, style, caption) if comparing else None
    row = {"clip": clip.clip_id, "output_set": item.set_name, "label": label or "",
           "prediction": prediction.text,
           "probability": (round(prediction.probability, 5)
                           if prediction.probability == prediction.probability else ""),
           "target": item.target,
           "target_probability": (round(target_probability, 5)
                                  if target_probability == target_probability else ""),
           "target_rank": rank if rank is not None else "",
           "top5": ";".join(f"{name}:{p:.4f}" for name, p in top),
           "method": item.method, "model": adapter_name,
           "seconds": round(item.seconds, 3), "status": "ok", "error": "",
           "map_problem": problem or "",
           "frame_importance": ";".join(f"{v:.4f}" for v in importance),
           "outputs": ";".join(outputs)}
    row.update(score_cells(item.scores))
    if prediction.attention is not None:
        row["attention"] = ";".join(f"{v:.4f}" for v in prediction.attention)
    row.update(_diagnostic_cells(item.diagnostics, item.set_index, item.num_sets))
    view = explorer.view_entry(
        display, method=item.method, target=item.target, set_name=item.set_name,
        polarity=settings.polarity, signed_method=item.signed, importance=importance,
        scores={k: v for k, v in row.items() if k not in explorer.ROW_SHOWN}, style=style)
    return row, entry, (f"{item.method} map {item.stem}: {problem}" if problem else None), view


def finish_clip(work: ClipWork, adapter_name: str, settings: RunSettings,
                folders: Mapping[str, Path],
                compare_folder: Optional[Path] = None,
                fonts: Optional[visualize.Typesetter] = None,
                class_names: Sequence[str] = ()) -> Dict[str, List[dict]]:
    """Pictures, files and summary rows of one computed clip (no model needed: this stage runs
    beside the next clips' computation). ``fonts``: the run's shared
    :class:`visualize.Typesetter`, if any; ``class_names``: for the top classes. A map that
    shows nothing (:func:`visualize.map_problem`) is stamped, recorded in ``map_problem`` and
    warned about once per clip. A method that fails here fails on this clip alone: its files
    are removed and its row is an error; the other methods' outputs stand."""
    clip, label, prediction = work.clip, work.label, work.prediction
    display_frames = clip.rgb.permute(1, 2, 3, 0).numpy()                 # (T, H, W, 3)
    rows: Dict[str, List[dict]] = {m: [] for m in settings.methods}
    compare: Dict[str, list] = {}
    problems: List[str] = []
    views: Dict[str, List[dict]] = {}
    errors = dict(work.errors)
    written: Dict[str, List[str]] = {m: [] for m in settings.methods}
    for item in work.outputs:
        if item.method in errors:
            continue
        try:
            row, entry, problem, view = _finish_output(work, item, adapter_name, settings,
                                                       folders, compare_folder is not None,
                                                       fonts, class_names)
        except _PASSED_ON:
            raise
        except Exception as error:  # noqa: BLE001 - this method fails on this clip only
            errors[item.method] = " ".join(str(error).split()) or type(error).__name__
            continue
        written[item.method] += [n for n in row["outputs"].split(";") if n]
        rows[item.method].append(row)
        views.setdefault(item.method, []).append(view)
        if problem:
            problems.append(problem)
        if entry is not None:
            compare.setdefault(item.stem, []).append(entry)
    for method, message in errors.items():
        _drop_failed(work, method, message, adapter_name, settings, folders, written[method],
                     rows, views, compare)
    if problems:
        warnings.warn("; ".join(problems))
    _write_explorer(views, folders, display_frames, clip.clip_id, label, prediction, adapter_name)
    for stem, entries in compare.items():
        if len(entries) >= 2:
            _write_comparison(compare_folder, stem, entries, display_frames, settings, fonts)
    return rows


def _drop_failed(work: ClipWork, method: str, message: str, adapter_name: str,
                 settings: RunSettings, folders: Mapping[str, Path], written: Sequence[str],
                 rows: Dict[str, List[dict]], views: Dict[str, List[dict]],
                 compare: Dict[str, list]) -> None:
    """``method`` failed on this clip: its files go (no file without its row), its rows become
    one error row, and it leaves the explorer and the comparisons."""
    for name in written:
        (folders[method] / name).unlink(missing_ok=True)
    rows[method] = [error_row(work.clip.clip_id, method, adapter_name,
                              sum(o.seconds for o in work.outputs if o.method == method),
                              f"{method}: {message}" if len(settings.methods) > 1
                              else message)]
    views.pop(method, None)
    for stem in compare:
        compare[stem] = [e for e in compare[stem] if e[0] != method]


def _write_comparison(compare_folder: Path, stem: str, entries: Sequence[tuple],
                      display_frames: np.ndarray, settings: RunSettings,
                      fonts: Optional[visualize.Typesetter]) -> None:
    """The methods side by side for one map stem: ``entries`` ``(method, display map, style,
    caption)``, titled by the first caption."""
    caption = entries[0][3]
    lines = [caption.clip, "   ".join(p for p in (f"label: {caption.label or 'unknown'}",
                                                 caption.prediction_text(),
                                                 caption.target_text()) if p)]
    if caption.top_classes:
        lines.append(caption.top_text())
    lines += [f"{', '.join(e[0] for e in entries)} / {caption.model}   "
              f"polarity: {settings.polarity}",
              f"scale: {settings.normalize} per map over the clip's frames, opacity "
              f"{settings.opacity:g}; each row has its own legend and colour bar; all "
              f"{display_frames.shape[0]} frames shown"]
    render.write_comparison(compare_folder, stem, settings.formats, display_frames,
                            [(m, d, style, c.problem) for m, d, style, c in entries], lines,
                            fonts, caption.target, settings.polarity)
