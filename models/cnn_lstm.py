"""CNN-LSTM video classifiers on ImageNet frame encoders (ResNet-18, VGG-16).

Every frame goes through a 2-D ImageNet CNN (the clip is folded to ``(N*T, 3, H, W)``, frames
ordered ``n*T + t``), its last feature map is averaged over space to one vector per frame, an
LSTM runs over the frames, and a linear head reads either the last hidden state or, with soft
temporal attention, the attention-weighted sum of all hidden states:
``score_t = v . tanh(W h_t)``, ``a = softmax_t(score)``, ``logits = head(sum_t a_t h_t)``.

Registry entries ``resnet18_lstm``, ``resnet18_lstm_attn``, ``vgg16_lstm``,
``vgg16_lstm_attn``. Default CAM layers, ``(N*T, C, h, w)`` so every frame gets its own map:
``encoder.layer4`` (ResNet-18, 512 x 7 x 7 at 224 px) and ``encoder.features.29`` (VGG-16, the
ReLU after conv5_3, 512 x 14 x 14).

No trained CNN-LSTM ships with the project. ``--weights FILE`` loads a checkpoint of this
architecture (state dict, optionally under ``state_dict`` / ``model``, ``module.`` prefix
allowed; key names ``encoder.*``, ``lstm.*``, ``attention.*``, ``head.*``; the class count,
hidden size and attention size are read from it). Without it the encoder gets torchvision's
ImageNet weights (download cache; offline a one-line error names the file and URL) and the LSTM
and head stay untrained, with a warning. The default class list is HMDB-51's, the dataset the
CNN-LSTM reports in ``shared/seeds`` trained on; ``--classes`` replaces it.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, VGG16_Weights, resnet18
from torchvision.models._api import WeightsEnum
from torchvision.models.vgg import cfgs as vgg_configs
from torchvision.models.vgg import make_layers as vgg_layers

from .registry import ModelSpec, WeightsUnavailableError
from .user import load_state_strict, read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = ("resnet18", "vgg16")
FEATURE_DIM = 512  # both encoders end with 512 channels
DEFAULT_HIDDEN = 512
DEFAULT_ATTENTION = 256
PRETRAIN_DATASET = "hmdb51"
HMDB51_CLASSES_FILE = Path(__file__).resolve().parent / "classes" / "hmdb51_classes.txt"
_IMAGENET_WEIGHTS = {"resnet18": ResNet18_Weights.IMAGENET1K_V1,
                     "vgg16": VGG16_Weights.IMAGENET1K_V1}
TARGET_LAYERS = {"resnet18": "encoder.layer4", "vgg16": "encoder.features.29"}


def _no_inplace(module: nn.Module) -> nn.Module:
    """In-place ReLUs would overwrite a captured layer output; these models use none."""
    for child in module.modules():
        if isinstance(child, nn.ReLU):
            child.inplace = False
    return module


def frame_encoder(backbone: str) -> nn.Module:
    """An untrained ImageNet frame CNN without its classifier: ``(M, 3, H, W)`` -> ``(M, 512)``.

    ResNet-18: torchvision's network with ``fc`` replaced by the identity (global average
    pooling stays). VGG-16: its ``features`` (13 convolutions, 5 max-pools), then global
    average pooling.
    """
    if backbone == "resnet18":
        encoder = resnet18(weights=None)
        encoder.fc = nn.Identity()
    elif backbone == "vgg16":
        encoder = nn.Sequential(OrderedDict(
            features=vgg_layers(vgg_configs["D"], batch_norm=False),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
        ))
        for module in encoder.modules():  # torchvision's VGG initialisation (variance kept)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
    else:
        raise ValueError(f"unknown frame encoder {backbone!r}; choose from {', '.join(BACKBONES)}")
    return _no_inplace(encoder)


class CNNLSTM(nn.Module):
    """Frame CNN + LSTM (+ temporal attention): ``(N, 3, T, H, W)`` -> ``(N, num_classes)``."""

    def __init__(self, backbone: str = "resnet18", num_classes: int = 51,
                 hidden_dim: int = DEFAULT_HIDDEN, attention: bool = False,
                 attention_dim: int = DEFAULT_ATTENTION):
        super().__init__()
        self.backbone = backbone
        self.encoder = frame_encoder(backbone)
        self.lstm = nn.LSTM(FEATURE_DIM, hidden_dim, batch_first=True)
        self.attention = nn.Sequential(OrderedDict(
            proj=nn.Linear(hidden_dim, attention_dim),
            tanh=nn.Tanh(),
            score=nn.Linear(attention_dim, 1),
        )) if attention else None
        self.head = nn.Linear(hidden_dim, num_classes)

    def hidden_states(self, clip: torch.Tensor) -> torch.Tensor:
        """LSTM hidden states ``(N, T, hidden_dim)`` of a clip ``(N, 3, T, H, W)``."""
        if clip.dim() != 5:
            raise ValueError(f"expected a clip (N, C, T, H, W); got shape {tuple(clip.shape)}")
        n, c, t, h, w = clip.shape
        frames = clip.transpose(1, 2).reshape(n * t, c, h, w)
        features = self.encoder(frames).view(n, t, -1)
        states, _ = self.lstm(features)
        return states

    def _attend(self, states: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.attention(states).squeeze(-1), dim=1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        states = self.hidden_states(clip)
        if self.attention is None:
            return self.head(states[:, -1])
        weights = self._attend(states)
        return self.head((weights.unsqueeze(-1) * states).sum(dim=1))


class CNNLSTMAttention(CNNLSTM):
    """:class:`CNNLSTM` with temporal attention; :meth:`temporal_attention` gives its weights."""

    def __init__(self, backbone: str = "resnet18", num_classes: int = 51,
                 hidden_dim: int = DEFAULT_HIDDEN, attention_dim: int = DEFAULT_ATTENTION):
        super().__init__(backbone, num_classes, hidden_dim, attention=True,
                         attention_dim=attention_dim)

    def temporal_attention(self, clip: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(N, T)`` over the clip's frames (each row sums to 1)."""
        return self._attend(self.hidden_states(clip))


