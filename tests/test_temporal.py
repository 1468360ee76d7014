"""Motion or appearance: static baselines, temporal sensitivity, verdicts and the evaluation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from models import get_model_spec
from utils.evaluation import motion_eval
from utils.evaluation.synthetic_eval import model_input
from utils.demo.synthetic import SyntheticConfig, generate_clip
from utils.pipeline.views import write_temporal_sensitivity
from utils.render.views import temporal_figure
from vis_methods.gradient import integrated_grad
from vis_methods.views import temporal
from vis_methods.views.temporal import (APPEARANCE_SUFFICES, MIXED, USES_ORDER, segment_bounds,
                                        static_clip, summarise_temporal_sensitivity,
                                        temporal_sensitivity, verdict)


# ------------------------------------------------------------------------------ toy models
class MeanFrameModel(nn.Module):
    """Sees only the clip's mean frame: ``g(mean_T(x))`` with a small non-linear head."""

    def __init__(self, channels: int = 3, size: int = 6, classes: int = 3):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.hidden = nn.Linear(channels * size * size, 8)
        self.head = nn.Linear(8, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def frame_head(self, frame: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(frame.flatten(1))))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.frame_head(clip.mean(2))


class FirstFrameModel(MeanFrameModel):
    """Sees only the first frame."""

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.frame_head(clip[:, :, 0])


class CentroidDirectionModel(nn.Module):
    """Reads horizontal motion: the intensity centroid's column in every frame, its mean
    velocity ``v = (cx_last - cx_first) / (T - 1)``, logits ``(-k v, k v)`` for (left, right)."""

    def __init__(self, gain: float = 2.0):
        super().__init__()
        self.gain = gain

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        intensity = clip[:, 0]                                     # (N, T, H, W)
        columns = torch.arange(clip.shape[-1], dtype=clip.dtype)
        cx = (intensity * columns).sum((2, 3)) / intensity.sum((2, 3))
        velocity = (cx[:, -1] - cx[:, 0]) / (clip.shape[2] - 1)
        return torch.stack([-self.gain * velocity, self.gain * velocity], dim=1)


def _random_clip(frames: int = 8, size: int = 6, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, frames, size, size, generator=generator, dtype=torch.float64)


def _moving_square(frames: int = 16, size: int = 24, start: int = 2) -> torch.Tensor:
    """A 3x3 bright square on black moving right 1 px per frame: centroid column start+1+t."""
    clip = torch.zeros(1, 1, frames, size, size, dtype=torch.float64)
    for t in range(frames):
        clip[0, 0, t, 10:13, start + t:start + t + 3] = 1.0
    return clip


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- static_clip
def test_static_clip_mean_and_first_by_hand():
    clip = torch.arange(12, dtype=torch.float32).view(2, 1, 3, 1, 2)
    # clip 0, pixel 0: frames 0, 2, 4 -> mean 2; pixel 1: 1, 3, 5 -> 3.
    # clip 1, pixel 0: 6, 8, 10 -> 8; pixel 1: 7, 9, 11 -> 9.
    expected_mean = torch.tensor([[2.0, 3.0], [8.0, 9.0]]).view(2, 1, 1, 1, 2).expand(2, 1, 3, 1, 2)
    expected_first = torch.tensor([[0.0, 1.0], [6.0, 7.0]]).view(2, 1, 1, 1, 2).expand(2, 1, 3, 1, 2)
    mean = static_clip(clip, "mean")
    assert torch.equal(mean, expected_mean)
    assert torch.equal(static_clip(clip, "first"), expected_first)
    assert mean.is_contiguous() and mean.data_ptr() != clip.data_ptr()
    mean += 1  # a new tensor: the clip is untouched
    assert clip[0, 0, 0, 0, 0] == 0


