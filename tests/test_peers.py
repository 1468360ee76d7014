"""Agreement with peer libraries (Captum, pytorch-grad-cam) on a small 3-D CNN.

The peers serve only as test-time references. Gradient methods are compared in float64 with
tight tolerances; pytorch-grad-cam works in float32 and returns maps min-max scaled to [0, 1]
(a spline zoom to the input size, which is the identity when the layer keeps the input's
resolution, as here), so ours are scaled the same way before comparing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from vis_methods.cam import (grad_cam, grad_cam_pp, guided_grad_cam, layer_cam,  # noqa: E402
                             score_cam, xgrad_cam)
from vis_methods.gradient import (deconvnet, grad, grad_x_input, guided_backprop,  # noqa: E402
                                  integrated_grad, smooth_grad)

TARGET = torch.tensor([1, 4])


def small_cnn(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """conv -> ReLU -> strided conv -> ReLU -> GAP -> linear; deterministic weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv3d(4, 6, 3, stride=(1, 2, 2), padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 5)).eval().to(dtype)
    torch.random.set_rng_state(generator_state)
    return model


def random_clip(shape=(2, 3, 8, 16, 16), dtype=torch.float64, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def needs_grad(clip: torch.Tensor) -> torch.Tensor:
    """Captum warns when its input does not already require grad."""
    return clip.clone().requires_grad_(True)


# Captum announces every ReLU hook it sets; the announcement is expected here.
captum_relu_hooks = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")


def close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-12):
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------ Captum

def test_grad_matches_captum_saliency():
    model, clip = small_cnn(), random_clip()
    theirs = captum_attr.Saliency(model).attribute(needs_grad(clip), target=TARGET, abs=False)
    close(grad(model, clip, TARGET), theirs)


def test_grad_x_input_matches_captum():
    model, clip = small_cnn(), random_clip()
    theirs = captum_attr.InputXGradient(model).attribute(needs_grad(clip), target=TARGET)
    close(grad_x_input(model, clip, TARGET), theirs)


@pytest.mark.parametrize("integration", ["riemann_left", "riemann_trapezoid", "gausslegendre"])
def test_integrated_gradients_and_gap_match_captum(integration):
    model, clip = small_cnn(), random_clip()
    baseline = torch.full((1, 3, 1, 1, 1), -0.5, dtype=torch.float64)
    info: dict = {}
    ours = integrated_grad(model, clip, TARGET, num_iter=25, ig_baseline=baseline,
                           ig_integration=integration, internal_batch_size=10, info=info)
    theirs, delta = captum_attr.IntegratedGradients(model).attribute(
        clip, baselines=baseline.expand_as(clip), target=TARGET, n_steps=25, method=integration,
        return_convergence_delta=True)
    if integration == "riemann_trapezoid":
        # Captum evaluates i / (n-1) but weighs with 1 / n (halved at the ends): its weights
        # sum to (n-1)/n, not 1. Ours sum to 1 (exactness checked in test_gradient.py).
        theirs = theirs * 25 / 24
    # Captum builds its points in float32 (torch.linspace(...).tolist()): ~1e-8 differences.
    close(ours, theirs, rtol=1e-6, atol=1e-9)
    if integration != "riemann_trapezoid":
        assert info["completeness_gap"] == pytest.approx(delta.tolist(), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("squared", [True, False])
def test_smooth_grad_matches_captum_noise_tunnel_with_identical_noise(squared):
    # Exact comparison: Captum draws torch.normal(0, std, (samples, C, T, H, W)) from the global
    # generator in one call; we draw samples one (1, C, T, H, W) block at a time from a local
    # generator. With the same seed the two streams are the same numbers provided each block
    # holds a multiple of 16 values (torch's CPU normal sampler fills 16 values at a time), so
    # the clip has 3*4*8*8 = 768 values. Float32 because Captum's std tensor is float32.
    model, clip = small_cnn(torch.float32), random_clip((1, 3, 4, 8, 8), torch.float32, seed=1)
    stdev = 0.15 * (clip.max() - clip.min())
    ours = smooth_grad(model, clip, 3, num_iter=25, noise_level=0.15, squared=squared, seed=123,
                       internal_batch_size=7)
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(123)
    try:
        theirs = captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
            clip, nt_type="smoothgrad_sq" if squared else "smoothgrad", nt_samples=25,
            stdevs=float(stdev), target=3, abs=False)
    finally:
        torch.random.set_rng_state(rng_state)
    close(ours, theirs, rtol=1e-4, atol=1e-7)


