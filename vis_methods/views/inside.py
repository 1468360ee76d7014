"""Looking inside a video network: first-layer filters, a layer's activations over a clip, the
clips and places that most activate a channel, the map of the feature space, and class-model
videos.

Unlike the attribution methods (``explain(model, clip, target) -> map``), these views answer
questions about the network itself. Each one computes and returns values (arrays, tables,
dataclasses) and draws nothing; :mod:`utils.render.views` draws them.

- :func:`filters`: the first convolution's kernels, sorted by L2 norm (:class:`Filters`).
- :func:`activations`: the top-k channels of a layer for one clip, over time
  (:class:`Activations`).
- :func:`top_clips`: over a folder of clips, the clips and spatio-temporal places that most
  activate a channel (:class:`TopClips`).
- :func:`embedding`: penultimate features of a folder of clips projected to 2-D with PCA and
  t-SNE (:class:`Embedding`).
- :func:`class_model`: a video optimised from grey to maximise a class score
  (:class:`ClassModel`).

Clips are model inputs ``(1, C, T, H, W)`` (or ``(C, T, H, W)``); ``frames_rgb`` are the same
frames for display, ``(T, H, W, 3)`` as uint8 or floats in [0, 1]. Layer outputs are read in
the clip layout ``(N, C, T, h, w)`` (or ``(N*T, C, h, w)`` from a frame CNN with frames ordered
``n*T+t``) by the model adapter. Every function runs the model in eval mode with its parameters
frozen and restores both, and removes its hooks, on exit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from models.adapter import as_adapter, read_conv_layer

from .._context import capture_layer, eval_mode, input_only_gradients, resolve_layer


def _layer_name(model: nn.Module, module: nn.Module) -> str:
    return as_adapter(model).layer_name(module)


Layer = Union[str, nn.Module]
# One clip of a folder: (name, model input (1, C, T, H, W) or (C, T, H, W), display frames).
ClipItem = Tuple[str, Optional[torch.Tensor], Optional[np.ndarray]]


class TooFewClips(ValueError):
    """Fewer clips could be run than a folder view needs."""


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
    kernel scaled to [0, 1] over its own values. Three input channels are shown as RGB, others
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


@dataclass
class Filters:
    """What :func:`filters` read: the layer's name and kernel shape ``(C_in, t, k, k)``, the
    output channels in display order (largest L2 norm first), their norms in that order, and
    the display tiles ``(C_out, t, k, k, 3)`` in [0, 1] in that order (each kernel scaled over
    its own values; a constant kernel is mid-grey; three input channels as RGB, others grey)."""

    layer: str
    kernel_shape: Tuple[int, int, int, int]
    order: np.ndarray
    norms: np.ndarray
    tiles: np.ndarray

    def table(self) -> pd.DataFrame:
        """``rank, channel, l2_norm`` (rank 0 = largest norm)."""
        return pd.DataFrame({"rank": np.arange(len(self.order)), "channel": self.order,
                             "l2_norm": self.norms})


def filters(model: nn.Module, layer: Optional[Layer] = None) -> Filters:
    """The kernels of the first convolution (or of ``layer``), sorted by L2 norm.

    A 3-D kernel ``(C_in, t, k, k)`` has ``t`` time slices, a 2-D kernel one. Ties keep the
    channel order (stable sort). The weights are read, not changed.
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
    return Filters(layer=_layer_name(model, module),
                   kernel_shape=tuple(int(d) for d in weight.shape[1:]),
                   order=order, norms=norms[order], tiles=_kernel_tiles(weight)[order])


# ------------------------------------------------------------------------- activations
def _channel_display(maps: torch.Tensor) -> np.ndarray:
    """``(k, T, H, W)`` activations -> [0, 1] display maps: the positive part over each
    channel's own maximum over the clip (a channel that never fires stays dark)."""
    maps = maps.clamp(min=0).numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1, 1)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0)


