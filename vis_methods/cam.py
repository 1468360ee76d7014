"""Class activation maps for video networks: Grad-CAM and its variants, Score-CAM, CAM and
guided Grad-CAM.

One base (:func:`_gradient_cam`) captures the target layer's activation for this call only,
differentiates the target w.r.t. it, combines ``relu(sum_c weight_c * activation_c)`` and
upsamples the map trilinearly to the clip's ``T x H x W``. The variants differ only in how they
compute the channel weights from ``(activation, gradient)``; weights keep the pooled dimensions
as size 1 and broadcast over any number of trailing dimensions.

Layer outputs are brought to a clip layout ``(N, C', T', h', w')``:

- 5-D ``(N, C', T', h', w')``: used as is (3-D CNNs, I3D).
- 4-D ``(N * T, C', h, w)`` where ``T`` is the clip's frame count: a frame CNN inside a
  recurrent model, frames ordered ``n * T + t``; reshaped to ``(N, C', T, h, w)`` so every
  frame gets its own map.
- 4-D ``(N, C', h, w)``: a layer without a time axis; treated as one time slice.

``cam_pooling`` sets the region a channel weight is pooled over: ``"time"`` (default, the
reference's choice) pools over ``h' x w'`` separately for each time slice; ``"3d"`` pools over
``T' x h' x w'`` (one weight per channel, as in the image methods).

All maps are raw floats ``(N, 1, T, H, W)``, after the ReLU, not normalised for display.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.adapter import ModelAdapter, default_target_layer, read_conv_layer  # noqa: F401

from ._context import attribution_method, capture_layer
from .gradient import guided_backprop
from .targets import Target, TargetFn, as_target_fn

Layer = Union[str, nn.Module]
# weight_fn(activation (N, C', *grid), gradient (N, C', *grid), pooled_dims) -> weights that
# broadcast against the activation.
WeightFn = Callable[[torch.Tensor, torch.Tensor, Tuple[int, ...]], torch.Tensor]

CAM_POOLINGS = ("time", "3d")
_SCORE_CAM_CPU_BATCH = 4
_SCORE_CAM_ACCELERATOR_BATCH = 32


# ------------------------------------------------------------------------ layer bookkeeping

def _clip_layout(tensor: torch.Tensor, num_clips: int, num_frames: int) -> torch.Tensor:
    """A plain convolution layer's output in the clip layout (the adapter's default reader)."""
    return read_conv_layer(tensor, (num_clips, 0, num_frames, 0, 0))


def _tensors_of(output: Any) -> List[torch.Tensor]:
    """The tensors a layer returned (a tensor, or the tensors in a tuple/list)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [o for o in output if isinstance(o, torch.Tensor)]
    return []


def _with_tensors(output: Any, tensors: Sequence[Optional[torch.Tensor]]) -> Any:
    """``output`` with its tensors replaced, in order, by ``tensors`` (same structure)."""
    if isinstance(output, torch.Tensor):
        return tensors[0]
    replaced, index = [], 0
    for item in output:
        if isinstance(item, torch.Tensor):
            item = tensors[index] if tensors[index] is not None else torch.zeros_like(item)
            index += 1
        replaced.append(item)
    return type(output)(replaced) if isinstance(output, tuple) else replaced


def _pooled_dims(cam_pooling: str, grid_dims: int) -> Tuple[int, ...]:
    """Dimensions (counted from the end) a channel weight is pooled over."""
    if cam_pooling not in CAM_POOLINGS:
        raise ValueError(f"unknown cam_pooling {cam_pooling!r}; choose from {CAM_POOLINGS}")
    if cam_pooling == "3d" or grid_dims < 3:
        return tuple(range(-grid_dims, 0))
    return (-2, -1)