def test_bad_inputs_raise_one_line_errors():
    clip = torch.zeros(1, 3, 4, 2, 2)
    with pytest.raises(ValueError, match="unknown static mode"):
        static_clip(clip, "median")
    with pytest.raises(ValueError, match=r"\(N, C, T, H, W\)"):
        static_clip(clip[0])
    model = MeanFrameModel(size=2)
    with pytest.raises(ValueError, match="segments must be between 1 and"):
        temporal_sensitivity(model, clip, 0, segments=5)
    with pytest.raises(ValueError, match="one clip"):
        temporal_sensitivity(model, clip.repeat(2, 1, 1, 1, 1), 0)
    with pytest.raises(ValueError, match="out of range"):
        temporal_sensitivity(model, clip, 3)
    with pytest.raises(ValueError, match="num_shuffles"):
        temporal_sensitivity(model, clip, 0, num_shuffles=0)
    with pytest.raises(ValueError, match="class index"):
        temporal_sensitivity(model, clip, "ironing")
    with pytest.raises(ValueError, match="one class index"):
        temporal_sensitivity(model, clip, torch.tensor([0, 1]))
    as_tensor = temporal_sensitivity(model, clip, torch.tensor([2]))
    assert as_tensor["target_class"] == 2
    assert as_tensor["probabilities"] == temporal_sensitivity(model, clip, 2)["probabilities"]


