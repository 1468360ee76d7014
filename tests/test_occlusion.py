"""Sliding-window occlusion and video RISE against brute force and Captum's Occlusion."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vis_methods import explain
from vis_methods.occlusion import (occlusion, rise, rise_masks, upsample_rise_masks,
                                   window_starts)
from vis_methods.perturbation import blur_frames


class SmallVideoNet(nn.Module):
    """Conv3d -> ReLU -> batch norm -> average pool -> linear, 3 classes (non-linear in the
    input, so a window's effect depends on the rest of the clip)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.norm = nn.BatchNorm3d(4)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.1, 0.1)
            self.norm.running_var.uniform_(0.5, 1.5)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.norm(self.relu(self.conv(clip)))).flatten(1))


@pytest.fixture(scope="module")
def model():
    return SmallVideoNet().eval()


@pytest.fixture(scope="module")
def clip():
    return torch.randn(1, 3, 4, 6, 7, generator=torch.Generator().manual_seed(3))


def test_window_starts_cover_every_position():
    assert window_starts(6, 3, 2) == [0, 2, 3]           # the last window ends at the end
    assert window_starts(6, 3, 3) == [0, 3]
    assert window_starts(4, 9, 1) == [0]                  # a window larger than the clip


@pytest.mark.parametrize("fill", ["mean", "blur"])
def test_occlusion_matches_brute_force(model, clip, fill):
    window, stride = (2, 3, 3), (1, 2, 3)
    filler = (clip.mean(dim=(2, 3, 4), keepdim=True).expand_as(clip) if fill == "mean"
              else blur_frames(clip, 20 * 6 / 112))
    with torch.no_grad():
        base = model(clip)[0, 1]
        total = torch.zeros(4, 6, 7)
        count = torch.zeros(4, 6, 7)
        for t0 in (0, 1, 2):
            for y0 in (0, 2, 3):
                for x0 in (0, 3, 4):
                    occluded = clip.clone()
                    region = (slice(t0, t0 + 2), slice(y0, y0 + 3), slice(x0, x0 + 3))
                    occluded[(0, slice(None)) + region] = filler[(0, slice(None)) + region]
                    total[region] += base - model(occluded)[0, 1]
                    count[region] += 1
    expected = total / count
    info: dict = {}
    ours = occlusion(model, clip, 1, occlusion_window=window, occlusion_stride=stride,
                     occlusion_fill=fill, info=info)
    assert ours.shape == (1, 1, 4, 6, 7)
    torch.testing.assert_close(ours[0, 0], expected, atol=1e-5, rtol=1e-4)
    assert info["windows"] == 27 and info["model_evaluations"] == 28


