"""Synthetic clips: ground truth matches the rendered pixels, and generation is repeatable."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from utils.demo import synthetic
from utils.demo.synthetic import (SyntheticConfig, boxes_from_masks, class_names, decode_mask,
                             encode_mask, generate_clip, load_frames, load_ground_truth,
                             write_dataset)

ROOT = Path(__file__).resolve().parent.parent
SMALL = SyntheticConfig(frame_size=64, num_frames=8, partial_fraction=0.5)


@pytest.mark.parametrize("index", range(6))
def test_masks_are_exactly_the_evidence_pixels(index):
    clip = generate_clip(index, seed=3, config=SMALL)
    without = generate_clip(index, seed=3, config=SMALL, with_evidence=False)
    changed = (clip.frames != without.frames).any(axis=-1)
    # Everything the evidence object changed lies inside its mask ...
    assert not (changed & ~clip.masks).any()
    # ... and every mask pixel is painted in the object's colour.
    colour = np.array(clip.info["color"], dtype=np.uint8)
    assert (clip.frames[clip.masks] == colour).all()
    # A mask pixel keeps its background only where that already had the object's colour.
    assert changed[clip.masks].mean() > 0.99
    assert clip.masks[clip.present].any(axis=(1, 2)).all()
    assert not clip.masks[~clip.present].any()


def test_boxes_bound_the_masks():
    clip = generate_clip(1, seed=5, config=SMALL, partial=True)
    assert not clip.present.all() and clip.present.any()
    for box, mask, present in zip(clip.boxes, clip.masks, clip.present):
        if not present:
            assert np.isnan(box).all()
            continue
        rows, cols = np.nonzero(mask)
        assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_boxes_from_masks_hand_made():
    masks = np.zeros((2, 5, 6), dtype=bool)
    masks[0, 1:3, 2:5] = True
    boxes = boxes_from_masks(masks)
    assert boxes[0].tolist() == [2, 1, 5, 3]
    assert np.isnan(boxes[1]).all()


def test_same_seed_same_clips_and_other_seed_differs():
    first = generate_clip(4, seed=11, config=SMALL)
    second = generate_clip(4, seed=11, config=SMALL)
    other = generate_clip(4, seed=12, config=SMALL)
    assert np.array_equal(first.frames, second.frames)
    assert np.array_equal(first.masks, second.masks)
    assert np.array_equal(first.velocity, second.velocity)
    assert not np.array_equal(first.frames, other.frames)


def test_label_is_the_direction_of_motion():
    names = class_names()
    assert names == ["circle moving left", "circle moving right", "circle moving up",
                     "circle moving down"]
    expected = {"left": 180.0, "right": 0.0, "up": -90.0, "down": 90.0}
    for index in range(12):
        clip = generate_clip(index, seed=0, config=SMALL)
        assert clip.label == names[index % 4]
        angle = math.degrees(math.atan2(clip.velocity[1], clip.velocity[0]))
        deviation = (angle - expected[clip.label.split()[-1]] + 180.0) % 360.0 - 180.0
        assert abs(deviation) <= SMALL.angle_jitter + 1e-9
        # The mask centroid moves along the velocity (y grows downwards).
        frames = np.flatnonzero(clip.present)
        rows, cols = np.nonzero(clip.masks[frames[0]])
        rows2, cols2 = np.nonzero(clip.masks[frames[-1]])
        shift = np.array([cols2.mean() - cols.mean(), rows2.mean() - rows.mean()])
        expected_shift = clip.velocity * (frames[-1] - frames[0])
        assert np.allclose(shift, expected_shift, atol=1.0)


def test_partial_clips_hold_evidence_in_one_contiguous_stretch():
    config = replace(SMALL, partial_fraction=1.0, num_frames=16)
    for index in range(8):
        present = generate_clip(index, seed=2, config=config).present
        frames = np.flatnonzero(present)
        assert frames.size == frames[-1] - frames[0] + 1
        low, high = round(0.35 * 16), round(0.6 * 16)
        assert low <= frames.size <= high


def test_distractors_never_use_the_evidence_shape():
    for index in range(10):
        info = generate_clip(index, seed=9, config=SMALL).info
        shapes = {d["shape"] for d in info["distractors"]}
        assert "circle" not in shapes
        assert any(d["moving"] for d in info["distractors"])
        assert any(not d["moving"] for d in info["distractors"])


def test_mask_code_round_trip():
    rng = np.random.default_rng(0)
    for mask in (rng.uniform(size=(7, 9)) > 0.5, np.ones((3, 4), bool), np.zeros((3, 4), bool)):
        assert np.array_equal(decode_mask(encode_mask(mask), *mask.shape), mask)
    assert encode_mask(np.array([[True, False, True, True]])) == [0, 1, 1, 2]


def test_write_and_load_round_trip(tmp_path):
    folders = write_dataset(tmp_path, 3, seed=1, config=SMALL, image_format="png")
    assert [f.name for f in folders] == [f"{class_names()[i]}-s1_{i:05d}" for i in range(3)]
    for index, folder in enumerate(folders):
        clip = generate_clip(index, seed=1, config=SMALL)
        assert np.array_equal(load_frames(folder), clip.frames)
        truth = load_ground_truth(folder)
        assert truth["label"] == clip.label
        assert np.array_equal(truth["masks"], clip.masks)
        assert np.array_equal(truth["present"], clip.present)
        assert np.allclose(truth["boxes"], clip.boxes, equal_nan=True)
        assert np.allclose(truth["regression_target"], clip.velocity)
        record = json.loads((folder / "ground_truth.json").read_text())
        assert record["frames"][0] == "000001.png" and len(record["frames"]) == 8


def test_command_line_writes_clips(tmp_path):
    synthetic.main(["--out", str(tmp_path), "--num_clips", "2", "--seed", "4",
                    "--frame_size", "48", "--num_frames", "6", "--image_format", "jpg"])
    folders = sorted(tmp_path.iterdir())
    assert len(folders) == 2
    frames = load_frames(folders[0])
    assert frames.shape == (6, 48, 48, 3)
    truth = load_ground_truth(folders[0])
    assert truth["masks"].shape == (6, 48, 48)


def test_bundled_clips_are_consistent():
    folders = sorted(p for p in (ROOT / "test_data" / "synthetic").iterdir() if p.is_dir())
    assert len(folders) >= 4
    kinds = set()
    for folder in folders:
        truth = load_ground_truth(folder)
        assert folder.name.startswith(truth["label"] + "-")
        assert truth["label"] in class_names()
        frames = load_frames(folder)
        assert frames.shape == (16, 112, 112, 3)
        assert truth["masks"].shape == (16, 112, 112)
        assert np.array_equal(np.isnan(truth["boxes"]).any(axis=1), ~truth["present"])
        kinds.add(bool(truth["present"].all()))
    assert kinds == {True, False}  # both full and partial clips are bundled