def test_segment_bounds_cover_the_clip():
    assert segment_bounds(16, 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert segment_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert segment_bounds(3, 1) == [(0, 3)]


# --------------------------------------------------------- a model that sees appearance only
def test_mean_frame_model_explains_nothing_against_its_static_mean_baseline():
    model = MeanFrameModel().double()
    clip = _random_clip()
    baseline = static_clip(clip, "mean")
    info: dict = {}
    attribution = integrated_grad(model, clip, torch.tensor([1]), num_iter=8, ig_baseline=baseline,
                                  info=info)
    # Both ends have the same mean frame, so f(clip) = f(baseline): nothing to explain.
    assert info["target_score"] == pytest.approx(info["baseline_score"], abs=1e-12)
    assert abs(info["completeness_gap"]) < 1e-9
    # Summed over time the map is zero at every pixel and channel ...
    assert attribution.sum(dim=2).abs().max() < 1e-9
    # ... but not voxel by voxel: every path point has the mean frame m, so the gradient is the
    # same at every step, grad g(m) / T in every frame, and IG = (x_t - m) * grad g(m) / T.
    mean = clip.mean(2).requires_grad_(True)
    (grad_m,) = torch.autograd.grad(model.frame_head(mean)[0, 1], mean)
    expected = (clip - baseline) * grad_m.unsqueeze(2) / clip.shape[2]
    torch.testing.assert_close(attribution, expected, rtol=1e-10, atol=1e-12)
    assert attribution.abs().max() > 1e-2

    result = temporal_sensitivity(model, clip, 1)
    p = result["probabilities"]
    for condition in ("shuffled", "reversed", "frozen_mean"):
        assert p[condition] == pytest.approx(p["original"], abs=1e-12)
    assert result["verdict"] == APPEARANCE_SUFFICES


def test_first_frame_model_gets_exactly_zero_attribution_against_its_first_frame():
    model = FirstFrameModel().double()
    clip = _random_clip(seed=3)
    attribution = integrated_grad(model, clip, torch.tensor([0]), num_iter=8,
                                  ig_baseline=static_clip(clip, "first"))
    assert attribution.abs().max() < 1e-6
    # The black (zeros) baseline does give it a map, all of it in frame 0.
    black = integrated_grad(model, clip, torch.tensor([0]), num_iter=8, ig_baseline="zeros")
    assert black[:, :, 0].abs().sum() > 1e-2
    assert black[:, :, 1:].abs().max() == 0


# ------------------------------------------------------------- a model that reads motion
def test_direction_model_probabilities_by_hand():
    model = CentroidDirectionModel(gain=2.0)
    clip = _moving_square()
    result = temporal_sensitivity(model, clip, 1, segments=4, seed=5, num_shuffles=3)
    p = result["probabilities"]
    # cx_t = 3 + t, v = 1 px/frame: logits (-2, 2), p(right) = sigmoid(4).
    assert p["original"] == pytest.approx(_sigmoid(4.0), abs=1e-12)
    assert p["reversed"] == pytest.approx(_sigmoid(-4.0), abs=1e-12)
    assert p["frozen_middle"] == pytest.approx(0.5, abs=1e-12)
    assert p["frozen_mean"] == pytest.approx(0.5, abs=1e-12)
    # Shuffles: v = (order[-1] - order[0]) / 15 for each seeded order.
    expected = [_sigmoid(4.0 * (o[-1] - o[0]) / 15) for o in result["shuffle_orders"]]
    np.testing.assert_allclose(result["shuffled_each"], expected, atol=1e-12)
    assert p["shuffled"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert all(o != list(range(16)) for o in result["shuffle_orders"])
    # Segments frozen to their own first frame: only the last one moves an end point
    # (frame 15 becomes frame 12: v = 12 / 15).
    for k in (1, 2, 3):
        assert p[f"segment_{k}"] == pytest.approx(p["original"], abs=1e-12)
    assert p["segment_4"] == pytest.approx(_sigmoid(4.0 * 12 / 15), abs=1e-12)
    assert result["segment_frames"] == [[0, 4], [4, 8], [8, 12], [12, 16]]
    assert result["predictions"]["original"] == 1 and result["predictions"]["reversed"] == 0
    assert result["verdict"] == USES_ORDER
    # Plain Python values throughout.
    assert all(type(v) is float for v in p.values())
    assert all(type(v) is float for v in result["shuffled_each"])


def test_same_seed_same_shuffles_and_batching_does_not_matter():
    model = CentroidDirectionModel()
    clip = _moving_square()
    first = temporal_sensitivity(model, clip, 1, seed=11)
    again = temporal_sensitivity(model, clip, 1, seed=11, batch_size=3)
    other = temporal_sensitivity(model, clip, 1, seed=12)
    assert first["shuffle_orders"] == again["shuffle_orders"]
    assert first["probabilities"] == pytest.approx(again["probabilities"], abs=1e-12)
    assert first["shuffle_orders"] != other["shuffle_orders"]


def test_model_modes_are_restored_and_batch_statistics_untouched():
    model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.Flatten(), nn.LazyLinear(2))
    clip = torch.randn(1, 3, 4, 3, 3)
    model(clip)  # materialise the lazy layer
    model.train()
    model[1].eval()  # a module with its own mode
    running = model[1].running_mean.clone()
    temporal_sensitivity(model, clip, 0)
    assert model.training and model[0].training and not model[1].training
    assert torch.equal(model[1].running_mean, running)


# ------------------------------------------------------------------------------ verdicts
@pytest.mark.parametrize("probabilities, expected", [
    # shuffling drops 0.25 > 0.2 absolute
    ({"original": 0.9, "shuffled": 0.65, "reversed": 0.9, "frozen_middle": 0.9, "frozen_mean": 0.9},
     USES_ORDER),
    # reversing drops 0.06 = 60 % of 0.1 (above the 0.05 floor)
    ({"original": 0.1, "shuffled": 0.1, "reversed": 0.04, "frozen_middle": 0.1, "frozen_mean": 0.1},
     USES_ORDER),
    # 80 % relative but only 0.04 absolute: below the floor, and frozen/order within tolerance
    ({"original": 0.05, "shuffled": 0.01, "reversed": 0.05, "frozen_middle": 0.05, "frozen_mean": 0.05},
     APPEARANCE_SUFFICES),
    # frozen middle off by 0.3 but the mean frame within 0.05; order changes 0.09
    ({"original": 0.8, "shuffled": 0.71, "reversed": 0.8, "frozen_middle": 0.5, "frozen_mean": 0.75},
     APPEARANCE_SUFFICES),
    # no order drop, but both frozen clips lose 0.3: motion matters, its order does not
    ({"original": 0.8, "shuffled": 0.75, "reversed": 0.8, "frozen_middle": 0.5, "frozen_mean": 0.5},
     MIXED),
    # shuffling raises the probability by 0.15: not "appearance suffices"
    ({"original": 0.5, "shuffled": 0.65, "reversed": 0.5, "frozen_middle": 0.5, "frozen_mean": 0.5},
     MIXED),
])
def test_verdict_thresholds(probabilities, expected):
    assert verdict(probabilities)[0] == expected


def test_order_verdict_notes_when_a_still_frame_scores_as_well():
    # Shuffling drops 0.31, yet the still middle frame scores 1.0 (I3D on a bass-guitar clip).
    label, reason = verdict({"original": 0.74, "shuffled": 0.43, "reversed": 0.94,
                             "frozen_middle": 1.0, "frozen_mean": 0.0})
    assert label == USES_ORDER and "frozen clip keeps p = 1.000" in reason
    label, reason = verdict({"original": 0.74, "shuffled": 0.43, "reversed": 0.94,
                             "frozen_middle": 0.5, "frozen_mean": 0.0})
    assert label == USES_ORDER and "frozen" not in reason
    # Mixed: the reason names what kept it from "appearance suffices".
    label, reason = verdict({"original": 0.5, "shuffled": 0.69, "reversed": 0.9,
                             "frozen_middle": 0.42, "frozen_mean": 0.02})
    assert label == MIXED
    assert reason == "order drop -0.190 too small; shuffled/reversed change it by 0.400 >= 0.1"


def test_thresholds_are_constants():
    with pytest.raises(TypeError):
        temporal.THRESHOLDS["order_drop_absolute"] = 0.5
    assert temporal.THRESHOLDS["order_drop_absolute"] == temporal.ORDER_DROP_ABSOLUTE == 0.2
    assert temporal.APPEARANCE_FROZEN_TOLERANCE == 0.1


# ------------------------------------------------------------------- files and summaries
def test_write_and_summarise(tmp_path):
    model = CentroidDirectionModel()
    square = _moving_square()
    moving = temporal_sensitivity(model, square, 1, segments=2)
    still = temporal_sensitivity(MeanFrameModel().double(), _random_clip(), 0, segments=2)
    paths = write_temporal_sensitivity(moving, tmp_path, "square", "centroid_net",
                                       ["left", "right", "up"])
    table = pd.read_csv(paths["csv"])
    assert list(table["condition"]) == list(moving["probabilities"])
    np.testing.assert_allclose(table["probability"], list(moving["probabilities"].values()))
    np.testing.assert_allclose(table["change"],
                               table["probability"] - moving["probabilities"]["original"])
    assert (table["verdict"] == USES_ORDER).all()
    with Image.open(paths["png"]) as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["square_temporal.csv",
                                                          "square_temporal.png"]
    with pytest.raises(ValueError, match="plain file name"):
        write_temporal_sensitivity(moving, tmp_path, "a/b", "centroid_net")
    # The figure names the class (not its index), the model and the verdict, and each
    # condition whose prediction is another class says which.
    drawing = temporal_figure(moving, "square", "centroid_net", ["left", "right", "up"])
    assert drawing.says("p(right) (softmax probability)") and not drawing.says("class 1")
    assert drawing.says("class: right   model: centroid_net") and drawing.says("square: uses order")
    others = [n for n, c in moving["predictions"].items() if c != 1]
    assert others and sum(t.startswith("predicted: ") for t in drawing.texts) == len(others)
    assert temporal_figure(moving, "square", "centroid_net").says("p(class 1)")

    summary = summarise_temporal_sensitivity([moving, still]).iloc[0]
    assert summary["clips"] == 2
    for condition in ("original", "reversed", "segment_2"):
        values = [moving["probabilities"][condition], still["probabilities"][condition]]
        assert summary[f"{condition}_mean"] == pytest.approx(np.mean(values))
        assert summary[f"{condition}_std"] == pytest.approx(np.std(values, ddof=1))
    assert summary["verdict_uses_order"] == 1
    assert summary["verdict_appearance_suffices"] == 1
    assert summary["verdict_mixed"] == 0
    assert summary["reversed_changes_prediction"] == pytest.approx(0.5)


# ---------------------------------------------------------------- the trained demo model
@pytest.fixture(scope="module")
def demo_3dcnn():
    spec = get_model_spec("demo_3dcnn")
    return spec, spec.load(None, "synthetic")


def test_reversing_a_clip_flips_demo_3dcnn_to_the_opposite_direction(demo_3dcnn):
    spec, model = demo_3dcnn
    config = SyntheticConfig(partial_fraction=0.0)
    seen = set()
    for index in range(8):  # two clips of each direction (class = index % 4)
        clip = generate_clip(index, 31, config)
        x = model_input(spec, clip.frames)
        opposite = motion_eval.opposite_class(clip.class_index)
        with torch.no_grad():
            p = torch.softmax(model(torch.cat([x, x.flip(2)])), dim=1)
        assert int(p[0].argmax()) == clip.class_index and p[0, clip.class_index] > 0.9
        assert int(p[1].argmax()) == opposite and p[1, opposite] > 0.9
        assert p[1, clip.class_index] < 0.05
        seen.add(clip.class_index)
        if index < 4:
            result = temporal_sensitivity(model, x, clip.class_index)
            assert result["verdict"] == USES_ORDER
            assert result["predictions"]["reversed"] == opposite
            assert result["probabilities"]["original"] - result["probabilities"]["shuffled"] > 0.2
    assert seen == {0, 1, 2, 3}
    assert [motion_eval.opposite_class(c) for c in range(4)] == [1, 0, 3, 2]


def test_motion_eval_command_on_demo_3dcnn(tmp_path):
    motion_eval.main(["--num_clips", "2", "--seed", "2024", "--models", "demo_3dcnn",
                      "--ig_steps", "4", "--no_plots", "--out_dir", str(tmp_path)])
    summary = pd.read_csv(tmp_path / "temporal_summary.csv").iloc[0]
    assert summary["clips"] == 2 and summary["verdict_uses_order"] == 2
    assert summary["reversed_is_opposite"] == 1.0
    temporal_rows = pd.read_csv(tmp_path / "temporal.csv")
    assert len(temporal_rows) == 2 * 9
    maps = pd.read_csv(tmp_path / "maps.csv")
    assert sorted(maps["baseline"].unique()) == ["black", "static_first", "static_mean"]
    assert len(maps) == 2 * 3
    static = maps[maps["baseline"] == "static_mean"]
    # The static-baseline map still finds the moving circle, far above chance.
    assert (static["pointing"] > static["chance_pointing"] + 0.5).all()
    assert (static["evidence_mass"] > 5 * static["chance_mass"]).all()
    assert "| demo_3dcnn |" in (tmp_path / "summary.md").read_text()


def test_named_static_baselines_are_the_mean_and_first_frame_clips():
    """``--ig_baseline static`` / ``static_first`` (and the same replacement for occlusion, RISE
    and the extremal perturbations) are these clips, in the model's input space."""
    from models.adapter import as_adapter
    from vis_methods.occlusion import occlusion, rise
    model = MeanFrameModel().double()
    clip = _random_clip()
    for name, mode in (("static", "mean"), ("static_first", "first")):
        torch.testing.assert_close(as_adapter(model).baseline(name, clip), static_clip(clip, mode))
        torch.testing.assert_close(
            integrated_grad(model, clip, torch.tensor([1]), num_iter=4, ig_baseline=name),
            integrated_grad(model, clip, torch.tensor([1]), num_iter=4,
                            ig_baseline=static_clip(clip, mode)))
    # RISE's masks blend the clip with its mean frame: the named baseline is that tensor.
    torch.testing.assert_close(
        rise(model, clip, 1, num_iter=8, rise_baseline="static", seed=3),
        rise(model, clip, 1, num_iter=8, rise_baseline=static_clip(clip, "mean"), seed=3))
    assert occlusion(model, clip, 1, occlusion_fill="static").shape[1] == 1