@captum_relu_hooks
def test_guided_backprop_and_deconvnet_match_captum():
    model, clip = small_cnn(), random_clip()
    close(guided_backprop(model, clip, TARGET),
          captum_attr.GuidedBackprop(model).attribute(needs_grad(clip), target=TARGET))
    close(deconvnet(model, clip, TARGET),
          captum_attr.Deconvolution(model).attribute(needs_grad(clip), target=TARGET))


def test_grad_cam_3d_pooling_matches_captum_layer_grad_cam():
    model, clip = small_cnn(), random_clip()
    theirs = captum_attr.LayerGradCam(model, model[2]).attribute(clip, target=TARGET,
                                                                relu_attributions=True)
    theirs = captum_attr.LayerAttribution.interpolate(theirs, tuple(clip.shape[2:]), "trilinear")
    close(grad_cam(model, clip, TARGET, target_layer="2", cam_pooling="3d"), theirs)


@captum_relu_hooks
def test_guided_grad_cam_matches_captum():
    model, clip = small_cnn(), random_clip()
    theirs = captum_attr.GuidedGradCam(model, model[2]).attribute(
        needs_grad(clip), target=TARGET, interpolate_mode="trilinear")
    close(guided_grad_cam(model, clip, TARGET, target_layer="2", cam_pooling="3d"), theirs)


# -------------------------------------------------------------------- pytorch-grad-cam

def scaled(maps: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's display scaling of ``(N, 1, T, H, W)`` maps: per clip
    ``m -> (m - min) / (max + 1e-7)`` once per layer and once after averaging layers (the
    1e-7 matters: these maps peak around 1e-5). Returns ``(N, T, H, W)``."""
    maps = maps[:, 0].detach().double()
    for _ in range(2):
        maps = maps - maps.flatten(1).amin(1).view(-1, 1, 1, 1)
        maps = maps / (maps.flatten(1).amax(1).view(-1, 1, 1, 1) + 1e-7)
    return maps.numpy()


@pytest.mark.parametrize("ours,theirs_class", [
    (grad_cam, "GradCAM"), (grad_cam_pp, "GradCAMPlusPlus"), (xgrad_cam, "XGradCAM"),
    (layer_cam, "LayerCAM")])
def test_cams_match_pytorch_grad_cam_3d(ours, theirs_class):
    model = small_cnn(torch.float32)
    with torch.no_grad():
        # Larger scores: pytorch-grad-cam's Grad-CAM++ adds 1e-6 to 2 g^2 + sum(A) g^3, which
        # would dominate at this layer's gradients (~1e-4) with the untouched head. Remaining
        # differences are float32 sums: up to 1.4e-5 (Grad-CAM++), < 3e-7 for the others.
        model[6].weight.mul_(1e6)
    clip = random_clip(dtype=torch.float32, seed=2)
    # model[1] keeps the clip's T x H x W, so pytorch-grad-cam's spline zoom is the identity.
    with getattr(pytorch_grad_cam, theirs_class)(model, target_layers=[model[1]]) as method:
        theirs = method(clip, targets=[ClassifierOutputTarget(int(k)) for k in TARGET])
    options = {} if ours is layer_cam else {"cam_pooling": "3d"}
    result = ours(model, clip, TARGET, target_layer="1", **options)
    np.testing.assert_allclose(scaled(result), theirs, atol=2e-5)
    assert not any(m._forward_hooks for m in model.modules())


def test_score_cam_matches_pytorch_grad_cam_on_a_single_frame():
    # pytorch-grad-cam's Score-CAM is 2-D only: compare on T = 1 through a wrapper that adds
    # the time axis, with its activations squeezed back to (N, C, h, w).
    class AddTime(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.inner(image.unsqueeze(2))

    model = small_cnn(torch.float32)
    clip = random_clip((2, 3, 1, 16, 16), torch.float32, seed=3)
    with pytorch_grad_cam.ScoreCAM(AddTime(model), target_layers=[model[1]],
                                   reshape_transform=lambda a: a.squeeze(2)) as method:
        method.batch_size = 4
        theirs = method(clip[:, :, 0], targets=[ClassifierOutputTarget(int(k)) for k in TARGET])
    ours = score_cam(model, clip, TARGET, target_layer="1")
    np.testing.assert_allclose(scaled(ours)[:, 0], theirs, atol=2e-5)
