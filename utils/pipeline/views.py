"""Views of the network that are not per-clip attributions, run from the command line:
``filters`` and ``class_model`` (once per run), ``activations`` and ``temporal_sensitivity``
(per clip), ``top_clips`` and ``embedding`` (over the whole folder). The computations live in
:mod:`vis_methods.views` (values only), the drawing in :mod:`utils.render.views`, the writing in
the encoders and :mod:`utils.io.atomic`; this module reads the clips, keeps every clip
independent (one bad clip is one line, the others still count), writes each view's files
(``write_*``) and records them in the folder's summary."""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from models.adapter import ModelAdapter
from vis_methods import VIEWS
from vis_methods.views import inside, temporal

from utils.io.labels import parse_label, resolve_class
from utils.io.atomic import write_csv
from utils.io.paths import safe_fragment
from utils.render import encoders
from utils.render import views as render
from utils.io.summary import row_key
from utils.io.errors import ClipFailure, SetupError
from utils.pipeline.settings import RunSettings
from utils.io.paths import clip_ids, file_stem
from utils.pipeline.runner import open_summary, write_reports
from utils.pipeline.setup import checked_outputs, decode_device
from utils.pipeline.stages import read_clip
from utils.io.summary import SummaryStore
from utils.io.clips import ClipSource, ignore_decoder_deprecation


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
    if view == "embedding" and len(clips) < 3:
        raise SetupError(f"embedding needs at least 3 clips, {len(clips)} found")
    adapter = load_adapter()
    layer = options.get("target_layer") or adapter.target_layer
    if view == "top_clips" and options["channel"] is not None:
        _check_channel(adapter, layer, options["channel"], settings)
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
            ignore_decoder_deprecation()
            try:
                clip = read_clip(source, clip_id, adapter, clip_length, device,
                                 decode_device(device))
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


def _check_channel(adapter: ModelAdapter, layer, channel: int, settings: RunSettings) -> None:
    """``--channel`` against the layer's channel count, read from one forward pass of a grey
    clip before any clip is read. A model that cannot run the grey clip is checked on the clips."""
    size = adapter.crop or 112
    length = settings.clip_length or adapter.clip_length or 16
    try:
        count = inside.layer_channels(adapter, layer, (1, 3, length, size, size))
        name = adapter.layer_name(adapter.layer(layer))
    except Exception:  # noqa: BLE001 - the clips' own pass gives the error then
        return
    if channel >= count:
        raise SetupError(f"--channel {channel} out of range: layer {name} has {count} channels "
                         f"(0..{count - 1})")


# ----------------------------------------------------------------------- writing the views
def save_drawing(drawing: render.Drawing, path: Path) -> None:
    """A drawing through its encoder: a matplotlib figure or an RGB array as PNG, a list of
    arrays as GIF."""
    if isinstance(drawing.picture, Figure):
        encoders.save_figure(drawing.picture, path)
    elif isinstance(drawing.picture, list):
        encoders.save_gif(drawing.picture, path)
    else:
        encoders.save_png(drawing.picture, path)


def _readable_clips(table: pd.DataFrame) -> pd.DataFrame:
    """The table with clip names UTF-8 can write (undecodable bytes as backslash escapes)."""
    if "clip" in table.columns:
        table = table.assign(clip=[render.readable(str(c)) for c in table["clip"]])
    return table


def write_filters(result: inside.Filters, folder: Path, model: str) -> List[str]:
    """``filters.png`` and ``filters.csv`` (``rank, channel, l2_norm``)."""
    save_drawing(render.filters_picture(result, model), folder / "filters.png")
    write_csv(result.table(), folder / "filters.csv")
    return ["filters.png", "filters.csv"]


def class_model_stem(index: int, class_names: Sequence[str]) -> str:
    """``class_model_<class>``: one pair of files per class (the index is added where two class
    names would give the same file name, or the class has no name)."""
    name = class_names[index] if 0 <= index < len(class_names) else ""
    safe = safe_fragment(name)
    clashes = sum(1 for other in class_names if safe_fragment(other) == safe)
    if not safe or clashes > 1:
        safe = f"{safe}_{index}" if safe else str(index)
    return f"class_model_{safe}"


