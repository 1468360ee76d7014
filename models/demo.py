"""Small demo networks trained by the project on the synthetic clips of :mod:`utils.demo.synthetic`.

Their evidence is known (one moving circle among distractors), so attribution maps computed on them
can be scored against ground truth. All four take ``(N, 3, T, H, W)`` clips of 16 frames of
112 x 112 pixels, normalised with :data:`MEAN` / :data:`STD`:

- ``demo_3dcnn``: a C3D-like 3-D CNN (a spatial stem, then 3x3x3 convolutions), global
  max pooling and a linear classifier. Grad-CAM layer ``features.conv4``:
  ``(N, 32, 8, 14, 14)``.
- ``demo_lstm``: a 2-D frame CNN applied to every frame (the clip is reshaped to
  ``(N*T, 3, H, W)``), an LSTM run over time at every cell of the frame feature grid,
  max pooling over the grid, and a classifier on the last hidden state. Grad-CAM layer
  ``frame_cnn.conv4``: ``(N*T, 32, 14, 14)``, one map per frame.
- ``demo_lstm_attn``: the same, with soft temporal attention over the hidden states;
  :meth:`DemoLSTMAttention.temporal_attention` returns the weights ``(N, T)``.
- ``demo_regression``: the 3-D CNN with a 2-D output, the evidence object's velocity
  ``(vx, vy)`` in pixels per frame; explain it with ``RegressionTarget`` (negative loss).

Checkpoints live in ``models/checkpoints/<name>.pt`` and are made by
``python -m utils.demo.train --model <name>``.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .registry import ModelSpec, WeightsUnavailableError

FRAME_SIZE = 112
NUM_FRAMES = 16
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
PRETRAIN_DATASET = "synthetic"
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
NUM_CLASSES = 4


# The synthetic clips' classes in output order (utils.demo.synthetic.class_names() builds the same
# list from its directions; a test keeps them equal). Kept here so that models/ imports nothing
# from utils/.
SYNTHETIC_CLASS_NAMES = ("circle moving left", "circle moving right", "circle moving up",
                         "circle moving down")


def synthetic_class_names() -> list:
    return list(SYNTHETIC_CLASS_NAMES)


def _tuple3(value: Union[int, Sequence[int]]) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3


class ConvBlock3d(nn.Sequential):
    """Conv3d (same padding) -> BatchNorm3d -> ReLU, named ``conv``, ``bn``, ``relu``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1):
        kernel_size = _tuple3(kernel_size)
        super().__init__(OrderedDict(
            conv=nn.Conv3d(in_channels, out_channels, kernel_size, _tuple3(stride),
                           tuple(k // 2 for k in kernel_size), bias=False),
            bn=nn.BatchNorm3d(out_channels),
            relu=nn.ReLU(),
        ))


class ConvBlock2d(nn.Sequential):
    """Conv2d (same padding) -> BatchNorm2d -> ReLU, named ``conv``, ``bn``, ``relu``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                           bias=False),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(),
        ))


class Demo3DCNN(nn.Module):
    """C3D-like classifier (or regressor): ``(N, 3, T, H, W)`` -> ``(N, num_outputs)``.

    Feature maps: conv1 ``(8, T, H/2, W/2)``, conv2 ``(16, T/2, H/4, W/4)``,
    conv3 and conv4 ``(32, T/2, H/8, W/8)``; then global max pooling and a linear layer.
    """

    def __init__(self, num_outputs: int = NUM_CLASSES, widths: Sequence[int] = (8, 16, 32, 32)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.features = nn.Sequential(OrderedDict(
            conv1=ConvBlock3d(3, w1, (1, 5, 5), (1, 2, 2)),
            conv2=ConvBlock3d(w1, w2, 3, (2, 2, 2)),
            conv3=ConvBlock3d(w2, w3, 3, (1, 2, 2)),
            conv4=ConvBlock3d(w3, w4, 3, 1),
        ))
        # Max rather than average pooling: the evidence is one small object, and averaging
        # over the whole clip drowns it (training stalls at chance with average pooling).
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.head = nn.Linear(w4, num_outputs)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(clip)).flatten(1))


class FrameCNN(nn.Module):
    """2-D CNN for single frames: ``(M, 3, H, W)`` -> ``(M, 32, H/8, W/8)``."""

    def __init__(self, widths: Sequence[int] = (8, 16, 32, 32)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.conv1 = ConvBlock2d(3, w1, 5, 2)
        self.conv2 = ConvBlock2d(w1, w2, 3, 2)
        self.conv3 = ConvBlock2d(w2, w3, 3, 2)
        self.conv4 = ConvBlock2d(w3, w4, 3, 1)
        self.out_channels = w4

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.conv4(self.conv3(self.conv2(self.conv1(frames))))


class DemoLSTM(nn.Module):
    """Frame CNN + LSTM: ``(N, 3, T, H, W)`` -> ``(N, num_classes)``.

    The frame CNN maps every frame to a ``(32, H/8, W/8)`` grid of features, squeezed to a few
    channels. One LSTM (weights shared over space, i.e. a 1x1 convolutional LSTM) runs over
    time at every grid cell, so it sees how the content of that cell changes, which is where
    motion shows. Per time step the hidden states are max-pooled over the grid, giving
    ``(N, T, hidden_dim)``; the classifier reads the last one.

    A vector LSTM on whole-frame features (pooled, flattened or soft-argmax positions) learned
    the direction of one object among moving distractors far too slowly on a CPU budget.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, squeeze_channels: int = 16,
                 hidden_dim: int = 32):
        super().__init__()
        self.frame_cnn = FrameCNN()
        self.squeeze = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(self.frame_cnn.out_channels, squeeze_channels, 1),
            bn=nn.BatchNorm2d(squeeze_channels),
        ))
        self.lstm = nn.LSTM(squeeze_channels, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, num_classes)

    def hidden_states(self, clip: torch.Tensor) -> torch.Tensor:
        """LSTM hidden states max-pooled over the grid, ``(N, T, hidden_dim)``, of a clip
        ``(N, 3, T, H, W)``.

        Frames are stacked as ``(N*T, 3, H, W)`` with time varying fastest, so a layer inside
        the frame CNN sees ``(N*T, C, h, w)`` that reshapes to ``(N, T, C, h, w)``.
        """
        n, c, t, h, w = clip.shape
        frames = clip.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        features = self.squeeze(self.frame_cnn(frames))  # (N*T, K, h', w')
        k, cells = features.shape[1], features.shape[2] * features.shape[3]
        sequences = features.view(n, t, k, cells).permute(0, 3, 1, 2).reshape(n * cells, t, k)
        states, _ = self.lstm(sequences)  # (N*cells, T, hidden)
        return states.view(n, cells, t, -1).amax(dim=1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_states(clip)[:, -1])


