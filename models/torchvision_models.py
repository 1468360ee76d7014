"""torchvision's Kinetics-400 video networks through torchvision's weights API.

Weights come from torchvision's download cache (``$TORCH_HOME/hub/checkpoints``). Offline, or with
``VIDEOVISUAL_OFFLINE=1``, a missing file ends in :class:`WeightsUnavailableError` naming the file,
the URL and the folder to put it in; ``--weights FILE`` loads a local state dict instead.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torchvision.models import video as tv_video
from torchvision.models._api import WeightsEnum

from .registry import ModelSpec, WeightsUnavailableError

_KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
_KINETICS_STD = (0.22803, 0.22145, 0.216989)


def load_state_dict_file(model: nn.Module, weights_file: Path) -> nn.Module:
    """Load a local state dict (a plain dict of tensors, optionally under ``"state_dict"``)."""
    from .user import load_tensors
    weights_file = Path(weights_file)
    if weights_file.is_dir():
        raise WeightsUnavailableError(f"weights file {weights_file} is a folder; name the "
                                      "checkpoint file")
    if not weights_file.is_file():
        raise WeightsUnavailableError(f"weights file {weights_file} does not exist")
    state = load_tensors(weights_file)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise WeightsUnavailableError(
            f"weights file {weights_file} does not fit this model: {first}") from None
    return model


def load_torchvision(builder: Callable[..., nn.Module], weights: WeightsEnum,
                      weights_file: Optional[Path], pretrain_dataset: str) -> nn.Module:
    if pretrain_dataset != "kinetics":
        raise WeightsUnavailableError(
            f"{builder.__name__} has weights for 'kinetics' only, not {pretrain_dataset!r}")
    if weights_file is not None:
        return load_state_dict_file(builder(weights=None), weights_file).eval()
    file_name = os.path.basename(weights.url)
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache_dir / file_name
    help_text = (f"weights {file_name} for {builder.__name__} are not in {cache_dir} and cannot be "
                 f"downloaded here; download {weights.url} into {cache_dir} "
                 f"or pass --weights FILE")
    if not cached.is_file() and os.environ.get("VIDEOVISUAL_OFFLINE") == "1":
        raise WeightsUnavailableError(help_text)
    try:
        model = builder(weights=weights)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a broken file a RuntimeError
        raise WeightsUnavailableError(f"{help_text} ({type(error).__name__}: {error})") from None
    return model.eval()


def _spec(name: str, builder: Callable[..., nn.Module], weights: WeightsEnum, *, resize: int,
          crop: int, target_layer: str, description: str) -> ModelSpec:
    categories = tuple(weights.meta["categories"])
    return ModelSpec(
        name=name,
        load=partial(load_torchvision, builder, weights),
        class_names=lambda _dataset: list(categories),
        clip_length=16,
        resize=resize,
        crop=crop,
        mean=_KINETICS_MEAN,
        std=_KINETICS_STD,
        target_layer=target_layer,
        description=description,
    )


R2PLUS1D = _spec("r2plus1d", tv_video.r2plus1d_18, tv_video.R2Plus1D_18_Weights.KINETICS400_V1,
                 resize=128, crop=112, target_layer="layer4",
                 description="R(2+1)D-18, Kinetics-400 (torchvision)")
R3D = _spec("r3d", tv_video.r3d_18, tv_video.R3D_18_Weights.KINETICS400_V1,
            resize=128, crop=112, target_layer="layer4",
            description="R3D-18, Kinetics-400 (torchvision)")
MC3 = _spec("mc3", tv_video.mc3_18, tv_video.MC3_18_Weights.KINETICS400_V1,
            resize=128, crop=112, target_layer="layer4",
            description="MC3-18, Kinetics-400 (torchvision)")
S3D = _spec("s3d", tv_video.s3d, tv_video.S3D_Weights.KINETICS400_V1,
            resize=256, crop=224, target_layer="features.15",
            description="S3D, Kinetics-400 (torchvision)")
