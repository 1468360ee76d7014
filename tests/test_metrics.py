"""Metrics on hand-made maps with known answers, and the sanity-check helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from utils.evaluation import metrics
from utils.demo.synthetic import SyntheticConfig, generate_clip, ground_truth_of

CONFIG = SyntheticConfig(partial_fraction=0.5)


# ---------------------------------------------------------------------------- pointing game
def test_pointing_distance_to_the_box_hand_computed():
    boxes = np.array([[10.0, 10.0, 20.0, 20.0]])  # columns and rows 10 .. 19
    def hit(x, y, tolerance):
        attribution = np.zeros((1, 40, 60))
        attribution[0, y, x] = 1.0
        return metrics.pointing_hits(attribution, boxes, tolerance)[0]
    assert hit(19, 19, 0) == 1.0 and hit(20, 19, 0) == 0.0
    assert hit(34, 15, 15) == 1.0 and hit(35, 15, 15) == 0.0  # 15 and 16 px to the right
    assert hit(23, 23, 6) == 1.0 and hit(23, 23, 5) == 0.0    # sqrt(4^2 + 4^2) = 5.66 px


def test_ground_truth_mask_scores_a_perfect_pointing_game():
    for index in range(4):
        truth = ground_truth_of(generate_clip(index, seed=21, config=CONFIG))
        perfect = truth["masks"].astype(float)
        assert metrics.pointing_game(perfect, truth["boxes"], truth["present"], 0.0) == 1.0
        # Peaks everywhere except on the evidence: at tolerance 0 the tied maxima that hit are
        # the box corners outside the circle.
        inverted = 1.0 - perfect
        expected = []
        for box, mask in zip(truth["boxes"][truth["present"]], truth["masks"][truth["present"]]):
            x0, y0, x1, y1 = box.astype(int)
            in_box = np.zeros_like(mask)
            in_box[y0:y1, x0:x1] = True
            expected.append((in_box & ~mask).sum() / (~mask).sum())
        score = metrics.pointing_game(inverted, truth["boxes"], truth["present"], 0.0)
        assert score == pytest.approx(np.mean(expected)) and score < 0.02


def test_random_maps_score_chance():
    truth = ground_truth_of(generate_clip(0, seed=21, config=CONFIG))
    chance = metrics.pointing_chance(truth["boxes"], (112, 112), 15.0)
    rng = np.random.default_rng(0)
    scores = [metrics.pointing_game(rng.uniform(size=(16, 112, 112)), truth["boxes"],
                                    truth["present"]) for _ in range(60)]
    # 60 maps x up to 16 frames: standard error about 0.015.
    assert abs(np.mean(scores) - chance) < 0.06
    # A flat map ties everywhere and scores chance exactly.
    flat = metrics.pointing_game(np.ones((16, 112, 112)), truth["boxes"], truth["present"])
    assert flat == pytest.approx(chance)


def test_pointing_chance_hand_computed():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [np.nan] * 4])
    assert metrics.pointing_chance(boxes, (100, 100), 0.0) == pytest.approx(0.01)
    assert metrics.pointing_chance(boxes, (10, 10), 3.0) == 1.0


def test_absent_frames_are_not_scored():
    boxes = np.array([[0.0, 0.0, 4.0, 4.0], [np.nan] * 4])
    attribution = np.zeros((2, 8, 8))
    attribution[:, 1, 1] = 1.0
    assert np.isnan(metrics.pointing_hits(attribution, boxes, 0.0)[1])
    assert metrics.pointing_game(attribution, boxes) == 1.0
    assert math.isnan(metrics.pointing_game(attribution, boxes, present=np.array([False, False])))


def test_centre_map_peaks_at_the_centre():
    centre = metrics.centre_map(2, 11, 11)
    assert centre.shape == (2, 11, 11)
    assert metrics.peak_positions(centre).tolist() == [[5, 5], [5, 5]]


def test_map_layouts_are_accepted():
    attribution = torch.zeros(1, 1, 3, 8, 8)
    attribution[0, 0, :, 2, 6] = 1.0
    assert metrics.peak_positions(attribution).tolist() == [[6, 2]] * 3
    signed = np.zeros((3, 2, 4, 4))
    signed[0, 1, 1, 1], signed[1, 1, 1, 1] = -2.0, 0.5
    assert metrics.relevance_map(signed, signed=True)[1, 1, 1] == 2.5
    assert metrics.relevance_map(signed, signed=True, reduction="positive")[1, 1, 1] == 0.5
    with pytest.raises(ValueError):
        metrics.as_map(np.zeros((2, 3, 4, 4)))


# ----------------------------------------------------------------------- temporal grounding
def test_temporal_grounding():
    present = np.array([False, False, True, True])
    attribution = np.zeros((4, 5, 5))
    attribution[3, 2, 2] = 1.0
    assert metrics.temporal_grounding(attribution, present) == 1.0
    attribution[0] = 2.0
    assert metrics.temporal_grounding(attribution, present) == 0.0
    # The same in every frame: ties, scored as the fraction of frames with evidence.
    assert metrics.temporal_grounding(np.ones((4, 5, 5)), present) == 0.5
    assert metrics.temporal_grounding_chance(present) == 0.5


# --------------------------------------------------------------------- deletion / insertion
class VoxelScore(nn.Module):
    """Logits ``[4 * x[voxel 0], 0]``: only the first voxel matters."""

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        score = 4.0 * clip.flatten(1)[:, 0]
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_deletion_and_insertion_hand_computed():
    clip = torch.ones(1, 1, 1, 2, 2)
    relevant_first = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    relevant_last = np.array([[[0.0, 1.0], [1.0, 1.0]]])
    high, low = 1.0 / (1.0 + math.exp(-4.0)), 0.5
    auc, curve = metrics.deletion(VoxelScore(), clip, relevant_first, 0, steps=4, mode="fade")
    assert np.allclose(curve, [high, low, low, low, low])
    assert auc == pytest.approx(((high + low) / 2 + 3 * low) / 4)
    auc_last, curve_last = metrics.deletion(VoxelScore(), clip, relevant_last, 0, 4, "fade")
    assert np.allclose(curve_last, [high, high, high, high, low])
    assert auc_last > auc
    auc_in, curve_in = metrics.insertion(VoxelScore(), clip, relevant_first, 0, 4, "fade")
    assert np.allclose(curve_in, [low, high, high, high, high])
    # A constant baseline other than zero, and a callable target (raw score).
    _, curve_baseline = metrics.deletion(VoxelScore(), clip, relevant_first,
                                         lambda out: out[:, 0], 2, "fade",
                                         baseline=torch.full_like(clip, 0.5))
    assert np.allclose(curve_baseline, [4.0, 2.0, 2.0])


def test_blur_keeps_a_constant_clip():
    clip = torch.full((1, 3, 2, 16, 16), 0.7)
    assert torch.allclose(metrics.gaussian_blur_frames(clip, 3.0), clip)
    spike = torch.zeros(1, 1, 1, 21, 21)
    spike[..., 10, 10] = 1.0
    blurred = metrics.gaussian_blur_frames(spike, 2.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert blurred[..., 10, 10].item() < 0.1


@pytest.fixture(scope="module")
def demo_3dcnn():
    from models import get_model_spec
    spec = get_model_spec("demo_3dcnn")
    return spec, spec.load(None, "synthetic")


def test_deleting_the_evidence_hurts_the_demo_model_more_than_deleting_background(demo_3dcnn):
    spec, model = demo_3dcnn
    for index in range(2):
        clip = generate_clip(index, seed=31, config=CONFIG)
        frames = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float().div(255.0)
        clip_input = spec.normalize(frames.unsqueeze(0))
        evidence = clip.masks.astype(float)
        for mode in ("blur", "fade"):
            on_evidence, curve = metrics.deletion(model, clip_input, evidence, clip.class_index,
                                                  6, mode)
            on_background, _ = metrics.deletion(model, clip_input, 1.0 - evidence,
                                                clip.class_index, 6, mode)
            assert curve[0] > 0.9  # the model is confident on the intact clip
            assert on_evidence < on_background - 0.3
            inserted, _ = metrics.insertion(model, clip_input, evidence, clip.class_index, 6, mode)
            inserted_background, _ = metrics.insertion(model, clip_input, 1.0 - evidence,
                                                       clip.class_index, 6, mode)
            assert inserted > inserted_background + 0.3


# ------------------------------------------------------------------------------ sanity check
def test_rank_data_and_spearman():
    assert metrics.rank_data([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Hand computed: ranks [1,2,3,4,5] vs [2,1,4,3,5], sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8.
    assert metrics.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(4, 6, 6)).astype(float)
    b = a + rng.integers(0, 3, size=a.shape)
    assert metrics.spearman(a, torch.from_numpy(b)) == pytest.approx(
        stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 2)           # registered first, called last
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())

    def forward(self, x):
        return self.head(self.body(x))


def test_randomized_copy_reinitialises_only_the_top_layers():
    torch.manual_seed(0)
    model = Stack().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert metrics.parameterised_layers(model) == ["head", "body.0"]
    example = torch.randn(3, 4)
    assert metrics.parameterised_layers(model, example) == ["body.0", "head"]
    state = torch.random.get_rng_state()
    top1 = metrics.randomized_copy(model, 1, seed=5, example_input=example)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # the original is unchanged
    assert not torch.equal(top1.head.weight, model.head.weight)
    assert torch.equal(top1.body[0].weight, model.body[0].weight)
    assert torch.equal(top1.body[1].running_mean, model.body[1].running_mean)
    again = metrics.randomized_copy(model, 1, seed=5, example_input=example)
    assert torch.equal(again.head.weight, top1.head.weight)  # seeded
    top2 = metrics.randomized_copy(model, 2, seed=5, example_input=example)
    assert not torch.equal(top2.body[0].weight, model.body[0].weight)
    with pytest.raises(ValueError):
        metrics.randomized_copy(model, 3)


def test_summarise_ignores_nan():
    mean, std, count = metrics.summarise([1.0, float("nan"), 3.0])
    assert (mean, count) == (2.0, 2) and std == pytest.approx(math.sqrt(2.0))
