"""Hugging Face video classifiers (VideoMAE, TimeSformer, ViViT) from a local folder or the
local Hugging Face cache, offline.

``load_hf_model(path_or_name)`` returns ``(model, spec)``: the model is a
:class:`HFVideoClassifier`, an ``nn.Module`` taking ``(N, C, T, H, W)`` clips (the project's
layout) and returning ``(N, K)`` logits; the Hugging Face network is its ``hf`` attribute, which
takes ``pixel_values (N, T, C, H, W)`` and returns an output object whose ``logits`` are the
scores (:func:`hf_logits`). Files are only ever read locally (``local_files_only=True``), so
``HF_HUB_OFFLINE`` is honoured as well; a missing model is one
:class:`~models.registry.WeightsUnavailableError` line.

The spec's class names come from ``config.id2label``; its preprocessing from the model's
``preprocessor_config.json`` (or ``video_preprocessor_config.json``): ``size`` (shortest edge or
height), ``crop_size``, ``image_mean`` / ``image_std``, with the rescale step folded into the
mean and std (ViViT maps pixels to ``[-1, 1]`` before normalising); the clip length is
``config.num_frames``. Without a preprocessor file, resize = crop = ``config.image_size`` and the
ImageNet mean/std are used, and the spec's description says so.

Token layouts (``clip_shape`` is the ``(N, C, T, H, W)`` clip) and readers:

- VideoMAE: no class token; tubelets ``tubelet_size x patch x patch``; ``(N, T'h'w', C)``
  ordered ``(t, y, x)``. Default layer: the last encoder layer's output (the head averages all
  tokens, so every token receives gradient).
- ViViT: a class token, then tubelets ``tubelet_size = [t, h, w]`` ordered ``(t, y, x)``.
  Default layer: the last layer's ``layernorm_before`` (the input of its attention: the head
  reads the class token only, so after the last attention patch tokens get no gradient).
- TimeSformer (divided space-time): a class token, then ``h'w' x T`` tokens ordered
  ``(y, x, t)`` (time fastest). Default layer: the last layer's ``layernorm_before``, the input
  of its spatial attention, shaped ``(N*T, 1 + h'w', C)`` (rows ``n*T + t``).
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .registry import ModelSpec, WeightsUnavailableError
from .adapter import tokens_to_grid as _tokens_to_grid

SUPPORTED_TYPES = ("videomae", "timesformer", "vivit")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")


# ------------------------------------------------------------------------------ readers
def hf_logits(output: Any) -> torch.Tensor:
    """``output_fn`` of a Hugging Face classifier: its output object's ``logits`` ``(N, K)``."""
    return output.logits


def _first_tensor(layer_output: Any) -> torch.Tensor:
    tokens = layer_output[0] if isinstance(layer_output, (tuple, list)) else layer_output
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        raise ValueError("expected a token sequence (N, L, C) as the layer output")
    return tokens