def _layer_activation_and_gradient(model: ModelAdapter, clip: torch.Tensor, target_fn: TargetFn,
                                   target_layer: Optional[Layer]
                                   ) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """One forward and one input-free backward for this call only.

    Returns ``(activation, gradient, layer_name)``, both in the clip layout
    ``(N, C', T', h', w')`` as the model adapter reads the layer (the gradient is taken w.r.t.
    the layer's raw output and read the same way: readers only reshape).
    """
    layer = model.layer(target_layer)
    layer_name = model.layer_name(layer)
    num_clips = clip.shape[0]
    # The clip requires grad only so the layer's output is part of a graph when the parameters
    # are frozen; the backward stops at the layer and never reaches the input.
    inputs = clip.detach().requires_grad_(True)
    with capture_layer(model, layer) as record, torch.enable_grad():
        output = model(inputs)
        scores = target_fn(output)
        if scores.dim() != 1 or scores.shape[0] != num_clips:
            raise ValueError(f"the target must return one score per clip, shape ({num_clips},); "
                             f"got {tuple(scores.shape)}")
        raw = record.get("activation")
        tensors = _tensors_of(raw)
        if "activation" not in record or not tensors:
            raise ValueError(f"target layer {layer_name!r} was not called or returned no tensor")
        gradients = torch.autograd.grad(scores.sum(), tensors, allow_unused=True)
    if all(g is None for g in gradients):
        raise ValueError(f"the target does not depend on layer {layer_name!r}")
    activation = model.read_layer(layer, _with_tensors(raw, [t.detach() for t in tensors]),
                                  clip.shape)
    gradient = model.read_layer(layer, _with_tensors(raw, list(gradients)), clip.shape)
    return activation, gradient, layer_name


def _upsample(maps: torch.Tensor, size: Tuple[int, ...]) -> torch.Tensor:
    """``(N, 1, T', h', w')`` -> ``(N, 1, T, H, W)``, trilinear."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="trilinear", align_corners=False)


def _combine(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """``relu(sum_c weights_c * activation_c)``: ``(N, C', ...)`` -> ``(N, 1, ...)``."""
    return (weights * activation).sum(1, keepdim=True).clamp(min=0)


def _record(info: Optional[dict], layer_name: str, activation: torch.Tensor) -> None:
    if info is not None:
        info["target_layer"] = layer_name
        info["layer_grid"] = "x".join(str(s) for s in activation.shape[2:])


def _gradient_cam(model: nn.Module, clip: torch.Tensor, target: Target, weight_fn: WeightFn, *,
                  target_layer: Optional[Layer], cam_pooling: str,
                  info: Optional[dict]) -> torch.Tensor:
    """The shared Grad-CAM pipeline; ``weight_fn`` is the only thing variants change."""
    activation, gradient, layer_name = _layer_activation_and_gradient(
        model, clip, as_target_fn(target), target_layer)
    dims = _pooled_dims(cam_pooling, activation.dim() - 2)
    maps = _combine(weight_fn(activation, gradient, dims), activation)
    _record(info, layer_name, activation)
    return _upsample(maps, tuple(clip.shape[2:]))


# ------------------------------------------------------------------------- channel weights

def _grad_cam_weights(activation: torch.Tensor, gradient: torch.Tensor,
                      dims: Tuple[int, ...]) -> torch.Tensor:
    """Grad-CAM: the gradient averaged over the pooled region."""
    return gradient.mean(dims, keepdim=True)


def _grad_cam_pp_weights(activation: torch.Tensor, gradient: torch.Tensor,
                         dims: Tuple[int, ...]) -> torch.Tensor:
    """Grad-CAM++ closed form (Chattopadhay et al. 2018) for an exponential of the score, whose
    2nd/3rd derivatives are the gradient's powers for a piecewise-linear network:
    ``alpha = g^2 / (2 g^2 + sum(A) g^3)``, ``w = sum(alpha * relu(g))`` over the pooled region.
    The common factor ``exp(score)`` is dropped. Where the denominator is 0 (g = 0), alpha = 0."""
    squared = gradient.square()
    denominator = 2 * squared + activation.sum(dims, keepdim=True) * squared * gradient
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = torch.where(denominator != 0, squared / safe, torch.zeros_like(squared))
    return (alpha * gradient.clamp(min=0)).sum(dims, keepdim=True)


def _xgrad_cam_weights(activation: torch.Tensor, gradient: torch.Tensor,
                       dims: Tuple[int, ...]) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020): ``sum(g * A) / sum(A)`` over the pooled region (0 where the
    activation sums to 0)."""
    total = activation.sum(dims, keepdim=True)
    weighted = (gradient * activation).sum(dims, keepdim=True)
    safe = torch.where(total != 0, total, torch.ones_like(total))
    return torch.where(total != 0, weighted / safe, torch.zeros_like(weighted))


def _layer_cam_weights(activation: torch.Tensor, gradient: torch.Tensor,
                       dims: Tuple[int, ...]) -> torch.Tensor:
    """Layer-CAM (Jiang et al. 2021): element-wise weights ``relu(g)``; nothing is pooled."""
    return gradient.clamp(min=0)


# ----------------------------------------------------------------------- public functions

@attribution_method
def grad_cam(model: nn.Module, clip: torch.Tensor, target: Target, *,
             target_layer: Optional[Layer] = None, cam_pooling: str = "time",
             info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``(N, C, T, H, W)`` -> ``(N, 1, T, H, W)``.

    Channel weights are the target's gradient averaged over ``h' x w'`` per time slice
    (``cam_pooling="time"``) or over ``T' x h' x w'`` (``"3d"``). ``target_layer`` is a module
    or a dotted name (default: the last convolution).
    """
    return _gradient_cam(model, clip, target, _grad_cam_weights, target_layer=target_layer,
                         cam_pooling=cam_pooling, info=info)


