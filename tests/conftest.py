"""Shared fixtures: a tiny video classifier registered as a model spec, and clip writers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.registry import ModelSpec  # noqa: E402
from utils.pipeline import setup  # noqa: E402

TINY_CLASSES = ["abseiling", "ironing", "playing bass guitar", "playing guitar"]


class TinyVideoNet(nn.Module):
    """A small 3-D CNN: conv -> ReLU -> conv -> ReLU -> global average pool -> linear."""

    def __init__(self, num_classes: int = len(TINY_CLASSES)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv3d(8, 16, 3, stride=(1, 2, 2), padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(clip)).flatten(1))


def _load_tiny(weights_file, dataset):
    torch.manual_seed(0)
    model = TinyVideoNet()
    if weights_file is not None:
        model.load_state_dict(torch.load(weights_file, weights_only=True))
    return model.eval()


TINY_SPEC = ModelSpec(name="tiny", load=_load_tiny, class_names=lambda _d: list(TINY_CLASSES),
                      clip_length=8, resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      target_layer="features.2")


@pytest.fixture
def tiny_spec(monkeypatch):
    """Make every ``--model`` resolve to the tiny network (the CLI still checks the name)."""
    monkeypatch.setattr(setup, "get_model_spec", lambda name: TINY_SPEC)
    return TINY_SPEC


def write_frames(folder: Path, num_frames: int, size=(40, 48), seed: int = 0, ext: str = ".png",
                 mode: str = "RGB") -> np.ndarray:
    """Write random frames named frame1.., frame10.. (natural order matters); returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(num_frames, size[0], size[1], 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).convert(mode).save(folder / f"frame{i + 1}{ext}")
    return frames
