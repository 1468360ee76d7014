"""Looking inside a video network: first-layer filters, a layer's activations over a clip, the
clips and places that most activate a channel, the map of the feature space, and class-model
videos.

Unlike the attribution methods (``explain(model, clip, target) -> map``), these views answer
questions about the network itself, so each one is a library function that writes its own
pictures into ``out_dir`` and returns the numbers it drew:

- :func:`filters`: the first convolution's kernels, sorted by L2 norm (``filters.png``,
  ``filters.csv``).
- :func:`activations`: the top-k channels of a layer for one clip, over time
  (``<file_stem>.png``).
- :func:`top_clips`: over a folder of clips, the clips and spatio-temporal places that most
  activate a channel (``top_clips_channel<c>.png``, ``top_clips.csv``).
- :func:`embedding`: penultimate features of a folder of clips projected to 2-D with PCA and
  t-SNE (``embedding_pca.png``, ``embedding_tsne.png``, ``embedding.csv``).
- :func:`class_model`: a video optimised from grey to maximise a class score
  (``class_model.gif``, ``class_model.png``).
- :func:`channel_reduce_max_abs`: the data-gradient display, the maximum absolute value over
  colour channels per pixel.

Clips are model inputs ``(1, C, T, H, W)`` (or ``(C, T, H, W)``); ``frames_rgb`` are the same
frames for display, ``(T, H, W, 3)`` as uint8 or floats in [0, 1]. Layer outputs are read in
the clip layout of :mod:`vis_methods.cam` (``(N, C, T, h, w)``, or ``(N*T, C, h, w)`` from a
frame CNN with frames ordered ``n*T+t``). Every function runs the model in eval mode with its
parameters frozen and restores both, and removes its hooks, on exit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from utils.io.atomic import atomic_path
from utils.render.encoders import save_figure, save_gif
from utils.render.figures import overlay

from ._context import capture_layer, eval_mode, input_only_gradients, resolve_layer
from models.adapter import as_adapter

from .cam import _clip_layout


def _layer_name(model: nn.Module, module: nn.Module) -> str:
    return as_adapter(model).layer_name(module)

Layer = Union[str, nn.Module]
# One clip of a folder: (name, model input (1, C, T, H, W) or (C, T, H, W), display frames).
ClipItem = Tuple[str, Optional[torch.Tensor], Optional[np.ndarray]]

GRID_COLUMNS = 8
FILTER_TILE_MIN = 28      # a kernel slice is drawn at least this many pixels wide
FILTER_GAP = 2            # pixels between the time slices of one kernel
FILTER_BORDER = 6         # pixels between kernels and around the grid
FILTER_BACKGROUND = 255   # white background between kernels
THUMBNAIL_SIDE = 40
CLASS_MODEL_MIN_SIDE = 224


# ----------------------------------------------------------------------------- helpers
def _as_batch(clip: torch.Tensor) -> torch.Tensor:
    if not isinstance(clip, torch.Tensor):
        raise ValueError(f"a clip must be a tensor, got {type(clip).__name__}")
    if clip.dim() == 4:
        clip = clip.unsqueeze(0)
    if clip.dim() != 5 or clip.shape[0] != 1:
        raise ValueError(f"expected one clip (1, C, T, H, W) or (C, T, H, W), got "
                         f"{tuple(clip.shape)}")
    return clip.detach()


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _frames_float(frames_rgb: Optional[np.ndarray], clip: torch.Tensor) -> np.ndarray:
    """Display frames ``(T, H, W, 3)`` float in [0, 1]; without ``frames_rgb`` the clip itself,
    rescaled to [0, 1] over its own range."""
    if frames_rgb is None:
        video = clip[0].detach().float().cpu()
        if video.shape[0] == 1:
            video = video.expand(3, *video.shape[1:])
        video = video[:3].permute(1, 2, 3, 0).numpy()
        low, high = float(video.min()), float(video.max())
        return (video - low) / (high - low) if high > low else np.zeros_like(video)
    frames = np.asarray(frames_rgb)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames_rgb must be (T, H, W, 3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 255.0
    return np.clip(frames.astype(np.float32), 0.0, 1.0)


def _subsample(count: int, columns: int = GRID_COLUMNS) -> np.ndarray:
    """Up to ``columns`` indices spread evenly over ``range(count)``, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(columns, count)).round().astype(int))


def _layer_output(model: nn.Module, clip: torch.Tensor, layer: Layer) -> Tuple[torch.Tensor, str]:
    """The layer's output for one clip in the clip layout ``(1, C', T', h', w')``."""
    module = resolve_layer(model, layer)
    name = _layer_name(model, module)
    with torch.no_grad(), eval_mode(model), input_only_gradients(model), \
            capture_layer(model, module) as record:
        model(clip.to(_model_device(model)))
    if "activation" not in record:
        raise ValueError(f"layer {name!r} was not called")
    # Read as the model adapter reads it (tokens, channels-last and frame maps included).
    output = as_adapter(model).read_layer(module, record["activation"], clip.shape)
    return output.detach().float().cpu(), name


