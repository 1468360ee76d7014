"""Extremal perturbations (2d_ep, 3d_ep, STEP) on a tiny model whose evidence is a known box.

The model is a centre-surround detector (a pixel minus the mean of its 21 x 21 neighbourhood,
thresholded and averaged over the clip): the clip's background is smooth and dim, so the
class-0 logit comes from the bright box alone, and blurring the box lowers it smoothly.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vis_methods import get_method
from vis_methods.perturbation import (SmoothMask, _area_loss, _CoreKernel, _SoftMaxPool,
                                      blur_frames, extremal_2d, extremal_3d, step)
from vis_methods.targets import RegressionTarget

FRAMES, SIZE = 16, 32
BOX = (4, 12, 8, 18, 12, 22)            # t0, t1, y0, y1, x0, x1 (end-exclusive)
SURROUND = 21
SELECTED_AT = 25                        # iteration at which the default keeps the better start


class BoxEvidenceNet(nn.Module):
    """Class 0: ``gain * mean(relu(centre_surround(clip) - 0.2)) - 4.5``; classes 1, 2: 0, -1.

    The centre-surround response is the channel mean minus its 21 x 21 box average (borders
    replicated). With the default gain the intact clip of :func:`box_clip` scores
    p(class 0) = 0.99 and a fully blurred one 0.01. A dropout layer (a no-op in eval mode) and
    a 1x1 convolution (identity) let tests see that modes and parameters are restored.
    """

    def __init__(self, gain: float = 192.0):
        super().__init__()
        self.channel_mean = nn.Conv3d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.channel_mean.weight.fill_(1 / 3)
        self.dropout = nn.Dropout(0.5)
        self.gain = gain

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        luma = self.dropout(self.channel_mean(clip))                       # (N, 1, T, H, W)
        r = SURROUND // 2
        padded = F.pad(luma, (r, r, r, r, 0, 0), mode="replicate")
        surround = F.avg_pool3d(F.avg_pool3d(padded, (1, SURROUND, 1), 1), (1, 1, SURROUND), 1)
        evidence = F.relu(luma - surround - 0.2).mean(dim=(1, 2, 3, 4))
        logit = self.gain * evidence - 4.5
        return torch.stack([logit, torch.zeros_like(logit), -torch.ones_like(logit)], dim=1)


def box_clip(frames=None, seed: int = 0):
    """``(clip (1, 3, T, H, W), inside (T, H, W) bool)``: dim smooth noise plus a bright box
    ``BOX`` (only in ``frames`` if given)."""
    generator = torch.Generator().manual_seed(seed)
    background = blur_frames(torch.randn(1, 3, FRAMES, SIZE, SIZE, generator=generator), 3.0)
    background = 0.3 * background / background.abs().max()
    t0, t1, y0, y1, x0, x1 = BOX
    inside = torch.zeros(FRAMES, SIZE, SIZE, dtype=torch.bool)
    inside[t0:t1, y0:y1, x0:x1] = True
    if frames is not None:
        keep = torch.zeros(FRAMES, dtype=torch.bool)
        keep[list(frames)] = True
        inside &= keep[:, None, None]
    clip = background + 1.5 * inside
    return clip, inside


@pytest.fixture(scope="module")
def model():
    return BoxEvidenceNet().eval()


@pytest.fixture(scope="module")
def clip_and_box():
    return box_clip()


def peak_inside(mask: torch.Tensor, inside: torch.Tensor, tolerance: int = 3) -> float:
    """Pointing game with a tolerance and with ties: the fraction of the voxels within 1 % of
    the maximum that lie in the box grown by ``tolerance`` pixels (about the mask's smoothing,
    as the paper's 15-px tolerance at 224 px)."""
    kernel = 2 * tolerance + 1
    grown = F.max_pool3d(inside[None, None].float(), (1, kernel, kernel), 1,
                         (0, tolerance, tolerance))[0, 0] > 0
    peak = mask >= 0.99 * mask.max()
    return float((peak & grown).sum() / peak.sum())


def mass_near(mask: torch.Tensor, inside: torch.Tensor, tolerance: int) -> float:
    """Fraction of the mask's mass within ``tolerance`` pixels of the box."""
    kernel = 2 * tolerance + 1
    grown = F.max_pool3d(inside[None, None].float(), (1, kernel, kernel), 1,
                         (0, tolerance, tolerance))[0, 0]
    return float((mask * grown).sum() / mask.sum())


def temporal_change(mask: torch.Tensor) -> float:
    """Mean absolute frame-to-frame change of a mask ``(T, H, W)``."""
    return float((mask[1:] - mask[:-1]).abs().mean())


# ----------------------------------------------------------------------------- building blocks
def test_smooth_mask_matches_hand_computed_values():
    # 21 x 21 px, step 7 -> 3 x 3 grid centred at 3, 10, 17; sigma 7 -> radius 2 cells, so
    # every pixel pools over all 9 grid points.
    generator = SmoothMask(21, 21, step=7, sigma=7)
    assert generator.grid == (3, 3) and generator.radius == (2, 2)
    params = torch.zeros(1, 3, 3)
    params[0, 1, 1] = 1.0
    mask = generator(params)[0]

    def pooled(value):   # soft-max (coldness 20) of one value among 8 zeros
        return value * math.exp(20 * value) / (math.exp(20 * value) + 8)

    assert mask[10, 10].item() == pytest.approx(pooled(1.0), abs=1e-6)
    # 7 px from the centre: k(1) = exp(-2 * 0.5^2).
    assert mask[10, 17].item() == pytest.approx(pooled(math.exp(-0.5)), abs=1e-5)
    # 5 px: k(5/7) = exp(-2 * (5/7 - 0.5)^2).
    assert mask[10, 5].item() == pytest.approx(pooled(math.exp(-2 * (5 / 7 - 0.5) ** 2)), abs=1e-5)
    # Within sigma / 2 of the centre the kernel is flat.
    assert mask[12, 11].item() == pytest.approx(pooled(1.0), abs=1e-6)
    # All parameters at 1: close to one everywhere (a small dip between grid points, where
    # sigma equals the step); all at 0: zero.
    assert generator(torch.ones(1, 3, 3)).min().item() > 0.95
    assert generator(torch.zeros(1, 3, 3)).abs().max().item() == 0.0


def test_soft_max_pooling_gradient():
    values = torch.rand(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    valid = (torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(0)) > 0.3).double()
    valid[0] = 1
    assert torch.autograd.gradcheck(lambda v: _SoftMaxPool.apply(v, valid, 20.0), (values,))
    # Same as a soft-max weighting that leaves out the invalid neighbours.
    expected = (values * torch.softmax(20 * values + torch.log(valid), dim=1)).sum(dim=1)
    torch.testing.assert_close(_SoftMaxPool.apply(values, valid, 20.0), expected)


def test_blur_matches_torchray_imsmooth():
    from torchray.utils import imsmooth
    clip = torch.randn(2, 3, 4, 20, 24, generator=torch.Generator().manual_seed(1))
    ours = blur_frames(clip, 2.0)
    frames = clip.transpose(1, 2).reshape(8, 3, 20, 24)
    peer = imsmooth(frames, sigma=2.0, padding_mode="replicate")
    peer = peer.view(2, 4, 3, 20, 24).transpose(1, 2)
    torch.testing.assert_close(ours, peer, atol=1e-5, rtol=1e-5)


def test_area_loss_hand_computed():
    masks = torch.zeros(1, 2, 2, 2, 5)                 # (N, A, T, H, W): 20 voxels, 10 per frame
    masks[0, :, 0, 0, :2] = 1.0                        # two ones, in frame 0 only
    areas = torch.tensor([0.1, 0.2])
    per_clip = _area_loss(masks, areas, per_frame=False)
    # Area 0.1 of 20 voxels wants exactly 2 ones: no loss. Area 0.2 wants 4: two are missing.
    assert per_clip[0, 0].item() == pytest.approx(0.0)
    assert per_clip[0, 1].item() == pytest.approx(2 / 20)
    per_frame = _area_loss(masks, areas, per_frame=True)
    # Per frame: frame 0 has 2 ones (wants 1 or 2), frame 1 none (wants 1 or 2).
    assert per_frame[0, 0].item() == pytest.approx((1 / 10 + 1 / 10) / 2)
    assert per_frame[0, 1].item() == pytest.approx((0 + 2 / 10) / 2)
    # With a margin: ones outside the frame are added to the ideal, values below 1/2 there
    # count as rim. Frame = the first 4 columns; column 4 is margin.
    in_frame = torch.zeros(2, 5, dtype=torch.bool)
    in_frame[:, :4] = True
    margin = torch.zeros(1, 1, 2, 2, 5)
    margin[0, 0, 0, 0, :2] = 1.0                       # two ones in the frame
    margin[0, 0, 0, 1, 4] = 1.0                        # one in the margin: not charged
    margin[0, 0, 1, 0, 4] = 0.25                       # rim in the margin: charged 0.25^2
    loss = _area_loss(margin, torch.tensor([0.125]), per_frame=False, in_frame=in_frame)
    # 16 frame voxels x 0.125 = 2 ones wanted in the frame, + 1 in the margin = 3 ones.
    assert loss.item() == pytest.approx(0.25 ** 2 / 20)


def test_core_loss_prefers_a_compact_tube():
    core = _CoreKernel.build(16, 33, 33, [0.05], side=11, device=torch.device("cpu"))
    assert core.kernel.shape == (1, 1, 7, 11, 11)
    assert core.kernel.sum().item() == pytest.approx(1.0)
    zeros = torch.zeros(1, 1, 16, 33, 33)
    # Nothing on: the top-k responses miss 1 by 1 each -> loss 1; all on: the rest miss 0 by 1.
    assert core.loss(zeros).item() == pytest.approx(1.0)
    assert core.loss(torch.ones_like(zeros)).item() == pytest.approx(1.0)
    tube = zeros.clone()
    tube[..., 2:14, 11:22, 11:22] = 1                  # one 12-frame tube on the stride grid
    scattered = torch.zeros(16 * 33 * 33)
    scattered[torch.randperm(scattered.numel(), generator=torch.Generator().manual_seed(0))
              [:int(tube.sum())]] = 1
    assert core.loss(tube).item() < 0.5 * core.loss(scattered.view_as(zeros)).item()


# ----------------------------------------------------------------------------- localisation
# STEP's reward weighs little against its area and core terms: it keeps less of the box.
@pytest.mark.parametrize("method, kept", [(extremal_3d, 0.75), (step, 0.6)])
def test_clip_level_masks_cover_the_box(model, clip_and_box, method, kept):
    clip, inside = clip_and_box
    info: dict = {}
    mask = method(model, clip, 0, perturb_area=[0.05], info=info)
    assert mask.shape == (1, 1, FRAMES, SIZE, SIZE)
    mask = mask[0, 0]
    assert peak_inside(mask, inside) > 0.95
    # Most of the box is kept, and most of the mask lies on the box or its smooth rim.
    assert (mask[inside] > 0.5).float().mean().item() > kept
    assert mass_near(mask, inside, 5) > 0.9        # 5 px: about 1.5 mask sigma
    # Two starts run side by side until the better one is kept, a quarter into the run; one
    # more evaluation orders the kept voxels.
    assert info["model_evaluations"] == info["iterations"] + SELECTED_AT + 1 <= 126
    assert 0 < info["final_probability"] <= 1


def test_2d_masks_find_the_box_in_every_frame_where_it_is(model, clip_and_box):
    clip, inside = clip_and_box
    mask = extremal_2d(model, clip, 0, perturb_area=[0.1])[0, 0]
    # The area constraint holds frame by frame: frames without evidence get 10 % too (frames
    # with it keep the whole box and its smooth rim, 30 %).
    empty = [f for f in range(FRAMES) if not BOX[0] <= f < BOX[1]]
    assert mask[empty].mean(dim=(1, 2)).sub(0.1).abs().max().item() < 0.02
    for frame in range(BOX[0], BOX[1]):
        assert peak_inside(mask[frame], inside[frame]) > 0.95, frame


def test_step_is_temporally_smoother_than_3d_ep(model):
    # The texture is shown in every other frame: 3d_ep follows it on and off, STEP's core loss
    # bridges the gaps.
    clip, inside = box_clip(frames=(4, 6, 8, 10, 12))
    flicker = BoxEvidenceNet(gain=192.0 * 8 / 5).eval()
    mask_3d = extremal_3d(flicker, clip, 0, perturb_area=[0.08])[0, 0]
    mask_step = step(flicker, clip, 0, perturb_area=[0.08])[0, 0]
    assert peak_inside(mask_step, inside) > 0.5
    assert temporal_change(mask_step) < 0.7 * temporal_change(mask_3d)


# ----------------------------------------------------------------------------- area constraint
@pytest.mark.parametrize("method, areas", [(extremal_2d, (0.35, 0.5)), (extremal_3d, (0.2, 0.35)),
                                           (step, (0.2, 0.35))])
def test_area_matches_several_requested_areas(model, clip_and_box, method, areas):
    # Areas that can hold the evidence (2d_ep: in every frame), optimised in one batch.
    clip, _ = clip_and_box
    info: dict = {}
    masks = method(model, clip, 0, perturb_area=list(areas), info=info)
    assert masks.shape == (1, 2, FRAMES, SIZE, SIZE)
    assert info["output_names"] == [f"area_{a:g}" for a in areas]
    # The regulariser asks for that fraction of ones: the part above 1/2 matches it closely;
    # the smooth rim adds a little to the mean.
    above_half = (masks > 0.5).float().mean(dim=(2, 3, 4))[0]
    assert above_half.tolist() == pytest.approx(list(areas), abs=0.01)
    achieved = masks.mean(dim=(2, 3, 4))[0]
    assert achieved.tolist() == pytest.approx(list(areas), abs=0.035)
    reported = [float(v) for v in info["final_area"]]
    assert reported == pytest.approx(achieved.tolist(), abs=1e-4)


# ----------------------------------------------------------------------------- variants
@pytest.mark.parametrize("perturbation", ["blur", "fade"])
def test_dual_masks_find_the_box(model, clip_and_box, perturbation):
    clip, inside = clip_and_box
    info: dict = {}
    mask = extremal_3d(model, clip, 0, perturb_area=[0.05], ep_variant="dual", perturbation=perturbation,
                       baseline=torch.zeros_like(clip), info=info)[0, 0]
    assert peak_inside(mask, inside) > 0.95
    # Keeping the mask preserves the class, deleting it removes the class.
    assert info["final_probability"] > 0.5 > info["final_deleted_probability"]
    assert info["model_evaluations"] == 2 * (info["iterations"] + SELECTED_AT)


def test_deletion_mask_removes_the_class_where_the_evidence_is(model, clip_and_box):
    clip, inside = clip_and_box
    info: dict = {}
    baseline = torch.zeros_like(clip)
    mask = extremal_3d(model, clip, 0, perturb_area=[0.1], ep_variant="delete", perturbation="fade",
                       baseline=baseline, info=info)[0, 0]
    assert info["final_probability"] < 0.05
    # The deletion is specific: the same mask values at shuffled places leave the class.
    order = torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(0))
    shuffled = mask.flatten()[order]
    with torch.no_grad():
        faded = model(clip * (1 - shuffled.view_as(mask))).softmax(1)[0, 0].item()
    assert faded > 0.5
    # Nearly all of the mask lies in the frames that hold the evidence.
    evidence_frames = mask[BOX[0]:BOX[1]].sum() / mask.sum()
    assert evidence_frames.item() > 0.95


