"""torchvision's Kinetics-400 video transformers (MViT v1/v2, Video Swin) and their layer readers.

Weights come through torchvision's weights API like :mod:`models.torchvision_models` (same
offline rule and one-line :class:`WeightsUnavailableError`). Resize, crop, mean, std come from
each weights entry's own transforms; the clip length is the ``clip_len`` the weights were
evaluated with (16 for MViT, 32 for Video Swin).

Transformer layers do not output ``(N, C, T, h, w)`` maps, so every spec comes with *layer
readers*: ``reader(layer_output, clip_shape) -> (N, C', T', h', w')`` for a named layer, where
``layer_output`` is the raw output of that module's forward (a tensor or a tuple) and
``clip_shape`` the input ``(N, C, T, H, W)``. Readers only reshape, permute and slice, so they
keep the autograd graph and apply to a gradient of the same structure as well.

Default CAM layers (patch tokens there must still receive gradients):

- Video Swin (``swin3d_*``): ``norm``, ``(N, T', h', w', C)`` channels-last, average-pooled by
  the head; read with :func:`read_channels_last`. Grid ``T/2 x H/32 x W/32``.
- MViT (``mvit_*``): the head reads the class token only, so after the last block the patch
  tokens receive no gradient. The default is the second-to-last block (``blocks.14``), whose
  output ``(x, thw)`` feeds the last block's attention and already has the final grid
  ``T/2 x H/32 x W/32``; :func:`read_mvit_block` uses the ``thw`` the block returns and drops
  the class token. ``norm`` ``(N, 1 + L, C)`` can be read with :func:`read_mvit_tokens` (the
  grid is derived from the clip size and the model's total stride ``(2, 32, 32)``), though only
  its class token carries gradient.
"""
from __future__ import annotations

import os
import re
from functools import partial
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence, Tuple

import torch
from torch import nn
from torchvision.models import video as tv_video
from torchvision.models._api import WeightsEnum

from .adapter import read_channels_last, read_conv_layer, read_mvit_block, tokens_to_grid
from .registry import ModelSpec
from .torchvision_models import load_torchvision

# MViT v1-B and v2-S: patch embedding stride (2, 4, 4), then three q-poolings of 2 in space.
MVIT_STRIDE = (2, 32, 32)


# ------------------------------------------------------------------------------ readers
# Swin3D's channels-last maps and MViT's block tuples are read by the adapter's own readers.
_tokens_to_grid = tokens_to_grid


def read_mvit_tokens(layer_output: Any, clip_shape: Tuple[int, ...],
                     stride: Sequence[int] = MVIT_STRIDE) -> torch.Tensor:
    """MViT ``norm`` (or any ``(N, 1 + L, C)`` after the last pooling) -> ``(N, C, T', h', w')``
    with the grid ``T // 2, H // 32, W // 32`` (``stride``) of the clip."""
    tokens = layer_output[0] if isinstance(layer_output, tuple) else layer_output
    grid = [size // s for size, s in zip(clip_shape[2:], stride)]
    return _tokens_to_grid(tokens, grid, 1)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    if isinstance(value, tuple):
        return "a tuple of (" + ", ".join(_describe(v) for v in value) + ")"
    return type(value).__name__


def logits_output(output: Any) -> torch.Tensor:
    """``output_fn`` of models that already return ``(N, K)`` logits."""
    return output


# -------------------------------------------------------------------------------- specs
# Layer readers per model family: every MViT block (``blocks.<i>``) and its ``norm``, every
# Video Swin stage and its ``norm``.
_MVIT_READERS = MappingProxyType({**{f"blocks.{i}": read_mvit_block for i in range(16)},
                                  "norm": read_mvit_tokens})
_SWIN_READERS = MappingProxyType({**{f"features.{i}": read_channels_last for i in range(7)},
                                  "norm": read_channels_last})
_READERS_OF = MappingProxyType({"mvit": _MVIT_READERS, "swin3d": _SWIN_READERS})

def _clip_length(weights: WeightsEnum) -> int:
    """The ``clip_len`` the weights were evaluated with (their docs), else the minimum."""
    found = re.search(r"clip_len=(\d+)", weights.meta.get("_docs", ""))
    return int(found.group(1)) if found else int(weights.meta["min_temporal_size"])


def _spec(name: str, builder: Callable[..., nn.Module], weights: WeightsEnum, *,
          target_layer: str, description: str) -> ModelSpec:
    transform = weights.transforms.keywords       # partial(VideoClassification, ...)
    categories = tuple(weights.meta["categories"])
    return ModelSpec(
        name=name,
        load=partial(load_torchvision, builder, weights),
        class_names=lambda _dataset: list(categories),
        clip_length=_clip_length(weights),
        resize=int(transform["resize_size"][0]),
        crop=int(transform["crop_size"][0]),
        mean=tuple(transform["mean"]),
        std=tuple(transform["std"]),
        target_layer=target_layer,
        description=description,
        layer_readers=_READERS_OF[name.split("_")[0]],
        default_reader=read_channels_last if name.startswith("swin") else read_conv_layer,
        output_fn=logits_output,
        weights_id=os.path.basename(weights.url),
    )


MVIT_V1_B = _spec("mvit_v1_b", tv_video.mvit_v1_b, tv_video.MViT_V1_B_Weights.KINETICS400_V1,
                  target_layer="blocks.14",
                  description="MViT v1-B, Kinetics-400 (torchvision; 16x224x224 clips only)")
MVIT_V2_S = _spec("mvit_v2_s", tv_video.mvit_v2_s, tv_video.MViT_V2_S_Weights.KINETICS400_V1,
                  target_layer="blocks.14",
                  description="MViT v2-S, Kinetics-400 (torchvision; 16x224x224 clips only)")
SWIN3D_T = _spec("swin3d_t", tv_video.swin3d_t, tv_video.Swin3D_T_Weights.KINETICS400_V1,
                 target_layer="norm", description="Video Swin-T, Kinetics-400 (torchvision)")
SWIN3D_S = _spec("swin3d_s", tv_video.swin3d_s, tv_video.Swin3D_S_Weights.KINETICS400_V1,
                 target_layer="norm", description="Video Swin-S, Kinetics-400 (torchvision)")
SWIN3D_B = _spec("swin3d_b", tv_video.swin3d_b, tv_video.Swin3D_B_Weights.KINETICS400_V1,
                 target_layer="norm", description="Video Swin-B, Kinetics-400 (torchvision)")


LAYER_READERS: Mapping[str, Mapping[str, Callable[[Any, tuple], torch.Tensor]]] = MappingProxyType({
    name: _READERS_OF[name.split("_")[0]]
    for name in ("mvit_v1_b", "mvit_v2_s", "swin3d_t", "swin3d_s", "swin3d_b")})
OUTPUT_FN = logits_output
INPUT_LAYOUT = "NCTHW"
