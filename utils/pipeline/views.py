"""Views of the network that are not per-clip attributions, run from the command line:
``filters`` and ``class_model`` (once per run), ``activations`` and ``temporal_sensitivity``
(per clip), ``top_clips`` and ``embedding`` (over the whole folder). The computations live in
:mod:`vis_methods.inside` and :mod:`vis_methods.temporal`; this module reads the clips, keeps
every clip independent (one bad clip is one line, the others still count) and records what was
written in the folder's summary."""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence

import torch
from tqdm import tqdm

from models.adapter import ModelAdapter
from vis_methods import VIEWS
from vis_methods import inside, temporal

from utils.io.labels import parse_label, resolve_class
from utils.io.atomic import write_csv
from utils.io.summary import row_key
from utils.io.errors import ClipFailure, SetupError
from utils.pipeline.settings import RunSettings
from utils.io.paths import clip_ids, file_stem
from utils.pipeline.runner import open_summary, write_reports
from utils.pipeline.setup import checked_outputs
from utils.pipeline.stages import read_clip
from utils.io.summary import SummaryStore
from utils.io.clips import ClipSource


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _record(store: SummaryStore, rows: List[dict], fingerprint: str) -> None:
    for row in rows:
        row["settings"] = fingerprint
        row["key"] = row_key(row)
    store.append(rows)


def _target_index(settings: RunSettings, class_names: Sequence[str], label: Optional[str],
                  probabilities: Optional[torch.Tensor]) -> int:
    if settings.target in ("label", "pred"):
        if settings.target == "label" and label is not None:
            return list(class_names).index(label)
        if probabilities is None:
            raise ClipFailure("no class to explain: pass --target CLASS")
        return int(probabilities.argmax())
    return resolve_class(settings.target, list(class_names))


def run_view(view: str, clips: Sequence[ClipSource], load_adapter: Callable[[], ModelAdapter],
             device: torch.device, settings: RunSettings, class_names: Sequence[str],
             folder: Path, synonyms=None) -> int:
    """Run ``view`` and write its outputs into ``folder``; returns the number of failed clips."""
    info = VIEWS[view]
    options = dict(settings.method_options.get(view, {}))
    folder.mkdir(parents=True, exist_ok=True)
    store, _ = open_summary(folder)
    fingerprint = settings.fingerprint(view)
    adapter = load_adapter()
    layer = options.get("target_layer") or adapter.target_layer
    try:
        with checked_outputs(adapter, class_names):
            return _run_view_on(view, info, clips, adapter, layer, device, settings, class_names,
                                folder, options, store, fingerprint, synonyms)
    finally:
        if store.part_files():
            store.rebuild()
        write_reports({view: store}, {view: folder}, None)


def _run_view_on(view, info, clips, adapter, layer, device, settings, class_names, folder,
                 options, store, fingerprint, synonyms) -> int:
    """The view's work, each clip on its own; returns the number of failed clips."""
    failures = 0
    if info.scope == "model":
        rows = _model_view(view, adapter, settings, class_names, folder, options)
        _record(store, rows, fingerprint)
        return 0
    ids = clip_ids(clips)
    items, rows = [], []
    labels: List[Optional[str]] = []
    bar = tqdm(list(zip(clips, ids)), desc=f"{view}/{settings.model_name}", unit="clip",
               disable=not settings.progress or len(clips) < 2)
    clip_length = settings.clip_length or adapter.clip_length
    for source, clip_id in bar:
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                clip = read_clip(source, clip_id, adapter, clip_length, device)
                label = parse_label(source.name, class_names, synonyms) if class_names else None
                frames = clip.rgb.permute(1, 2, 3, 0).numpy()
                if info.scope == "folder":
                    items.append((clip_id, clip.tensor.cpu(), frames))
                    labels.append(label)
                    continue
                rows.append(_clip_view(view, adapter, clip.tensor, frames, clip_id, label,
                                       layer, settings, class_names, folder, options,
                                       time.perf_counter() - started))
            except (KeyboardInterrupt, SystemExit, SetupError):
                raise
            except Exception as error:  # one bad clip must not stop the folder
                failures += 1
                tqdm.write(f"error: {clip_id}: {_one_line(error)}", file=sys.stderr)
                rows.append({"clip": clip_id, "method": view, "model": settings.model_name,
                             "status": "error", "error": _one_line(error)})
                if info.scope == "folder":
                    items.append((clip_id, None, None))
                    labels.append(None)
        for warning in caught:
            tqdm.write(f"warning: {clip_id}: {_one_line(warning.message)}", file=sys.stderr)
    if info.scope == "folder":
        folder_rows = _folder_view(view, adapter, items, labels, layer, folder, options,
                                   settings)
        failures += sum(1 for r in folder_rows if r["status"] == "error")
        rows += folder_rows
    elif view == "temporal_sensitivity":
        results = [r.pop("_result") for r in rows if "_result" in r]
        if results:
            summary = temporal.summarise_temporal_sensitivity(results)
            write_csv(summary, folder / "temporal_summary.csv")
    _record(store, rows, fingerprint)
    return failures