def write_class_model(result: inside.ClassModel, folder: Path, model: str,
                      class_names: Sequence[str]) -> List[str]:
    """``class_model_<class>.gif`` (the frames, animated) and ``class_model_<class>.png`` (the
    frames side by side), each with the class, the model and the probability."""
    stem = class_model_stem(result.target_class, class_names)
    sheet, animation = render.class_model_pictures(
        result, model, render.class_text(result.target_class, class_names))
    save_drawing(animation, folder / f"{stem}.gif")
    save_drawing(sheet, folder / f"{stem}.png")
    return [f"{stem}.gif", f"{stem}.png"]


def write_activations(result: inside.Activations, folder: Path, stem: str, model: str,
                      clip: str, label: Optional[str]) -> List[str]:
    save_drawing(render.activations_figure(result, model, clip, label), folder / f"{stem}.png")
    return [f"{stem}.png"]


def write_top_clips(result: inside.TopClips, folder: Path, model: str) -> List[str]:
    """``top_clips_channel<c>.png`` per channel and ``top_clips.csv``."""
    names = []
    for channel, drawing in render.top_clips_figures(result, model).items():
        save_drawing(drawing, folder / f"top_clips_channel{channel}.png")
        names.append(f"top_clips_channel{channel}.png")
    write_csv(_readable_clips(result.table), folder / "top_clips.csv")
    return ["top_clips.csv"] + names


def write_embedding(result: inside.Embedding, folder: Path, model: str) -> List[str]:
    """``embedding_pca.png`` / ``embedding_tsne.png`` (those computed) and ``embedding.csv``
    (``clip, label, pca_x, pca_y, tsne_x, tsne_y``)."""
    names = []
    for name, drawing in render.embedding_figures(result, model).items():
        save_drawing(drawing, folder / f"embedding_{name}.png")
        names.append(f"embedding_{name}.png")
    write_csv(_readable_clips(result.table()), folder / "embedding.csv")
    return ["embedding.csv"] + names


def write_temporal_sensitivity(result: Mapping, out_dir: Path, clip_name: str, model: str,
                               class_names: Sequence[str] = ()) -> Dict[str, Path]:
    """``<out_dir>/<clip_name>_temporal.csv`` (one row per condition,
    :func:`vis_methods.views.temporal.result_rows`) and ``<clip_name>_temporal.png`` (a bar
    per condition, the class by name, the verdict in the title). Returns their paths by kind
    (``"csv"``, ``"png"``)."""
    if not clip_name or "/" in clip_name or "\\" in clip_name or clip_name in (".", ".."):
        raise ValueError(f"clip_name must be a plain file name, got {clip_name!r}")
    out_dir = Path(out_dir)
    paths = {"csv": out_dir / f"{clip_name}_temporal.csv",
             "png": out_dir / f"{clip_name}_temporal.png"}
    rows = pd.DataFrame(temporal.result_rows(result, clip_name))
    write_csv(_readable_clips(rows), paths["csv"])
    save_drawing(render.temporal_figure(result, clip_name, model, class_names), paths["png"])
    return paths


