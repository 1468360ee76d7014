"""Attribution methods for video networks.

Every method is a function with the same contract::

    method(model, clip, target, **options, info=None, progress=False) -> torch.Tensor

- ``model``: a :class:`~models.adapter.ModelAdapter`, or any ``nn.Module`` taking
  ``(N, C, T, H, W)`` (wrapped with defaults by :func:`~models.adapter.as_adapter`).
- ``clip``: the model input ``(N, C, T, H, W)`` (already normalised).
- ``target``: class indices ``LongTensor (N,)``, an int, or a callable ``output -> (N,)``
  (see :mod:`vis_methods.targets`).
- options: keyword-only, named as the CLI flags and declared per method in :data:`METHODS`
  (:mod:`vis_methods.options` holds their types and valid values).
- returns the raw float attribution ``(N, 1|C|A, T, H, W)`` on the clip's grid.

Every method runs inside :func:`vis_methods._context.method_context` (eval mode, frozen
parameters, hooks and backward rules undone on exit). :func:`explain` is the checked entry:
it validates the options against the method's declaration, fills in its defaults and returns an
:class:`~vis_methods.result.Attribution` (maps, their names, whether they are signed, and
diagnostics per clip).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Tuple, Union

from .options import OPTIONS, OptionError, declared, resolve_options, validate_options  # noqa: F401

if TYPE_CHECKING:
    import torch

    from .result import Attribution

# Loaded on first use (they need torch), so that the registry and the option checks do not.
_LAZY = MappingProxyType({
    "Attribution": "result", "split_diagnostics": "result", "ClassTarget": "targets",
    "Counterfactual": "targets", "RegressionTarget": "targets", "as_target_fn": "targets"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

Signed = Union[bool, Callable[[Mapping[str, Any]], bool]]


@dataclass(frozen=True, kw_only=True)
class MethodInfo:
    """Registry entry: where the method lives and its traits, each a keyword field.

    ``options``: the declared options and their defaults (the library's and the CLI's).
    ``signed``: whether the raw map has meaningful negative values, or a function of the
    resolved options deciding it. ``uses_layer``: the method reads ``target_layer``.
    ``shares_forward``: its first forward pass is the clip itself through the unchanged
    network, so the prediction can be read from it. ``extremal``: an extremal perturbation,
    whose final area and kept-region score are checked after the run.
    """

    module: str
    function: str
    signed: Signed
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    uses_layer: bool = False
    shares_forward: bool = False
    extremal: bool = False
    description: str = ""

    def resolve(self) -> Callable[..., torch.Tensor]:
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.function)

    def is_signed(self, options: Mapping[str, Any]) -> bool:
        return bool(self.signed(options) if callable(self.signed) else self.signed)


_CAM = declared({"target_layer": None, "cam_pooling": "time"})
_REDUCE = declared({"channel_reduce": "sum"})
_LAYER = declared({"target_layer": None})
_EXTREMAL = declared({"perturb_area": (0.1,), "num_iter": None, "ep_variant": "preserve",
                      "perturbation": "blur", "ep_optimizer": "adam",
                      "internal_batch_size": None, "seed": 0})


def _gradient(function: str, description: str, **traits) -> MethodInfo:
    return MethodInfo(module="gradient", function=function, shares_forward=True,
                      description=description, **traits)


def _cam(function: str, options: Mapping[str, Any], description: str, **traits) -> MethodInfo:
    return MethodInfo(module="cam", function=function, signed=traits.pop("signed", False),
                      options=options, uses_layer=True, description=description, **traits)


def _extremal(function: str, description: str) -> MethodInfo:
    return MethodInfo(module="perturbation", function=function, signed=False, options=_EXTREMAL,
                      extremal=True, description=description)


METHODS: Mapping[str, MethodInfo] = MappingProxyType({
    "grad": _gradient("grad", "gradient of the target w.r.t. the input", signed=True,
                      options=_REDUCE),
    "grad*input": _gradient("grad_x_input", "gradient times input", signed=True, options=_REDUCE),
    "integrated_grad": MethodInfo(
        module="gradient", function="integrated_grad", signed=True,
        options=declared({"num_iter": 25, "ig_baseline": "black", "ig_integration": "riemann_left",
                          "internal_batch_size": None, "channel_reduce": "sum"}),
        description="integrated gradients"),
    "smooth_grad": MethodInfo(
        module="gradient", function="smooth_grad", signed=lambda o: not o.get("squared", True),
        options=declared({"num_iter": 25, "noise_level": 0.15, "squared": True, "seed": 0,
                          "internal_batch_size": None, "channel_reduce": "sum"}),
        description="SmoothGrad (mean squared gradient by default: unsigned)"),
    "guided_backprop": _gradient("guided_backprop", "guided backpropagation", signed=True,
                                 options=_REDUCE),
    "deconvnet": _gradient("deconvnet", "deconvolution network backward rule", signed=True,
                           options=_REDUCE),
    "grad_cam": _cam("grad_cam", _CAM, "Grad-CAM", shares_forward=True),
    "grad_cam_pp": _cam("grad_cam_pp", _CAM, "Grad-CAM++", shares_forward=True),
    "xgrad_cam": _cam("xgrad_cam", _CAM, "XGrad-CAM", shares_forward=True),
    "layer_cam": _cam("layer_cam", _LAYER, "Layer-CAM", shares_forward=True),
    "score_cam": _cam("score_cam", declared({"target_layer": None, "internal_batch_size": None,
                                              "score_cam_channels": None}), "Score-CAM"),
    "cam": _cam("cam", _LAYER, "CAM (classifier after global average pooling)",
                shares_forward=True),
    "guided_grad_cam": _cam("guided_grad_cam", declared({**_CAM, "channel_reduce": "sum"}),
                            "Grad-CAM times guided backprop", signed=True, shares_forward=True),
    "2d_ep": _extremal("extremal_2d", "extremal perturbation, area per frame"),
    "3d_ep": _extremal("extremal_3d", "extremal perturbation, area per clip"),
    "step": _extremal("step", "spatio-temporal extremal perturbation"),
    "occlusion": MethodInfo(
        module="occlusion", function="occlusion", signed=True,
        options=declared({"occlusion_window": None, "occlusion_stride": None,
                          "occlusion_fill": "blur", "internal_batch_size": None}),
        description="sliding spatio-temporal occlusion"),
    "rise": MethodInfo(
        module="occlusion", function="rise", signed=False,
        options=declared({"num_iter": 500, "rise_cell": None, "rise_p": 0.5,
                          "rise_baseline": "black", "internal_batch_size": None, "seed": 0}),
        description="randomised input sampling (video RISE)"),
    "attention_rollout": MethodInfo(
        module="attention", function="attention_rollout", signed=False,
        options=declared({"head_fusion": "mean", "discard_ratio": 0.0}),
        description="attention rollout (transformers that expose their attention)"),
    "attention_gradient": MethodInfo(
        module="attention", function="attention_gradient", signed=False,
        description="gradient-weighted attention relevance (Chefer et al. 2021)"),
})


@dataclass(frozen=True)
class ViewInfo:
    """A view of the network that is not a per-clip attribution (``utils.pipeline.views`` runs it).
    ``scope``: ``"model"`` (once per run), ``"clip"`` (per clip) or ``"folder"`` (over all
    clips at once)."""

    module: str
    function: str
    scope: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""

    def resolve(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.function)


VIEWS: Mapping[str, ViewInfo] = MappingProxyType({
    "filters": ViewInfo("views.inside", "filters", "model", declared({"target_layer": None}),
                        "the first layer's kernels, sorted by norm"),
    "activations": ViewInfo("views.inside", "activations", "clip",
                            declared({"target_layer": None, "top": 8}),
                            "the top channels of a layer over time, on the frames"),
    "top_clips": ViewInfo("views.inside", "top_clips", "folder",
                          declared({"target_layer": None, "channel": None, "top": 5}),
                          "the clips and places that most activate a channel"),
    "embedding": ViewInfo("views.inside", "embedding", "folder",
                          declared({"target_layer": None, "seed": 0}),
                          "the clips' features projected to 2-D (PCA, t-SNE)"),
    "class_model": ViewInfo("views.inside", "class_model", "model",
                            declared({"num_iter": 100, "seed": 0}),
                            "a video that maximises a class score (--target)"),
    "temporal_sensitivity": ViewInfo(
        "views.temporal", "temporal_sensitivity", "clip", declared({"segments": 4, "seed": 0}),
        "the target's probability with frames shuffled, reversed, frozen"),
})


def get_method(name: str) -> Callable[..., torch.Tensor]:
    """The function registered under ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name].resolve()


