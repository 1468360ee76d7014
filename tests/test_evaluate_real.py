"""The real-network evaluation mode: splicing, its scores, and the budgeted run end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from utils.evaluation import synthetic_eval as evaluate
from utils.evaluation import real_eval as evaluate_real
from utils.evaluation.options import method_options_for
from utils.evaluation.real_eval import RealClip, RealSettings

REPO = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue"]


def test_splice_takes_first_half_of_one_clip_and_second_half_of_the_other():
    first = torch.arange(2 * 6 * 1 * 1, dtype=torch.float32).view(2, 6, 1, 1)
    second = -first - 1
    spliced = evaluate_real.splice(first, second)
    assert torch.equal(spliced[:, :3], first[:, :3])
    assert torch.equal(spliced[:, 3:], second[:, 3:])
    assert torch.equal(evaluate_real.splice(first, second, cut=1)[:, 1:], second[:, 1:])
    with pytest.raises(ValueError, match="cut"):
        evaluate_real.splice(first, second, cut=6)
    with pytest.raises(ValueError, match="shape"):
        evaluate_real.splice(first, second[:, :5])


def test_share_on_a_and_top_frame_as_by_hand():
    relevance = np.ones((4, 2, 2)) * np.array([1.0, 2.0, 3.0, 4.0])[:, None, None]
    # Frame sums 4, 8, 12, 16: A's frames 0 and 1 hold 12 of 40; the top frame (3) is B's.
    share, top = evaluate_real.splice_scores(relevance, np.array([True, True, False, False]))
    assert share == pytest.approx(12 / 40)
    assert top == 0.0
    share, top = evaluate_real.splice_scores(relevance, np.array([False, False, True, True]))
    assert share == pytest.approx(28 / 40) and top == 1.0
    # A map concentrated on A's frames scores 1 on both.
    concentrated = np.zeros((4, 2, 2))
    concentrated[2:, 0, 1] = [0.5, 3.0]
    assert evaluate_real.splice_scores(concentrated, np.array([0, 0, 1, 1], bool)) == (1.0, 1.0)
    assert np.isnan(evaluate_real.splice_scores(np.zeros((4, 2, 2)), np.ones(4, bool))[0])
    with pytest.raises(ValueError, match="non-negative"):
        evaluate_real.splice_scores(-relevance, np.ones(4, bool))


def test_splice_units_cover_every_ordered_pair_of_other_classes_in_both_orders():
    clips = [RealClip(f"c{i}", label, torch.zeros(3, 2, 1, 1))
             for i, label in enumerate(["a", "a", "b", "c"])]
    units = evaluate_real.splice_units(clips, anchors=[0, 2], seed=3)
    # Anchor 0 (a) pairs with 2 and 3; anchor 2 (b) with 0, 1 and 3: 5 pairs, both orders.
    assert len(units) == 10
    assert sorted(units) == sorted([(a, b, o) for a, b in [(0, 2), (0, 3), (2, 0), (2, 1),
                                                           (2, 3)] for o in (True, False)])
    first_pass = units[:5]
    assert [o for _, _, o in first_pass] == [True, False, True, False, True]
    assert units[5:] == [(a, b, not o) for a, b, o in first_pass]


def test_label_of_takes_the_longest_class_name():
    names = ["playing guitar", "playing bass guitar", "abseiling"]
    assert evaluate_real.label_of("playing bass guitar-JVAwfvQUlwA_46_10", names) == \
        "playing bass guitar"
    assert evaluate_real.label_of("abseiling-4lF-mhj4x43c_66_10", names) == "abseiling"
    with pytest.raises(ValueError, match="class name"):
        evaluate_real.label_of("ironing-3sEk_w2T8Fw_15_10", names)


class ColourModel(nn.Module):
    """Class c's logit: the summed mean of colour channel c over the frames (identity head)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(x.mean(dim=(3, 4)).sum(dim=2))


