"""Model specifications: everything the pipeline needs to know about one network.

A :class:`ModelSpec` is immutable. Adding a model to VideoVisual means writing one spec and
listing it in :data:`models.MODELS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn


class WeightsUnavailableError(RuntimeError):
    """Raised when a model's weights cannot be found or fetched (e.g. offline).

    The message names the missing file and where to put it; the CLI prints it as one line.
    """


@dataclass(frozen=True)
class ModelSpec:
    """Description of one registered model.

    Attributes:
        name: registry key used by ``--model``.
        load: ``load(weights_file: Path | None, pretrain_dataset: str) -> nn.Module``; builds the
            network, loads its weights (the default source when ``weights_file`` is None) and
            returns it in eval mode on the CPU. Raises :class:`WeightsUnavailableError` when the
            weights cannot be had.
        class_names: ``class_names(pretrain_dataset: str) -> list[str]`` in output order
            (empty list for regression models).
        clip_length: default number of frames sampled from a clip.
        resize: the short side frames are resized to before the centre crop.
        crop: side of the square centre crop.
        mean, std: per-channel normalisation applied to RGB in [0, 1]:
            ``model_input = (rgb - mean) / std``.
        target_layer: dotted name of the default layer for CAM methods.
        task: ``"classification"`` or ``"regression"``.
        pretrain_datasets: values of ``--pretrain_dataset`` this model has weights for.
        description: one line for ``--help``.
    """

    name: str
    load: Callable[[Optional[Path], str], nn.Module]
    class_names: Callable[[str], list]
    clip_length: int
    resize: int
    crop: int
    mean: Sequence[float]
    std: Sequence[float]
    target_layer: str
    task: str = "classification"
    pretrain_datasets: Sequence[str] = ("kinetics",)
    description: str = ""

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """Map RGB in [0, 1], shaped ``(N, C, T, H, W)`` or ``(C, T, H, W)``, to model input."""
        shape = (-1, 1, 1, 1) if rgb.dim() == 4 else (1, -1, 1, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=rgb.dtype, device=rgb.device).view(shape)
        std = torch.as_tensor(self.std, dtype=rgb.dtype, device=rgb.device).view(shape)
        return (rgb - mean) / std

    def denormalize(self, clip: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: model input back to RGB in [0, 1]."""
        shape = (-1, 1, 1, 1) if clip.dim() == 4 else (1, -1, 1, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=clip.dtype, device=clip.device).view(shape)
        std = torch.as_tensor(self.std, dtype=clip.dtype, device=clip.device).view(shape)
        return clip * std + mean

    def black_clip(self, like: torch.Tensor) -> torch.Tensor:
        """A black clip (pixel value 0) in this model's input space, shaped like ``like``."""
        return self.normalize(torch.zeros_like(like))
