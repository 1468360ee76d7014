"""The boundary between models and methods: :class:`ModelAdapter`.

Every attribution method receives a model adapter with the clip. The adapter wraps the user's
network (``adapter.network``) and knows what a method must not guess from tensor shapes:

- the input layout the network expects (``NCTHW``, ``NTCHW`` or frames folded ``N(TC)HW``);
  methods always work on canonical ``(N, C, T, H, W)`` clips and the adapter converts;
- how the network's output becomes ``(N, K)`` scores (plain tensors, ``.logits``, tuples);
- how a named layer's output maps to the clip layout ``(N, C', T', h', w')`` (a *layer
  reader*: 5-D convolution maps, ``(N*T, C, h, w)`` frame-CNN maps, channels-last
  ``(N, T, h, w, C)`` maps, token sequences with or without class tokens);
- the preprocessing (resize, crop, mean, std, clip length), hence the black clip and other
  baselines in pixel space;
- capabilities such as temporal attention weights.

The adapter is an ``nn.Module`` whose only child is the network, so eval mode, frozen
parameters and hooks reach the network's modules unchanged; layer names are the network's own
(``"layer4"``, not ``"network.layer4"``). :func:`as_adapter` wraps a bare module with sensible
defaults (no normalisation, ``NCTHW``, layer layouts recognised from the shapes, torchvision's
Swin3D and MViT recognised by type), so library users pass any network in one call.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .layouts import INPUT_LAYOUTS

BASELINES = ("black", "zeros", "blur", "static", "static_first")

ClipShape = Tuple[int, int, int, int, int]
# reader(layer_output, clip_shape) -> (N, C', T', h', w'); keeps the autograd graph.
LayerReader = Callable[[Any, ClipShape], torch.Tensor]
OutputFn = Callable[[Any], torch.Tensor]


class LayerLayoutError(ValueError):
    """A layer's output cannot be read as maps over the clip."""


# ------------------------------------------------------------------------- layer readers

def read_conv_layer(output: Any, clip_shape: ClipShape) -> torch.Tensor:
    """The default reader: ``(N, C, T', h, w)`` as is; ``(N*T, C, h, w)`` frame maps (frames
    ordered ``n*T + t``) as ``(N, C, T, h, w)``; ``(N, C, h, w)`` as one time slice. Tuples and
    other shapes are refused: declare a reader for such layers."""
    num_clips, num_frames = clip_shape[0], clip_shape[2]
    if not isinstance(output, torch.Tensor):
        raise LayerLayoutError(
            f"the layer does not return a tensor (it returns {type(output).__name__}); declare a "
            "layer reader for it in the model adapter (e.g. token_reader, read_mvit_block)")
    if output.dim() == 5 and output.shape[0] == num_clips:
        return output
    if output.dim() == 4 and output.shape[0] == num_clips * num_frames and num_frames > 1:
        frames = output.reshape(num_clips, num_frames, *output.shape[1:])
        return frames.transpose(1, 2)
    if output.dim() == 4 and output.shape[0] == num_clips:
        return output.unsqueeze(2)
    if output.dim() == 4 and output.shape[0] == num_clips * num_frames:
        return output.unsqueeze(2)
    raise LayerLayoutError(
        f"cannot read the layer's output {tuple(output.shape)} as maps for {num_clips} clip(s) "
        f"of {num_frames} frames: expected (N, C, T, h, w), (N*T, C, h, w) with frames ordered "
        "n*T+t, or (N, C, h, w); declare a layer reader or choose another target_layer")


def read_channels_last(output: Any, clip_shape: ClipShape) -> torch.Tensor:
    """Channels-last maps ``(N, T', h, w, C)`` (torchvision's Swin3D) -> ``(N, C, T', h, w)``."""
    if not isinstance(output, torch.Tensor) or output.dim() != 5:
        raise LayerLayoutError(f"expected a channels-last (N, T, h, w, C) tensor, got "
                               f"{getattr(output, 'shape', type(output).__name__)}")
    return output.permute(0, 4, 1, 2, 3)