# ------------------------------------------------------------------------ running the views
def _model_view(view: str, adapter: ModelAdapter, settings: RunSettings,
                class_names: Sequence[str], folder: Path, options: Mapping) -> List[dict]:
    started = time.perf_counter()
    model = settings.model_name
    if view == "filters":
        result = inside.filters(adapter, layer=options["target_layer"])
        outputs = write_filters(result, folder, model)
        extra = {"kernels": len(result.order)}
        target, clip = "", f"({view})"
    else:   # class_model
        if settings.target in ("label", "pred"):
            raise SetupError("class_model needs --target CLASS (a class name or index)")
        index = resolve_class(settings.target, list(class_names))
        size = adapter.crop or 112
        length = settings.clip_length or adapter.clip_length or 16
        torch.manual_seed(options["seed"])
        result = inside.class_model(adapter, index, (3, length, size, size),
                                    normalize=adapter.normalize, num_iter=options["num_iter"],
                                    seed=options["seed"])
        outputs = write_class_model(result, folder, model, class_names)
        extra = {"probability": round(float(result.probability), 5)}
        target = render.class_text(index, class_names)
        clip = f"({view} {target})"
    return [{"clip": clip, "method": view, "model": model, "target": target, "status": "ok",
             "error": "", "seconds": round(time.perf_counter() - started, 3),
             "outputs": ";".join(outputs), **extra}]


def _clip_view(view: str, adapter: ModelAdapter, tensor: torch.Tensor, frames, clip_id: str,
               label: Optional[str], layer, settings: RunSettings, class_names: Sequence[str],
               folder: Path, options: Mapping, seconds_reading: float) -> dict:
    started = time.perf_counter()
    stem = file_stem(clip_id)
    row = {"clip": clip_id, "label": label or "", "method": view, "model": settings.model_name,
           "status": "ok", "error": ""}
    if view == "activations":
        result = inside.activations(adapter, tensor, layer, frames_rgb=frames, k=options["top"])
        outputs = write_activations(result, folder, f"{stem}_activations", settings.model_name,
                                    clip_id, label)
        row.update(outputs=";".join(outputs),
                   channels=";".join(str(int(c)) for c in result.channels),
                   mean_activations=";".join(f"{float(m):.4g}" for m in result.means))
    else:   # temporal_sensitivity
        with torch.no_grad():
            probabilities = adapter(tensor).float().softmax(1)[0].cpu()
        index = _target_index(settings, class_names, label, probabilities)
        result = temporal.temporal_sensitivity(adapter, tensor, index,
                                               segments=options["segments"],
                                               seed=options["seed"])
        written = write_temporal_sensitivity(result, folder, stem, settings.model_name,
                                             class_names)
        predicted = int(probabilities.argmax())
        row.update(prediction=render.class_text(predicted, class_names),
                   probability=round(float(probabilities[predicted]), 5),
                   target=render.class_text(index, class_names),
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
    model = settings.model_name
    made: Optional[List[str]] = None
    try:
        if view == "top_clips":
            result = inside.top_clips(adapter, items, layer, channel=options["channel"],
                                      top=options["top"], failures=failures)
            outputs = write_top_clips(result, folder, model)
            extra = {"channels": ";".join(str(c) for c in result.channels)}
        else:   # embedding
            result = inside.embedding(adapter, items, labels=labels,
                                      layer=options["target_layer"], seed=options["seed"],
                                      failures=failures)
            outputs = write_embedding(result, folder, model)
            extra = {}
        made = outputs
    except inside.TooFewClips as error:
        made, message = None, _one_line(error).split("; ")[0]
    except ValueError as error:
        if "out of range" in str(error):    # --channel, when no grey clip could check it
            raise SetupError(f"--channel: {_one_line(error)}") from None
        raise
    rows = []
    for name, problem in failures:
        if any(item[0] == name and item[1] is None for item in items):
            continue   # already reported when it was read
        tqdm.write(f"error: {name}: {_one_line(Exception(problem))}", file=sys.stderr)
        rows.append({"clip": name, "method": view, "model": model, "status": "error",
                     "error": _one_line(Exception(problem))})
    count = sum(1 for i in items if i[1] is not None)
    if made is None:
        tqdm.write(f"error: {view}: {message}", file=sys.stderr)
        rows.append({"clip": f"({view})", "method": view, "model": model, "status": "error",
                     "error": message})
        return rows
    rows.append({"clip": f"({view} of {count} clips)", "method": view, "model": model,
                 "status": "ok", "error": "", "seconds": round(time.perf_counter() - started, 3),
                 "outputs": ";".join(made), **extra})
    return rows
