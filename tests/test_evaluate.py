"""The evaluation command: tables of method x model x metric, baselines, and Grad-CAM's score."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.evaluation import synthetic_eval as evaluate
from utils.demo.synthetic import SyntheticConfig, write_dataset

CONFIG = SyntheticConfig(partial_fraction=0.5)


@pytest.fixture(scope="module")
def gradcam_results():
    clips = evaluate.load_clips(None, num_clips=10, seed=99, config=CONFIG)
    settings = evaluate.EvalSettings(steps=5)
    return evaluate.evaluate(["demo_3dcnn"], ["grad_cam", "centre", "random"], clips, settings)


def test_grad_cam_points_far_better_than_the_centre_baseline(gradcam_results):
    results, notes = gradcam_results
    assert notes == []
    summary = evaluate.summarise(results).set_index("method")
    grad_cam = summary.loc["grad_cam", "pointing_mean"]
    centre = summary.loc["centre", "pointing_mean"]
    chance = summary.loc["grad_cam", "chance_pointing_mean"]
    assert grad_cam > centre + 0.2
    assert grad_cam > 0.8 and chance < 0.35
    # The random map scores about chance; the centre map is model-independent (rho = 1).
    assert abs(summary.loc["random", "pointing_mean"] - chance) < 0.15
    assert summary.loc["centre", "sanity_mean"] == pytest.approx(1.0)
    assert summary.loc["grad_cam", "sanity_mean"] < 0.6
    # Deleting what Grad-CAM points at hurts more than deleting at random.
    assert summary.loc["grad_cam", "deletion_mean"] < summary.loc["random", "deletion_mean"]
    assert summary.loc["grad_cam", "insertion_mean"] > summary.loc["random", "insertion_mean"]


def test_results_have_one_row_per_model_method_and_clip(gradcam_results):
    results, _ = gradcam_results
    assert len(results) == 3 * 10
    partial = results[results["partial"]]
    assert partial["temporal"].notna().all()
    assert results[~results["partial"]]["temporal"].isna().all()
    assert (results["correct"] == 1.0).mean() > 0.9


def test_command_writes_tables_and_notes_unavailable_methods(tmp_path):
    clips_dir = tmp_path / "clips"
    write_dataset(clips_dir, 2, seed=5, config=SyntheticConfig(partial_fraction=1.0))
    out_dir = tmp_path / "out"
    evaluate.main(["--clips_dir", str(clips_dir), "--models", "demo_lstm_attn",
                   "--methods", "grad", "attention", "no_such_method", "--steps", "4",
                   "--out_dir", str(out_dir)])
    results = pd.read_csv(out_dir / "results.csv")
    assert sorted(results["method"].unique()) == ["attention", "grad"]
    assert len(results) == 4
    summary = pd.read_csv(out_dir / "summary.csv")
    assert {"pointing_mean", "pointing_std", "deletion_mean", "seconds_mean",
            "sanity_mean"} <= set(summary.columns)
    # The attention pseudo-method has no spatial scores, only temporal ones.
    attention = summary.set_index("method").loc["attention"]
    assert np.isnan(attention["pointing_mean"]) and attention["temporal_n"] == 2
    text = (out_dir / "summary.md").read_text()
    assert "| demo_lstm_attn | `grad` |" in text
    assert "no_such_method: unavailable" in text
    assert "python -m utils.evaluation.synthetic_eval --clips_dir" in text


def test_markdown_table_formats_mean_and_spread():
    results = pd.DataFrame([
        {"model": "m", "method": "x", "clip": c, "partial": False, "correct": 1.0,
         "seconds": 0.5, "chance_pointing": 0.2, "chance_temporal": np.nan, "pointing": p,
         "deletion": 0.1, "insertion": 0.9, "temporal": np.nan, "sanity": 0.0}
        for c, p in (("a", 1.0), ("b", 0.0))])
    text = evaluate.markdown_table(evaluate.summarise(results))
    assert "| m | `x` | 0.50 ± 0.71 | 0.10 ± 0.00 | 0.90 ± 0.00 | - | 0.00 ± 0.00 | 0.500 |" in text