def tokens_to_grid(tokens: torch.Tensor, grid: Sequence[int], prefix_tokens: int = 0
                   ) -> torch.Tensor:
    """Token sequence ``(N, prefix + T'*h*w, C)`` (time-major, then rows, then columns) ->
    ``(N, C, T', h, w)``; the first ``prefix_tokens`` (class tokens) are dropped."""
    t, h, w = (int(g) for g in grid)
    if tokens.dim() != 3 or tokens.shape[1] != prefix_tokens + t * h * w:
        raise LayerLayoutError(
            f"token layer output {tuple(tokens.shape)} does not hold {prefix_tokens} class "
            f"token(s) + a {t} x {h} x {w} grid")
    patches = tokens[:, prefix_tokens:]
    return patches.reshape(tokens.shape[0], t, h, w, tokens.shape[2]).permute(0, 4, 1, 2, 3)


def token_reader(grid: Callable[[ClipShape], Sequence[int]], prefix_tokens: int = 0
                 ) -> LayerReader:
    """A reader for token layers whose ``(T', h, w)`` grid follows from the clip shape."""
    def read(output: Any, clip_shape: ClipShape) -> torch.Tensor:
        if isinstance(output, (tuple, list)):
            output = output[0]
        return tokens_to_grid(output, grid(clip_shape), prefix_tokens)
    return read


def read_mvit_block(output: Any, clip_shape: ClipShape) -> torch.Tensor:
    """torchvision MViT blocks return ``(tokens (N, 1 + T'*h*w, C), [T', h, w])``: the class
    token is dropped and the tokens placed on the grid the block reports."""
    if not (isinstance(output, (tuple, list)) and len(output) == 2
            and isinstance(output[0], torch.Tensor)):
        raise LayerLayoutError("expected an MViT block output (tokens, thw)")
    tokens, thw = output
    return tokens_to_grid(tokens, thw, prefix_tokens=1)


# ---------------------------------------------------------------------------- the adapter