@dataclass
class Activations:
    """What :func:`activations` computed for one clip: the layer's name, the channels (largest
    mean first) and their mean activations over ``T' x h' x w'``, their activations upsampled
    to the clip and shown as ``display (k, T, H, W)`` in [0, 1] (positive part over each
    channel's own maximum over the clip), and the clip's display frames ``(T, H, W, 3)``."""

    layer: str
    channels: np.ndarray
    means: np.ndarray
    display: np.ndarray
    frames: np.ndarray


def activations(model: nn.Module, clip: torch.Tensor, layer: Layer, *,
                frames_rgb: Optional[np.ndarray] = None, k: int = 8) -> Activations:
    """The ``k`` channels of ``layer`` with the largest mean activation over this clip.

    Each channel's activation is upsampled (trilinear) to the clip's ``T x H x W``; its display
    map is the positive part scaled by the channel's own maximum over the clip (a channel that
    never fires stays 0).
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
    frames = _frames_float(frames_rgb, clip)
    if frames.shape[:3] != tuple(clip.shape[2:]):
        raise ValueError(f"frames_rgb {frames.shape[:3]} do not match the clip "
                         f"{tuple(clip.shape[2:])}")
    return Activations(layer=layer_name, channels=top.numpy().astype(int),
                       means=means[top].numpy().astype(np.float64),
                       display=_channel_display(upsampled), frames=frames)


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


def layer_channels(model: nn.Module, layer: Layer, clip_shape: Sequence[int]) -> int:
    """How many channels ``layer`` has, read from one forward pass of a grey clip of
    ``clip_shape`` ``(1, C, T, H, W)`` (the layer's output in the clip layout)."""
    clip = torch.full(tuple(int(s) for s in clip_shape), 0.5)
    output, _ = _layer_output(model, _as_batch(clip), layer)
    return int(output.shape[1])


@dataclass
class TopClips:
    """What :func:`top_clips` found: the layer's name and channel count, the channels shown,
    the table (``channel, rank, clip, value, t, y, x``, the tube ``t0, t1, y0, y1, x0, x1``
    and the cell ``cell_t, cell_y, cell_x``), and per table row (same order) the tube's
    frames ``times`` and their crops ``(len(times), h, w, 3)`` in [0, 1]."""

    layer: str
    num_channels: int
    channels: List[int]
    table: pd.DataFrame
    times: List[np.ndarray]
    crops: List[np.ndarray]


def top_clips(model: nn.Module, clips: Sequence[ClipItem], layer: Layer, *,
              channel: Optional[int] = None, top: int = 5, context: int = 1, crop_frames: int = 4,
              failures: Optional[List[Tuple[str, str]]] = None) -> TopClips:
    """The clips and places of a folder that most activate a channel of ``layer``.

    ``clips``: ``(name, model input, frames_rgb)`` per clip; an entry whose input is ``None``
    or an exception (a clip the caller could not read) is recorded as a failure, as is any
    clip whose forward pass raises, and the others go on. Failures are appended to
    ``failures`` (when given) as ``(name, message)``.

    For ``channel`` (default: each of the 3 channels with the largest mean activation over the
    folder) every clip is scored by the channel's maximum over ``T' x h' x w'``; the ``top``
    clips' peak cells give the table's rows: ``t, y, x`` (the peak cell's centre in input
    pixels), the tube bounds (half-open: the cell's input footprint grown by ``context``
    cells) and the cell; each row's crops are ``crop_frames`` frames spread over the tube.
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
        raise TooFewClips("no clip could be run: "
                          + "; ".join(f"{n}: {m}" for n, m in failures))
    num_channels = len(stats[0].means)
    if channel is None:
        folder_means = np.mean([s.means for s in stats], axis=0)
        channels = [int(c) for c in np.argsort(-folder_means, kind="stable")[:3]]
    else:
        if not 0 <= int(channel) < num_channels:
            raise ValueError(f"channel {channel} out of range: the layer has {num_channels} "
                             f"channels (0..{num_channels - 1})")
        channels = [int(channel)]
    rows, times, crops = [], [], []
    for c in channels:
        ranked = sorted(stats, key=lambda s: -s.peaks[c])[:top]
        for rank, item in enumerate(ranked):
            tube = _tube(item, c, context)
            rows.append({"channel": c, "rank": rank + 1, "clip": item.name,
                         "value": float(item.peaks[c]), **tube})
            frames_rgb, clip = frames_of[item.name]
            frames = _frames_float(frames_rgb, _as_batch(clip))
            picked = np.unique(np.linspace(tube["t0"], tube["t1"] - 1, crop_frames).round()
                               .astype(int))
            times.append(picked)
            crops.append(frames[picked, tube["y0"]:tube["y1"], tube["x0"]:tube["x1"]])
    module = resolve_layer(model, layer)
    return TopClips(layer=_layer_name(model, module), num_channels=num_channels,
                    channels=channels, table=pd.DataFrame(rows), times=times, crops=crops)


# --------------------------------------------------------------------------- embedding
@dataclass
class Embedding:
    """What :func:`embedding` computed: ``features (n, D)`` of the clips, their 2-D ``pca`` and
    ``tsne`` coordinates (``None`` when not asked for), where the features came from, each
    clip's middle frame ``(H, W, 3)`` in [0, 1], and PCA's explained variance ratios."""

    names: List[str]
    labels: List[str]
    features: np.ndarray
    pca: Optional[np.ndarray]
    tsne: Optional[np.ndarray]
    source: str
    middle_frames: List[np.ndarray]
    pca_explained: Optional[np.ndarray] = None

    def table(self) -> pd.DataFrame:
        """``clip, label, pca_x, pca_y, tsne_x, tsne_y`` (NaN for a projection not asked for)."""
        table = pd.DataFrame({"clip": self.names, "label": self.labels})
        for name in ("pca", "tsne"):
            coords = getattr(self, name)
            table[f"{name}_x"] = coords[:, 0] if coords is not None else np.nan
            table[f"{name}_y"] = coords[:, 1] if coords is not None else np.nan
        return table


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
      layout read by the model adapter), or as is when it is ``(1, D)``.
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
        grid = (read_conv_layer(value, (1, 0, clip.shape[2], 0, 0)) if value.dim() >= 4
                else value.unsqueeze(-1))
        return (grid[0].flatten(1).mean(1).numpy().astype(np.float64),
                f"input of {name} averaged over its grid")
    raise ValueError("the model has no Linear or convolution to read features from; pass layer")


def _project(features: np.ndarray, method: str, seed: int
             ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """2-D coordinates and, for PCA, the explained variance ratio of each axis."""
    ratios = None
    if method == "pca":
        from sklearn.decomposition import PCA
        components = min(2, features.shape[0], features.shape[1])
        pca = PCA(n_components=components, random_state=seed)
        coords = pca.fit_transform(features)
        ratios = np.zeros(2)
        ratios[:components] = pca.explained_variance_ratio_
    elif method == "tsne":
        from sklearn.manifold import TSNE
        perplexity = float(min(30, features.shape[0] - 1))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                      random_state=seed).fit_transform(features)
    else:
        raise ValueError(f"unknown projection {method!r}; choose pca or tsne")
    if coords.shape[1] < 2:
        coords = np.concatenate([coords, np.zeros((len(coords), 2 - coords.shape[1]))], axis=1)
    return coords.astype(np.float64), ratios


def _middle_frame(frames_rgb: Optional[np.ndarray], clip: torch.Tensor) -> np.ndarray:
    frames = _frames_float(frames_rgb, _as_batch(clip))
    return frames[len(frames) // 2]


def embedding(model: nn.Module, clips: Sequence[ClipItem], *,
              labels: Optional[Sequence[Optional[str]]] = None, layer: Optional[Layer] = None,
              method: Union[str, Sequence[str]] = ("pca", "tsne"), seed: int = 0,
              failures: Optional[List[Tuple[str, str]]] = None) -> Embedding:
    """Map a folder of clips by the network's features (see :func:`clip_features` for which).

    ``clips``: ``(name, model input, frames_rgb)`` per clip; ``labels`` one per clip (``None``
    entries become ``unknown``). Clips that fail are recorded in ``failures`` and left out; at
    least 3 must remain (else :class:`TooFewClips`). Features are projected to 2-D with PCA
    and/or t-SNE (scikit-learn; perplexity ``min(30, n - 1)``, PCA initialisation,
    ``random_state=seed``); ``pca_explained`` holds PCA's explained variance ratios.
    """
    methods = (method,) if isinstance(method, str) else tuple(method)
    for name in methods:
        if name not in ("pca", "tsne"):
            raise ValueError(f"unknown projection {name!r}; choose pca or tsne")
    if labels is not None and len(labels) != len(clips):
        raise ValueError(f"{len(labels)} labels for {len(clips)} clips")
    failures = failures if failures is not None else []
    names, kept_labels, features, middles = [], [], [], []
    source = ""
    for index, (name, clip, frames_rgb) in enumerate(clips):
        if clip is None or isinstance(clip, BaseException):
            failures.append((name, str(clip) if clip is not None else "no clip"))
            continue
        try:
            vector, source = clip_features(model, clip, layer)
            middle = _middle_frame(frames_rgb, clip)
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
        middles.append(middle)
    if len(features) < 3:
        raise TooFewClips(f"embedding needs at least 3 clips, {len(features)} could be run"
                          + "".join(f"; {n}: {m}" for n, m in failures))
    matrix = np.stack(features)
    projections, explained = {}, None
    for name in methods:
        projections[name], ratios = _project(matrix, name, seed)
        if name == "pca":
            explained = ratios
    return Embedding(names, kept_labels, matrix, projections.get("pca"), projections.get("tsne"),
                     source, middles, explained)


# ------------------------------------------------------------------------- class model
def _total_variation(video: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed squared differences of neighbouring pixels ``(space, time)`` of
    ``(1, C, T, H, W)``."""
    space = ((video[..., 1:, :] - video[..., :-1, :]).square().sum()
             + (video[..., :, 1:] - video[..., :, :-1]).square().sum())
    time = ((video[:, :, 1:] - video[:, :, :-1]).square().sum() if video.shape[2] > 1
            else video.new_zeros(()))
    return space, time


@dataclass
class ClassModel:
    """What :func:`class_model` made: the video ``(C, T, H, W)`` in [0, 1], the class, its
    softmax probability and logit on the final, unshifted video, and ``history`` (the class
    probability every 10 steps)."""

    video: torch.Tensor
    target_class: int
    probability: float
    logit: float
    history: List[float]
    num_iter: int


def class_model(model: nn.Module, target_class: int, clip_shape: Sequence[int], *,
                normalize: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                num_iter: int = 100, lr: float = 0.1, l2: float = 1e-4, tv_space: float = 1e-3,
                tv_time: float = 1e-3, jitter: int = 1, time_jitter: int = 1, seed: int = 0
                ) -> ClassModel:
    """A video that the model scores as ``target_class`` (class model visualisation).

    Starting from a grey video (0.5), Adam (``lr``) maximises, in pixel space [0, 1] (clamped
    after every step), ``S_c(J(x)) - l2 * mean((x - 0.5)^2) - tv_space * TV_space(x) -
    tv_time * TV_time(x)`` where ``S_c`` is the class logit, ``J`` a random shift of up to
    ``jitter`` pixels in ``y`` and ``x`` and ``time_jitter`` frames in time (circular), and the
    TV terms the mean squared differences of neighbouring pixels in space and of consecutive
    frames. The model input is ``normalize(x)``, or ``(x - mean) / std``.

    ``clip_shape``: ``(C, T, H, W)`` or ``(1, C, T, H, W)``. Returns a :class:`ClassModel`.
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
    return ClassModel(video=video.detach()[0].cpu(), target_class=int(target_class),
                      probability=probability, logit=float(logits[0, int(target_class)]),
                      history=history, num_iter=int(num_iter))
