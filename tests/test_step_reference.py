"""The reference setting (``ep_optimizer="reference"``) reproduces the WACV 2021 demo's STEP,
2D-EP and 3D-EP: its building blocks against hand-computed values and TorchRay, its schedule on
a short run, and the short ``num_iter`` cases of every method and optimiser."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vis_methods import perturbation as ep
from vis_methods.perturbation import (ReferenceCore, extremal_2d, extremal_3d,
                                      reference_area_loss, reference_blur_pyramid,
                                      reference_mask_generator, reference_perturb, step)


def kernel(distance: float, sigma: float) -> float:
    """The mask generator's radial kernel, written out."""
    return math.exp(-2 * max(distance / sigma - 0.5, 0.0) ** 2)


def soft_max(values) -> float:
    """Soft maximum with coldness 20 over a list of values (zeros included)."""
    weights = [math.exp(20 * v) for v in values]
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


# ----------------------------------------------------------------------------- mask generator
def test_mask_generator_shapes_at_112_px():
    generator = reference_mask_generator(112, 112, 7, 11)
    assert list(generator.shape_in) == [16, 16]
    cropped, padded = generator.generate(torch.ones(2, 1, 16, 16))
    assert padded.shape == (2, 1, 134, 134) and cropped.shape == (2, 1, 112, 112)
    assert torch.equal(cropped, padded[:, :, 11:123, 11:123])
    # Inside the frame, a full mask is the soft maximum of the 49 neighbouring kernel values
    # (the pixel on grid point (8, 8), padded (67, 67), sees points at offsets -28..14 px).
    offsets = range(-28, 15, 7)
    centre = soft_max([kernel(math.hypot(dy, dx), 11) for dy in offsets for dx in offsets])
    assert float(cropped[0, 0, 56, 56]) == pytest.approx(centre, rel=1e-5)
    # It falls at the frame's corners: the zero padding points pull the soft maximum down.
    assert float(cropped[0, 0, 56, 56]) > 0.97 and float(cropped[0, 0, -1, -1]) < 0.9


def test_mask_generator_lets_zero_padding_points_into_the_soft_maximum():
    generator = reference_mask_generator(112, 112, 7, 11)
    _, padded = generator.generate(torch.ones(1, 1, 16, 16))
    # Grid point (i, j) sits at padded pixel (11 + 7 i, 11 + 7 j). The padded corner (0, 0)
    # has 7 x 7 neighbouring points i, j in -5..1, of which (0|1, 0|1) are real (value 1 times
    # the kernel) and the other 45 are zero padding that still enter the soft maximum.
    real = [kernel(math.hypot(11 + 7 * i, 11 + 7 * j), 11) for i in (0, 1) for j in (0, 1)]
    expected = soft_max(real + [0.0] * 45)
    assert float(padded[0, 0, 0, 0]) == pytest.approx(expected, rel=1e-5)
    # Without the zero points it would be about twice as high.
    assert soft_max(real) > 1.5 * expected
    # One lone parameter inside the frame: v e^(20 v) / (e^(20 v) + 48) with v = k(d / sigma).
    params = torch.zeros(1, 1, 16, 16)
    params[0, 0, 8, 8] = 1.0
    cropped, _ = generator.generate(params)
    for dy, dx in ((0, 0), (3, 4), (6, 2), (9, 0)):
        v = kernel(math.hypot(dy, dx), 11)
        lone = v * math.exp(20 * v) / (math.exp(20 * v) + 48)
        assert float(cropped[0, 0, 56 + dy, 56 + dx]) == pytest.approx(lone, rel=1e-5)


# ----------------------------------------------------------------------------- area term
def test_area_target_is_a_fraction_of_the_padded_mask():
    values = torch.tensor([0.0, 0.2, 1.0, 0.9, 0.1, 0.0, 0.3, 0.0, 0.0, 0.05])
    padded = values.view(1, 1, 1, 2, 5)
    # int(10 * (1 - 0.2)) = 8 zeros then 2 ones against the sorted values.
    ordered = sorted(values.tolist())
    ideal = [0.0] * 8 + [1.0] * 2
    expected = sum((a - b) ** 2 for a, b in zip(ordered, ideal)) / 10
    loss = reference_area_loss(padded, [0.2], per_frame=False)
    assert loss.shape == (1, 1) and float(loss) == pytest.approx(expected, rel=1e-6)
    # Per frame (2d_ep): each frame against its own ideal, then the mean over frames.
    frames = torch.stack([values.view(2, 5), values.flip(0).view(2, 5)]).view(1, 1, 2, 2, 5)
    per_frame = reference_area_loss(frames, [0.2], per_frame=True)
    assert float(per_frame) == pytest.approx(expected, rel=1e-6)
    # At 112 px, 16 frames: 10 % of the 134 x 134 padded mask is 14.3 % of the frames.
    count = 16 * 134 * 134
    ones = count - int(count * (1 - 0.1))
    assert ones / (16 * 112 * 112) == pytest.approx(0.1431, abs=1e-3)