def test_callable_target_uses_its_score(model, clip_and_box):
    clip, inside = clip_and_box
    info: dict = {}
    # Regression-style target: minus the squared distance of logit 0 to a high value.
    target = RegressionTarget(torch.tensor([[6.0, 0.0, -1.0]]))
    mask = extremal_3d(model, clip, target, perturb_area=[0.05], info=info)[0, 0]
    assert "final_probability" not in info
    assert info["final_score"] < 0
    assert peak_inside(mask, inside) > 0.95


def test_batched_clips_and_chunks_match_single_runs(model):
    clip_a, _ = box_clip(seed=0)
    clip_b, _ = box_clip(seed=1)
    options = dict(perturb_area=[0.1, 0.2], num_iter=15, early_stop=False)
    # Different targets per clip: class 0 for the first, class 2 for the second.
    both = step(model, torch.cat([clip_a, clip_b]), torch.tensor([0, 2]), internal_batch_size=3,
                **options)
    alone_a = step(model, clip_a, 0, **options)
    alone_b = step(model, clip_b, 2, **options)
    torch.testing.assert_close(both[0:1], alone_a, atol=1e-4, rtol=0)
    torch.testing.assert_close(both[1:2], alone_b, atol=1e-4, rtol=0)


def test_the_better_start_is_kept_with_its_optimiser_state(model, clip_and_box, monkeypatch):
    import vis_methods.perturbation as perturbation_module
    clip, _ = clip_and_box
    options = dict(perturb_area=[0.05, 0.2], num_iter=40, early_stop=False)
    runs = {}
    for starts in [(0.5,), (1.0,), (0.5, 1.0)]:
        monkeypatch.setattr(perturbation_module, "FAST_STARTS",
                            {**perturbation_module.FAST_STARTS, "preserve": starts})
        info: dict = {}
        runs[starts] = (extremal_3d(model, clip, 0, info=info, **options), info)
    both, info = runs[(0.5, 1.0)]
    # 2 areas; selection after 40 / 4; one evaluation per area orders the kept voxels.
    assert info["model_evaluations"] == 2 * (2 * 10 + 30) + 2
    for area in range(2):
        # Whichever start the combined run kept, it continued exactly as that start alone.
        matches = [torch.allclose(both[:, area], runs[(s,)][0][:, area], atol=1e-5)
                   for s in (0.5, 1.0)]
        assert any(matches), area