def _cell_span(index: int, cells: int, size: int, context: int = 0) -> Tuple[int, int]:
    """Input pixels ``[start, stop)`` covered by layer cells ``index - context .. index + context``
    when ``cells`` cells are spread over ``size`` input pixels (the cells' footprint)."""
    start = math.floor((index - context) * size / cells)
    stop = math.ceil((index + 1 + context) * size / cells)
    return max(0, start), min(size, stop)


def _cell_centre(index: int, cells: int, size: int) -> int:
    return min(size - 1, int((index + 0.5) * size / cells))


# ----------------------------------------------------------------------------- filters
def first_convolution(model: nn.Module) -> nn.Module:
    """The first ``Conv3d`` or ``Conv2d`` of ``model`` in registration order."""
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.Conv2d)):
            return module
    raise ValueError("the model has no Conv2d or Conv3d; pass layer explicitly")


def _kernel_tiles(weight: np.ndarray) -> np.ndarray:
    """Kernels ``(C_out, C_in, t, k, k)`` -> display tiles ``(C_out, t, k, k, 3)`` in [0, 1], each
    kernel scaled to [0, 1] over its own values. Three input channels are drawn as RGB, others
    as grey (one channel as is, more than three averaged)."""
    if weight.shape[1] == 3:
        colour = weight.transpose(0, 2, 3, 4, 1)
    else:
        grey = weight.mean(axis=1)
        colour = np.repeat(grey[..., None], 3, axis=-1)
    low = colour.reshape(len(colour), -1).min(axis=1).reshape(-1, 1, 1, 1, 1)
    high = colour.reshape(len(colour), -1).max(axis=1).reshape(-1, 1, 1, 1, 1)
    span = np.where(high > low, high - low, 1.0)
    return np.where(high > low, (colour - low) / span, 0.5)


def filter_grid_layout(num_kernels: int, time_slices: int, kernel_height: int,
                       kernel_width: int) -> dict:
    """Where :func:`filters` draws each kernel in ``filters.png``.

    Returns ``columns`` (kernels per row), ``scale`` (screen pixels per kernel pixel),
    ``tile`` (height, width) of one kernel, and ``origin(rank) -> (row, col)`` of the top-left
    screen pixel of the kernel drawn at position ``rank``. Slice ``s`` of that kernel starts
    ``s * (kernel_width * scale + FILTER_GAP)`` pixels to the right of it.
    """
    scale = max(1, math.ceil(FILTER_TILE_MIN / max(kernel_height, kernel_width)))
    tile_h = kernel_height * scale
    tile_w = time_slices * kernel_width * scale + (time_slices - 1) * FILTER_GAP
    columns = max(1, min(num_kernels, round(math.sqrt(num_kernels * tile_h / tile_w * 1.6))))

    def origin(rank: int) -> Tuple[int, int]:
        row, col = divmod(rank, columns)
        return (FILTER_BORDER + row * (tile_h + FILTER_BORDER),
                FILTER_BORDER + col * (tile_w + FILTER_BORDER))

    rows = -(-num_kernels // columns)
    size = (FILTER_BORDER + rows * (tile_h + FILTER_BORDER),
            FILTER_BORDER + columns * (tile_w + FILTER_BORDER))
    return {"columns": columns, "scale": scale, "tile": (tile_h, tile_w), "origin": origin,
            "size": size}


def filters(model: nn.Module, out_dir: Union[str, Path], layer: Optional[Layer] = None
            ) -> np.ndarray:
    """Draw the kernels of the first convolution (or of ``layer``) into ``out_dir/filters.png``.

    A 3-D kernel ``(3, t, k, k)`` is drawn as its ``t`` time slices side by side, a 2-D kernel
    as one image; every kernel is scaled to [0, 1] over its own values (a constant kernel is
    mid-grey). Kernels are sorted by L2 norm, largest first, and laid out in reading order
    (:func:`filter_grid_layout`). ``out_dir/filters.csv`` lists ``rank, channel, l2_norm``.

    Returns the drawing order: output-channel indices, largest norm first.
    """
    module = first_convolution(model) if layer is None else resolve_layer(model, layer)
    if not isinstance(module, (nn.Conv3d, nn.Conv2d)):
        raise ValueError(f"layer {_layer_name(model, module)!r} is a {type(module).__name__}, "
                         "not a Conv2d or Conv3d")
    weight = module.weight.detach().float().cpu().numpy()
    if weight.ndim == 4:
        weight = weight[:, :, None]
    norms = np.sqrt((weight.astype(np.float64) ** 2).reshape(len(weight), -1).sum(axis=1))
    order = np.argsort(-norms, kind="stable")
    tiles = _kernel_tiles(weight)[order]
    count, slices, kernel_h, kernel_w = tiles.shape[:4]
    layout = filter_grid_layout(count, slices, kernel_h, kernel_w)
    scale = layout["scale"]
    canvas = np.full(layout["size"] + (3,), FILTER_BACKGROUND, dtype=np.uint8)
    pixels = (tiles * 255).round().astype(np.uint8)
    for rank in range(count):
        top, left = layout["origin"](rank)
        for s in range(slices):
            block = pixels[rank, s].repeat(scale, axis=0).repeat(scale, axis=1)
            x = left + s * (kernel_w * scale + FILTER_GAP)
            canvas[top:top + block.shape[0], x:x + block.shape[1]] = block
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "filters.png") as temp:
        Image.fromarray(canvas).save(temp, format="PNG")
    table = pd.DataFrame({"rank": np.arange(count), "channel": order, "l2_norm": norms[order]})
    with atomic_path(out_dir / "filters.csv") as temp:
        table.to_csv(temp, index=False)
    return order


