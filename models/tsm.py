"""TSM, the temporal shift module network (Lin, Gan and Han, ICCV 2019), on a ResNet-50.

A 2-D ResNet-50 runs on every frame; inside each bottleneck's residual branch, the input of the
first 1x1 convolution is shifted along time: of its ``C`` channels, the first ``C/8`` take the
values of the next frame, the next ``C/8`` those of the previous frame (zeros past the ends),
the rest stay ("blockres" placement, fold divisor 8). The per-frame logits are averaged over
the 8 frames (segments).

The network takes clips ``(N, C, T, H, W)`` and folds them itself to frames ``(N*T, C, H, W)``
in the order ``n*T + t`` (the reference demo fed ``(N, C, T, H, W)`` where ``(N, T*C, H, W)``
was expected, mixing colour and time). Layers inside ``base_model`` therefore output
``(N*T, C', h, w)``; ``base_model.layer4`` (the default CAM layer) gives one map per frame.

Weights (not downloadable here; both load strictly, without running code from the file):

- ``kinetics``: the TSM authors' Kinetics-400 checkpoint
  ``TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_dense.pth`` (state dict under
  ``state_dict``, keys ``module.base_model....`` with the shifted convolution as ``conv1.net``,
  classifier ``module.new_fc``).
- ``epic-kitchens-verb`` / ``epic-kitchens-noun``: the EPIC-Kitchens action-models ``TSM``
  (ResNet-50, RGB, 8 segments), ``TSM_arch=resnet50_modality=RGB_segments=8-cfc93918.pth.tar``:
  keys ``base_model....`` and two heads ``fc_verb`` (125) and ``fc_noun`` (352); the dataset
  name picks the head the model outputs.

Without ``--weights`` the file is looked up in torch's hub cache (``$TORCH_HOME/hub/checkpoints``).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from .registry import ModelSpec, WeightsUnavailableError
from .user import load_state_strict, read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_SEGMENTS = 8
FOLD_DIV = 8
RESNET50_LAYERS = (3, 4, 6, 3)
FEATURE_DIM = 2048
PRETRAIN_DATASETS = ("kinetics", "epic-kitchens-verb", "epic-kitchens-noun")
EPIC_HEADS = {"fc_verb": 125, "fc_noun": 352}

KINETICS_FILE = "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_dense.pth"
KINETICS_URL = f"https://hanlab.mit.edu/projects/tsm/models/{KINETICS_FILE}"
KINETICS_SOURCE = "the TSM authors, github.com/mit-han-lab/temporal-shift-module"
EPIC_FILE = "TSM_arch=resnet50_modality=RGB_segments=8-cfc93918.pth.tar"
EPIC_URL = f"https://wp-research-public.s3-eu-west-1.amazonaws.com/epic-models-checkpoints/{EPIC_FILE}"
EPIC_SOURCE = "EPIC-Kitchens action models (torch.hub 'epic-kitchens/action-models', entry TSM)"


def temporal_shift(frames: torch.Tensor, num_segments: int, fold_div: int = FOLD_DIV
                   ) -> torch.Tensor:
    """Shift channels along time: ``(N*T, C, H, W)`` frames ordered ``n*T + t`` -> same shape.

    With ``fold = C // fold_div``: channels ``[0, fold)`` of frame ``t`` take frame ``t+1``'s,
    channels ``[fold, 2*fold)`` take frame ``t-1``'s, zeros where that frame does not exist;
    the other channels are unchanged.
    """
    total, channels, height, width = frames.shape
    if total % num_segments:
        raise ValueError(f"temporal shift: {total} frames are not a whole number of clips of "
                         f"{num_segments} frames")
    clips = frames.reshape(total // num_segments, num_segments, channels, height, width)
    fold = channels // fold_div
    zeros = clips.new_zeros(clips.shape[0], 1, fold, height, width)
    from_next = torch.cat([clips[:, 1:, :fold], zeros], dim=1)
    from_previous = torch.cat([zeros, clips[:, :-1, fold:2 * fold]], dim=1)
    shifted = torch.cat([from_next, from_previous, clips[:, :, 2 * fold:]], dim=2)
    return shifted.reshape(total, channels, height, width)


class TemporalShift(nn.Module):
    """Shift the input along time (:func:`temporal_shift`), then apply ``net``.

    ``net`` keeps its name in the state dict (``...conv1.net.weight``), as in the published
    checkpoints.
    """

    def __init__(self, net: nn.Module, num_segments: int = NUM_SEGMENTS,
                 fold_div: int = FOLD_DIV):
        super().__init__()
        self.net = net
        self.num_segments = num_segments
        self.fold_div = fold_div

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_shift(frames, self.num_segments, self.fold_div))

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, fold_div={self.fold_div}"


def shifted_resnet(layers: Sequence[int] = RESNET50_LAYERS, num_segments: int = NUM_SEGMENTS,
                   fold_div: int = FOLD_DIV) -> ResNet:
    """A torchvision bottleneck ResNet (ResNet-50 by default) with a temporal shift before every
    bottleneck's ``conv1`` and no classifier (``fc`` is the identity): frames -> ``(M, 2048)``."""
    backbone = ResNet(Bottleneck, list(layers))
    backbone.fc = nn.Identity()
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in stage:
            block.conv1 = TemporalShift(block.conv1, num_segments, fold_div)
    return backbone