def methods_taking(option: str) -> Tuple[str, ...]:
    """Names of the methods and views that declare ``option``."""
    return tuple(name for name, info in {**METHODS, **VIEWS}.items() if option in info.options)


def check_options(method: str, options: Mapping[str, Any]) -> dict:
    """``options`` (``None``: not given) validated for ``method`` and merged with its declared
    defaults; raises :class:`~vis_methods.options.OptionError` (one line) for an option the
    method does not take (naming the methods that do) or a bad value."""
    if method not in METHODS and method not in VIEWS:
        raise OptionError(f"unknown method {method!r}; choose from {', '.join(METHODS)}, "
                          f"{', '.join(VIEWS)}")
    info = METHODS.get(method) or VIEWS[method]
    given = validate_options(method, info.options, options, methods_taking)
    return resolve_options(info.options, given)


def explain(method: str, model: torch.nn.Module, clip: torch.Tensor, target: Any, *,
            progress: bool = False, **options: Any) -> Attribution:
    """Run ``method`` with checked options; returns an :class:`Attribution`.

    ``options`` are the method's declared options (see :data:`METHODS`); anything else is an
    error. The result's maps are ``(N, S, T, H, W)`` for ``S`` output sets (several
    ``perturb_area`` values) or ``(N, 1|C, T, H, W)`` for one, with per-clip diagnostics.
    """
    from .result import Attribution, split_diagnostics
    if method not in METHODS:
        raise OptionError(f"{method} is not an attribution method")
    resolved = check_options(method, options)
    info: dict = {}
    reduce = resolved.get("channel_reduce", "sum")
    call_options = {k: v for k, v in resolved.items() if k != "channel_reduce"}
    maps = METHODS[method].resolve()(model, clip, target, **call_options, info=info,
                                     progress=progress)
    signed = METHODS[method].is_signed(resolved)
    if reduce == "max_abs":
        # Per pixel the largest absolute value over the colour channels: unsigned.
        maps, signed = maps.abs().amax(dim=1, keepdim=True), False
    names = tuple(info.pop("output_names", None) or ("",))
    return Attribution(maps=maps.detach(), names=names, signed=signed,
                       diagnostics=split_diagnostics(info, clip.shape[0], len(names)),
                       method=method, options=MappingProxyType(resolved))