def build_cnn_lstm(backbone: str, attention: bool, num_classes: int,
                   hidden_dim: int = DEFAULT_HIDDEN,
                   attention_dim: int = DEFAULT_ATTENTION) -> CNNLSTM:
    """An untrained CNN-LSTM (encoder included)."""
    if attention:
        return CNNLSTMAttention(backbone, num_classes, hidden_dim, attention_dim)
    return CNNLSTM(backbone, num_classes, hidden_dim)


# ------------------------------------------------------------------------------ weights

def _imagenet_state(backbone: str) -> dict:
    """torchvision's ImageNet weights of the encoder, through its download cache."""
    weights: WeightsEnum = _IMAGENET_WEIGHTS[backbone]
    file_name = os.path.basename(weights.url)
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    help_text = (f"ImageNet weights {file_name} for the {backbone} frame encoder are not in "
                 f"{cache_dir} and cannot be downloaded here; download {weights.url} into "
                 f"{cache_dir} or pass --weights FILE (a trained CNN-LSTM checkpoint)")
    if not (cache_dir / file_name).is_file() and os.environ.get("VIDEOVISUAL_OFFLINE") == "1":
        raise WeightsUnavailableError(help_text)
    try:
        state = weights.get_state_dict(progress=False)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a broken file a RuntimeError
        raise WeightsUnavailableError(f"{help_text} ({type(error).__name__}: "
                                      f"{str(error).splitlines()[0][:120] if str(error) else ''})"
                                      ) from None
    if backbone == "resnet18":
        return {k: v for k, v in state.items() if not k.startswith("fc.")}
    return {k: v for k, v in state.items() if k.startswith("features.")}