def test_occlusion_matches_captum(model):
    from captum.attr import Occlusion
    clip = torch.randn(1, 3, 4, 6, 6, generator=torch.Generator().manual_seed(5))
    # Windows that tile the clip exactly, so both libraries place the same windows.
    mean = clip.mean(dim=(2, 3, 4), keepdim=True)
    peer = Occlusion(model).attribute(clip, sliding_window_shapes=(3, 2, 3, 3),
                                      strides=(3, 1, 3, 3), baselines=mean, target=2)
    ours = occlusion(model, clip, 2, occlusion_window=(2, 3, 3), occlusion_stride=(1, 3, 3),
                     occlusion_fill="mean")
    # Captum spreads the drop over the channels; ours is one map per voxel.
    torch.testing.assert_close(ours[0, 0], peer[0, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(peer[0, 0], peer[0, 2])


def test_occlusion_batched_equals_unbatched_and_per_clip_targets(model):
    clips = torch.randn(2, 3, 4, 6, 7, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([0, 2])
    options = dict(occlusion_window=(2, 2, 3), occlusion_stride=(2, 2, 2), occlusion_fill="blur")
    one_at_a_time = occlusion(model, clips, targets, internal_batch_size=1, **options)
    batched = occlusion(model, clips, targets, internal_batch_size=7, **options)
    torch.testing.assert_close(one_at_a_time, batched, atol=1e-6, rtol=1e-5)
    alone = occlusion(model, clips[1:], 2, **options)
    torch.testing.assert_close(batched[1:], alone, atol=1e-6, rtol=1e-5)


def test_rise_masks_shape_range_and_keep_rate():
    grids, shifts = rise_masks(400, (4, 6, 7), (2, 3, 3), 0.3, torch.Generator().manual_seed(0))
    assert grids.shape == (400, 1, 3, 3, 4) and shifts.shape == (400, 3)
    assert set(grids.unique().tolist()) <= {0.0, 1.0}
    assert grids.mean().item() == pytest.approx(0.3, abs=0.02)
    assert (shifts >= 0).all() and (shifts < torch.tensor([2, 3, 3])).all()
    masks = upsample_rise_masks(grids, shifts, (4, 6, 7), (2, 3, 3))
    assert masks.shape == (400, 1, 4, 6, 7)
    assert masks.min().item() >= 0 and masks.max().item() <= 1
    assert masks.mean().item() == pytest.approx(0.3, abs=0.03)


def test_rise_matches_brute_force_and_is_batch_independent(model, clip):
    num_masks, cell, p_keep, seed = 24, (2, 3, 3), 0.5, 7
    baseline = torch.full_like(clip, -0.5)
    grids, shifts = rise_masks(num_masks, (4, 6, 7), cell, p_keep,
                               torch.Generator().manual_seed(seed))
    masks = upsample_rise_masks(grids, shifts, (4, 6, 7), cell)
    expected = torch.zeros(4, 6, 7)
    with torch.no_grad():
        for mask in masks:
            masked = baseline + mask * (clip - baseline)
            probability = model(masked).softmax(dim=1)[0, 1]
            expected += probability * mask[0]
    expected /= num_masks * p_keep
    info: dict = {}
    unbatched = rise(model, clip, 1, num_iter=num_masks, rise_cell=cell, rise_p=p_keep,
                     rise_baseline=baseline, seed=seed, internal_batch_size=1, info=info)
    batched = rise(model, clip, 1, num_iter=num_masks, rise_cell=cell, rise_p=p_keep,
                   rise_baseline=baseline, seed=seed, internal_batch_size=5)
    torch.testing.assert_close(unbatched[0, 0], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched, unbatched, atol=1e-6, rtol=1e-5)
    assert info["model_evaluations"] == num_masks


def test_rise_finds_the_evidence():
    # The class-0 logit grows with the mean of channel 0 inside a box (kept: 1, dropped: 0).
    class BoxLogit(nn.Module):
        def forward(self, clip):
            logit = 12 * (clip[:, 0, 1:3, 2:5, 2:5].mean(dim=(1, 2, 3)) - 0.5)
            return torch.stack([logit, torch.zeros_like(logit)], dim=1)

    clip = torch.ones(1, 3, 4, 8, 8)
    saliency = rise(BoxLogit(), clip, 0, num_iter=1000, rise_cell=(1, 2, 2), seed=0)[0, 0]
    inside = torch.zeros(4, 8, 8, dtype=torch.bool)
    inside[1:3, 2:5, 2:5] = True
    assert inside.flatten()[saliency.argmax()]
    assert saliency[inside].mean() > saliency[~inside].mean() + 0.05
    # Outside the box the map is flat: its spread is the Monte-Carlo noise, about 0.02.
    assert saliency[~inside].std() < 0.03


@pytest.mark.parametrize("name", ["occlusion", "rise"])
def test_model_state_is_restored(clip, name):
    model = SmallVideoNet()
    model.train()
    model.norm.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    options = {"num_iter": 4} if name == "rise" else {"occlusion_window": (2, 3, 3)}
    explain(name, model, clip, 0, **options)
    assert model.training and model.conv.training and not model.norm.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
