"""Class activation maps (vis_methods/cam.py) on hand-built models with known answers."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vis_methods import METHODS, get_method
from vis_methods.cam import (cam, grad_cam, grad_cam_pp, guided_grad_cam, layer_cam, score_cam,
                             xgrad_cam)
from vis_methods.gradient import guided_backprop
from vis_methods.targets import Counterfactual, RegressionTarget

CAM_METHODS = [name for name, entry in METHODS.items() if entry.module == "cam"]
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


class ColourDetectors(nn.Module):
    """Layer ``detect``: channel k = ReLU(input channel k), k < ``channels``; then a head.

    ``head="slices"``: ``score_k = sum_t c[k, t] * mean_hw(A_k[t])`` (per-time-slice weights);
    ``head="contrast"``: ``[mean(A_0) - mean(A_1), mean(A_1) - mean(A_0)]``;
    ``head="means"``: ``[mean(A_0), mean(A_1)]`` (a 2-D regression output).
    """

    def __init__(self, head: str, slice_weights: torch.Tensor | None = None, channels: int = 2):
        super().__init__()
        self.detect = nn.Conv3d(3, channels, 1, bias=False)
        with torch.no_grad():
            self.detect.weight.zero_()
            for k in range(channels):
                self.detect.weight[k, k] = 1.0
        self.relu = nn.ReLU()
        self.head = head
        self.register_buffer("slice_weights", slice_weights)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        features = self.relu(self.detect(clip))
        if self.head == "slices":
            return (self.slice_weights * features.mean((-2, -1))).sum(-1)
        means = features.mean((2, 3, 4))
        if self.head == "contrast":
            return torch.stack([means[:, 0] - means[:, 1], means[:, 1] - means[:, 0]], 1)
        return means


def patch_clip(patches, shape=(1, 3, 4, 6, 6)) -> torch.Tensor:
    """Zeros with value 1 in the given ``(channel, t, h slice, w slice)`` patches."""
    clip = torch.zeros(shape)
    for channel, t, rows, cols in patches:
        clip[0, channel, t, rows, cols] = 1.0
    return clip


RED = (0, 2, slice(1, 3), slice(3, 5))
GREEN = (1, 1, slice(3, 6), slice(0, 2))


class FrameCNN(nn.Module):
    """A frame CNN (conv2d over N*T frames, frame-major) + GRU over time: 4-D layer outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.gru = nn.GRU(4, 5, batch_first=True)
        self.fc = nn.Linear(5, 3)

    def features(self, clip: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = clip.shape
        frames = clip.transpose(1, 2).reshape(n * t, c, h, w)
        return self.relu(self.conv(frames)).mean((-2, -1)).view(n, t, -1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gru(self.features(clip))[0][:, -1])


class Clip3DEquivalent(FrameCNN):
    """The same network with the frame convolution written as a (1, 3, 3) Conv3d."""

    def __init__(self, frame_model: FrameCNN):
        super().__init__()
        self.load_state_dict(frame_model.state_dict())
        self.conv = nn.Conv3d(3, 4, (1, 3, 3), padding=(0, 1, 1))
        with torch.no_grad():
            self.conv.weight.copy_(frame_model.conv.weight.unsqueeze(2))
            self.conv.bias.copy_(frame_model.conv.bias)

    def features(self, clip: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(clip)).mean((-2, -1)).transpose(1, 2)


class Tripwire(nn.Module):
    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("tripwire")
        return x


def model_state(model: nn.Module) -> dict:
    return {
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grads": [(n, p.grad is None) for n, p in model.named_parameters()],
        "hooks": [(n, attr, list(getattr(m, attr, {}))) for n, m in model.named_modules()
                  for attr in HOOK_DICTS],
        "inplace": [(n, m.inplace) for n, m in model.named_modules() if isinstance(m, nn.ReLU)],
    }


def layer_output(model: nn.Module, layer: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    record = []
    handle = layer.register_forward_hook(lambda _m, _i, out: record.append(out.detach()))
    try:
        with torch.no_grad():
            model(clip)
    finally:
        handle.remove()
    return record[0]


# ------------------------------------------------------------------------- Grad-CAM basics

def test_registry_resolves_cam_methods():
    assert CAM_METHODS == ["grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "score_cam",
                           "cam", "guided_grad_cam"]
    for name in CAM_METHODS:
        assert callable(get_method(name))


def test_evidence_in_one_region_of_one_slice_lights_up_there_only():
    model = ColourDetectors("slices", torch.ones(2, 4))
    clip = patch_clip([RED])
    info: dict = {}
    result = grad_cam(model, clip, 0, target_layer="relu", info=info)
    # class-0 gradient at every position of channel 0 is 1 / (h w) = 1/36; channel 1 gets 0.
    torch.testing.assert_close(result, clip[:, :1] / 36)
    assert info == {"target_layer": "relu", "layer_grid": "4x6x6"}


def test_evidence_lights_up_its_region_through_a_strided_layer():
    model = nn.Sequential(ColourDetectors("slices", torch.ones(2, 4)))
    model[0].detect.stride = (1, 2, 2)
    clip = patch_clip([(0, 2, slice(2, 6), slice(6, 10))], shape=(1, 3, 4, 12, 12))
    result = grad_cam(model, clip, 0, target_layer=model[0].relu)[0, 0]
    peak = (result == result.max()).nonzero()
    assert ((peak[:, 0] == 2) & (peak[:, 1] >= 2) & (peak[:, 1] < 6)
            & (peak[:, 2] >= 6) & (peak[:, 2] < 10)).all()
    assert result[:, :, :4].max() == 0 and result[:, 8:].max() == 0  # far from the patch


def test_time_pooling_weights_each_slice_3d_pooling_the_whole_clip():
    # the head counts slice 2 against class 0: weights c = (1, 1, -1, 1) / 36 per slice.
    model = ColourDetectors("slices", torch.tensor([[1.0, 1.0, -1.0, 1.0], [0.0] * 4]))
    clip = patch_clip([(0, 1, slice(0, 2), slice(0, 2)), (0, 2, slice(3, 5), slice(3, 5))])
    per_slice = grad_cam(model, clip, 0, target_layer="relu")
    expected = clip[:, :1].clone() / 36
    expected[:, :, 2] = 0  # relu(-A / 36)
    torch.testing.assert_close(per_slice, expected)
    whole = grad_cam(model, clip, 0, target_layer="relu", cam_pooling="3d")
    torch.testing.assert_close(whole, clip[:, :1] * (0.5 / 36))  # mean(c) = 0.5
    with pytest.raises(ValueError, match="cam_pooling"):
        grad_cam(model, clip, 0, target_layer="relu", cam_pooling="2d")


def test_counterfactual_lights_up_the_opposing_region():
    model = ColourDetectors("contrast")
    clip = patch_clip([RED, GREEN])
    red_mask, green_mask = clip[:, :1] > 0, clip[:, 1:2] > 0
    factual = grad_cam(model, clip, 0, target_layer="relu")
    counterfactual = grad_cam(model, clip, Counterfactual(0), target_layer="relu")
    assert factual[red_mask].min() > 0 and factual[~red_mask].max() == 0
    assert counterfactual[green_mask].min() > 0 and counterfactual[~green_mask].max() == 0


def test_regression_target_picks_the_region_that_drives_the_regressed_value():
    model = ColourDetectors("means")
    clip = patch_clip([RED, GREEN])
    output = model(clip).detach()[0]
    red_mask, green_mask = clip[:, :1] > 0, clip[:, 1:2] > 0
    # output 0 is already right, output 1 should grow: only green can raise -loss.
    wants_more_green = RegressionTarget(torch.stack([output[0], output[1] + 5]))
    result = grad_cam(model, clip, wants_more_green, target_layer="relu", cam_pooling="3d")
    assert result[green_mask].min() > 0 and result[~green_mask].max() == 0
    wants_more_red = RegressionTarget(torch.stack([output[0] + 5, output[1]]))
    result = grad_cam(model, clip, wants_more_red, target_layer="relu", cam_pooling="3d")
    assert result[red_mask].min() > 0 and result[~red_mask].max() == 0


def test_two_clips_in_one_call_equal_each_alone_and_nothing_is_left_behind():
    model = small_cnn()
    generator = torch.Generator().manual_seed(5)
    first, second = (torch.randn(1, 3, 4, 8, 8, generator=generator) for _ in range(2))
    fresh = copy.deepcopy(model)
    before = model_state(model)
    together = grad_cam(model, torch.cat([first, second]), torch.tensor([1, 3]), target_layer="2")
    alone_first = grad_cam(model, first, 1, target_layer="2")
    alone_second = grad_cam(model, second, 3, target_layer="2")
    torch.testing.assert_close(together, torch.cat([alone_first, alone_second]))
    torch.testing.assert_close(alone_second, grad_cam(fresh, second, 3, target_layer="2"))
    assert model_state(model) == before


def test_target_layer_by_name_or_module_and_errors():
    model = small_cnn()
    clip = torch.randn(1, 3, 4, 8, 8)
    torch.testing.assert_close(grad_cam(model, clip, 0, target_layer="2"),
                               grad_cam(model, clip, 0, target_layer=model[2]))
    # the default layer is the last convolution
    torch.testing.assert_close(grad_cam(model, clip, 0), grad_cam(model, clip, 0,
                                                                  target_layer="2"))
    with pytest.raises(ValueError, match="no layer"):
        grad_cam(model, clip, 0, target_layer="layer4")
    with pytest.raises(ValueError, match="not return a tensor"):
        grad_cam(FrameCNN(), clip, 0, target_layer="gru")


# --------------------------------------------------------------- 4-D frame-CNN activations

def test_frame_cnn_activations_give_one_map_per_frame():
    torch.manual_seed(6)
    frame_model = FrameCNN().eval()
    clip_model = Clip3DEquivalent(frame_model).eval()
    clip = torch.randn(2, 3, 3, 6, 6)  # N = 2, T = 3: a wrong frame order would show
    target = torch.tensor([0, 2])
    torch.testing.assert_close(frame_model(clip), clip_model(clip))
    for method in (grad_cam, grad_cam_pp, xgrad_cam, layer_cam):
        expected = method(clip_model, clip, target, target_layer="relu")
        info: dict = {}
        result = method(frame_model, clip, target, target_layer="relu", info=info)
        torch.testing.assert_close(result, expected)
        assert info["layer_grid"] == "3x6x6"
    # a GRU head is no global average pooling: CAM refuses
    with pytest.raises(ValueError, match="global average pooling"):
        cam(frame_model, clip, target, target_layer="relu")


def test_layer_without_time_axis_gives_a_map_constant_over_time():
    model = nn.Sequential(nn.Flatten(1, 2), nn.Conv2d(3 * 4, 5, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    # (N, C, T, H, W) -> (N, C*T, H, W): flatten channels and time
    clip = torch.randn(1, 3, 4, 6, 6)
    result = grad_cam(model, clip, 1, target_layer="2")
    assert result.shape == (1, 1, 4, 6, 6)
    for t in range(1, 4):
        torch.testing.assert_close(result[:, :, t], result[:, :, 0])


# ---------------------------------------------------------------------------- the variants

def test_grad_cam_pp_closed_form_on_a_single_channel():
    # One channel, GAP + linear head: g = v / M everywhere, so the Grad-CAM++ weight is
    # M * (v/M) / (2 + S v / M) with S = sum(A), i.e. Grad-CAM times M / (2 + S v / M).
    model = nn.Sequential(nn.Conv3d(3, 1, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
                          nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[4].weight.copy_(torch.tensor([[0.7], [-0.2]]))
    clip = torch.randn(1, 3, 2, 4, 4, generator=torch.Generator().manual_seed(7))
    activation_sum = layer_output(model, model[1], clip).sum()
    size, v = 2 * 4 * 4, 0.7
    plain = grad_cam(model, clip, 0, target_layer="1", cam_pooling="3d")
    plus = grad_cam_pp(model, clip, 0, target_layer="1", cam_pooling="3d")
    torch.testing.assert_close(plus, plain * size / (2 + activation_sum * v / size))
    # a negative gradient (class 1) gets weight 0 in Grad-CAM++ and a negative one in Grad-CAM
    assert grad_cam_pp(model, clip, 1, target_layer="1", cam_pooling="3d").abs().max() == 0
    assert grad_cam(model, clip, 1, target_layer="1", cam_pooling="3d").abs().max() == 0


def test_grad_cam_pp_equals_grad_cam_where_the_weights_coincide():
    # Two channels whose (activation sum) x (gradient) products are equal: the Grad-CAM++
    # weights are then Grad-CAM's times one common factor, so the normalised maps are equal.
    model = ColourDetectors("means")
    clip = patch_clip([RED, GREEN])  # activation sums: red 2x2 = 4, green 3x2 = 6
    size = 4 * 6 * 6                 # M pooled positions

    def target(output: torch.Tensor) -> torch.Tensor:  # gradients g = (3, 2) / M
        return 3 * output[:, 0] + 2 * output[:, 1]     # so S_k g_k = 12 / M for both

    plain = grad_cam(model, clip, target, target_layer="relu", cam_pooling="3d")
    plus = grad_cam_pp(model, clip, target, target_layer="relu", cam_pooling="3d")
    torch.testing.assert_close(plus / plus.max(), plain / plain.max())
    torch.testing.assert_close(plus, plain * size / (2 + 12 / size))


def test_xgrad_cam_and_layer_cam_by_hand():
    model = ColourDetectors("slices", torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0] * 4]))
    clip = patch_clip([(0, 1, slice(0, 2), slice(0, 2)), (0, 3, slice(3, 5), slice(3, 5))])
    clip[0, 0, 3, 4, 4] = 2.0
    # gradient of channel 0 is c_t / 36 everywhere in slice t
    gradient = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 4, 1, 1) / 36
    # XGrad-CAM: sum(g A) / sum(A) over a slice = c_t / 36 (g constant in the slice)
    torch.testing.assert_close(xgrad_cam(model, clip, 0, target_layer="relu"),
                               clip[:, :1] * gradient)
    # Layer-CAM: relu(g) A position by position
    torch.testing.assert_close(layer_cam(model, clip, 0, target_layer="relu"),
                               clip[:, :1] * gradient)


def test_cam_is_the_classifier_row_times_the_activation():
    model = small_cnn()
    clip = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    target = torch.tensor([4, 0])
    activation = layer_output(model, model[3], clip)  # (N, 6, 4, 4, 4) before GAP + linear
    rows = model[6].weight.detach()[target].view(2, 6, 1, 1, 1)
    expected = (rows * activation).sum(1, keepdim=True).clamp(min=0)
    expected = nn.functional.interpolate(expected, size=(4, 8, 8), mode="trilinear")
    info: dict = {}
    torch.testing.assert_close(cam(model, clip, target, target_layer="3", info=info), expected)
    assert info["target_layer"] == "3"
    # Grad-CAM with one weight per channel is the same map up to the 4*4*4 pooled positions
    torch.testing.assert_close(grad_cam(model, clip, target, target_layer="3",
                                        cam_pooling="3d") * 64, expected)
    with pytest.raises(ValueError, match="global average pooling"):
        cam(model, clip, target, target_layer="2")  # a ReLU sits between: not a linear head


def test_score_cam_by_hand_and_batching():
    # Channels detect red and green; the score is the mean red response. The red channel's
    # mask keeps the red patch (score > 0), the green channel's mask removes it (score 0), so
    # the weights are softmax(s, 0) and the map is relu(w_red A_red + w_green A_green).
    model = ColourDetectors("means")
    clip = patch_clip([RED, GREEN])
    red_score = model(clip * (clip[:, :1] > 0))[0, 0].item()
    weights = torch.softmax(torch.tensor([red_score, 0.0]), 0)
    expected = weights[0] * clip[:, :1] + weights[1] * clip[:, 1:2]
    for batch in (1, 2, 5):
        torch.testing.assert_close(score_cam(model, clip, 0, target_layer="relu",
                                             internal_batch_size=batch), expected)


def test_score_cam_channel_subset_keeps_the_most_varied_channels():
    """With a subset, only the channels whose activation varies most are scored and weighted:
    a clip with a red patch and no green makes the green channel flat (zero), so one channel
    keeps red alone (weight softmax over one channel = 1), and all channels is the default."""
    model = ColourDetectors("means")
    clip = patch_clip([RED])
    full = score_cam(model, clip, 0, target_layer="relu")
    torch.testing.assert_close(score_cam(model, clip, 0, target_layer="relu",
                                         score_cam_channels=2), full)
    torch.testing.assert_close(score_cam(model, clip, 0, target_layer="relu",
                                         score_cam_channels=1), clip[:, :1])
    two = torch.cat([clip, patch_clip([GREEN])])            # per clip: red first, then green
    subset = score_cam(model, two, 0, target_layer="relu", score_cam_channels=1)
    torch.testing.assert_close(subset[0], clip[0, :1])
    torch.testing.assert_close(subset[1], two[1, 1:2])


def test_guided_grad_cam_is_grad_cam_times_guided_backprop():
    model = small_cnn()
    clip = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    expected = (grad_cam(model, clip, 2, target_layer="2")
                * guided_backprop(model, clip, 2))
    result = guided_grad_cam(model, clip, 2, target_layer="2")
    assert result.shape == clip.shape
    torch.testing.assert_close(result, expected)


# ----------------------------------------------------------------- temporary model changes

@pytest.mark.parametrize("name", CAM_METHODS)
@pytest.mark.parametrize("training", [False, True])
def test_methods_undo_temporary_changes(name, training):
    model = small_cnn(inplace=True)
    model.insert(4, Tripwire())  # after the target layer, before the head
    model[0].weight.requires_grad_(False)
    model.train(training)
    before = model_state(model)
    clip = torch.randn(1, 3, 2, 4, 4)
    options = {"target_layer": "3"}
    result = get_method(name)(model, clip, 1, **options)
    expected_channels = 3 if name == "guided_grad_cam" else 1
    assert result.shape == (1, expected_channels, 2, 4, 4) and torch.isfinite(result).all()
    assert model_state(model) == before
    model[4].armed = True
    with pytest.raises(RuntimeError, match="tripwire"):
        get_method(name)(model, clip, 1, **options)
    assert model_state(model) == before
