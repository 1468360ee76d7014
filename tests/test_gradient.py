"""Backpropagation methods (vis_methods/gradient.py) against hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vis_methods import METHODS, get_method
from models.adapter import blur_frames
from vis_methods.gradient import (deconvnet, default_internal_batch_size,
                                  grad, grad_x_input, guided_backprop, integrated_grad,
                                  integration_points, make_baseline, smooth_grad)
from vis_methods.targets import ClassTarget

GRADIENT_METHODS = [name for name, entry in METHODS.items() if entry.module == "gradient"]
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


# ------------------------------------------------------------------------------ test models

def small_cnn(seed: int = 0, inplace: bool = False) -> nn.Sequential:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(inplace),
        nn.Conv3d(4, 6, 3, stride=(1, 2, 2), padding=1), nn.ReLU(inplace),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 5)).eval()
    torch.random.set_rng_state(generator_state)
    return model


class Quadratic(nn.Module):
    """Scores ``[sum(a * x^2), -sum(a * x^2)]``: gradient ``2 a x``, linear along any path."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        score = (self.a * clip.square()).flatten(1).sum(1)
        return torch.stack([score, -score], dim=1)


class Counting(nn.Module):
    """Wraps a model; counts forward calls and rows, and whether any parameter required grad."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.rows = 0
        self.saw_parameter_grad = False

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += clip.shape[0]
        self.saw_parameter_grad |= any(p.requires_grad for p in self.parameters())
        return self.inner(clip)


class Tripwire(nn.Module):
    """Identity that raises when armed: a model failing mid-call."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("tripwire")
        return x


def model_state(model: nn.Module) -> dict:
    """Everything a method may touch temporarily."""
    return {
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grads": [(n, p.grad is None) for n, p in model.named_parameters()],
        "hooks": [(n, attr, list(getattr(m, attr, {}))) for n, m in model.named_modules()
                  for attr in HOOK_DICTS],
        "inplace": [(n, m.inplace) for n, m in model.named_modules() if isinstance(m, nn.ReLU)],
        "global_hooks": [len(d) for d in (nn.modules.module._global_forward_hooks,
                                          nn.modules.module._global_forward_pre_hooks,
                                          nn.modules.module._global_backward_hooks)],
    }


# ------------------------------------------------------------------------- plain gradients

def test_registry_resolves_gradient_methods():
    assert GRADIENT_METHODS == ["grad", "grad*input", "integrated_grad", "smooth_grad",
                                "guided_backprop", "deconvnet"]
    for name in GRADIENT_METHODS:
        assert callable(get_method(name))


def test_grad_of_linear_model_is_its_weight_row():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 4)).double()
    clip = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)
    target = torch.tensor([3, 1])
    expected = model[1].weight[target].detach().view(2, 3, 2, 4, 4)
    info: dict = {}
    torch.testing.assert_close(grad(model, clip, target, info=info), expected)
    torch.testing.assert_close(grad_x_input(model, clip, target), expected * clip)
    scores = model(clip).gather(1, target.view(-1, 1)).squeeze(1)
    assert info["target_score"] == pytest.approx(scores.tolist())


def test_guided_backprop_and_deconvnet_rules_by_hand():
    # x = (1, 2); hidden pre-activations W1 x = (-1, 4, 1); class-0 row of W2 = (3, -2, 1).
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3, bias=False), nn.ReLU(),
                          nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0], [-1.0, 1.0]]))
        model[3].weight.copy_(torch.tensor([[3.0, -2.0, 1.0], [0.0, 0.0, 0.0]]))
    clip = torch.tensor([1.0, 2.0]).view(1, 1, 1, 1, 2)
    # plain: W1^T (mask * w2) = W1^T (0, -2, 1); guided: W1^T (mask * relu(w2)) = W1^T (0, 0, 1);
    # deconvnet: W1^T relu(w2) = W1^T (3, 0, 1).
    assert grad(model, clip, 0).flatten().tolist() == [-5.0, -1.0]
    assert guided_backprop(model, clip, 0).flatten().tolist() == [-1.0, 1.0]
    assert deconvnet(model, clip, 0).flatten().tolist() == [2.0, -2.0]


@pytest.mark.parametrize("method", [guided_backprop, deconvnet])
def test_relu_rules_same_for_inplace_relus(method):
    clip = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = method(small_cnn(inplace=False), clip, torch.tensor([0, 4]))
    inplace_model = small_cnn(inplace=True)
    torch.testing.assert_close(method(inplace_model, clip, torch.tensor([0, 4])), expected)
    assert all(m.inplace for m in inplace_model.modules() if isinstance(m, nn.ReLU))