# ------------------------------------------------------------------------- activations
def _channel_display(maps: torch.Tensor) -> np.ndarray:
    """``(k, T, H, W)`` activations -> [0, 1] display maps: the positive part over each
    channel's own maximum over the clip (a channel that never fires stays dark)."""
    maps = maps.clamp(min=0).numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1, 1)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0)


def activations(model: nn.Module, clip: torch.Tensor, layer: Layer, *,
                out_dir: Union[str, Path], frames_rgb: Optional[np.ndarray] = None, k: int = 8,
                file_stem: str = "activations", title: str = "") -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` channels of ``layer`` with the largest mean activation over this clip.

    Each channel's activation is upsampled (trilinear) to the clip's ``T x H x W`` and drawn
    over the frames: one row per channel, columns the frames subsampled to 8, under a first
    row of the plain frames; maps show the positive part scaled by the channel's own maximum
    over the clip. Writes ``out_dir/<file_stem>.png``.

    Returns ``(channels, means)``: the channel indices, largest mean first, and their mean
    activations over ``T' x h' x w'``.
    """
    clip = _as_batch(clip)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    output, layer_name = _layer_output(model, clip, layer)
    means = output[0].flatten(1).mean(1)
    k = min(k, len(means))
    top = torch.argsort(means, descending=True, stable=True)[:k]
    upsampled = F.interpolate(output[:, top], size=tuple(clip.shape[2:]), mode="trilinear",
                              align_corners=False)[0]
    display = _channel_display(upsampled)
    frames = _frames_float(frames_rgb, clip)
    if frames.shape[:3] != tuple(clip.shape[2:]):
        raise ValueError(f"frames_rgb {frames.shape[:3]} do not match the clip "
                         f"{tuple(clip.shape[2:])}")
    columns = _subsample(frames.shape[0])
    figure = Figure(figsize=(len(columns) * 1.3 + 0.9, (k + 1) * 1.3 + 0.7))
    grid = figure.add_gridspec(k + 1, len(columns), hspace=0.08, wspace=0.04, left=0.08,
                               right=0.99, bottom=0.01, top=1 - 0.55 / ((k + 1) * 1.3 + 0.7))
    for row in range(k + 1):
        for col, t in enumerate(columns):
            axis = figure.add_subplot(grid[row, col])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.imshow(frames[t])
                axis.set_title(f"t={t}", fontsize=7, pad=2)
            else:
                axis.imshow(overlay(frames[t], display[row - 1, t], "jet"))
            if col == 0:
                text = ("frames" if row == 0 else
                        f"ch {int(top[row - 1])}\nmean {float(means[top[row - 1]]):.3g}")
                axis.set_ylabel(text, fontsize=7)
    figure.suptitle(title or f"top {k} channels of {layer_name} by mean activation", fontsize=9)
    save_figure(figure, Path(out_dir) / f"{file_stem}.png")
    return top.numpy().astype(int), means[top].numpy().astype(np.float64)


# --------------------------------------------------------------------------- top clips
@dataclass
class _ClipStats:
    name: str
    grid: Tuple[int, int, int]      # (T', h', w')
    size: Tuple[int, int, int]      # (T, H, W)
    means: np.ndarray               # (C,)
    peaks: np.ndarray               # (C,) maximum per channel
    places: np.ndarray              # (C, 3) argmax (t', y', x') per channel


def _clip_stats(model: nn.Module, name: str, clip: torch.Tensor, layer: Layer) -> _ClipStats:
    clip = _as_batch(clip)
    output, _ = _layer_output(model, clip, layer)
    values = output[0]
    grid = tuple(values.shape[1:])
    flat = values.flatten(1)
    peaks, positions = flat.max(1)
    places = np.stack(np.unravel_index(positions.numpy(), grid), axis=1)
    return _ClipStats(name, grid, tuple(clip.shape[2:]), flat.mean(1).numpy().astype(np.float64),
                      peaks.numpy().astype(np.float64), places)


def _tube(stats: _ClipStats, channel: int, context: int) -> dict:
    """The input region of the channel's peak cell: its centre voxel ``(t, y, x)`` and the crop
    ``[t0, t1) x [y0, y1) x [x0, x1)``, the cell's footprint grown by ``context`` cells."""
    cell = stats.places[channel]
    centre = [_cell_centre(int(i), g, s) for i, g, s in zip(cell, stats.grid, stats.size)]
    spans = [_cell_span(int(i), g, s, context) for i, g, s in zip(cell, stats.grid, stats.size)]
    return {"t": centre[0], "y": centre[1], "x": centre[2],
            "t0": spans[0][0], "t1": spans[0][1], "y0": spans[1][0], "y1": spans[1][1],
            "x0": spans[2][0], "x1": spans[2][1],
            "cell_t": int(cell[0]), "cell_y": int(cell[1]), "cell_x": int(cell[2])}


def top_clips(model: nn.Module, clips: Sequence[ClipItem], layer: Layer, *,
              out_dir: Union[str, Path], channel: Optional[int] = None, top: int = 5,
              context: int = 1, crop_frames: int = 4,
              failures: Optional[List[Tuple[str, str]]] = None) -> pd.DataFrame:
    """The clips and places of a folder that most activate a channel of ``layer``.

    ``clips``: ``(name, model input, frames_rgb)`` per clip; an entry whose input is ``None``
    or an exception (a clip the caller could not read) is recorded as a failure, as is any
    clip whose forward pass raises, and the others go on. Failures are appended to
    ``failures`` (when given) as ``(name, message)``.

    For ``channel`` (default: each of the 3 channels with the largest mean activation over the
    folder) every clip is scored by the channel's maximum over ``T' x h' x w'``; the ``top``
    clips are drawn as crops of their peak cell's input footprint grown by ``context`` cells
    (``crop_frames`` frames spread over the tube), with their values, into
    ``out_dir/top_clips_channel<c>.png``. ``out_dir/top_clips.csv`` holds ``channel, rank,
    clip, value, t, y, x`` (the peak cell's centre in input pixels) and the tube bounds
    ``t0, t1, y0, y1, x0, x1`` (half-open) and the cell ``cell_t, cell_y, cell_x``; the same
    table is returned.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    failures = failures if failures is not None else []
    stats: List[_ClipStats] = []
    frames_of = {}
    for name, clip, frames_rgb in clips:
        if clip is None or isinstance(clip, BaseException):
            failures.append((name, str(clip) if clip is not None else "no clip"))
            continue
        try:
            item = _clip_stats(model, name, clip, layer)
        except Exception as error:  # noqa: BLE001 - one bad clip must not stop the folder
            failures.append((name, f"{type(error).__name__}: {error}"))
            continue
        if stats and len(item.means) != len(stats[0].means):
            failures.append((name, f"layer has {len(item.means)} channels here, "
                                   f"{len(stats[0].means)} on the first clip"))
            continue
        stats.append(item)
        frames_of[name] = (frames_rgb, clip)
    if not stats:
        raise ValueError("no clip could be run: " + "; ".join(f"{n}: {m}" for n, m in failures))
    num_channels = len(stats[0].means)
    if channel is None:
        folder_means = np.mean([s.means for s in stats], axis=0)
        channels = [int(c) for c in np.argsort(-folder_means, kind="stable")[:3]]
    else:
        if not 0 <= int(channel) < num_channels:
            raise ValueError(f"channel {channel} out of range: the layer has {num_channels}")
        channels = [int(channel)]
    rows = []
    out_dir = Path(out_dir)
    for c in channels:
        ranked = sorted(stats, key=lambda s: -s.peaks[c])[:top]
        entries = []
        for rank, item in enumerate(ranked):
            tube = _tube(item, c, context)
            row = {"channel": c, "rank": rank + 1, "clip": item.name,
                   "value": float(item.peaks[c]), **tube}
            rows.append(row)
            entries.append(row)
        _draw_top_clips(c, entries, frames_of, crop_frames, out_dir / f"top_clips_channel{c}.png")
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / "top_clips.csv") as temp:
        table.to_csv(temp, index=False)
    return table


def _draw_top_clips(channel: int, entries: List[dict], frames_of: dict, crop_frames: int,
                    path: Path) -> None:
    height = len(entries) * 1.5 + 0.6
    figure = Figure(figsize=(crop_frames * 1.4 + 1.6, height))
    grid = figure.add_gridspec(len(entries), crop_frames, hspace=0.3, wspace=0.04, left=0.22,
                               right=0.99, bottom=0.02, top=1 - 0.5 / height)
    for row, entry in enumerate(entries):
        frames_rgb, clip = frames_of[entry["clip"]]
        frames = _frames_float(frames_rgb, _as_batch(clip))
        times = np.unique(np.linspace(entry["t0"], entry["t1"] - 1, crop_frames).round()
                          .astype(int))
        for col in range(crop_frames):
            axis = figure.add_subplot(grid[row, col])
            axis.set_xticks([])
            axis.set_yticks([])
            if col < len(times):
                t = times[col]
                axis.imshow(frames[t, entry["y0"]:entry["y1"], entry["x0"]:entry["x1"]],
                            interpolation="nearest")
                axis.set_title(f"t={t}", fontsize=6, pad=1)
            else:
                axis.set_axis_off()
            if col == 0:
                name = entry["clip"]
                name = name if len(name) <= 28 else f"{name[:12]}…{name[-15:]}"
                axis.set_ylabel(f"#{entry['rank']}  {entry['value']:.3g}\n{name}", fontsize=6,
                                rotation=0, ha="right", va="center")
    figure.suptitle(f"channel {channel}: clips with the strongest response "
                    "(crops of the peak cell's input region)", fontsize=8)
    save_figure(figure, path)


# --------------------------------------------------------------------------- embedding
@dataclass
class Embedding:
    """What :func:`embedding` computed: ``features (n, D)`` of the clips, their 2-D ``pca`` and
    ``tsne`` coordinates (``None`` when not asked for), and where the features came from."""

    names: List[str]
    labels: List[str]
    features: np.ndarray
    pca: Optional[np.ndarray]
    tsne: Optional[np.ndarray]
    source: str


def _recurrent_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]


def _rnn_features(output: torch.Tensor, module: nn.RNNBase, num_clips: int) -> torch.Tensor:
    """An RNN's output sequence averaged over time, ``(num_clips, D)``. When the RNN runs
    several sequences per clip (``B = num_clips * m``, e.g. one per grid cell), their means
    are concatenated per clip."""
    if output.dim() == 2:  # unbatched (T, D)
        output = output.unsqueeze(0 if module.batch_first else 1)
    sequences = output if module.batch_first else output.transpose(0, 1)  # (B, T, D)
    batch = sequences.shape[0]
    if batch % num_clips:
        raise ValueError(f"the recurrent layer ran {batch} sequences for {num_clips} clip(s)")
    return sequences.mean(1).reshape(num_clips, -1)


def clip_features(model: nn.Module, clip: torch.Tensor, layer: Optional[Layer] = None
                  ) -> Tuple[np.ndarray, str]:
    """One clip's feature vector ``(D,)`` and a description of where it came from.

    - ``layer`` given: its output, averaged over time and space when it has a grid (clip
      layout of :mod:`vis_methods.cam`), or as is when it is ``(1, D)``.
    - recurrent models (with an ``nn.LSTM``/``nn.GRU``/``nn.RNN``): a ``hidden_states(clip) ->
      (N, T, D)`` method of the model when it has one (the states the classifier reads),
      otherwise the last recurrent module's output sequence; averaged over time.
    - otherwise the input of the last ``nn.Linear`` called in the forward pass (the
      penultimate features), or, for models without one (I3D's logits are a 1x1x1
      convolution), the input of the last convolution called, averaged over its grid.
    """
    clip = _as_batch(clip).to(_model_device(model))
    with torch.no_grad(), eval_mode(model), input_only_gradients(model):
        if layer is not None:
            output, name = _layer_output(model, clip, layer)
            return output[0].flatten(1).mean(1).numpy().astype(np.float64), f"layer {name}"
        recurrent = _recurrent_modules(model)
        if recurrent:
            states_fn = getattr(model, "hidden_states", None)
            if callable(states_fn):
                states = states_fn(clip)
                if isinstance(states, torch.Tensor) and states.dim() == 3 and \
                        states.shape[0] == 1:
                    return (states.mean(1)[0].float().cpu().numpy().astype(np.float64),
                            "hidden_states() averaged over time")
            name, module = recurrent[-1]
            with capture_layer(model, module) as record:
                model(clip)
            output = record.get("activation")
            if isinstance(output, (tuple, list)):
                output = output[0]
            if isinstance(output, nn.utils.rnn.PackedSequence) or \
                    not isinstance(output, torch.Tensor):
                raise ValueError(f"cannot read the output of {name!r}; pass layer explicitly")
            features = _rnn_features(output, module, 1)
            return (features[0].float().cpu().numpy().astype(np.float64),
                    f"{name} output averaged over time")
        record: dict = {}
        handles = []

        def make_hook(module_name: str, kind: str):
            def hook(_module, inputs):
                record[kind] = (module_name, inputs[0])
            return hook

        try:
            for module_name, module in model.named_modules():
                if isinstance(module, nn.Linear):
                    handles.append(module.register_forward_pre_hook(make_hook(module_name,
                                                                              "linear")))
                elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    handles.append(module.register_forward_pre_hook(make_hook(module_name,
                                                                              "conv")))
            model(clip)
        finally:
            for handle in handles:
                handle.remove()
    if "linear" in record:
        name, value = record["linear"]
        value = value.detach().float().cpu()
        if value.shape[0] != 1:
            raise ValueError(f"the input of {name!r} is {tuple(value.shape)}, not one vector per "
                             "clip; pass layer explicitly")
        return value.reshape(1, -1)[0].numpy().astype(np.float64), f"input of {name}"
    if "conv" in record:
        name, value = record["conv"]
        value = value.detach().float().cpu()
        grid = _clip_layout(value, 1, clip.shape[2]) if value.dim() >= 4 else value.unsqueeze(-1)
        return (grid[0].flatten(1).mean(1).numpy().astype(np.float64),
                f"input of {name} averaged over its grid")
    raise ValueError("the model has no Linear or convolution to read features from; pass layer")


def _project(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA
        components = min(2, features.shape[0], features.shape[1])
        coords = PCA(n_components=components, random_state=seed).fit_transform(features)
    elif method == "tsne":
        from sklearn.manifold import TSNE
        perplexity = float(min(30, features.shape[0] - 1))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                      random_state=seed).fit_transform(features)
    else:
        raise ValueError(f"unknown projection {method!r}; choose pca or tsne")
    if coords.shape[1] < 2:
        coords = np.concatenate([coords, np.zeros((len(coords), 2 - coords.shape[1]))], axis=1)
    return coords.astype(np.float64)


def _thumbnail(frames_rgb: Optional[np.ndarray], clip: torch.Tensor) -> np.ndarray:
    frames = _frames_float(frames_rgb, _as_batch(clip))
    middle = (frames[len(frames) // 2] * 255).round().astype(np.uint8)
    image = Image.fromarray(middle)
    scale = THUMBNAIL_SIDE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.BILINEAR)
    return np.asarray(image)


def _draw_embedding(coords: np.ndarray, labels: List[str], thumbnails: List[np.ndarray],
                    title: str, axis_name: str, path: Path) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    classes = list(dict.fromkeys(labels))
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    colours = {c: palette(i % palette.N) for i, c in enumerate(classes)}
    figure = Figure(figsize=(7.5, 6.5))
    axis = figure.add_subplot(1, 1, 1)
    axis.scatter(coords[:, 0], coords[:, 1], c=[colours[name] for name in labels], s=30, zorder=1)
    for (x, y), label, thumb in zip(coords, labels, thumbnails):
        box = AnnotationBbox(OffsetImage(thumb, zoom=1.0), (x, y), frameon=True, pad=0.15,
                             bboxprops={"edgecolor": colours[label], "linewidth": 2})
        axis.add_artist(box)
    span = np.ptp(coords, axis=0)
    span = np.where(span > 0, span, 1.0)
    axis.set_xlim(coords[:, 0].min() - 0.12 * span[0], coords[:, 0].max() + 0.12 * span[0])
    axis.set_ylim(coords[:, 1].min() - 0.12 * span[1], coords[:, 1].max() + 0.12 * span[1])
    handles = [Line2D([], [], marker="s", linestyle="", markersize=8, color=colours[c], label=c)
               for c in classes]
    axis.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)
    axis.set_title(title, fontsize=9)
    axis.set_xlabel(f"{axis_name} 1", fontsize=8)
    axis.set_ylabel(f"{axis_name} 2", fontsize=8)
    save_figure(figure, path)


def embedding(model: nn.Module, clips: Sequence[ClipItem], *, out_dir: Union[str, Path],
              labels: Optional[Sequence[Optional[str]]] = None, layer: Optional[Layer] = None,
              method: Union[str, Sequence[str]] = ("pca", "tsne"), seed: int = 0,
              failures: Optional[List[Tuple[str, str]]] = None) -> Embedding:
    """Map a folder of clips by the network's features (see :func:`clip_features` for which).

    ``clips``: ``(name, model input, frames_rgb)`` per clip; ``labels`` one per clip (``None``
    entries are shown as ``unknown``). Clips that fail are recorded in ``failures`` and left
    out; at least 3 must remain. Features are projected to 2-D with PCA and/or t-SNE
    (scikit-learn; perplexity ``min(30, n - 1)``, PCA initialisation, ``random_state=seed``)
    and drawn as a scatter coloured by label with the middle frame of each clip and a legend:
    ``out_dir/embedding_pca.png``, ``out_dir/embedding_tsne.png``. ``out_dir/embedding.csv``
    holds ``clip, label, pca_x, pca_y, tsne_x, tsne_y`` (empty for a projection not asked for).
    """
    methods = (method,) if isinstance(method, str) else tuple(method)
    for name in methods:
        if name not in ("pca", "tsne"):
            raise ValueError(f"unknown projection {name!r}; choose pca or tsne")
    if labels is not None and len(labels) != len(clips):
        raise ValueError(f"{len(labels)} labels for {len(clips)} clips")
    failures = failures if failures is not None else []
    names, kept_labels, features, thumbnails = [], [], [], []
    source = ""
    for index, (name, clip, frames_rgb) in enumerate(clips):
        if clip is None or isinstance(clip, BaseException):
            failures.append((name, str(clip) if clip is not None else "no clip"))
            continue
        try:
            vector, source = clip_features(model, clip, layer)
            thumbnail = _thumbnail(frames_rgb, clip)
        except Exception as error:  # noqa: BLE001 - one bad clip must not stop the folder
            failures.append((name, f"{type(error).__name__}: {error}"))
            continue
        if features and vector.shape != features[0].shape:
            failures.append((name, f"features {vector.shape} differ from {features[0].shape}"))
            continue
        names.append(name)
        label = labels[index] if labels is not None else None
        kept_labels.append(str(label) if label is not None else "unknown")
        features.append(vector)
        thumbnails.append(thumbnail)
    if len(features) < 3:
        raise ValueError(f"embedding needs at least 3 clips, {len(features)} could be run"
                         + "".join(f"; {n}: {m}" for n, m in failures))
    matrix = np.stack(features)
    out_dir = Path(out_dir)
    projections = {}
    for name in methods:
        projections[name] = _project(matrix, name, seed)
        axis_name = "PCA" if name == "pca" else "t-SNE"
        _draw_embedding(projections[name], kept_labels, thumbnails,
                        f"{axis_name} of {source}, {len(names)} clips", axis_name,
                        out_dir / f"embedding_{name}.png")
    table = pd.DataFrame({"clip": names, "label": kept_labels})
    for name in ("pca", "tsne"):
        coords = projections.get(name)
        table[f"{name}_x"] = coords[:, 0] if coords is not None else np.nan
        table[f"{name}_y"] = coords[:, 1] if coords is not None else np.nan
    with atomic_path(out_dir / "embedding.csv") as temp:
        table.to_csv(temp, index=False)
    return Embedding(names, kept_labels, matrix, projections.get("pca"), projections.get("tsne"),
                     source)


# ------------------------------------------------------------------------- class model
def _total_variation(video: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed squared differences of neighbouring pixels ``(space, time)`` of
    ``(1, C, T, H, W)``."""
    space = ((video[..., 1:, :] - video[..., :-1, :]).square().sum()
             + (video[..., :, 1:] - video[..., :, :-1]).square().sum())
    time = ((video[:, :, 1:] - video[:, :, :-1]).square().sum() if video.shape[2] > 1
            else video.new_zeros(()))
    return space, time


def class_model(model: nn.Module, target_class: int, clip_shape: Sequence[int], *,
                out_dir: Union[str, Path],
                normalize: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                num_iter: int = 100, lr: float = 0.1, l2: float = 1e-4, tv_space: float = 1e-3,
                tv_time: float = 1e-3, jitter: int = 1, time_jitter: int = 1, seed: int = 0,
                info: Optional[dict] = None) -> Tuple[torch.Tensor, float]:
    """A video that the model scores as ``target_class`` (class model visualisation).

    Starting from a grey video (0.5), Adam (``lr``) maximises, in pixel space [0, 1] (clamped
    after every step), ``S_c(J(x)) - l2 * mean((x - 0.5)^2) - tv_space * TV_space(x) -
    tv_time * TV_time(x)`` where ``S_c`` is the class logit, ``J`` a random shift of up to
    ``jitter`` pixels in ``y`` and ``x`` and ``time_jitter`` frames in time (circular), and the
    TV terms the mean squared differences of neighbouring pixels in space and of consecutive
    frames. The model input is ``normalize(x)``, or ``(x - mean) / std``.

    ``clip_shape``: ``(C, T, H, W)`` or ``(1, C, T, H, W)``. Writes ``out_dir/class_model.gif``
    (the frames alone, animated) and ``out_dir/class_model.png`` (the frames side by side).
    Returns ``(video (C, T, H, W) in [0, 1], probability)``: the softmax probability of the
    class for the final, unshifted video. ``info`` receives ``logit`` and ``history`` (the
    class probability every 10 steps).
    """
    shape = tuple(int(s) for s in clip_shape)
    if len(shape) == 5:
        if shape[0] != 1:
            raise ValueError(f"clip_shape must describe one clip, got {shape}")
        shape = shape[1:]
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"clip_shape must be (C, T, H, W), got {tuple(clip_shape)}")
    if num_iter < 1 or lr <= 0:
        raise ValueError("num_iter must be >= 1 and lr > 0")
    if min(l2, tv_space, tv_time, jitter, time_jitter) < 0:
        raise ValueError("regulariser weights and jitter must be >= 0")
    if normalize is None:
        if mean is None or std is None:
            raise ValueError("pass normalize or both mean and std")
        channels = shape[0]
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels):
            raise ValueError(f"mean/std need 1 or {channels} values")

        def normalize(x: torch.Tensor) -> torch.Tensor:
            return (x - mean_t.to(x.device)) / std_t.to(x.device)
    device = _model_device(model)
    generator = torch.Generator().manual_seed(seed)
    video = torch.full((1, *shape), 0.5, device=device, requires_grad=True)
    optimiser = torch.optim.Adam([video], lr=lr)
    # Cosine decay: large steps find a pattern, small ones settle it under the random shifts.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=num_iter,
                                                          eta_min=lr * 0.05)
    history = []
    with eval_mode(model), input_only_gradients(model), torch.enable_grad():
        with torch.no_grad():
            classes = model(normalize(video)).shape[1]
        if not 0 <= int(target_class) < classes:
            raise ValueError(f"target_class {target_class} out of range: the model has "
                             f"{classes} outputs")
        for step in range(num_iter):
            shifts = [int(torch.randint(-r, r + 1, (1,), generator=generator)) if r > 0 else 0
                      for r in (time_jitter, jitter, jitter)]
            moved = torch.roll(video, shifts=shifts, dims=(2, 3, 4))
            logits = model(normalize(moved))
            space, time = _total_variation(video)
            loss = (-logits[0, int(target_class)] + l2 * (video - 0.5).square().sum()
                    + tv_space * space + tv_time * time)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                video.clamp_(0.0, 1.0)
            if step % 10 == 0:
                history.append(float(torch.softmax(logits.detach(), 1)[0, int(target_class)]))
        with torch.no_grad():
            logits = model(normalize(video))
            probability = float(torch.softmax(logits, 1)[0, int(target_class)])
    result = video.detach()[0].cpu()
    if info is not None:
        info["logit"] = float(logits[0, int(target_class)])
        info["history"] = history
    _write_class_model(result, Path(out_dir))
    return result, probability


def _write_class_model(video: torch.Tensor, out_dir: Path) -> None:
    frames = video.permute(1, 2, 3, 0).numpy()  # (T, H, W, C)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    frames = (np.clip(frames[..., :3], 0, 1) * 255).round().astype(np.uint8)
    height, width = frames.shape[1:3]
    scale = max(1, math.ceil(CLASS_MODEL_MIN_SIDE / min(height, width)))
    pictures = [Image.fromarray(f).resize((width * scale, height * scale), Image.NEAREST)
                for f in frames]
    save_gif(pictures, out_dir / "class_model.gif")
    columns = min(GRID_COLUMNS, len(frames))
    rows = -(-len(frames) // columns)
    sheet = np.full((rows * (height + 2), columns * (width + 2), 3), 255, dtype=np.uint8)
    for t, frame in enumerate(frames):
        r, c = divmod(t, columns)
        sheet[r * (height + 2):r * (height + 2) + height, c * (width + 2):c * (width + 2) + width] \
            = frame
    with atomic_path(out_dir / "class_model.png") as temp:
        Image.fromarray(sheet).save(temp, format="PNG")


# ---------------------------------------------------------------------- data gradient
def channel_reduce_max_abs(attribution: Union[torch.Tensor, np.ndarray]
                           ) -> Union[torch.Tensor, np.ndarray]:
    """Per pixel, the largest absolute value over the colour channels (Simonyan et al.'s
    display of the data gradient): ``(N, C, T, H, W)`` -> ``(N, 1, T, H, W)``."""
    if attribution.ndim != 5:
        raise ValueError(f"expected (N, C, T, H, W), got shape {tuple(attribution.shape)}")
    if isinstance(attribution, torch.Tensor):
        return attribution.abs().amax(dim=1, keepdim=True)
    return np.abs(np.asarray(attribution)).max(axis=1, keepdims=True)
