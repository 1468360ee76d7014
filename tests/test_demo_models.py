"""Demo models: registry entries, shapes, checkpoints and their accuracy on fresh clips."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import WeightsUnavailableError, get_model_spec
from models.demo import CHECKPOINT_DIR, build_model
from utils.demo.train import TrainSettings, clips_to_input, heldout_scores, train
from utils.demo.synthetic import SyntheticConfig, class_names, generate_arrays

CLASSIFIERS = ("demo_3dcnn", "demo_lstm", "demo_lstm_attn")
ALL = CLASSIFIERS + ("demo_regression",)
# Fresh clips: neither the training seed (0) nor the held-out seed of the training command.
TEST_SEED = 4242
NUM_TEST_CLIPS = 64
CONFIG = SyntheticConfig(partial_fraction=0.5)


@pytest.fixture(scope="module")
def fresh_clips():
    return generate_arrays(NUM_TEST_CLIPS, TEST_SEED, CONFIG)


@pytest.fixture(scope="module")
def loaded():
    return {name: get_model_spec(name).load(None, "synthetic") for name in ALL}


@pytest.mark.parametrize("name", ALL)
def test_spec_matches_the_synthetic_frames(name):
    spec = get_model_spec(name)
    assert spec.resize == spec.crop == CONFIG.frame_size  # the map grid is the frame grid
    assert spec.clip_length == CONFIG.num_frames
    assert spec.pretrain_datasets == ("synthetic",)
    if name == "demo_regression":
        assert spec.task == "regression" and spec.class_names("synthetic") == []
    else:
        assert spec.class_names("synthetic") == class_names()
    size = (CHECKPOINT_DIR / f"{name}.pt").stat().st_size
    assert size < 2_000_000


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_accuracy_on_fresh_clips(name, loaded, fresh_clips):
    with torch.no_grad():
        logits = loaded[name](clips_to_input(fresh_clips["frames"]))
    assert logits.shape == (NUM_TEST_CLIPS, 4)
    accuracy = (logits.argmax(1).numpy() == fresh_clips["labels"]).mean()
    assert accuracy >= 0.95


def test_regression_error_well_below_the_velocity_spread(loaded, fresh_clips):
    with torch.no_grad():
        predicted = loaded["demo_regression"](clips_to_input(fresh_clips["frames"])).numpy()
    truth = fresh_clips["velocities"]
    rmse = np.sqrt(np.mean((predicted - truth) ** 2))
    spread = np.sqrt(np.mean((truth - truth.mean(0)) ** 2))
    assert rmse < 0.3 * spread


def test_heldout_scores_agree_with_a_direct_count(loaded):
    scores = heldout_scores(loaded["demo_3dcnn"], "classification", num_clips=8, seed=TEST_SEED,
                            config=CONFIG, batch_size=3)
    batch = generate_arrays(8, TEST_SEED, CONFIG)
    with torch.no_grad():
        predicted = loaded["demo_3dcnn"](clips_to_input(batch["frames"])).argmax(1).numpy()
    assert scores["accuracy"] == pytest.approx((predicted == batch["labels"]).mean())


def test_the_models_need_the_evidence(loaded):
    """Without the evidence object (same clips otherwise) the classifiers are at a loss."""
    from utils.demo.synthetic import generate_clip
    frames = np.stack([generate_clip(i, TEST_SEED, CONFIG, with_evidence=False).frames
                       for i in range(32)])
    labels = np.arange(32) % 4
    for name in CLASSIFIERS:
        with torch.no_grad():
            probabilities = torch.softmax(loaded[name](clips_to_input(frames)), 1).numpy()
        # With the evidence the true class gets > 0.9; without it, about chance (0.25).
        assert probabilities[np.arange(32), labels].mean() < 0.4


def test_temporal_attention_weights(loaded, fresh_clips):
    model = loaded["demo_lstm_attn"]
    clip = clips_to_input(fresh_clips["frames"])
    with torch.no_grad():
        weights = model.temporal_attention(clip)
    assert weights.shape == (NUM_TEST_CLIPS, 16)
    assert torch.allclose(weights.sum(1), torch.ones(NUM_TEST_CLIPS), atol=1e-5)
    present = torch.from_numpy(fresh_clips["present"])
    partial = ~present.all(1)
    mass = (weights * present).sum(1)[partial]
    chance = present.float().mean(1)[partial]
    # Attention goes to the frames that hold the evidence, well beyond their share of the clip.
    assert (mass > chance).float().mean() > 0.85
    assert mass.mean() > chance.mean() + 0.2


def test_target_layers_give_one_map_grid_per_clip_or_frame(loaded):
    from vis_methods._context import capture_layer
    clip = torch.zeros(2, 3, 16, 112, 112)
    expected = {"demo_3dcnn": (2, 32, 8, 14, 14), "demo_regression": (2, 32, 8, 14, 14),
                "demo_lstm": (32, 32, 14, 14), "demo_lstm_attn": (32, 32, 14, 14)}
    for name, shape in expected.items():
        with capture_layer(loaded[name], get_model_spec(name).target_layer) as record:
            with torch.no_grad():
                loaded[name](clip)
        assert tuple(record["activation"].shape) == shape


def test_frames_are_stacked_time_fastest():
    """Frame n*T + t of the frame CNN's batch is frame t of clip n."""
    model = build_model("demo_lstm").eval()
    clip = torch.randn(2, 3, 4, 112, 112)
    seen = {}

    def record_input(_module, inputs, _output):
        seen["x"] = inputs[0]

    handle = model.frame_cnn.register_forward_hook(record_input)
    try:
        with torch.no_grad():
            model(clip)
    finally:
        handle.remove()
    assert torch.equal(seen["x"][1 * 4 + 2], clip[1, :, 2])


@pytest.mark.parametrize("name", ALL)
def test_relu_modules_not_inplace(name):
    relus = [m for m in build_model(name).modules() if isinstance(m, nn.ReLU)]
    assert len(relus) >= 4 and not any(m.inplace for m in relus)


def test_missing_checkpoint_names_the_training_command(tmp_path):
    spec = get_model_spec("demo_lstm")
    with pytest.raises(WeightsUnavailableError, match="python -m utils.demo.train --model demo_lstm"):
        spec.load(tmp_path / "missing.pt", "synthetic")
    with pytest.raises(WeightsUnavailableError, match="synthetic"):
        spec.load(None, "kinetics")


def test_weights_file_round_trip(tmp_path, loaded):
    path = tmp_path / "plain.pt"
    torch.save(loaded["demo_3dcnn"].state_dict(), path)  # a bare state dict works too
    model = get_model_spec("demo_3dcnn").load(path, "synthetic")
    clip = torch.randn(1, 3, 16, 112, 112)
    with torch.no_grad():
        assert torch.equal(model(clip), loaded["demo_3dcnn"](clip))


def test_training_is_deterministic():
    settings = TrainSettings(steps=2, batch_size=2)
    config = SyntheticConfig(frame_size=112, num_frames=16)
    first = train("demo_lstm_attn", settings, seed=3, config=config).state_dict()
    second = train("demo_lstm_attn", settings, seed=3, config=config).state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    torch.manual_seed(3)
    initial = build_model("demo_lstm_attn").state_dict()  # what training started from
    assert not torch.equal(first["head.weight"], initial["head.weight"])
