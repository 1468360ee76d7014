"""Declared method options: one table of every option a method can take, with its type, valid
values and help, shared by the library and the command line.

The option's name is both the method's keyword argument and the CLI flag (``num_iter`` is
``--num_iter``). Each method in :data:`vis_methods.METHODS` declares which options it takes and
its defaults; :func:`validate_options` checks values before any clip is read, and
:func:`resolve_options` fills in the method's defaults, so that what a method runs with, what
``summary.csv`` records and what the resume fingerprint covers are the same dictionary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple


class OptionError(ValueError):
    """An option value or an option the method does not take; the message is one line."""


@dataclass(frozen=True)
class Option:
    """One option. ``kind``: ``int``, ``float``, ``str``, ``choice``, ``triple`` (T,H,W
    positive integers), ``floats`` (one or more floats) or ``bool``. ``low``/``high`` bound
    numbers (``low_open``/``high_open``: exclusive). ``cli``: has a command-line flag."""

    name: str
    kind: str
    help: str
    choices: Tuple[str, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    cli: bool = True

    def check(self, value: Any) -> Any:
        """``value`` converted and checked; raises :class:`OptionError` naming the option."""
        if value is None:
            return None
        where = f"--{self.name}" if self.cli else self.name
        if self.kind == "choice":
            if value not in self.choices:
                raise OptionError(f"{where} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.kind == "str":
            if not isinstance(value, str) or not value:
                raise OptionError(f"{where} must be a non-empty string")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise OptionError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind == "triple":
            values = (value,) * 3 if isinstance(value, int) else tuple(value)
            if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                           for v in values):
                raise OptionError(f"{where} must be three positive integers T,H,W, got {value!r}")
            return values
        if self.kind == "floats":
            values = (value,) if isinstance(value, (int, float)) else tuple(value)
            if not values:
                raise OptionError(f"{where} needs at least one value")
            return tuple(self._number(float(v), where) for v in values)
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise OptionError(f"{where} must be an integer, got {value!r}")
            return int(self._number(value, where))
        if self.kind == "float":
            return self._number(float(value), where)
        raise AssertionError(self.kind)

    def _number(self, value: float, where: str) -> float:
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"{where} must be a finite number, got {value}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise OptionError(f"{where} must be {'>' if self.low_open else '>='} {self.low:g}, "
                              f"got {value:g}")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise OptionError(f"{where} must be {'<' if self.high_open else '<='} {self.high:g}, "
                              f"got {value:g}")
        return value


BASELINE_CHOICES = ("black", "blur", "zeros", "static", "static_first")

OPTIONS: Mapping[str, Option] = MappingProxyType({option.name: option for option in (
    Option("num_iter", "int", "iterations: integrated_grad steps, smooth_grad samples, "
           "2d_ep/3d_ep/step optimisation steps, rise masks", low=1),
    Option("internal_batch_size", "int", "model evaluations per batch inside a method", low=1),
    Option("target_layer", "str", "CAM layer as a dotted module name (default: the model's)"),
    Option("score_cam_channels", "int", "Score-CAM scores only this many channels of the layer, "
           "those whose activation varies most over the clip (default: all; one forward each)",
           low=1),
    Option("cam_pooling", "choice", "CAM channel weights per time slice (time) or over "
           "T x H x W (3d)", choices=("time", "3d")),
    Option("ig_baseline", "choice", "integrated-gradients baseline: black clip in pixel space, "
           "blurred clip, zeros in model-input space, the clip's mean frame (static) or first "
           "frame (static_first) repeated over time", choices=BASELINE_CHOICES),
    Option("ig_integration", "choice", "integration rule for integrated gradients",
           choices=("riemann_left", "riemann_trapezoid", "gausslegendre")),
    Option("noise_level", "float", "SmoothGrad noise std as a fraction of the clip's value "
           "range", low=0.0),
    Option("squared", "bool", "SmoothGrad averages squared gradients (unsigned map)", cli=False),
    Option("perturb_area", "floats", "extremal perturbation area(s) as fractions of the frame "
           "(2d_ep) or clip (3d_ep, step), optimised together, one output each",
           low=0.0, high=1.0, low_open=True, high_open=True),
    Option("ep_variant", "choice", "extremal perturbation variant",
           choices=("preserve", "delete", "dual")),
    Option("perturbation", "choice", "how masked-out content is removed: blurred, faded to "
           "black, or replaced by the clip's mean frame (static)",
           choices=("blur", "fade", "static")),
    Option("ep_optimizer", "choice", "extremal perturbation optimiser: adam (100 steps, two "
           "starts, early stopping) or reference (SGD, 2000 steps)", choices=("adam", "reference")),
    Option("occlusion_window", "triple", "occlusion window T,H,W"),
    Option("occlusion_stride", "triple", "occlusion stride T,H,W"),
    Option("occlusion_fill", "choice", "what occluded voxels are replaced by: the blurred clip, "
           "the clip's mean colour, or the clip's mean frame (static)",
           choices=("blur", "mean", "static")),
    Option("rise_cell", "triple", "RISE low-resolution cell T,H,W"),
    Option("rise_p", "float", "RISE probability of keeping a cell", low=0.0, high=1.0,
           low_open=True),
    Option("rise_baseline", "choice", "what RISE's dropped voxels become",
           choices=("black", "zeros", "static")),
    Option("seed", "int", "seed of the method's random draws", low=0, high=2 ** 32 - 1),
    Option("channel_reduce", "choice", "how colour channels become one map: signed sum, or the "
           "largest absolute value per pixel (the data gradient as Simonyan et al. draw it)",
           choices=("sum", "max_abs")),
    Option("channel", "int", "channel of --target_layer to show (top_clips; default: each of the "
           "3 channels with the largest mean activation)", low=0),
    Option("top", "int", "how many clips (top_clips) or channels (activations) to show", low=1),
    Option("segments", "int", "temporal_sensitivity: segments frozen one at a time", low=1),
    Option("head_fusion", "choice", "how attention rollout fuses the heads of a layer",
           choices=("mean", "max", "min")),
    Option("discard_ratio", "float", "attention rollout: fraction of each row's lowest weights "
           "set to 0", low=0.0, high=1.0, high_open=True),
)})


def declared(options: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check that every key names a declared option (used when methods are registered)."""
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise AssertionError(f"undeclared options {unknown}")
    return MappingProxyType(dict(options))


def validate_options(method: str, defaults: Mapping[str, Any], given: Mapping[str, Any],
                     takers: Callable[[str], Sequence[str]]) -> dict:
    """``given`` (``None`` values mean "not given") checked against the method's declared
    ``defaults``; returns the checked values given. An option the method does not take raises
    :class:`OptionError` naming the methods that take it (``takers(option)``)."""
    checked = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in OPTIONS:
            raise OptionError(f"unknown option {name!r}")
        if name not in defaults:
            users = takers(name)
            flag = f"--{name}" if OPTIONS[name].cli else name
            raise OptionError(f"{method} does not take {flag}; it is used by "
                              f"{', '.join(users) if users else 'no method'}")
        checked[name] = OPTIONS[name].check(value)
    return checked


def resolve_options(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict:
    """The method's defaults overridden by the (checked) values given."""
    return {**dict(defaults), **{k: v for k, v in given.items() if v is not None}}