def test_relevance_orders_the_kept_voxels_within_its_bound(model, clip_and_box, monkeypatch):
    import vis_methods.perturbation as perturbation_module
    clip, inside = clip_and_box
    options = dict(perturb_area=[0.1], num_iter=30, early_stop=False)
    ordered = step(model, clip, 0, **options)[0, 0]
    monkeypatch.setattr(perturbation_module, "RELEVANCE_ORDER", 0.0)
    plain = step(model, clip, 0, **options)[0, 0]
    # mask x (1 - e + e r), r in [0, 1]: never above the optimised mask, at most e below it.
    assert (ordered <= plain + 1e-6).all()
    assert ((plain - ordered) <= 0.05 * plain + 1e-6).all()
    assert float((plain - ordered).max()) > 0.01
    assert peak_inside(ordered, inside) == 1.0


def test_reference_optimizer_runs_all_iterations(model, clip_and_box):
    clip, _ = clip_and_box
    info: dict = {}
    extremal_3d(model, clip, 0, ep_optimizer="reference", num_iter=20, info=info)
    assert info["iterations"] == info["model_evaluations"] == 20
    info_fast: dict = {}
    extremal_3d(model, clip, 0, num_iter=20, info=info_fast)
    with pytest.raises(ValueError, match="optimizer"):
        extremal_3d(model, clip, 0, ep_optimizer="lbfgs")


