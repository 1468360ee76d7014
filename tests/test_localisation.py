"""Localisation as the Grad-CAM paper measures it (utils/evaluation/metrics.py): the box of the largest
region above 15 % of each frame's maximum, and its IoU with the evidence box."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from utils.evaluation import synthetic_eval as evaluate
from utils.evaluation import metrics
from utils.demo.synthetic import SyntheticConfig, generate_clip, ground_truth_of


def test_ground_truth_mask_localises_perfectly():
    frames_checked = 0
    for index in range(4):
        truth = ground_truth_of(generate_clip(index, seed=21,
                                              config=SyntheticConfig(partial_fraction=0.5)))
        masks = truth["masks"]
        # Distractors drawn over the circle can split its visible pixels; such frames have no
        # single region to find, so only one-piece masks are expected to score 1.
        whole = np.array([m.any() and ndimage.label(m, np.ones((3, 3)))[1] == 1 for m in masks])
        frames_checked += int(whole.sum())
        boxes = metrics.localisation_boxes(masks.astype(float))
        assert np.array_equal(boxes[whole], truth["boxes"][whole])
        assert np.isnan(boxes[~truth["present"]]).all()
        iou = metrics.localisation_iou(masks.astype(float), truth["boxes"],
                                       truth["present"] & whole)
        assert iou == 1.0
    assert frames_checked >= 30


def test_shifted_box_hand_computed_iou():
    attribution = np.zeros((2, 64, 64))
    attribution[:, 10:30, 10:30] = 1.0             # box [10, 10, 30, 30], 20 x 20
    boxes = np.array([[15.0, 10.0, 35.0, 30.0],    # 5 px right: 15 x 20 = 300 / (800 - 300)
                      [10.0, 20.0, 30.0, 40.0]])   # 10 px down: 200 / 600
    assert np.array_equal(metrics.localisation_boxes(attribution)[0], [10, 10, 30, 30])
    assert metrics.box_iou(np.array([10.0, 10, 30, 30]), boxes[0]) == pytest.approx(0.6)
    assert metrics.localisation_iou(attribution, boxes) == pytest.approx((0.6 + 1 / 3) / 2)
    assert metrics.localisation_iou(attribution, boxes, present=[True, False]) == pytest.approx(0.6)
    # An evidence-free frame (NaN box) is left out; no frame with evidence gives NaN.
    nan_box = boxes.copy()
    nan_box[1] = np.nan
    assert metrics.localisation_iou(attribution, nan_box) == pytest.approx(0.6)
    assert math.isnan(metrics.localisation_iou(attribution, np.full((2, 4), np.nan)))
    # A frame whose map is zero has no box and scores 0 there.
    attribution[1] = 0.0
    assert np.isnan(metrics.localisation_boxes(attribution)[1]).all()
    assert metrics.localisation_iou(attribution, boxes) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="boxes"):
        metrics.localisation_iou(attribution, boxes[:1])


def test_threshold_keeps_the_larger_blob_per_frame():
    frame = np.zeros((60, 80))
    frame[5:15, 5:15] = 1.0        # small and strong: 100 px at the maximum
    frame[30:50, 40:70] = 0.2      # large and weaker, above 15 % of the maximum: 600 px
    frame[0:60, 75:80] = 0.1       # largest of all but below 15 %: ignored
    clip = np.stack([frame, frame * 0.01])   # the second frame's own maximum sets its threshold
    boxes = metrics.localisation_boxes(clip)
    assert boxes.tolist() == [[40, 30, 70, 50], [40, 30, 70, 50]]
    # At 25 % the large blob is below the threshold and the strong one is kept.
    assert metrics.localisation_boxes(clip, threshold=0.25)[0].tolist() == [5, 5, 15, 15]
    # Diagonal neighbours are one region (8-connectivity).
    diagonal = np.zeros((1, 10, 10))
    diagonal[0, [1, 2, 3, 4], [1, 2, 3, 4]] = 1.0
    diagonal[0, 7:9, 7:9] = 1.0
    assert metrics.localisation_boxes(diagonal)[0].tolist() == [1, 1, 5, 5]
    with pytest.raises(ValueError, match="threshold"):
        metrics.localisation_boxes(clip, threshold=0.0)


def test_evaluation_table_reports_localisation():
    clips = evaluate.load_clips(num_clips=1, seed=5)
    results, notes = evaluate.evaluate(["demo_3dcnn"], ["grad_cam", "centre"], clips,
                                       evaluate.EvalSettings(sanity=False, steps=2))
    assert not notes
    truth = clips[0].truth
    centre = results.set_index("method").loc["centre"]
    expected = metrics.localisation_iou(metrics.centre_map(16, 112, 112), truth["boxes"],
                                        truth["present"])
    assert centre["localisation"] == pytest.approx(expected)
    grad_cam = results.set_index("method").loc["grad_cam"]["localisation"]
    print(f"loc IoU on one clip: grad_cam {grad_cam:.3f}, centre {expected:.3f}")
    assert 0.0 <= expected < grad_cam <= 1.0
    text = evaluate.markdown_table(evaluate.summarise(results))
    assert "loc IoU ↑ |" in text.splitlines()[0]
    assert f"| {grad_cam:.2f} ± 0.00 |" in text
    # Tables from results without the column still render (older results.csv files).
    old = results.drop(columns=["localisation"])
    assert "| - |" in evaluate.markdown_table(evaluate.summarise(pd.DataFrame(old)))