# ----------------------------------------------------------------------------- blur
def test_blur_pyramid_is_torchray_imsmooth_with_zero_padding():
    from torchray.utils import imsmooth
    generator = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 3, 2, 20, 24, generator=generator)
    pyramid = reference_blur_pyramid(clip, 8, 20.0)                     # (T, L, C, H, W)
    assert pyramid.shape == (2, 8, 3, 20, 24)
    for level, s in enumerate(torch.linspace(0, 1, 8)):
        expected = imsmooth(clip[:, :, 1], sigma=float((1 - s) * 20))
        assert torch.allclose(pyramid[1, level], expected[0], atol=1e-6)
    assert torch.allclose(pyramid[0, -1], clip[0, :, 0])                # the top level: the clip
    # Zero padding: a constant frame of ones darkens at the corner to (sum of half the
    # Gaussian, W = ceil(4 sigma) taps) squared.
    ones = torch.ones(1, 1, 1, 64, 64)
    sigma = 20 * (1 - 1 / 7)
    taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-math.ceil(4 * sigma),
                                                                math.ceil(4 * sigma) + 1)]
    half = sum(taps[len(taps) // 2:]) / sum(taps)
    corner = reference_blur_pyramid(ones, 8, 20.0)[0, 1, 0, 0, 0]
    assert float(corner) == pytest.approx(half ** 2, rel=1e-3)


def test_perturbation_interpolates_levels_and_keeps_a_full_voxel_fixed():
    pyramid = torch.arange(8.0).view(1, 8, 1, 1, 1).expand(1, 8, 1, 1, 2).contiguous()
    masks = torch.tensor([[[[0.5, 1.0]]]], requires_grad=True)          # (1, 1, 1, 2)
    out = reference_perturb(pyramid, masks)
    assert out.flatten().tolist() == pytest.approx([3.5, 7.0])
    out.sum().backward()
    # d/dm = 7 (level step 1) inside, 0 at m = 1: the top level is interpolated with itself.
    assert masks.grad.flatten().tolist() == pytest.approx([7.0, 0.0])


# ----------------------------------------------------------------------------- core loss
def test_core_kernel_and_top_k_at_112_px():
    core = ReferenceCore(16, 134, 134, [0.1])
    # 7 x 11 x 11 ellipsoid; counted as int(7 * 11 * 11 * 0.5236) = 443 voxels.
    axes = np.meshgrid(*(np.linspace(-1, 1, k) for k in (7, 11, 11)), indexing="ij")
    assert core.kernel_sum == int((np.sqrt(sum(a ** 2 for a in axes)) <= 1).sum())
    assert core.volume == 443 and core.top_k == (65,)
    padded = torch.rand(1, 1, 16, 134, 134)
    response = torch.nn.functional.conv3d(padded[0], core.kernel, stride=(1, 11, 11))
    assert response.numel() == 10 * 12 * 12 == 1440
    # Hand-computed loss: top 65 responses / kernel sum against 1, the other 1375 against 0.
    ordered = (response.flatten() / core.kernel_sum).sort(descending=True).values
    expected = ((ordered[:65] - 1) ** 2).mean() + (ordered[65:] ** 2).mean()
    loss = core.loss(padded, torch.Generator().manual_seed(0))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_core_tie_break_is_redrawn_at_every_call():
    core = ReferenceCore(7, 22, 44, [0.1])                               # 1 x 2 x 4 positions
    assert core.top_k == (ReferenceCore(7, 22, 44, [0.1]).top_k[0],)
    generator = torch.Generator().manual_seed(0)
    gradients = []
    for _ in range(6):
        masks = torch.full((1, 1, 7, 22, 44), 0.5, requires_grad=True)  # all responses tie
        core.loss(masks, generator).sum().backward()
        # Which of the 8 positions was ranked in the top k (its gradient has the other sign).
        top = masks.grad[0, 0, 3, 5::11, 5::11] < 0
        gradients.append(tuple(top.flatten().tolist()))
    assert all(sum(g) == core.top_k[0] for g in gradients)
    assert len(set(gradients)) > 1                                       # redrawn
    # The same seed draws the same sequence.
    again = torch.Generator().manual_seed(0)
    masks = torch.full((1, 1, 7, 22, 44), 0.5, requires_grad=True)
    core.loss(masks, again).sum().backward()
    assert tuple((masks.grad[0, 0, 3, 5::11, 5::11] < 0).flatten().tolist()) == gradients[0]


# ----------------------------------------------------------------------------- schedule
class ConstantNet(nn.Module):
    """Logits (2, 0, 0) whatever the input (plus a zero-weight path so gradients exist)."""

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        base = torch.tensor([2.0, 0.0, 0.0], device=clip.device)
        return base + 0 * clip.mean(dim=(1, 2, 3, 4))[:, None]


def test_schedule_core_from_iteration_101_and_growing_area_weight(monkeypatch):
    """With the area term patched to 1 and the core term to 1, the final loss is
    ``-log p + 300 g^(n-1) + 300 [n - 1 >= 101]``: the area weight grows by g = 1.0008668
    after every iteration and the core term counts from iteration 101 (0-based) on; the core's
    tie-break is drawn at every iteration."""
    draws = []
    real_loss = ReferenceCore.loss

    def recording_loss(self, padded, generator):
        draws.append(generator.get_state().clone())
        real_loss(self, padded, generator)
        return padded.sum(dim=(2, 3, 4)) * 0 + 1.0

    monkeypatch.setattr(ReferenceCore, "loss", recording_loss)
    monkeypatch.setattr(ep, "reference_area_loss",
                        lambda padded, areas, per_frame: padded.sum(dim=(2, 3, 4)) * 0 + 1.0)
    clip = torch.rand(1, 3, 7, 28, 28, generator=torch.Generator().manual_seed(1))
    p = math.exp(2) / (math.exp(2) + 2)
    for iterations in (1, 2, 101, 102):
        draws.clear()
        info: dict = {}
        step(ConstantNet(), clip, 0, ep_optimizer="reference", num_iter=iterations, info=info)
        area_weight = 300.0
        for _ in range(iterations - 1):
            area_weight *= 1.0008668
        core = 300.0 if iterations - 1 >= 101 else 0.0
        assert info["final_loss"] == pytest.approx(-math.log(p) + area_weight + core, rel=1e-5)
        assert info["model_evaluations"] == info["iterations"] == iterations
        assert len(draws) == iterations                                   # drawn every time
        assert all(not torch.equal(a, b) for a, b in zip(draws, draws[1:]))
    # 3d_ep: constant area weight, no core.
    info = {}
    extremal_3d(ConstantNet(), clip, 0, ep_optimizer="reference", num_iter=102, info=info)
    assert info["final_loss"] == pytest.approx(-100 * math.log(p) + 300, rel=1e-5)


# ----------------------------------------------------------------------------- short runs
@pytest.mark.parametrize("method", [extremal_2d, extremal_3d, step])
@pytest.mark.parametrize("optimizer", ["reference", "adam"])
@pytest.mark.parametrize("iterations", [1, 2])
def test_one_and_two_iterations_give_finite_masks(method, optimizer, iterations):
    clip = torch.rand(1, 3, 8, 24, 24, generator=torch.Generator().manual_seed(2))
    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    torch.manual_seed(0)
    info: dict = {}
    masks = method(model, clip, 1, perturb_area=[0.1, 0.3], ep_optimizer=optimizer,
                   num_iter=iterations, info=info)
    assert masks.shape == (1, 2, 8, 24, 24)
    assert torch.isfinite(masks).all() and masks.min() >= 0 and masks.max() <= 1
    assert info["iterations"] == iterations
    assert all(math.isfinite(v) for v in info["final_probability"])


def test_reference_rejects_early_stopping():
    clip = torch.rand(1, 3, 4, 16, 16)
    with pytest.raises(ValueError, match="early_stop"):
        step(ConstantNet(), clip, 0, ep_optimizer="reference", num_iter=2, early_stop=True)