# ----------------------------------------------------------------------------- model state
@pytest.mark.parametrize("name", ["2d_ep", "3d_ep", "step"])
def test_model_state_is_restored(clip_and_box, name):
    clip, _ = clip_and_box
    model = BoxEvidenceNet()
    model.train()
    model.dropout.eval()                                 # a mixed state must come back as it was
    model.channel_mean.weight.requires_grad_(True)
    extra = nn.Parameter(torch.zeros(1), requires_grad=False)
    model.register_parameter("unused", extra)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    get_method(name)(model, clip, 0, num_iter=3)
    layer = model.channel_mean
    assert model.training and not model.dropout.training and layer.training
    assert layer.weight.requires_grad and not model.unused.requires_grad
    assert layer.weight.grad is None
    assert not model._forward_hooks and not layer._forward_hooks
    assert not model._backward_hooks and not layer._backward_hooks
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# ----------------------------------------------------------------------------- peer: TorchRay
def test_single_frame_agrees_with_torchray_extremal_perturbation(model):
    from torchray.attribution.extremal_perturbation import extremal_perturbation
    clip, inside = box_clip()
    frame = clip[:, :, 6:7]                              # (1, 3, 1, H, W), the box is there

    class FrameModel(nn.Module):                         # 2-D view of the video model
        def __init__(self, video_model):
            super().__init__()
            self.video_model = video_model

        def forward(self, image):
            return self.video_model(image.unsqueeze(2))

    ours = extremal_3d(model, frame, 0, perturb_area=[0.12])[0, 0, 0]
    saved = [p.requires_grad for p in model.parameters()]
    try:
        peer, _ = extremal_perturbation(FrameModel(model), frame[:, :, 0], 0, areas=[0.12],
                                        step=2, sigma=3, max_iter=400, jitter=False)
    finally:
        for p, flag in zip(model.parameters(), saved):  # TorchRay leaves them frozen
            p.requires_grad_(flag)
    peer = peer[0, 0]
    assert peak_inside(ours, inside[6]) > 0.95 and peak_inside(peer, inside[6]) > 0.95
    top_ours = ours >= ours.flatten().kthvalue(int(0.88 * ours.numel())).values
    top_peer = peer >= peer.flatten().kthvalue(int(0.88 * peer.numel())).values
    iou = (top_ours & top_peer).sum().item() / (top_ours | top_peer).sum().item()
    assert iou > 0.6


def test_step_runs_longer_by_default_on_frames_larger_than_112_px():
    from vis_methods.perturbation import default_num_iter
    assert default_num_iter("step", "adam", 112) == 100
    assert default_num_iter("step", "adam", 224) == 190
    assert default_num_iter("3d", "adam", 224) == default_num_iter("2d", "adam", 224) == 100
    assert default_num_iter("step", "reference", 224) == 2000
    # Through the method: a 224 px clip (two frames, a linear model) runs 190 iterations with
    # early stopping off, a 112 px one 100; 1.25 x iterations + 1 evaluations (two starts for
    # a quarter of the run, one to order the kept voxels).
    step = get_method("step")
    for size, iterations, evaluations in ((224, 190, 239), (112, 100, 126)):
        torch.manual_seed(0)
        linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * size * size, 2)).eval()
        info: dict = {}
        step(linear, torch.rand(1, 3, 2, size, size), 0, early_stop=False, info=info)
        assert info["iterations"] == iterations
        assert info["model_evaluations"] == evaluations
