"""Model specifications: everything the pipeline needs to know about one network.

A :class:`ModelSpec` is immutable. Adding a model to VideoVisual means writing one spec and
listing it in :data:`models._SPEC_LOCATIONS`. :meth:`ModelSpec.adapter` wraps a loaded network
in the :class:`~models.adapter.ModelAdapter` the methods receive.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence

from .adapter import LayerReader, ModelAdapter, OutputFn, PixelSpace, read_conv_layer

from torch import nn


class WeightsUnavailableError(RuntimeError):
    """Raised when a model's weights cannot be found or fetched (e.g. offline).

    The message names the missing file and where to put it; the CLI prints it as one line.
    """


@dataclass(frozen=True)
class ModelSpec(PixelSpace):
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
        input_layout: what the network takes (``NCTHW``, ``NTCHW`` or ``N(TC)HW``); clips are
            always ``(N, C, T, H, W)`` on our side and the adapter converts.
        layer_readers: layer name -> reader of its output into ``(N, C', T', h', w')``.
        default_reader: reader for layers not listed.
        output_fn: network output -> ``(N, K)`` (``None``: tensors, ``.logits``, tuples).
        weights_id: identifies the default weights in the resume fingerprint (e.g. the file
            name or the package version).
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
    input_layout: str = "NCTHW"
    layer_readers: Mapping[str, LayerReader] = field(default_factory=lambda: MappingProxyType({}))
    default_reader: LayerReader = read_conv_layer
    output_fn: Optional[OutputFn] = None
    weights_id: str = ""

    def adapter(self, network: nn.Module, class_names: Sequence[str] = ()) -> ModelAdapter:
        """``network`` (as returned by :attr:`load`) wrapped with this spec's knowledge."""
        return ModelAdapter(network, name=self.name, mean=self.mean, std=self.std,
                            resize=self.resize, crop=self.crop, clip_length=self.clip_length,
                            input_layout=self.input_layout, class_names=class_names,
                            task=self.task, target_layer=self.target_layer,
                            layer_readers=self.layer_readers,
                            default_reader=self.default_reader, output_fn=self.output_fn)

    def with_changes(self, **changes: Any) -> "ModelSpec":
        """A copy with some fields changed (e.g. preprocessing from the command line)."""
        return replace(self, **changes)