def _model_view(view: str, adapter: ModelAdapter, settings: RunSettings,
                class_names: Sequence[str], folder: Path, options: Mapping) -> List[dict]:
    started = time.perf_counter()
    if view == "filters":
        order = inside.filters(adapter, folder, layer=options.get("target_layer"))
        outputs = ["filters.png", "filters.csv"]
        extra = {"kernels": len(order)}
        target = ""
    else:   # class_model
        if settings.target in ("label", "pred"):
            raise SetupError("class_model needs --target CLASS (a class name or index)")
        index = resolve_class(settings.target, list(class_names))
        size = adapter.crop or 112
        length = settings.clip_length or adapter.clip_length or 16
        torch.manual_seed(options.get("seed") or 0)
        _, probability = inside.class_model(
            adapter, index, (3, length, size, size), out_dir=folder, normalize=adapter.normalize,
            num_iter=options.get("num_iter") or 100, seed=options.get("seed") or 0)
        outputs = ["class_model.gif", "class_model.png"]
        extra = {"probability": round(float(probability), 5)}
        target = class_names[index]
    return [{"clip": f"({view})", "method": view, "model": settings.model_name,
             "target": target, "status": "ok", "error": "",
             "seconds": round(time.perf_counter() - started, 3),
             "outputs": ";".join(outputs), **extra}]


def _clip_view(view: str, adapter: ModelAdapter, tensor: torch.Tensor, frames, clip_id: str,
               label: Optional[str], layer, settings: RunSettings, class_names: Sequence[str],
               folder: Path, options: Mapping, seconds_reading: float) -> dict:
    started = time.perf_counter()
    stem = file_stem(clip_id)
    row = {"clip": clip_id, "label": label or "", "method": view, "model": settings.model_name,
           "status": "ok", "error": ""}
    if view == "activations":
        channels, means = inside.activations(adapter, tensor, layer, out_dir=folder,
                                             frames_rgb=frames, k=options.get("top") or 8,
                                             file_stem=f"{stem}_activations", title=clip_id)
        row.update(outputs=f"{stem}_activations.png",
                   channels=";".join(str(int(c)) for c in channels),
                   mean_activations=";".join(f"{float(m):.4g}" for m in means))
    else:   # temporal_sensitivity
        with torch.no_grad():
            probabilities = adapter(tensor).float().softmax(1)[0].cpu()
        index = _target_index(settings, class_names, label, probabilities)
        result = temporal.temporal_sensitivity(adapter, tensor, index,
                                               segments=options.get("segments") or 4,
                                               seed=options.get("seed") or 0)
        written = temporal.write_temporal_sensitivity(result, folder, stem)
        row.update(target=class_names[index] if index < len(class_names) else str(index),
                   verdict=result["verdict"], reason=result["reason"],
                   outputs=";".join(Path(p).name for p in written.values()),
                   **{f"p_{k}": round(float(v), 5) for k, v in result["probabilities"].items()},
                   _result=result)
    row["seconds"] = round(seconds_reading + time.perf_counter() - started, 3)
    if settings.progress:
        extra = f"; {row['verdict']}" if "verdict" in row else ""
        tqdm.write(f"{clip_id}: label {label or 'unknown'}{extra}; {row['seconds']:.2f} s",
                   file=sys.stderr)
    return row


def _folder_view(view: str, adapter: ModelAdapter, items, labels, layer, folder: Path,
                 options: Mapping, settings: RunSettings) -> List[dict]:
    failures: list = []
    started = time.perf_counter()
    if view == "top_clips":
        table = inside.top_clips(adapter, items, layer, out_dir=folder,
                                 channel=options.get("channel"), top=options.get("top") or 5,
                                 failures=failures)
        outputs = sorted(p.name for p in folder.glob("top_clips*"))
        extra = {"channels": ";".join(str(c) for c in sorted(set(table["channel"])))
                 if len(table) else ""}
    else:   # embedding
        inside.embedding(adapter, items, out_dir=folder, labels=labels, layer=options.get(
            "target_layer"), seed=options.get("seed") or 0, failures=failures)
        outputs = sorted(p.name for p in folder.glob("embedding*"))
        extra = {}
    rows = []
    for name, message in failures:
        if any(item[0] == name and item[1] is None for item in items):
            continue   # already reported when it was read
        tqdm.write(f"error: {name}: {_one_line(Exception(message))}", file=sys.stderr)
        rows.append({"clip": name, "method": view, "model": settings.model_name,
                     "status": "error", "error": _one_line(Exception(message))})
    rows.append({"clip": f"({view} of {sum(1 for i in items if i[1] is not None)} clips)",
                 "method": view, "model": settings.model_name, "status": "ok", "error": "",
                 "seconds": round(time.perf_counter() - started, 3),
                 "outputs": ";".join(outputs), **extra})
    return rows
