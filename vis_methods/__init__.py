"""Attribution methods for video networks.

Every method is a function with the same contract::

    explain(model, clip, target, **options) -> torch.Tensor

- ``model``: an ``nn.Module`` taking ``(N, C, T, H, W)`` and returning ``(N, K)``.
- ``clip``: the model input ``(N, C, T, H, W)`` (already normalised).
- ``target``: class indices ``LongTensor (N,)``, an int, or a callable ``output -> (N,)``
  (see :mod:`vis_methods.targets`).
- returns the raw float attribution ``(N, 1, T, H, W)`` or ``(N, C, T, H, W)`` on the clip's
  grid, not normalised for display. Methods that return several maps per clip (one per
  perturbation area) return ``(N, A, T, H, W)`` and name them in ``info["output_names"]``.
- options are keyword-only; every method accepts ``info: dict | None`` to report
  diagnostics (completeness gap, final loss, mask area ...) for ``summary.csv``.

The registry below maps CLI names to methods. Modules are imported on first use.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from .targets import ClassTarget, Counterfactual, RegressionTarget, as_target_fn  # noqa: F401


@dataclass(frozen=True)
class MethodInfo:
    """Registry entry. ``signed``: the raw map has meaningful negative values."""

    module: str
    function: str
    signed: bool
    uses_layer: bool = False
    description: str = ""

    def resolve(self) -> Callable[..., torch.Tensor]:
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.function)


METHODS: Mapping[str, MethodInfo] = MappingProxyType({
    "grad": MethodInfo("gradient", "grad", True, description="gradient of the target w.r.t. the input"),
    "grad*input": MethodInfo("gradient", "grad_x_input", True, description="gradient times input"),
    "integrated_grad": MethodInfo("gradient", "integrated_grad", True, description="integrated gradients"),
    "smooth_grad": MethodInfo("gradient", "smooth_grad", True, description="SmoothGrad (squared by default)"),
    "guided_backprop": MethodInfo("gradient", "guided_backprop", True, description="guided backpropagation"),
    "deconvnet": MethodInfo("gradient", "deconvnet", True, description="deconvolution network backward rule"),
    "grad_cam": MethodInfo("cam", "grad_cam", False, True, "Grad-CAM"),
    "grad_cam_pp": MethodInfo("cam", "grad_cam_pp", False, True, "Grad-CAM++"),
    "xgrad_cam": MethodInfo("cam", "xgrad_cam", False, True, "XGrad-CAM"),
    "layer_cam": MethodInfo("cam", "layer_cam", False, True, "Layer-CAM"),
    "score_cam": MethodInfo("cam", "score_cam", False, True, "Score-CAM"),
    "cam": MethodInfo("cam", "cam", False, True, "CAM (classifier after global average pooling)"),
    "guided_grad_cam": MethodInfo("cam", "guided_grad_cam", True, True, "Grad-CAM times guided backprop"),
    "2d_ep": MethodInfo("perturbation", "extremal_2d", False, description="extremal perturbation, area per frame"),
    "3d_ep": MethodInfo("perturbation", "extremal_3d", False, description="extremal perturbation, area per clip"),
    "step": MethodInfo("perturbation", "step", False, description="spatio-temporal extremal perturbation"),
    "occlusion": MethodInfo("occlusion", "occlusion", True, description="sliding spatio-temporal occlusion"),
    "rise": MethodInfo("occlusion", "rise", False, description="randomised input sampling (video RISE)"),
    "attention_rollout": MethodInfo("attention", "attention_rollout", False, description="attention rollout (transformers with an attention record)"),
    "attention_gradient": MethodInfo("attention", "attention_gradient", False, description="gradient-weighted attention relevance (Chefer et al. 2021)"),
})


def get_method(name: str) -> Callable[..., torch.Tensor]:
    """The ``explain`` function registered under ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name].resolve()


def safe_name(name: str) -> str:
    """A folder-safe version of a method name (``grad*input`` -> ``grad_x_input``)."""
    return name.replace("*", "_x_").replace("/", "_")


def call_with_options(fn: Callable[..., Any], *args: Any, options: Mapping[str, Any]) -> Any:
    """Call ``fn(*args, **subset)`` with the options ``fn`` accepts; ``None`` values are dropped
    so each method keeps its own defaults."""
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items()
              if v is not None and (accepts_any or k in params)}
    return fn(*args, **kwargs)