class TSM(nn.Module):
    """Temporal shift network: ``(N, 3, T, H, W)`` with ``T = num_segments`` -> ``(N, K)``.

    ``heads`` maps attribute names to class counts (``{"new_fc": 400}`` for Kinetics,
    ``{"fc_verb": 125, "fc_noun": 352}`` for EPIC-Kitchens); ``output_head`` names the one the
    forward pass returns (default: the first). Every head reads the pooled 2048-d frame
    features; logits are averaged over the frames.
    """

    def __init__(self, heads: Optional[Mapping[str, int]] = None,
                 output_head: Optional[str] = None, num_segments: int = NUM_SEGMENTS,
                 fold_div: int = FOLD_DIV, layers: Sequence[int] = RESNET50_LAYERS):
        super().__init__()
        heads = dict(heads or {"new_fc": 400})
        if not heads:
            raise ValueError("TSM needs at least one head")
        self.num_segments = num_segments
        self.base_model = shifted_resnet(layers, num_segments, fold_div)
        for name, count in heads.items():
            self.add_module(name, nn.Linear(FEATURE_DIM, count))
        self.head_names = tuple(heads)
        self.output_head = output_head or self.head_names[0]
        if self.output_head not in heads:
            raise ValueError(f"unknown TSM head {self.output_head!r}; heads: "
                             f"{', '.join(self.head_names)}")

    def frame_features(self, clip: torch.Tensor) -> torch.Tensor:
        """Pooled features of every frame, ``(N*T, 2048)`` in the order ``n*T + t``."""
        if clip.dim() != 5:
            raise ValueError(f"TSM takes clips (N, C, T, H, W); got shape {tuple(clip.shape)}")
        n, c, t, h, w = clip.shape
        if t != self.num_segments:
            raise ValueError(f"TSM takes clips of {self.num_segments} frames (its segment "
                             f"count); got {t}. Use --clip_length {self.num_segments}")
        frames = clip.transpose(1, 2).reshape(n * t, c, h, w)
        return self.base_model(frames)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        logits = getattr(self, self.output_head)(self.frame_features(clip))
        return logits.view(clip.shape[0], self.num_segments, -1).mean(dim=1)


# ------------------------------------------------------------------------------ weights

def _default_file(pretrain_dataset: str) -> tuple:
    if pretrain_dataset == "kinetics":
        return KINETICS_FILE, KINETICS_URL, KINETICS_SOURCE
    return EPIC_FILE, EPIC_URL, EPIC_SOURCE


def _heads_in(state: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    heads = {}
    for name in ("new_fc", *EPIC_HEADS):
        weight = state.get(f"{name}.weight")
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            heads[name] = int(weight.shape[0])
    return heads


def load_tsm(weights_file: Optional[Path], pretrain_dataset: str = "kinetics",
             layers: Sequence[int] = RESNET50_LAYERS) -> TSM:
    """``ModelSpec.load`` for TSM: build it, load the checkpoint strictly, return it in eval mode.

    ``weights_file`` None looks for the published file in torch's hub cache. The checkpoint's
    heads decide the layout: ``new_fc`` (any class count) or ``fc_verb`` + ``fc_noun``, of
    which ``epic-kitchens-verb`` / ``-noun`` selects the output. Raises
    :class:`WeightsUnavailableError` (one line) when the file is missing or does not fit.
    """
    if pretrain_dataset not in PRETRAIN_DATASETS:
        raise WeightsUnavailableError(f"TSM has weights for {', '.join(PRETRAIN_DATASETS)}, "
                                      f"not {pretrain_dataset!r}")
    if weights_file is None:
        file_name, url, source = _default_file(pretrain_dataset)
        cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
        weights_file = cache_dir / file_name
        if not weights_file.is_file():
            raise WeightsUnavailableError(
                f"TSM weights {file_name} for {pretrain_dataset} are not in {cache_dir} and "
                f"cannot be downloaded here; they come from {source}: download {url} into "
                f"{cache_dir} or pass --weights FILE")
    state = read_state_dict(weights_file, "TSM weights file")
    heads = _heads_in(state)
    if "new_fc" in heads:
        model = TSM({"new_fc": heads["new_fc"]}, layers=layers)
    elif set(EPIC_HEADS) <= set(heads):
        if not pretrain_dataset.startswith("epic-kitchens-"):
            raise WeightsUnavailableError(
                f"{weights_file} is an EPIC-Kitchens TSM (verb and noun heads); pass "
                "--pretrain_dataset epic-kitchens-verb or epic-kitchens-noun")
        output = "fc_verb" if pretrain_dataset.endswith("verb") else "fc_noun"
        model = TSM({name: heads[name] for name in EPIC_HEADS}, output_head=output,
                    layers=layers)
    else:
        raise WeightsUnavailableError(
            f"{weights_file} has no TSM classifier: expected new_fc.weight (Kinetics layout) or "
            "fc_verb.weight and fc_noun.weight (EPIC-Kitchens layout)")
    return load_state_strict(model, state, f"TSM weights file {weights_file}").eval()


def tsm_class_names(pretrain_dataset: str = "kinetics") -> List[str]:
    """Kinetics-400 labels, or EPIC-Kitchens verb / noun class keys, in output order."""
    if pretrain_dataset == "kinetics":
        from .i3d import kinetics400_class_names
        return kinetics400_class_names("kinetics")
    if pretrain_dataset in ("epic-kitchens-verb", "epic-kitchens-noun"):
        from .class_lists import epic_class_names
        return epic_class_names(pretrain_dataset.rsplit("-", 1)[1])
    raise ValueError(f"TSM has class names for {', '.join(PRETRAIN_DATASETS)}, "
                     f"not {pretrain_dataset!r}")


SPEC = ModelSpec(
    name="tsm",
    load=partial(load_tsm, layers=RESNET50_LAYERS),
    class_names=tsm_class_names,
    clip_length=NUM_SEGMENTS,
    resize=256,
    crop=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    target_layer="base_model.layer4",
    pretrain_datasets=PRETRAIN_DATASETS,
    description="TSM ResNet-50, 8 frames: Kinetics-400 (MIT HAN lab) or EPIC-Kitchens verb/noun",
)