def _colour_clip(name: str, colour: int) -> RealClip:
    rgb = torch.zeros(3, 4, 6, 6)
    rgb[colour] = 0.5 + 0.5 * torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(len(name)))
    return RealClip(name, COLOURS[colour], rgb)


def test_run_scores_spliced_clips_by_the_frames_of_the_explained_class():
    clips = [_colour_clip("r1", 0), _colour_clip("r22", 0), _colour_clip("g333", 1)]
    settings = RealSettings(methods=("grad*input", "grad", "centre"), steps=2, top_k_layers=1,
                            sanity_clips=1, max_minutes=5, reduce=False)
    clip_rows, splice_rows, notes = evaluate_real.run(ColourModel(), COLOURS, clips,
                                                      lambda x: x, settings)
    assert len(clip_rows) == 3 * 3
    # Anchors r1, r22 (one green partner each) and g333 (two red partners): 4 pairs x 2 orders.
    counts = splice_rows.groupby("method").size()
    assert counts.to_dict() == {"centre": 8, "grad": 8, "grad*input": 8}
    by_method = splice_rows.set_index("method")
    # grad*input is the explained colour channel itself: all of its mass on A's frames.
    assert np.allclose(by_method.loc["grad*input", "share_on_a"], 1.0)
    assert np.allclose(by_method.loc["grad*input", "top_on_a"], 1.0)
    # The gradient is the same in every frame: half the mass on A, top frame a tie (0.5).
    assert np.allclose(by_method.loc["grad", "share_on_a"], 0.5)
    assert np.allclose(by_method.loc["grad", "top_on_a"], 0.5)
    # The centre map does not depend on the model: rank correlation 1 with the random copy's.
    sanity = clip_rows.dropna(subset=["sanity"]).set_index("method")["sanity"]
    assert sanity["centre"] == pytest.approx(1.0)
    assert any("scored on 3 of 3 clips and 8 of 8 spliced clips" in n for n in notes)


def test_budget_gives_every_method_its_first_clip_and_stops(monkeypatch):
    clips = [_colour_clip(f"r{i}", 0) for i in range(3)] + [_colour_clip("g", 1)]
    settings = RealSettings(methods=("grad", "centre"), steps=2, top_k_layers=1,
                            sanity_clips=0, max_minutes=1e-9, reduce=False)
    clip_rows, splice_rows, notes = evaluate_real.run(ColourModel(), COLOURS, clips,
                                                      lambda x: x, settings)
    assert clip_rows.empty and splice_rows.empty
    assert any("grad: scored on 0 of 4 clips" in n for n in notes)


def test_command_on_a_tiny_model_writes_its_tables(tmp_path):
    clips_dir = tmp_path / "clips"
    clips_dir.mkdir()
    for name in ("circle moving down-s7_00003", "circle moving down-s7_00007",
                 "circle moving left-s7_00000", "circle moving left-s7_00004"):
        (clips_dir / name).symlink_to(REPO / "test_data" / "synthetic" / name)
    out = tmp_path / "out"
    evaluate.main(["--model", "demo_3dcnn", "--clips_dirs", str(clips_dir),
                   "--methods", "grad_cam", "centre", "--steps", "2", "--sanity_clips", "1",
                   "--max_minutes", "5", "--out_dir", str(out)])
    clip_rows = pd.read_csv(out / "clips.csv")
    splice_rows = pd.read_csv(out / "splices.csv")
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    text = (out / "summary.md").read_text()
    assert len(clip_rows) == 2 * 4
    assert (clip_rows["correct"] == 1.0).all()
    # 4 anchors x 2 clips of the other class x 2 orders, for both methods.
    assert len(splice_rows) == 2 * 16
    assert summary.loc["grad_cam", "share_on_a_n"] == 16
    assert summary.loc["centre", "sanity_mean"] == pytest.approx(1.0)
    # The centre map is the same in every frame: half its mass on A.
    assert summary.loc["centre", "share_on_a_mean"] == pytest.approx(0.5)
    # Grad-CAM finds the moving circle's class in its own half of a spliced clip.
    assert summary.loc["grad_cam", "share_on_a_mean"] > 0.7
    assert "| `grad_cam` | 4 |" in text and "python -m utils.evaluation.synthetic_eval --model demo_3dcnn" in text