def load_cnn_lstm(backbone: str, attention: bool, weights_file: Optional[Path],
                  pretrain_dataset: str = PRETRAIN_DATASET,
                  num_classes: Optional[int] = None) -> CNNLSTM:
    """``ModelSpec.load`` for the CNN-LSTM entries, plus an optional class count.

    With ``weights_file``: build the architecture the checkpoint describes (class count, hidden
    and attention sizes from its ``head``, ``lstm`` and ``attention`` tensors) and load it
    strictly; ``num_classes``, when given (e.g. the length of ``--classes``), must match.
    Without: ImageNet encoder weights from torchvision, an untrained LSTM and head of
    ``num_classes`` outputs (default 51, HMDB-51), and a warning saying so.
    """
    name = f"{backbone}_lstm{'_attn' if attention else ''}"
    if weights_file is not None:
        state = read_state_dict(weights_file, f"{name} weights file")
        head, recurrent = state.get("head.weight"), state.get("lstm.weight_hh_l0")
        if head is None or recurrent is None or head.dim() != 2 or recurrent.dim() != 2:
            raise WeightsUnavailableError(
                f"{weights_file} is not a {name} checkpoint: it has no head.weight and "
                "lstm.weight_hh_l0 (keys encoder.*, lstm.*, head.* expected)")
        count = int(head.shape[0])
        if num_classes is not None and num_classes != count:
            raise ValueError(f"{weights_file} has {count} outputs but {num_classes} class names "
                             "were given; pass a --classes file with one name per output")
        projection = state.get("attention.proj.weight")
        model = build_cnn_lstm(backbone, attention, count, hidden_dim=int(recurrent.shape[1]),
                               attention_dim=int(projection.shape[0]) if projection is not None
                               else DEFAULT_ATTENTION)
        return load_state_strict(model, state, f"{name} weights file {weights_file}").eval()
    model = build_cnn_lstm(backbone, attention, num_classes or len(hmdb51_class_names()))
    model.encoder.load_state_dict(_imagenet_state(backbone))
    warnings.warn(f"{name}: no --weights given, so only the {backbone} frame encoder is trained "
                  "(ImageNet); the LSTM and the classifier are random and its predictions and "
                  "maps mean nothing. Pass --weights with a trained checkpoint", stacklevel=2)
    return model.eval()


def hmdb51_class_names(pretrain_dataset: str = PRETRAIN_DATASET) -> List[str]:
    """The 51 HMDB-51 action names, alphabetical (the usual class order)."""
    if pretrain_dataset != PRETRAIN_DATASET:
        raise ValueError(f"the CNN-LSTM models list classes for {PRETRAIN_DATASET!r} only; "
                         "pass --classes FILE for others")
    names = [line.strip() for line in HMDB51_CLASSES_FILE.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    if len(names) != 51:
        raise RuntimeError(f"{HMDB51_CLASSES_FILE} lists {len(names)} classes, expected 51")
    return names


def _spec(backbone: str, attention: bool) -> ModelSpec:
    name = f"{backbone}_lstm{'_attn' if attention else ''}"
    kind = "LSTM with temporal attention" if attention else "LSTM (last hidden state)"
    return ModelSpec(
        name=name,
        load=partial(load_cnn_lstm, backbone, attention),
        class_names=hmdb51_class_names,
        clip_length=16,
        resize=256,
        crop=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        target_layer=TARGET_LAYERS[backbone],
        pretrain_datasets=(PRETRAIN_DATASET,),
        description=f"ImageNet {backbone} frame encoder + {kind}; bring a trained checkpoint "
                    "with --weights",
    )


RESNET18_LSTM = _spec("resnet18", False)
RESNET18_LSTM_ATTN = _spec("resnet18", True)
VGG16_LSTM = _spec("vgg16", False)
VGG16_LSTM_ATTN = _spec("vgg16", True)
