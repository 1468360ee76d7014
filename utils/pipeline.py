"""The per-clip pipeline behind ``main.py``: load, predict, choose targets, explain, draw, save.

Every clip is independent: an error is reported on one line naming the clip, recorded in
``summary.csv``, and the next clip still runs.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from models import ModelSpec, WeightsUnavailableError
from vis_methods import METHODS, call_with_options, get_method, safe_name
from vis_methods.targets import ClassTarget, Counterfactual, RegressionTarget

from . import visualize
from .labels import parse_label, resolve_class
from .output import save_figure, save_gif, save_npy, write_summary
from .video import ClipSource, load_frames, preprocess

FORMATS = ("png", "gif", "npy")


@dataclass(frozen=True)
class Target:
    """One thing to explain for a clip: ``fn`` scores the model output, ``name`` is shown,
    ``suffix`` goes into file names ('' for the single default target)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    suffix: str = ""


@dataclass
class RunSettings:
    method: str
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
    method_options: Dict[str, object] = field(default_factory=dict)
    progress: bool = True

    def fingerprint(self) -> str:
        """Short hash of everything that changes a clip's outputs; a rerun skips a clip only
        when its earlier outputs were made with the same fingerprint."""
        relevant = {"method": self.method, "model": self.model_name, "formats": sorted(self.formats),
                    "polarity": self.polarity, "target": self.target, "topk": self.topk,
                    "counterfactual": self.counterfactual, "clip_length": self.clip_length,
                    "regression_target": self.regression_target,
                    "options": {k: v for k, v in sorted(self.method_options.items()) if v is not None}}
        text = json.dumps(relevant, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


class ClipFailure(RuntimeError):
    """A per-clip error whose message is already user-facing."""


def output_dir(out_dir: Path, method: str, model: str, save_label: Optional[str]) -> Path:
    folder = Path(out_dir) / safe_name(method) / model
    return folder / save_label if save_label else folder


def _safe_fragment(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def read_regression_truth(clip: ClipSource, value: str) -> torch.Tensor:
    """``value``: comma-separated numbers, or ``sidecar``: the clip's ``ground_truth.json``
    (key ``regression_target``) or ``regression_target.json`` / ``<video>.regression.json``."""
    if value != "sidecar":
        try:
            return torch.tensor([float(v) for v in value.split(",")], dtype=torch.float32)
        except ValueError:
            raise ClipFailure(f"--regression_target {value!r} is neither 'sidecar' nor "
                              f"comma-separated numbers") from None
    if clip.is_video:
        candidates = [clip.path.with_suffix(".regression.json")]
    else:
        candidates = [clip.path / "ground_truth.json", clip.path / "regression_target.json"]
    for path in candidates:
        if path.is_file():
            data = json.loads(path.read_text())
            truth = data.get("regression_target") if isinstance(data, dict) else data
            if truth is not None:
                return torch.tensor(truth, dtype=torch.float32).flatten()
    raise ClipFailure(f"no regression target sidecar ({', '.join(p.name for p in candidates)})")


def _vector_text(values: torch.Tensor) -> str:
    """A regression vector for titles and ``summary.csv``: ``(0.31, -2.48)``."""
    return "(" + ", ".join(f"{float(v):.2f}" for v in values.flatten()) + ")"


def choose_targets(settings: RunSettings, spec: ModelSpec, class_names: List[str],
                   label: Optional[str], probabilities: Optional[torch.Tensor],
                   clip: ClipSource) -> List[Target]:
    """Targets for one clip from ``--target``, ``--topk``, ``--counterfactual`` and
    ``--regression_target``. ``probabilities``: ``(K,)`` for classifiers."""
    if spec.task == "regression":
        if settings.regression_target is None:
            raise ClipFailure("a regression model needs --regression_target VALUES|sidecar")
        truth = read_regression_truth(clip, settings.regression_target)
        targets = [Target("-loss(output, truth)", RegressionTarget(truth))]
    elif settings.topk:
        top = probabilities.topk(min(settings.topk, len(class_names))).indices.tolist()
        targets = [Target(class_names[k], ClassTarget(torch.tensor([k])),
                          f"_top{rank + 1}_{_safe_fragment(class_names[k])}")
                   for rank, k in enumerate(top)]
    else:
        choice = settings.target
        if choice == "label":
            if label is None:
                tqdm.write(f"warning: {clip.name}: label unknown, explaining the prediction", file=sys.stderr)
                choice = "pred"
            else:
                index = class_names.index(label)
        if choice == "pred":
            index = int(probabilities.argmax())
        elif choice != "label":
            try:
                index = resolve_class(choice, class_names)
            except ValueError as error:
                raise ClipFailure(f"--target: {error}") from None
        suffix = "" if settings.target in ("label", "pred") else f"_{_safe_fragment(class_names[index])}"
        targets = [Target(class_names[index], ClassTarget(torch.tensor([index])), suffix)]
    if settings.counterfactual:
        targets = [Target(f"counterfactual of {t.name}", Counterfactual(t.fn),
                          t.suffix + "_counterfactual") for t in targets]
    return targets


class ModelHolder:
    """Loads the model on first use, so a fully resumed run loads nothing."""

    def __init__(self, spec: ModelSpec, weights: Optional[Path], dataset: str, device: torch.device):
        self.spec, self.weights, self.dataset, self.device = spec, weights, dataset, device
        self._model: Optional[nn.Module] = None

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            self._model = self.spec.load(self.weights, self.dataset).to(self.device).eval()
        return self._model


def _done_outputs(summary: Optional[pd.DataFrame], clip_name: str, folder: Path,
                  fingerprint: str) -> bool:
    if summary is None or "outputs" not in summary.columns or "settings" not in summary.columns:
        return False
    rows = summary[(summary["clip"] == clip_name) & (summary["status"] == "ok")]
    if rows.empty or (rows["settings"].astype(str) != fingerprint).any():
        return False
    for outputs in rows["outputs"]:
        names = [n for n in str(outputs).split(";") if n]
        if not names or not all((folder / n).is_file() for n in names):
            return False
    return True


def explain_clip(clip: ClipSource, holder: ModelHolder, settings: RunSettings,
                 class_names: List[str], folder: Path) -> List[dict]:
    """Run one clip end to end; returns its summary rows (one per target)."""
    spec = holder.spec
    method_info = METHODS[settings.method]
    explain = get_method(settings.method)
    clip_length = settings.clip_length or spec.clip_length
    frames, _ = load_frames(clip, clip_length)
    rgb = preprocess(frames, spec.resize, spec.crop)                     # (3, T, H, W)
    model, device = holder.model, holder.device
    clip_tensor = spec.normalize(rgb).unsqueeze(0).to(device)            # (1, 3, T, H, W)
    label = parse_label(clip.name, class_names) if class_names else None

    with torch.no_grad():
        output = model(clip_tensor)
    probabilities = None
    prediction, probability = "", float("nan")
    if spec.task == "classification":
        probabilities = output.float().softmax(dim=1)[0].cpu()
        top = int(probabilities.argmax())
        prediction = class_names[top] if top < len(class_names) else str(top)
        probability = float(probabilities[top])
    elif spec.task == "regression":
        prediction = _vector_text(output[0])
    attention = None
    if hasattr(model, "temporal_attention"):
        with torch.no_grad():
            weights = model.temporal_attention(clip_tensor)[0].float().cpu()
        attention = np.interp(np.linspace(0, len(weights) - 1, rgb.shape[1]),
                              np.arange(len(weights)), weights.numpy())

    options = dict(settings.method_options)
    if options.get("baseline") == "black":
        options["baseline"] = spec.black_clip(clip_tensor)
    options["progress"] = settings.progress
    display_frames = rgb.permute(1, 2, 3, 0).numpy()                     # (T, H, W, 3)
    rows = []
    targets = choose_targets(settings, spec, class_names, label, probabilities, clip)
    if spec.task == "regression":
        label = _vector_text(targets[0].fn.truth)
    for target in targets:
        started = time.perf_counter()
        info: dict = {}
        attribution = call_with_options(explain, model, clip_tensor, target.fn,
                                        options={**options, "info": info})
        attribution = attribution.detach().float().cpu()[0]             # (C|A, T, H, W)
        seconds = time.perf_counter() - started
        names = info.get("output_names")
        maps = [attribution[i] for i in range(attribution.shape[0])] if names else [attribution]
        outputs = []
        importance_cells = []
        for index, raw in enumerate(maps):
            saliency = visualize.reduce_channels(raw.numpy())
            if saliency.shape != display_frames.shape[:3]:
                raise ClipFailure(f"{settings.method} returned a map of shape {tuple(saliency.shape)}"
                                  f", expected {display_frames.shape[:3]}")
            stem = clip.name + target.suffix + (f"_{names[index]}" if names else "")
            if settings.polarity != "positive":
                stem += f"_{settings.polarity}"
            shown = visualize.apply_polarity(saliency, settings.polarity)
            display = visualize.normalize_map(shown)
            importance = visualize.frame_importance(shown)
            importance_cells.append(";".join(f"{v:.4f}" for v in importance))
            style = visualize.overlay_style(method_info.signed, settings.polarity)
            overlays = visualize.overlay(display_frames, display, style)
            if "npy" in settings.formats:
                save_npy(saliency, folder / f"{stem}.npy")
                outputs.append(f"{stem}.npy")
            if "png" in settings.formats:
                extra = ([names[index]] if names else []) + [f"polarity: {settings.polarity}"]
                title = visualize.title_text(clip.name, label, prediction, probability,
                                             target.name, settings.method, spec.name, extra)
                figure = visualize.render_grid(display_frames, overlays, title, importance, attention)
                save_figure(figure, folder / f"{stem}.png")
                outputs.append(f"{stem}.png")
            if "gif" in settings.formats:
                save_gif(visualize.gif_frames(display_frames, overlays), folder / f"{stem}.gif")
                outputs.append(f"{stem}.gif")
        row = {"clip": clip.name, "label": label or "", "prediction": prediction,
               "probability": round(probability, 5) if probability == probability else "",
               "target": target.name, "method": settings.method, "model": spec.name,
               "seconds": round(seconds, 3), "status": "ok", "error": "",
               "frame_importance": " | ".join(importance_cells), "outputs": ";".join(outputs)}
        if attention is not None:
            row["attention"] = ";".join(f"{v:.4f}" for v in attention)
        for key, value in info.items():
            if key != "output_names" and isinstance(value, (int, float, str)):
                row[key] = value
        rows.append(row)
    return rows


def run(clips: Sequence[ClipSource], holder: ModelHolder, settings: RunSettings,
        class_names: List[str], folder: Path) -> int:
    """Process every clip; returns the number of clips that failed."""
    summary_path = folder / "summary.csv"
    previous = None
    if summary_path.is_file() and not settings.overwrite:
        previous = pd.read_csv(summary_path, keep_default_na=False,
                               dtype={"clip": str, "settings": str})
    failures = 0
    fingerprint = settings.fingerprint()
    bar = tqdm(clips, desc=f"{settings.method}/{settings.model_name}", unit="clip",
               disable=not settings.progress or len(clips) < 2)
    for clip in bar:
        bar.set_postfix_str(clip.name[:40])
        if not settings.overwrite and _done_outputs(previous, clip.name, folder, fingerprint):
            tqdm.write(f"skip: {clip.name}: outputs exist (use --overwrite to redo)", file=sys.stderr)
            continue
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rows = explain_clip(clip, holder, settings, class_names, folder)
            except (KeyboardInterrupt, SystemExit, WeightsUnavailableError):
                raise  # a missing model stops the run with one message, not one per clip
            except Exception as error:  # one bad clip must not stop the batch
                failures += 1
                message = " ".join(str(error).split()) or type(error).__name__
                tqdm.write(f"error: {clip.name}: {message}", file=sys.stderr)
                rows = [{"clip": clip.name, "method": settings.method, "model": settings.model_name,
                         "target": "", "seconds": round(time.perf_counter() - started, 3),
                         "status": "error", "error": message}]
        for row in rows:
            row["settings"] = fingerprint
        for warning in caught:
            tqdm.write(f"warning: {clip.name}: {warning.message}", file=sys.stderr)
        write_summary(rows, summary_path)
    return failures