def default_output(output: Any) -> torch.Tensor:
    """Model output -> ``(N, K)`` tensor: a tensor as is, ``.logits`` (Hugging Face), the first
    element of a tuple or list, ``output["logits"]`` of a dict."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot read scores from a model output of type {type(output).__name__}; "
                    "give the model adapter an output_fn")


def _as_triple(values: Sequence[float], name: str) -> Tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"{name} needs 1 or 3 values, got {len(values)}")
    return values


class PixelSpace:
    """RGB in [0, 1] <-> model input, from the ``mean`` and ``std`` of the class using it (the
    adapter and the model spec share these three methods)."""

    mean: Sequence[float]
    std: Sequence[float]

    def _stats(self, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, 1, 1, 1) if like.dim() == 4 else (1, -1, 1, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.as_tensor(self.std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], ``(N, C, T, H, W)`` or ``(C, T, H, W)`` -> model input."""
        mean, std = self._stats(rgb)
        return (rgb - mean) / std

    def denormalize(self, clip: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: model input back to RGB in [0, 1]."""
        mean, std = self._stats(clip)
        return clip * std + mean

    def black_clip(self, like: torch.Tensor) -> torch.Tensor:
        """A black clip (pixel value 0) in model-input space, shaped like ``like``."""
        return self.normalize(torch.zeros_like(like))


class ModelAdapter(PixelSpace, nn.Module):
    """A network with what methods need to know about it (see the module docstring).

    Args:
        network: the ``nn.Module`` to explain.
        name: shown in titles and ``summary.csv``.
        mean, std: per-channel normalisation of RGB in [0, 1]: ``(rgb - mean) / std``.
        resize, crop, clip_length: preprocessing of clips read from disk (``None``: not known).
        input_layout: what the network takes: ``"NCTHW"`` (default), ``"NTCHW"`` or
            ``"N(TC)HW"`` (frames folded into channels, time-major).
        class_names: output order; empty for regression models or when unknown.
        task: ``"classification"`` or ``"regression"``.
        target_layer: default layer for the CAM methods (dotted name in the network).
        layer_readers: layer name -> reader; layers not listed use ``default_reader``.
        default_reader: reader for every other layer (default :func:`read_conv_layer`).
        output_fn: network output -> ``(N, K)`` (default :func:`default_output`).
    """

    def __init__(self, network: nn.Module, *, name: str = "model",
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 resize: Optional[int] = None, crop: Optional[int] = None,
                 clip_length: Optional[int] = None, input_layout: str = "NCTHW",
                 class_names: Sequence[str] = (), task: str = "classification",
                 target_layer: Optional[str] = None,
                 layer_readers: Optional[Mapping[str, LayerReader]] = None,
                 default_reader: LayerReader = read_conv_layer,
                 output_fn: Optional[OutputFn] = None):
        super().__init__()
        if isinstance(network, ModelAdapter):
            raise TypeError("the network is already a ModelAdapter")
        if input_layout not in INPUT_LAYOUTS:
            raise ValueError(f"unknown input layout {input_layout!r}; choose from "
                             f"{', '.join(INPUT_LAYOUTS)}")
        if task not in ("classification", "regression"):
            raise ValueError(f"unknown task {task!r}")
        std = _as_triple(std, "std")
        if any(s == 0 for s in std):
            raise ValueError("std values must not be 0")
        self.network = network
        self.name = name
        self.mean = _as_triple(mean, "mean")
        self.std = std
        self.resize, self.crop, self.clip_length = resize, crop, clip_length
        self.input_layout = input_layout
        self.class_names = tuple(class_names)
        self.task = task
        self.target_layer = target_layer
        self.layer_readers = dict(layer_readers or {})
        self.default_reader = default_reader
        self.output_fn = output_fn or default_output

    # ---- forward
    def to_network_layout(self, clip: torch.Tensor) -> torch.Tensor:
        """Canonical ``(N, C, T, H, W)`` -> the layout the network takes."""
        if self.input_layout == "NCTHW":
            return clip
        frames = clip.transpose(1, 2)                        # (N, T, C, H, W)
        if self.input_layout == "NTCHW":
            return frames
        return frames.flatten(1, 2)                          # (N, T*C, H, W), time-major

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dim() != 5:
            raise ValueError(f"clips are (N, C, T, H, W), got shape {tuple(clip.shape)}")
        return self.output_fn(self.network(self.to_network_layout(clip)))

    # ---- layers
    def get_submodule(self, target: str) -> nn.Module:
        """Layer names are the network's own; ``""`` is the network itself."""
        if target == "":
            return self.network
        if target.startswith("network."):
            target = target[len("network."):]
        return self.network.get_submodule(target)

    def layer(self, layer: Union[str, nn.Module, None] = None) -> nn.Module:
        """The module named ``layer`` (dotted path), the module itself, or the default layer."""
        if isinstance(layer, nn.Module):
            return layer
        layer = layer if layer is not None else self.target_layer
        if layer is None:
            return default_target_layer(self.network)
        try:
            return self.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in self.network.named_modules() if n]
            hint = ", ".join(names[-8:])
            raise ValueError(f"model has no layer {layer!r}; last layers are: {hint}") from None

    def layer_name(self, module: nn.Module) -> str:
        for name, candidate in self.network.named_modules():
            if candidate is module:
                return name or "<model>"
        return type(module).__name__

    def read_layer(self, layer: Union[str, nn.Module], output: Any,
                   clip_shape: Sequence[int]) -> torch.Tensor:
        """A layer's raw output as ``(N, C', T', h', w')`` maps over the clip."""
        name = layer if isinstance(layer, str) else self.layer_name(layer)
        reader = self.layer_readers.get(name, self.default_reader)
        return reader(output, tuple(int(s) for s in clip_shape))

    # ---- pixel space: normalize / denormalize / black_clip come from PixelSpace
    def baseline(self, kind: Union[str, torch.Tensor], clip: torch.Tensor,
                 blur_sigma: Optional[float] = None) -> torch.Tensor:
        """A reference clip for path and perturbation methods, in model-input space:

        - ``"black"``: pixel value 0; ``"zeros"``: zeros in model-input space (the
          normalisation's mean colour);
        - ``"blur"``: each frame Gaussian-blurred (sigma ``blur_sigma``, default 10 % of the
          shorter side);
        - ``"static"`` / ``"static_first"``: the clip's mean frame / first frame repeated over
          time, so only what changes over time differs from the clip;
        - a tensor: broadcast to the clip's shape.
        """
        if isinstance(kind, torch.Tensor):
            return kind.detach().to(device=clip.device, dtype=clip.dtype).expand_as(clip)
        clip = clip.detach()
        if kind == "black":
            return self.black_clip(clip)
        if kind == "zeros":
            return torch.zeros_like(clip)
        if kind == "blur":
            sigma = 0.1 * min(clip.shape[-2:]) if blur_sigma is None else float(blur_sigma)
            return blur_frames(clip, sigma, truncate=3.0) if sigma > 0 else clip.clone()
        if kind == "static":
            return clip.mean(dim=2, keepdim=True).expand_as(clip).clone()
        if kind == "static_first":
            return clip[:, :, :1].expand_as(clip).clone()
        raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)} "
                         "or pass a tensor")

    # ---- capabilities
    @property
    def has_temporal_attention(self) -> bool:
        return callable(getattr(self.network, "temporal_attention", None))

    def temporal_attention(self, clip: torch.Tensor) -> Optional[torch.Tensor]:
        """The network's own attention over time ``(N, T')``, or ``None`` if it has none."""
        if not self.has_temporal_attention:
            return None
        return self.network.temporal_attention(self.to_network_layout(clip))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_layout={self.input_layout!r}"


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last convolution of ``model`` (in registration order): the fallback CAM layer."""
    convolutions = [m for m in model.modules()
                    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not convolutions:
        raise ValueError("the model has no convolution; pass target_layer explicitly")
    return convolutions[-1]


def _known_readers(network: nn.Module) -> dict:
    """Layouts of torchvision's video transformers, recognised by type."""
    from torchvision.models.video import mvit as tv_mvit
    from torchvision.models.video import swin_transformer as tv_swin

    if isinstance(network, tv_swin.SwinTransformer3d):
        # Every 5-D activation inside Swin3D is channels-last (N, T, h, w, C).
        return {"default_reader": read_channels_last, "target_layer": "norm"}
    if isinstance(network, tv_mvit.MViT):
        # The head reads the class token only, so the last block's patch tokens receive no
        # gradient: the default CAM layer is the block before it.
        readers = {f"blocks.{i}": read_mvit_block for i in range(len(network.blocks))}
        return {"layer_readers": readers,
                "target_layer": f"blocks.{max(0, len(network.blocks) - 2)}"}
    return {}


