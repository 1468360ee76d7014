"""Backpropagation attributions: gradient, gradient × input, integrated gradients, SmoothGrad,
guided backpropagation and the deconvnet rule.

Every method differentiates ``target_fn(model(x))`` with respect to the input only
(:func:`torch.autograd.grad`, parameters frozen for the call), so no parameter gradient is ever
computed or accumulated. Methods that need many passes (integrated gradients, SmoothGrad) run
them in batches of ``internal_batch_size`` clip copies; the copies of one clip are contiguous in
the batch (clip-major order, row ``n * b + j``), which is the order :class:`~vis_methods.targets.
ClassTarget` and :class:`~vis_methods.targets.RegressionTarget` expect. A custom target callable
receives such batched outputs ``(N * b, K)`` and must return ``(N * b,)`` scores.

All functions return raw float attributions shaped like the clip, ``(N, C, T, H, W)``.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.adapter import ModelAdapter, as_adapter

from ._context import attribution_method
from .targets import Target, TargetFn, as_target_fn

Baseline = Union[torch.Tensor, str]

INTEGRATION_RULES = ("riemann_left", "riemann_trapezoid", "gausslegendre")

# Default internal batch per device type. Measured on a 2-core CPU with I3D: batching IG steps
# was slower than one step at a time (batch 5: 1.11x, batch 25: 1.88x the loop's time), so the
# CPU default is 1. On a GPU a batch fills the device far better than one clip at a time.
_CPU_BATCH = 1
_ACCELERATOR_BATCH = 8


def default_internal_batch_size(device: torch.device) -> int:
    """Clip copies per forward/backward pass when ``internal_batch_size`` is ``None``."""
    return _CPU_BATCH if torch.device(device).type == "cpu" else _ACCELERATOR_BATCH


def _scores(output: torch.Tensor, target_fn: TargetFn, batch: int) -> torch.Tensor:
    """``target_fn(output)`` checked to be one score per sample, ``(batch,)``."""
    scores = target_fn(output)
    if scores.dim() != 1 or scores.shape[0] != batch:
        raise ValueError(f"the target must return one score per sample, shape ({batch},); "
                         f"got {tuple(scores.shape)}")
    return scores


def _input_gradient(model: nn.Module, inputs: torch.Tensor,
                    target_fn: TargetFn) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the target scores w.r.t. ``inputs`` ``(B, C, T, H, W)``.

    Returns ``(gradient (B, C, T, H, W), scores (B,))``. The caller freezes the parameters
    (the method context, :func:`~vis_methods._context.method_context`) so only the input
    gradient is computed.
    """
    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = _scores(model(inputs), target_fn, inputs.shape[0])
        (gradient,) = torch.autograd.grad(scores.sum(), inputs)
    return gradient, scores.detach()


def _per_clip(values: torch.Tensor) -> Union[float, List[float]]:
    """A diagnostic for ``info``: a float for one clip, a list of floats for several."""
    values = values.detach().double().cpu()
    return float(values[0]) if values.numel() == 1 else values.tolist()


def _batches(count: int, batch_size: int, progress: bool, description: str) -> Iterator[range]:
    starts = range(0, count, batch_size)
    bar = tqdm(starts, desc=description, disable=not progress, leave=False)
    for start in bar:
        yield range(start, min(start + batch_size, count))


# --------------------------------------------------------------------------- plain gradients