class DemoLSTMAttention(DemoLSTM):
    """Frame CNN + LSTM + soft temporal attention over the (grid-pooled) hidden states.

    ``score_t = v . tanh(W h_t)``, ``a = softmax_t(score)``, ``logits = head(sum_t a_t h_t)``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, hidden_dim: int = 32,
                 attention_dim: int = 32, **kwargs):
        super().__init__(num_classes, hidden_dim=hidden_dim, **kwargs)
        self.attention = nn.Sequential(OrderedDict(
            proj=nn.Linear(hidden_dim, attention_dim),
            tanh=nn.Tanh(),
            score=nn.Linear(attention_dim, 1),
        ))

    def _attend(self, states: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.attention(states).squeeze(-1), dim=1)

    def temporal_attention(self, clip: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(N, T)`` over the clip's frames (each row sums to 1)."""
        return self._attend(self.hidden_states(clip))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        states = self.hidden_states(clip)
        weights = self._attend(states)
        return self.head((weights.unsqueeze(-1) * states).sum(1))


# ------------------------------------------------------------------------------ registry
def build_model(name: str) -> nn.Module:
    """An untrained demo network by registry name."""
    builders = {
        "demo_3dcnn": lambda: Demo3DCNN(NUM_CLASSES),
        "demo_lstm": lambda: DemoLSTM(NUM_CLASSES),
        "demo_lstm_attn": lambda: DemoLSTMAttention(NUM_CLASSES),
        "demo_regression": lambda: Demo3DCNN(2),
    }
    if name not in builders:
        raise ValueError(f"unknown demo model {name!r}; choose from {', '.join(builders)}")
    return builders[name]()


def checkpoint_path(name: str) -> Path:
    """Where ``python -m utils.demo.train --model <name>`` writes its checkpoint."""
    return CHECKPOINT_DIR / f"{name}.pt"


def load_demo(name: str, weights_file: Optional[Path] = None,
              pretrain_dataset: Optional[str] = PRETRAIN_DATASET) -> nn.Module:
    """Build ``name`` and load its weights (``weights_file`` or the bundled checkpoint).

    The file holds either a state dict or ``{"state_dict": ..., ...}`` as written by the
    training command; it is read with ``torch.load(weights_only=True)``. Returns the model in
    eval mode on the CPU.
    """
    if pretrain_dataset not in (None, PRETRAIN_DATASET):
        raise WeightsUnavailableError(
            f"{name} is trained on {PRETRAIN_DATASET!r} clips only, not {pretrain_dataset!r}; "
            f"use --pretrain_dataset {PRETRAIN_DATASET}")
    path = Path(weights_file) if weights_file is not None else checkpoint_path(name)
    if path.is_dir():
        raise WeightsUnavailableError(f"{name}: weights file {path} is a folder; name the "
                                      "checkpoint file")
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{name}: weights file {path} not found; make it with "
            f"`python -m utils.demo.train --model {name}`")
    from .user import load_state_strict, read_state_dict   # one-line errors for bad files
    model = build_model(name)
    load_state_strict(model, read_state_dict(path), path)
    return model.eval()


def _class_names(task: str, pretrain_dataset: str = PRETRAIN_DATASET) -> list:
    return [] if task == "regression" else synthetic_class_names()


def _spec(name: str, target_layer: str, description: str, task: str = "classification") -> ModelSpec:
    return ModelSpec(
        name=name,
        load=partial(load_demo, name),
        class_names=partial(_class_names, task),
        clip_length=NUM_FRAMES,
        resize=FRAME_SIZE,
        crop=FRAME_SIZE,
        mean=MEAN,
        std=STD,
        target_layer=target_layer,
        task=task,
        pretrain_datasets=(PRETRAIN_DATASET,),
        description=description,
    )


DEMO_3DCNN = _spec("demo_3dcnn", "features.conv4",
                   "small 3-D CNN trained on synthetic clips (offline demo)")
DEMO_LSTM = _spec("demo_lstm", "frame_cnn.conv4",
                  "frame CNN + LSTM trained on synthetic clips (one Grad-CAM map per frame)")
DEMO_LSTM_ATTN = _spec("demo_lstm_attn", "frame_cnn.conv4",
                       "frame CNN + LSTM with temporal attention, synthetic clips")
DEMO_REGRESSION = _spec("demo_regression", "features.conv4",
                        "3-D CNN regressing the moving object's velocity (px/frame)",
                        task="regression")

SPECS = (DEMO_3DCNN, DEMO_LSTM, DEMO_LSTM_ATTN, DEMO_REGRESSION)