def as_adapter(model: nn.Module, **defaults: Any) -> ModelAdapter:
    """``model`` itself if it is a :class:`ModelAdapter`, else a new adapter around it with
    ``defaults`` (see :class:`ModelAdapter`) and the layouts of known architectures."""
    if isinstance(model, ModelAdapter):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    settings = {**_known_readers(model), **defaults}
    return ModelAdapter(model, **settings)


# ------------------------------------------------------------------------ one Gaussian blur

def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype,
                     truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` cut at ``truncate`` sigma."""
    radius = max(1, math.ceil(truncate * sigma))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def blur_frames(clip: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Blur every frame of ``clip (N, C, T, H, W)`` spatially with a Gaussian of std ``sigma``
    pixels cut at ``truncate`` sigma (separable, replicated borders; frames and channels are
    not mixed). ``sigma <= 0`` returns the clip unchanged.

    The methods' one blur: the blur baseline, the extremal perturbations' pyramid and
    occlusion's fill. (The deletion/insertion metrics in :mod:`utils.evaluation.metrics` blur on the CPU
    with OpenCV instead; see the comment there.)"""
    if sigma <= 0:
        return clip
    n, c, t, h, w = clip.shape
    kernel = _gaussian_kernel(sigma, clip.device, clip.dtype, truncate)
    radius = kernel.numel() // 2
    frames = clip.transpose(1, 2).reshape(n * t * c, 1, h, w)
    # Replicate padding cannot exceed the frame; a wider kernel only sees the border value.
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    if pad_h or pad_w:
        frames = F.pad(frames, (pad_w, pad_w, pad_h, pad_h), mode="replicate")
    k_h = kernel[radius - pad_h: radius + pad_h + 1]
    k_w = kernel[radius - pad_w: radius + pad_w + 1]
    frames = F.conv2d(frames, (k_h / k_h.sum()).view(1, 1, -1, 1))
    frames = F.conv2d(frames, (k_w / k_w.sum()).view(1, 1, 1, -1))
    return frames.view(n, t, c, h, w).transpose(1, 2).contiguous()