def test_command_rejects_bad_budget(tmp_path):
    with pytest.raises(SystemExit):
        evaluate.main(["--model", "demo_3dcnn", "--max_minutes", "0",
                       "--out_dir", str(tmp_path)])


def test_command_rejects_a_bad_device_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (("gpu", "expected cpu, cuda or cuda:N"),
                            ("cuda", "CUDA is not available")):
        with pytest.raises(SystemExit) as stop:
            evaluate.main(["--model", "demo_3dcnn", "--device", device,
                           "--out_dir", str(tmp_path)])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_per_method_options_win_over_shared_ones():
    from vis_methods import METHODS
    options = {"num_iter": 5, "seed": 3, "rise": {"num_iter": 7}, "step": {"num_iter": 2}}
    assert method_options_for("rise", METHODS["rise"], options) == \
        {"num_iter": 7, "seed": 3}
    assert method_options_for("grad", METHODS["grad"], options) == {}
    with pytest.raises(ValueError, match="no option"):
        method_options_for("grad", METHODS["grad"], {"grad": {"num_iter": 2}})
    with pytest.raises(ValueError, match="JSON object"):
        method_options_for("rise", METHODS["rise"], {"rise": 3})


def test_synthetic_config_from_json():
    config = evaluate.synthetic_config('{"object_radius": [6, 8], "num_moving": [3, 5]}', 0.5)
    assert config.object_radius == (6, 8) and config.num_moving == (3, 5)
    assert config.partial_fraction == 0.5 and config.num_static == (1, 3)
    assert evaluate.synthetic_config('{"partial_fraction": 1.0}', 0.5).partial_fraction == 1.0
    with pytest.raises(ValueError, match="no field"):
        evaluate.synthetic_config('{"radius": 3}', 0.5)


def test_position_and_paired_wins_by_hand():
    from utils.evaluation.real_eval import extra_sections, paired_wins, position_lines
    splices = pd.DataFrame({"method": ["grad"] * 4 + ["random"] * 2,
                            "a_first": [True, True, False, False, True, False],
                            "share_on_a": [0.2, 0.4, 0.9, 0.7, 0.5, 0.5]})
    assert position_lines(splices, ["grad", "random", "step"]) == [
        "`grad`: A first 0.30 (n 2), A second 0.80 (n 2)",
        "`random`: A first 0.50 (n 1), A second 0.50 (n 1)"]
    clips = pd.DataFrame({"method": ["grad", "grad", "grad", "random", "random"],
                          "clip": ["a", "b", "c", "a", "b"],
                          "deletion_blur": [0.1, 0.5, 0.0, 0.3, 0.4],
                          "insertion_blur": [0.9, 0.2, 1.0, 0.5, 0.6]})
    # clip c has no random map: only a and b count; deletion: a wins, b loses
    assert paired_wins(clips, ["grad", "random"]) == [
        "`grad`: deletion blur 1/2, insertion blur 1/2"]
    text = extra_sections(clips, splices, ["grad", "random"])
    assert "A second 0.80" in text and "deletion blur 1/2" in text


def test_default_clip_folders_are_the_shared_frames_then_the_bundled_clips():
    # The defaults are found from the module's place in the repository: the bundled
    # Kinetics clips always exist, and the shared frames come first when they exist.
    root = Path(evaluate_real.__file__).resolve().parents[2]
    assert (root / "main.py").is_file()
    dirs = evaluate_real.default_clip_dirs()
    assert dirs[-1] == root / "test_data" / "kinetics"
    shared = root.parent / "shared" / "data" / "kinetics_frames"
    assert dirs == ([shared] if shared.is_dir() else []) + [root / "test_data" / "kinetics"]
