"""Temporary model changes, always undone: frozen parameters, eval mode, forward hooks."""
from __future__ import annotations

import contextlib
from typing import Iterator, Union

from torch import nn


@contextlib.contextmanager
def input_only_gradients(model: nn.Module) -> Iterator[nn.Module]:
    """Switch off parameter gradients (only the input needs one) and restore them on exit."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every sub-module in eval mode (batch-norm statistics, no dropout) for the block and
    restore each module's own ``training`` flag on exit."""
    saved = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, flag in saved:
            module.training = flag


def resolve_layer(model: nn.Module, layer: Union[str, nn.Module]) -> nn.Module:
    """Return the sub-module named by a dotted path (``"layer4.1.conv2"``) or the module itself."""
    if isinstance(layer, nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        hint = ", ".join(names[-8:])
        raise ValueError(f"model has no layer {layer!r}; last layers are: {hint}") from None


@contextlib.contextmanager
def capture_layer(model: nn.Module, layer: Union[str, nn.Module]) -> Iterator[dict]:
    """Record one layer's output (``record["activation"]``) for the duration of the block.

    The activation stays in the autograd graph so ``torch.autograd.grad(score, activation)``
    gives its gradient. The hook is removed on exit, even on error.
    """
    module = resolve_layer(model, layer)
    record: dict = {}

    def hook(_module, _inputs, output):
        record["activation"] = output

    handle = module.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()