def test_model_without_relu_warns_and_gives_plain_gradient():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    clip = torch.randn(1, 3, 1, 2, 2)
    with pytest.warns(RuntimeWarning, match="no nn.ReLU"):
        result = guided_backprop(model, clip, 1)
    torch.testing.assert_close(result, grad(model, clip, 1))


def test_target_must_give_one_score_per_sample():
    with pytest.raises(ValueError, match="one score per sample"):
        grad(small_cnn(), torch.randn(1, 3, 2, 4, 4), lambda output: output)


# ---------------------------------------------------------------------- integrated gradients

def test_integration_points():
    alphas, weights = integration_points(4, "riemann_left")
    assert alphas.tolist() == [0.0, 0.25, 0.5, 0.75] and weights.tolist() == [0.25] * 4
    alphas, weights = integration_points(5, "riemann_trapezoid")
    assert alphas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert weights.tolist() == [0.125, 0.25, 0.25, 0.25, 0.125]
    alphas, weights = integration_points(3, "gausslegendre")
    # 3-point Gauss-Legendre on [0, 1]: nodes 1/2 -+ sqrt(15)/10, weights 5/18, 8/18, 5/18.
    root = math.sqrt(15) / 10
    torch.testing.assert_close(alphas, torch.tensor([0.5 - root, 0.5, 0.5 + root],
                                                    dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([5 / 18, 8 / 18, 5 / 18], dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown integration"):
        integration_points(4, "simpson")


def _quadratic_case():
    generator = torch.Generator().manual_seed(3)
    a = torch.rand(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    clip = torch.randn(2, 3, 2, 4, 4, generator=generator, dtype=torch.float64)
    baseline = torch.randn(1, 3, 1, 1, 1, generator=generator, dtype=torch.float64)
    return Quadratic(a), a, clip, baseline


def test_ig_left_riemann_gap_matches_hand_computation():
    # f = sum(a x^2): the left sum of the linear integrand 2 a (b + alpha d) misses exactly
    # sum(a d^2) / steps, so the completeness gap is -sum(a d^2) / steps.
    model, a, clip, baseline = _quadratic_case()
    steps = 5
    info: dict = {}
    attribution = integrated_grad(model, clip, 0, num_iter=steps, ig_baseline=baseline, info=info)
    d = clip - baseline
    b = baseline.expand_as(clip)
    expected = d * 2 * a * (b + (steps - 1) / (2 * steps) * d)
    torch.testing.assert_close(attribution, expected)
    expected_gap = -(a * d.square()).flatten(1).sum(1) / steps
    assert info["completeness_gap"] == pytest.approx(expected_gap.tolist(), rel=1e-9)


@pytest.mark.parametrize("integration,steps", [("riemann_trapezoid", 2),
                                               ("riemann_trapezoid", 7),
                                               ("gausslegendre", 2)])
@pytest.mark.parametrize("baseline", ["zeros", "blur", "tensor"])
def test_ig_completeness_exact_for_rules_exact_on_linear_integrands(integration, steps, baseline):
    model, a, clip, tensor_baseline = _quadratic_case()
    chosen = tensor_baseline if baseline == "tensor" else baseline
    info: dict = {}
    attribution = integrated_grad(model, clip, 1, num_iter=steps, ig_baseline=chosen,
                                  ig_integration=integration, info=info)
    start = make_baseline(clip, chosen)
    # closed form: IG_i = a (x^2 - b^2) for f = sum a x^2 (class 1 is its negation)
    torch.testing.assert_close(attribution, -a * (clip.square() - start.square()))
    assert info["completeness_gap"] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert info["completeness_relative"] == pytest.approx([0.0, 0.0], abs=1e-9)


def test_ig_batching_does_not_change_the_result():
    model = small_cnn().double()
    clip = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(4),
                       dtype=torch.float64)
    results = [integrated_grad(model, clip, torch.tensor([1, 2]), num_iter=7,
                               internal_batch_size=size) for size in (1, 3, 7, 50)]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("integration,with_info,calls,rows", [
    ("riemann_left", False, 2, 12),     # ceil(6 / 4) batched passes of 2 clips x 6 points
    ("riemann_left", True, 3, 14),      # + one forward of the clips (alpha = 1 not evaluated)
    ("riemann_trapezoid", True, 2, 12),  # both end points are integration points
    ("gausslegendre", True, 3, 16),     # neither end point: clips and baselines
])
def test_ig_runs_no_throwaway_forwards_and_no_parameter_gradients(integration, with_info,
                                                                  calls, rows):
    model = Counting(small_cnn())
    clip = torch.randn(2, 3, 2, 4, 4)
    info = {} if with_info else None
    integrated_grad(model, clip, 0, num_iter=6, ig_integration=integration, internal_batch_size=4,
                    info=info)
    assert (model.calls, model.rows) == (calls, rows)
    assert not model.saw_parameter_grad
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_default_internal_batch_size_per_device():
    assert default_internal_batch_size(torch.device("cpu")) == 1
    assert default_internal_batch_size(torch.device("cuda")) > 1


# ------------------------------------------------------------------------------- baselines

def blur3(clip, sigma):
    return blur_frames(clip, sigma, truncate=3.0)


def test_blur_baseline():
    clip = torch.zeros(1, 2, 3, 41, 41, dtype=torch.float64)
    clip[0, 1, 1, 20, 20] = 1.0
    sigma = 3.0
    blurred = blur3(clip, sigma)
    assert blurred[0, 1, 1].sum().item() == pytest.approx(1.0)
    # frames and channels are not mixed
    assert blurred[0, 0].abs().max() == 0 and blurred[0, 1, [0, 2]].abs().max() == 0
    # impulse response: centred Gaussian of variance sigma^2 (-1.6% from the cut at 3 sigma)
    profile = blurred[0, 1, 1].sum(0)
    offsets = torch.arange(41, dtype=torch.float64) - 20
    assert (profile * offsets).sum().item() == pytest.approx(0.0, abs=1e-12)
    assert (profile * offsets.square()).sum().item() == pytest.approx(sigma ** 2, rel=0.03)
    torch.testing.assert_close(blurred[0, 1, 1], blurred[0, 1, 1].T)
    # a constant clip is unchanged (replicated borders)
    constant = torch.full((1, 3, 2, 10, 12), 0.7)
    torch.testing.assert_close(blur3(constant, 4.0), constant)
    # default sigma: 10% of the shorter side
    expected = blur3(clip, 4.1)
    torch.testing.assert_close(make_baseline(clip, "blur"), expected)
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline(clip, "noise")


# ------------------------------------------------------------------------------- SmoothGrad

@pytest.mark.parametrize("squared", [False, True])
def test_smooth_grad_matches_hand_computation_with_the_same_noise(squared):
    model, a, clip, _ = _quadratic_case()
    samples, seed, level = 6, 11, 0.2
    info: dict = {}
    result = smooth_grad(model, clip, 0, num_iter=samples, noise_level=level, squared=squared,
                         seed=seed, internal_batch_size=4, info=info)
    # Noise std is level * (max - min) per clip; one (N, C, T, H, W) draw per sample.
    span = clip.flatten(1).amax(1) - clip.flatten(1).amin(1)
    stdev = (level * span).view(-1, 1, 1, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    gradients = [2 * a * (clip + stdev * torch.randn(clip.shape, generator=generator,
                                                     dtype=clip.dtype))
                 for _ in range(samples)]
    expected = torch.stack([g.square() if squared else g for g in gradients]).mean(0)
    torch.testing.assert_close(result, expected)
    assert info["noise_std"] == pytest.approx((level * span).tolist())


def test_smooth_grad_seed_batching_and_global_rng():
    model = small_cnn()
    clip = torch.randn(1, 3, 2, 4, 4)
    rng_before = torch.random.get_rng_state()
    first = smooth_grad(model, clip, 2, num_iter=5, seed=7, internal_batch_size=1)
    second = smooth_grad(model, clip, 2, num_iter=5, seed=7, internal_batch_size=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    torch.testing.assert_close(first, second)
    unseeded = [smooth_grad(model, clip, 2, num_iter=2, seed=None) for _ in range(2)]
    assert not torch.equal(*unseeded)


# ----------------------------------------------------------------- temporary model changes

def _method_options(name: str) -> dict:
    return {"integrated_grad": {"num_iter": 3, "internal_batch_size": 2},
            "smooth_grad": {"num_iter": 3, "seed": 0}}.get(name, {})


def _model_with_tripwire(inplace: bool) -> nn.Sequential:
    model = small_cnn(inplace=inplace)
    model.insert(4, Tripwire())
    model[0].weight.requires_grad_(False)  # a frozen parameter must stay frozen
    return model


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("training", [False, True])
def test_methods_undo_temporary_changes(name, training):
    model = _model_with_tripwire(inplace=True).train(training)
    before = model_state(model)
    clip = torch.randn(1, 3, 2, 4, 4)
    info: dict = {}
    result = get_method(name)(model, clip, ClassTarget(1), info=info, **_method_options(name))
    assert result.shape == clip.shape and torch.isfinite(result).all()
    assert model_state(model) == before
    model[4].armed = True
    with pytest.raises(RuntimeError, match="tripwire"):
        get_method(name)(model, clip, 1, info=info, **_method_options(name))
    assert model_state(model) == before
