"""Targets: what an attribution explains, as one callable ``output -> (N,) scores``.

Every method differentiates (or scores) ``target_fn(model(clip))``. Class indices, a
counterfactual, and a regression loss are all the same code path.
"""
from __future__ import annotations

from typing import Callable, Union

import torch

TargetFn = Callable[[torch.Tensor], torch.Tensor]
Target = Union[torch.Tensor, int, TargetFn]


class ClassTarget:
    """Score of one class per sample: ``output[i, classes[i]]`` (logit by default).

    ``output`` is ``(N, K)``; ``classes`` is a ``LongTensor (N,)`` or an int for all samples.
    """

    def __init__(self, classes: Union[torch.Tensor, int]):
        self.classes = torch.as_tensor(classes, dtype=torch.long)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        classes = self.classes.to(output.device)
        if classes.dim() == 0:
            classes = classes.expand(output.shape[0])
        elif classes.shape[0] != output.shape[0]:
            # One class per clip, output batched over repeats of the clip (e.g. IG steps).
            classes = classes.repeat_interleave(output.shape[0] // classes.shape[0])
        return output.gather(1, classes.view(-1, 1)).squeeze(1)

    def __repr__(self) -> str:
        return f"ClassTarget({self.classes.tolist()})"


class Counterfactual:
    """Negated target: evidence *against* the class (Grad-CAM paper, section on counterfactuals)."""

    def __init__(self, target: Target):
        self.target = as_target_fn(target)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return -self.target(output)


class RegressionTarget:
    """Negative regression loss ``-loss(output, truth)`` per sample, for vector outputs.

    ``truth`` is ``(N, D)`` or ``(D,)``; ``loss`` defaults to the squared error summed over D.
    """

    def __init__(self, truth: torch.Tensor, loss: str = "mse"):
        self.truth = torch.as_tensor(truth, dtype=torch.float32)
        if loss not in ("mse", "l1"):
            raise ValueError(f"unknown regression loss {loss!r} (use 'mse' or 'l1')")
        self.loss = loss

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        truth = self.truth.to(output.device, output.dtype)
        if truth.dim() == 1:
            truth = truth.unsqueeze(0)
        if truth.shape[0] != output.shape[0]:
            truth = truth.repeat_interleave(output.shape[0] // truth.shape[0], dim=0)
        diff = output - truth
        per_sample = diff.pow(2) if self.loss == "mse" else diff.abs()
        return -per_sample.flatten(1).sum(1)


def as_target_fn(target: Target) -> TargetFn:
    """Turn class indices (``LongTensor (N,)`` or int) or a callable into a target callable."""
    if callable(target) and not isinstance(target, torch.Tensor):
        return target
    return ClassTarget(target)