def read_tubelet_tokens(layer_output: Any, clip_shape: Tuple[int, ...], *,
                        tubelet: Sequence[int], prefix_tokens: int) -> torch.Tensor:
    """Tokens ``(N, prefix + T'h'w', C)`` ordered ``(t, y, x)`` (VideoMAE: ``prefix_tokens=0``;
    ViViT: 1) -> ``(N, C, T', h', w')`` with ``T' = T // tubelet[0]``, ``h' = H // tubelet[1]``,
    ``w' = W // tubelet[2]``; the class token is dropped."""
    grid = [size // step for size, step in zip(clip_shape[2:], tubelet)]
    return _tokens_to_grid(_first_tensor(layer_output), grid, prefix_tokens)


def read_timesformer_tokens(layer_output: Any, clip_shape: Tuple[int, ...], *,
                            patch: int) -> torch.Tensor:
    """TimeSformer layer output ``(N, 1 + h'w'T, C)`` ordered ``(y, x, t)`` ->
    ``(N, C, T, h', w')``, class token dropped."""
    tokens = _first_tensor(layer_output)
    n, length, channels = tokens.shape
    t, h, w = clip_shape[2], clip_shape[3] // patch, clip_shape[4] // patch
    if length != 1 + h * w * t:
        raise ValueError(f"{length} tokens do not make a class token plus {h}x{w}x{t} tokens")
    return tokens[:, 1:].reshape(n, h, w, t, channels).permute(0, 4, 3, 1, 2)


def read_timesformer_spatial(layer_output: Any, clip_shape: Tuple[int, ...], *,
                             patch: int) -> torch.Tensor:
    """Input of a TimeSformer spatial attention (``layernorm_before`` of a divided layer):
    ``(N*T, 1 + h'w', C)``, rows ``n*T + t``, tokens ``(y, x)`` -> ``(N, C, T, h', w')``,
    the per-frame class-token copies dropped."""
    tokens = _first_tensor(layer_output)
    n, t = clip_shape[0], clip_shape[2]
    h, w = clip_shape[3] // patch, clip_shape[4] // patch
    if tokens.shape[0] != n * t or tokens.shape[1] != 1 + h * w:
        raise ValueError(f"layer output {tuple(tokens.shape)} is not ({n}*{t}, 1 + {h}*{w}, C)")
    return tokens[:, 1:].reshape(n, t, h, w, tokens.shape[-1]).permute(0, 4, 1, 2, 3)


# ------------------------------------------------------------------------------- wrapper
class HFVideoClassifier(nn.Module):
    """A Hugging Face video classifier as a project model: ``(N, C, T, H, W)`` -> ``(N, K)``.

    ``hf`` is the wrapped network (``pixel_values (N, T, C, H, W)``). Layer names of the spec
    start with ``hf.``. :meth:`attention_record` gives :mod:`vis_methods.attention` the
    attention probabilities (kept in the autograd graph).
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        model_type = getattr(hf_model.config, "model_type", None)
        if model_type not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported Hugging Face model type {model_type!r}; "
                             f"supported: {', '.join(SUPPORTED_TYPES)}")
        self.hf = hf_model
        self.model_type = model_type

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return hf_logits(self.hf(pixel_values=clip.transpose(1, 2)))

    def token_grid(self, clip_shape: Tuple[int, ...]) -> Tuple[int, int, int]:
        """The patch-token grid ``(T', h', w')`` of a clip ``(N, C, T, H, W)``."""
        config = self.hf.config
        t, h, w = clip_shape[2:]
        if self.model_type == "videomae":
            steps = (config.tubelet_size, config.patch_size, config.patch_size)
        elif self.model_type == "vivit":
            steps = tuple(config.tubelet_size)
        else:
            steps = (1, config.patch_size, config.patch_size)
        return t // steps[0], h // steps[1], w // steps[2]

    def attention_record(self, clip: torch.Tensor) -> dict:
        """Logits and attention probabilities, see :mod:`vis_methods.attention`.

        VideoMAE / ViViT: ``structure="joint"``, one ``(N, heads, L, L)`` per layer.
        TimeSformer (divided space-time): per layer ``{"temporal": (N*h'w', heads, T, T),
        "spatial": (N*T, heads, 1 + h'w', 1 + h'w')}``; the temporal probabilities are not part
        of Hugging Face's ``attentions``, so they are recorded by hooks (removed on exit).
        """
        pixel_values = clip.transpose(1, 2)
        grid = self.token_grid(clip.shape)
        config = self.hf.config
        if self.model_type != "timesformer" or config.attention_type != "divided_space_time":
            if self.model_type == "timesformer" and config.attention_type != "joint_space_time":
                raise ValueError(f"TimeSformer attention_type {config.attention_type!r} has no "
                                 "attention rollout here (only divided_space_time and "
                                 "joint_space_time)")
            output = self.hf(pixel_values=pixel_values, output_attentions=True)
            attentions = list(output.attentions)
            if any(a is None for a in attentions):
                raise ValueError("the model returned no attention probabilities; load it with "
                                 "attn_implementation='eager'")
            return {"output": output.logits, "attentions": attentions, "grid": grid,
                    "prefix_tokens": 0 if self.model_type == "videomae" else 1,
                    "structure": "joint",
                    "token_order": "cellt" if self.model_type == "timesformer" else "tcell"}
        temporal = []
        handles = []

        def ask_for_probabilities(_module, args, kwargs):
            return args, {**kwargs, "output_attentions": True}

        def record(_module, _args, output):
            temporal.append(output[1])

        try:
            for layer in self.hf.get_submodule(encoder_layers_name(self.hf)):
                handles.append(layer.temporal_attention.register_forward_pre_hook(
                    ask_for_probabilities, with_kwargs=True))
                handles.append(layer.temporal_attention.register_forward_hook(record))
            output = self.hf(pixel_values=pixel_values, output_attentions=True)
        finally:
            for handle in handles:
                handle.remove()
        attentions = [{"temporal": t, "spatial": s} for t, s in zip(temporal, output.attentions)]
        return {"output": output.logits, "attentions": attentions, "grid": grid,
                "prefix_tokens": 1, "structure": "divided", "token_order": "cellt"}


# -------------------------------------------------------------------------------- loader
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def _missing(name: str, reason: str = "") -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"Hugging Face model {name!r} not found: it must be in a local folder or the Hugging "
        f"Face cache (files are read offline, local_files_only=True){reason}")


def _read_processor_config(path_or_name: str) -> Optional[dict]:
    from transformers.utils import cached_file
    for file_name in _PROCESSOR_FILES:
        local = Path(path_or_name) / file_name
        if local.is_file():
            return json.loads(local.read_text())
        try:
            found = cached_file(path_or_name, file_name, local_files_only=True,
                                _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            found = None
        if found:
            return json.loads(Path(found).read_text())
    return None


def _side(size: Union[dict, int, Sequence[int], None], default: int) -> int:
    if size is None:
        return default
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in size:
                return int(size[key])
        raise ValueError(f"cannot read a frame size from {size}")
    return int(size[0])


def preprocessing_from(processor: Optional[dict], config: Any) -> dict:
    """``resize``, ``crop``, ``mean``, ``std`` (applied to RGB in ``[0, 1]``) of a model, from
    its preprocessor config (``None``: the config's image size and the ImageNet statistics)."""
    image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    if processor is None:
        return {"resize": image_size, "crop": image_size, "mean": _IMAGENET_MEAN,
                "std": _IMAGENET_STD, "source": "defaults (no preprocessor config)"}
    crop = _side(processor.get("crop_size"), image_size) if processor.get(
        "do_center_crop", True) else _side(processor.get("size"), image_size)
    resize = _side(processor.get("size"), crop) if processor.get("do_resize", True) else crop
    if processor.get("do_normalize", True):
        mean = tuple(float(m) for m in processor.get("image_mean", _IMAGENET_MEAN))
        std = tuple(float(s) for s in processor.get("image_std", _IMAGENET_STD))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    # Model input = (255 * rgb * factor - offset - mean) / std = (rgb - mean') / std'.
    factor = float(processor.get("rescale_factor", 1 / 255)) if processor.get(
        "do_rescale", True) else 1 / 255
    offset = 1.0 if processor.get("offset", False) else 0.0
    scale = 255.0 * factor
    return {"resize": resize, "crop": crop,
            "mean": tuple((m + offset) / scale for m in mean),
            "std": tuple(s / scale for s in std), "source": "preprocessor config"}


def encoder_layers_name(hf_model: nn.Module) -> str:
    """Dotted name of the encoder's layer list (``videomae.encoder.layer``, ``vivit.layers``
    ...), which differs between models and Hugging Face versions."""
    model_type = hf_model.config.model_type
    for name in (f"{model_type}.encoder.layer", f"{model_type}.layers",
                 f"{model_type}.encoder.layers"):
        try:
            if isinstance(hf_model.get_submodule(name), nn.ModuleList):
                return name
        except AttributeError:
            continue
    raise ValueError(f"cannot find the encoder layers of this {model_type} model")


def default_target_layer(hf_model: nn.Module) -> str:
    """The default CAM layer (a name inside :class:`HFVideoClassifier`, so with ``hf.``)."""
    last = f"hf.{encoder_layers_name(hf_model)}.{hf_model.config.num_hidden_layers - 1}"
    return last if hf_model.config.model_type == "videomae" else f"{last}.layernorm_before"


def layer_readers(hf_model: nn.Module) -> dict:
    """``layer name -> reader`` for every encoder layer's output and ``layernorm_before``
    (names inside :class:`HFVideoClassifier`)."""
    config = hf_model.config
    model_type = config.model_type
    readers = {}
    for i in range(config.num_hidden_layers):
        base = f"hf.{encoder_layers_name(hf_model)}.{i}"
        if model_type == "videomae":
            reader = partial(read_tubelet_tokens, prefix_tokens=0, tubelet=(
                config.tubelet_size, config.patch_size, config.patch_size))
            readers[base] = readers[f"{base}.layernorm_before"] = reader
        elif model_type == "vivit":
            reader = partial(read_tubelet_tokens, prefix_tokens=1,
                             tubelet=tuple(config.tubelet_size))
            readers[base] = readers[f"{base}.layernorm_before"] = reader
        else:
            readers[base] = partial(read_timesformer_tokens, patch=config.patch_size)
            readers[f"{base}.layernorm_before"] = (
                partial(read_timesformer_spatial, patch=config.patch_size)
                if config.attention_type == "divided_space_time"
                else partial(read_timesformer_tokens, patch=config.patch_size))
    return readers


def load_hf_model(path_or_name: Union[str, Path]) -> Tuple[HFVideoClassifier, ModelSpec]:
    """Load a Hugging Face video classifier offline; returns ``(model, spec)``, the model in
    eval mode on the CPU with eager attention (so attention probabilities can be returned)."""
    from transformers import AutoConfig, AutoModelForVideoClassification
    name = str(path_or_name)
    folder = Path(name).expanduser()
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - a missing model or a damaged config: one line
        if (folder / "config.json").is_file():
            raise WeightsUnavailableError(
                f"Hugging Face model {name!r}: {folder / 'config.json'} is not a usable config: "
                f"{_one_line(error)}") from None
        raise _missing(name, f" ({type(error).__name__})") from None
    if config.model_type not in SUPPORTED_TYPES:
        raise ValueError(f"{name}: model type {config.model_type!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_TYPES)}")
    try:
        hf_model = AutoModelForVideoClassification.from_pretrained(
            name, local_files_only=True, attn_implementation="eager")
    except Exception as error:  # noqa: BLE001 - e.g. safetensors' SafetensorError: one line
        weights = [folder / f for f in _WEIGHT_FILES if (folder / f).is_file()]
        if weights:
            raise WeightsUnavailableError(
                f"Hugging Face model {name!r}: cannot read its weights {weights[0]}: "
                f"{type(error).__name__}: {_one_line(error)}") from None
        raise _missing(name, f" (weights: {type(error).__name__})") from None
    model = HFVideoClassifier(hf_model.eval()).eval()
    processing = preprocessing_from(_read_processor_config(name), config)
    labels = [config.id2label[i] for i in sorted(config.id2label)]
    spec = ModelSpec(
        name=f"hf:{name}",
        load=lambda _weights_file=None, _dataset=None: model,
        class_names=lambda _dataset=None: list(labels),
        clip_length=int(config.num_frames),
        resize=int(processing["resize"]),
        crop=int(processing["crop"]),
        mean=processing["mean"],
        std=processing["std"],
        target_layer=default_target_layer(hf_model),
        layer_readers=layer_readers(hf_model),
        weights_id=name,
        description=f"Hugging Face {config.model_type} from {os.path.basename(name) or name} "
                    f"(preprocessing: {processing['source']})",
    )
    return model, spec