@attribution_method
def grad_cam_pp(model: nn.Module, clip: torch.Tensor, target: Target, *,
                target_layer: Optional[Layer] = None, cam_pooling: str = "time",
                info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Grad-CAM++ with its closed-form weights: ``(N, C, T, H, W)`` -> ``(N, 1, T, H, W)``."""
    return _gradient_cam(model, clip, target, _grad_cam_pp_weights, target_layer=target_layer,
                         cam_pooling=cam_pooling, info=info)


@attribution_method
def xgrad_cam(model: nn.Module, clip: torch.Tensor, target: Target, *,
              target_layer: Optional[Layer] = None, cam_pooling: str = "time",
              info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """XGrad-CAM: ``(N, C, T, H, W)`` -> ``(N, 1, T, H, W)``."""
    return _gradient_cam(model, clip, target, _xgrad_cam_weights, target_layer=target_layer,
                         cam_pooling=cam_pooling, info=info)


@attribution_method
def layer_cam(model: nn.Module, clip: torch.Tensor, target: Target, *,
              target_layer: Optional[Layer] = None,
              info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Layer-CAM: ``relu(sum_c relu(g_c) * A_c)`` position by position,
    ``(N, C, T, H, W)`` -> ``(N, 1, T, H, W)``."""
    return _gradient_cam(model, clip, target, _layer_cam_weights, target_layer=target_layer,
                         cam_pooling="3d", info=info)


@attribution_method
def cam(model: nn.Module, clip: torch.Tensor, target: Target, *,
        target_layer: Optional[Layer] = None,
        info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """CAM (Zhou et al. 2016) for models whose head is global average pooling of
    ``target_layer`` followed by a linear classifier: ``(N, C, T, H, W)`` -> ``(N, 1, T, H, W)``.

    The channel weight is the target's derivative w.r.t. the pooled feature, i.e. the classifier
    row ``W[k]`` for a class target (and its chain-rule counterpart for counterfactual or
    regression targets). Through an average pool that derivative is the layer gradient summed
    over ``T' x h' x w'``, and the gradient is the same at every position; a model whose gradient
    varies over positions has no such head, and ``ValueError`` is raised (use ``grad_cam``).
    The map is ``relu(sum_c W[k, c] A_c)``.
    """
    activation, gradient, layer_name = _layer_activation_and_gradient(
        model, clip, as_target_fn(target), target_layer)
    dims = tuple(range(2, activation.dim()))
    spread = (gradient - gradient.mean(dims, keepdim=True)).abs().amax()
    scale = gradient.abs().amax()
    if spread > 1e-4 * scale + 1e-12:
        raise ValueError(
            f"cam needs global average pooling of {layer_name!r} followed by a linear classifier; "
            f"the gradient at that layer varies over positions (spread {float(spread):.3g} vs "
            f"max {float(scale):.3g}). Use grad_cam with cam_pooling='3d' instead.")
    weights = gradient.sum(dims, keepdim=True)
    maps = _combine(weights, activation)
    _record(info, layer_name, activation)
    return _upsample(maps, tuple(clip.shape[2:]))


@attribution_method
def score_cam(model: nn.Module, clip: torch.Tensor, target: Target, *,
              target_layer: Optional[Layer] = None,
              internal_batch_size: Optional[int] = None,
              score_cam_channels: Optional[int] = None,
              info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): ``(N, C, T, H, W)`` -> ``(N, 1, T, H, W)``. Gradient-free.

    Every channel of the layer, upsampled to the clip and scaled to [0, 1] over ``T x H x W``,
    masks the clip; the target scores of the masked clips, soft-maxed over channels, weight the
    channels (softmax makes the weights positive and independent of the score's offset for any
    target: logits, counterfactuals, negative losses). Masked clips are scored in batches of
    ``internal_batch_size`` channels (``None``: 4 on the CPU, 32 on an accelerator); the cost is
    one forward per channel. ``score_cam_channels``: score only that many channels per clip,
    those whose activation has the largest variance over ``T x H x W`` (the others get no
    weight): the cost falls in proportion, for a map made of the most structured channels
    (a flat channel masks the clip almost uniformly and tells little about where).
    """
    target_fn = as_target_fn(target)
    layer = model.layer(target_layer)
    layer_name = model.layer_name(layer)
    num_clips = clip.shape[0]
    size = tuple(clip.shape[2:])
    clip = clip.detach()
    with torch.no_grad():
        with capture_layer(model, layer) as record:
            model(clip)
        if "activation" not in record or not _tensors_of(record["activation"]):
            raise ValueError(f"target layer {layer_name!r} was not called or returned no tensor")
        activation = model.read_layer(layer, record["activation"], clip.shape)
        if score_cam_channels is not None and score_cam_channels < activation.shape[1]:
            varied = activation.flatten(2).var(2).topk(score_cam_channels, dim=1).indices
            index = varied.view(*varied.shape, *(1,) * (activation.dim() - 2))
            activation = torch.gather(activation, 1, index.expand(-1, -1, *activation.shape[2:]))
        channels = activation.shape[1]
        if internal_batch_size is None:
            internal_batch_size = (_SCORE_CAM_CPU_BATCH if clip.device.type == "cpu"
                                   else _SCORE_CAM_ACCELERATOR_BATCH)
        scores = torch.empty(num_clips, channels, device=clip.device, dtype=clip.dtype)
        starts = range(0, channels, internal_batch_size)
        for start in tqdm(starts, desc="Score-CAM", disable=not progress, leave=False):
            stop = min(start + internal_batch_size, channels)
            masks = F.interpolate(activation[:, start:stop], size=size, mode="trilinear",
                                  align_corners=False)  # (N, b, T, H, W)
            low = masks.flatten(2).amin(2).view(num_clips, stop - start, 1, 1, 1)
            high = masks.flatten(2).amax(2).view(num_clips, stop - start, 1, 1, 1)
            span = high - low
            masks = torch.where(span > 0, (masks - low) / torch.where(span > 0, span, 1.0),
                                torch.zeros_like(masks))
            masked = clip.unsqueeze(1) * masks.unsqueeze(2)  # (N, b, C, T, H, W)
            output = model(masked.flatten(0, 1))
            batch_scores = target_fn(output)
            if batch_scores.shape != (num_clips * (stop - start),):
                raise ValueError("the target must return one score per sample")
            scores[:, start:stop] = batch_scores.view(num_clips, stop - start)
        weights = torch.softmax(scores, dim=1).view(num_clips, channels,
                                                    *(1,) * (activation.dim() - 2))
        maps = _combine(weights, activation)
    _record(info, layer_name, activation)
    return _upsample(maps, size)


@attribution_method
def guided_grad_cam(model: nn.Module, clip: torch.Tensor, target: Target, *,
                    target_layer: Optional[Layer] = None, cam_pooling: str = "time",
                    info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Guided Grad-CAM: Grad-CAM upsampled to the clip times guided backpropagation,
    ``(N, C, T, H, W)`` -> ``(N, C, T, H, W)``. Two passes: Grad-CAM's gradient must not see
    the guided ReLU rule."""
    cam_map = grad_cam(model, clip, target, target_layer=target_layer,
                       cam_pooling=cam_pooling, info=info)
    guided = guided_backprop(model, clip, target)
    return cam_map * guided