@attribution_method
def grad(model: nn.Module, clip: torch.Tensor, target: Target, *,
         info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Gradient of the target w.r.t. the clip ``(N, C, T, H, W)`` -> ``(N, C, T, H, W)``."""
    target_fn = as_target_fn(target)
    gradient, scores = _input_gradient(model, clip, target_fn)
    if info is not None:
        info["target_score"] = _per_clip(scores)
    return gradient


@attribution_method
def grad_x_input(model: nn.Module, clip: torch.Tensor, target: Target, *,
                 info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Gradient times input, ``(N, C, T, H, W)`` -> ``(N, C, T, H, W)``."""
    return grad(model, clip, target, info=info) * clip.detach()


# --------------------------------------------------------------------- integrated gradients

def integration_points(steps: int, integration: str = "riemann_left"
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Points ``alpha`` in [0, 1] and quadrature weights for ``steps`` evaluations, float64.

    - ``riemann_left``: ``alpha = i / steps`` for ``i = 0 .. steps-1``, weights ``1 / steps``
      (the reference's rule; it evaluates the baseline but never the clip itself).
    - ``riemann_trapezoid``: ``alpha = i / (steps-1)``, weights ``1 / (steps-1)``, halved at
      both ends (they sum to 1; Captum's sum to (steps-1)/steps).
    - ``gausslegendre``: Gauss-Legendre nodes and weights mapped from [-1, 1] to [0, 1].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if integration == "riemann_left":
        alphas = torch.arange(steps, dtype=torch.float64) / steps
        weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    elif integration == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("riemann_trapezoid needs steps >= 2")
        alphas = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[0] /= 2
        weights[-1] /= 2
    elif integration == "gausslegendre":
        nodes, node_weights = np.polynomial.legendre.leggauss(steps)
        alphas = torch.from_numpy((nodes + 1.0) / 2.0)
        weights = torch.from_numpy(node_weights / 2.0)
    else:
        raise ValueError(f"unknown integration {integration!r}; choose from "
                         f"{', '.join(INTEGRATION_RULES)}")
    return alphas, weights


def default_blur_sigma(clip: torch.Tensor) -> float:
    """The ``"blur"`` baseline's sigma: 10% of the shorter frame side (11.2 px at 112, 22.4 px at
    224), roughly the strongest blur of the reference's perturbation pyramid (sigma 20 at 224):
    object shapes are gone, colours and the coarse layout stay."""
    return 0.1 * min(clip.shape[-2:])


def make_baseline(clip: torch.Tensor, baseline: Baseline,
                  blur_sigma: Optional[float] = None,
                  adapter: Optional[ModelAdapter] = None) -> torch.Tensor:
    """The IG baseline for ``clip`` ``(N, C, T, H, W)``: a tensor broadcast to the clip's shape,
    or a name of :meth:`models.adapter.ModelAdapter.baseline` (``"black"``, ``"zeros"``,
    ``"blur"`` with sigma ``blur_sigma`` or :func:`default_blur_sigma`, ``"static"``,
    ``"static_first"``). ``"black"`` needs the adapter's normalisation; without an adapter the
    model input is taken as pixel values (black = zeros)."""
    adapter = adapter if adapter is not None else ModelAdapter(nn.Identity())
    return adapter.baseline(baseline, clip, blur_sigma)


@attribution_method
def integrated_grad(model: nn.Module, clip: torch.Tensor, target: Target, *,
                    num_iter: int = 25,
                    ig_baseline: Baseline = "black",
                    ig_integration: str = "riemann_left",
                    internal_batch_size: Optional[int] = None,
                    baseline_blur_sigma: Optional[float] = None,
                    info: Optional[dict] = None,
                    progress: bool = False) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017), ``(N, C, T, H, W)`` -> same shape.

    ``(clip - baseline) * sum_i w_i * grad f(baseline + alpha_i (clip - baseline))`` with the
    points of :func:`integration_points`. ``num_iter`` evaluations run in batches of
    ``internal_batch_size`` clip copies (``None``: :func:`default_internal_batch_size`).
    ``ig_baseline``: a tensor or a name of :func:`make_baseline` (default ``"black"``: a black
    clip in pixel space, through the model adapter's normalisation; the same on the CLI).
    ``ig_integration``: a rule of :func:`integration_points`.

    ``info`` receives ``completeness_gap`` = sum(attribution) - (f(clip) - f(baseline)) per clip
    and ``completeness_relative`` (the gap over |f(clip) - f(baseline)|). The end-point scores
    come from the integration passes when the rule evaluates them; otherwise (and only when
    ``info`` is given) one gradient-free forward computes them.
    """
    target_fn = as_target_fn(target)
    clip = clip.detach()
    start_point = make_baseline(clip, ig_baseline, baseline_blur_sigma, as_adapter(model))
    path = clip - start_point
    steps = num_iter
    alphas, weights = integration_points(steps, ig_integration)
    batch_size = internal_batch_size or default_internal_batch_size(clip.device)
    num_clips = clip.shape[0]
    trailing = (1,) * (clip.dim() - 1)
    alphas_on_device = alphas.to(clip.device, clip.dtype)
    weights_on_device = weights.to(clip.device, clip.dtype)
    weighted_sum = torch.zeros_like(clip)
    endpoint_scores: dict = {}
    for indices in _batches(steps, batch_size, progress, "integrated gradients"):
        alpha = alphas_on_device[indices.start:indices.stop]
        weight = weights_on_device[indices.start:indices.stop]
        count = len(indices)
        # (N, b, C, T, H, W): the b points of each clip are contiguous (clip-major).
        points = start_point.unsqueeze(1) + alpha.view(1, count, *trailing) * path.unsqueeze(1)
        gradient, scores = _input_gradient(model, points.flatten(0, 1), target_fn)
        gradient = gradient.view(num_clips, count, *clip.shape[1:])
        weighted_sum += (gradient * weight.view(1, count, *trailing)).sum(1)
        if info is not None:
            scores = scores.view(num_clips, count)
            for j, i in enumerate(indices):
                if float(alphas[i]) in (0.0, 1.0):
                    endpoint_scores[float(alphas[i])] = scores[:, j]
    if info is not None:
        # End points the rule did not evaluate: one gradient-free forward, only when asked.
        missing = [a for a in (0.0, 1.0) if a not in endpoint_scores]
        if missing:
            ends = {0.0: start_point, 1.0: clip}
            points = torch.stack([ends[a] for a in missing], dim=1)  # clip-major
            with torch.no_grad():
                scores = _scores(model(points.flatten(0, 1)), target_fn,
                                 num_clips * len(missing)).view(num_clips, len(missing))
            for k, a in enumerate(missing):
                endpoint_scores[a] = scores[:, k]
    attribution = path * weighted_sum
    if info is not None:
        difference = endpoint_scores[1.0] - endpoint_scores[0.0]
        gap = attribution.flatten(1).sum(1) - difference
        info["completeness_gap"] = _per_clip(gap)
        info["completeness_relative"] = _per_clip(gap.abs() / difference.abs().clamp_min(1e-12))
        info["target_score"] = _per_clip(endpoint_scores[1.0])
        info["baseline_score"] = _per_clip(endpoint_scores[0.0])
    return attribution


# --------------------------------------------------------------------------------- SmoothGrad

@attribution_method
def smooth_grad(model: nn.Module, clip: torch.Tensor, target: Target, *,
                num_iter: int = 25,
                noise_level: float = 0.15,
                squared: bool = True,
                seed: Optional[int] = 0,
                internal_batch_size: Optional[int] = None,
                info: Optional[dict] = None,
                progress: bool = False) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017), ``(N, C, T, H, W)`` -> same shape.

    The mean over ``num_iter`` noisy copies of the gradient (of its square when ``squared``,
    the reference's default). The noise is Gaussian with standard deviation
    ``noise_level * (max - min)`` of each clip. Noise comes from a local generator seeded with
    ``seed`` (default 0; fresh entropy when ``None``); it is drawn one sample at a time, ``(N, C, T, H, W)``
    each, so the result does not depend on ``internal_batch_size``.
    """
    samples = num_iter
    if samples < 1:
        raise ValueError(f"num_iter must be >= 1, got {samples}")
    target_fn = as_target_fn(target)
    clip = clip.detach()
    num_clips = clip.shape[0]
    trailing = (1,) * (clip.dim() - 1)
    flat = clip.flatten(1)
    stdev = noise_level * (flat.amax(1) - flat.amin(1))  # (N,)
    generator = torch.Generator(device=clip.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    batch_size = internal_batch_size or default_internal_batch_size(clip.device)
    total = torch.zeros_like(clip)
    for indices in _batches(samples, batch_size, progress, "SmoothGrad"):
        noise = torch.stack([torch.randn(clip.shape, generator=generator, device=clip.device,
                                         dtype=clip.dtype) for _ in indices], dim=1)
        noisy = clip.unsqueeze(1) + noise * stdev.view(num_clips, 1, *trailing)
        gradient, _ = _input_gradient(model, noisy.flatten(0, 1), target_fn)
        gradient = gradient.view(num_clips, len(indices), *clip.shape[1:])
        total += (gradient.square() if squared else gradient).sum(1)
    if info is not None:
        info["noise_std"] = _per_clip(stdev)
    return total / samples


# ------------------------------------------------------------- modified ReLU backward rules

class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients through positive inputs."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        positive = inputs > 0
        ctx.save_for_backward(positive)
        return inputs * positive

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (positive,) = ctx.saved_tensors
        return grad_output.clamp(min=0) * positive


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is a ReLU of the incoming gradient (Zeiler & Fergus' deconvnet)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return inputs.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad_output.clamp(min=0)


@contextlib.contextmanager
def relu_backward_rule(model: nn.Module, rule: type) -> Iterator[int]:
    """Give every ``nn.ReLU`` module of ``model`` the backward rule of ``rule`` (an autograd
    Function computing ReLU) for the duration of the block; yields the number of ReLU modules.

    A forward hook replaces each ReLU's output with ``rule.apply(input)``. In-place ReLUs are
    made out-of-place for the block, because their input would otherwise already be
    overwritten (and its history rewritten) when the hook runs. Hooks and ``inplace`` flags are
    restored on exit, even on error. Functional ReLUs (``F.relu`` in ``forward``) are not seen.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    saved_inplace = [(m, m.inplace) for m in relus]
    handles = []

    def replace_output(_module: nn.Module, inputs: Sequence[torch.Tensor],
                       _output: torch.Tensor) -> torch.Tensor:
        return rule.apply(inputs[0])

    try:
        for module in relus:
            module.inplace = False
            handles.append(module.register_forward_hook(replace_output))
        yield len(relus)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in saved_inplace:
            module.inplace = flag


def _modified_relu_gradient(model: nn.Module, clip: torch.Tensor, target: Target, rule: type,
                            name: str, info: Optional[dict]) -> torch.Tensor:
    target_fn = as_target_fn(target)
    with relu_backward_rule(model, rule) as count:
        if count == 0:
            warnings.warn(f"{name}: the model has no nn.ReLU modules, so the result is the "
                          "plain gradient", RuntimeWarning, stacklevel=3)
        gradient, scores = _input_gradient(model, clip, target_fn)
    if info is not None:
        info["relu_modules"] = count
        info["target_score"] = _per_clip(scores)
    return gradient


@attribution_method
def guided_backprop(model: nn.Module, clip: torch.Tensor, target: Target, *,
                    info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015), ``(N, C, T, H, W)`` -> same shape:
    the gradient with every ``nn.ReLU`` passing back only positive gradients at positive inputs."""
    return _modified_relu_gradient(model, clip, target, _GuidedReLU, "guided_backprop", info)


@attribution_method
def deconvnet(model: nn.Module, clip: torch.Tensor, target: Target, *,
              info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Deconvnet rule (Zeiler & Fergus 2014), ``(N, C, T, H, W)`` -> same shape: every
    ``nn.ReLU`` passes back the ReLU of the incoming gradient, whatever its input's sign."""
    return _modified_relu_gradient(model, clip, target, _DeconvReLU, "deconvnet", info)
