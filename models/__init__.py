"""Model registry: ``--model`` names mapped to :class:`~models.registry.ModelSpec` entries.

Specs live in their own modules and are imported on first use, so one model's optional
dependency never breaks another.
"""
from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .registry import ModelSpec

# name -> (module, attribute holding the ModelSpec)
_SPEC_LOCATIONS: Mapping[str, tuple] = MappingProxyType({
    "i3d": ("i3d", "SPEC"),
    "r2plus1d": ("torchvision_models", "R2PLUS1D"),
    "r3d": ("torchvision_models", "R3D"),
    "mc3": ("torchvision_models", "MC3"),
    "s3d": ("torchvision_models", "S3D"),
    "tsm": ("tsm", "SPEC"),
    "resnet18_lstm": ("cnn_lstm", "RESNET18_LSTM"),
    "resnet18_lstm_attn": ("cnn_lstm", "RESNET18_LSTM_ATTN"),
    "vgg16_lstm": ("cnn_lstm", "VGG16_LSTM"),
    "vgg16_lstm_attn": ("cnn_lstm", "VGG16_LSTM_ATTN"),
    "demo_3dcnn": ("demo", "DEMO_3DCNN"),
    "demo_lstm": ("demo", "DEMO_LSTM"),
    "demo_lstm_attn": ("demo", "DEMO_LSTM_ATTN"),
    "demo_regression": ("demo", "DEMO_REGRESSION"),
    "demo_transformer": ("demo_transformer", "DEMO_TRANSFORMER"),
    "mvit_v1_b": ("transformers", "MVIT_V1_B"),
    "mvit_v2_s": ("transformers", "MVIT_V2_S"),
    "swin3d_t": ("transformers", "SWIN3D_T"),
    "swin3d_s": ("transformers", "SWIN3D_S"),
    "swin3d_b": ("transformers", "SWIN3D_B"),
})

MODEL_NAMES = tuple(_SPEC_LOCATIONS)


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered under ``name``."""
    if name not in _SPEC_LOCATIONS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    module, attribute = _SPEC_LOCATIONS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


def __getattr__(name: str) -> Any:
    # The registry (and torch with it) loads on first use, so that the command line's parser and
    # its errors run without torch.
    if name in ("ModelSpec", "WeightsUnavailableError"):
        from . import registry
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
