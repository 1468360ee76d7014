"""Temporary model changes, always undone: frozen parameters, eval mode, forward hooks, and
the one context every attribution method runs in (:func:`method_context`)."""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Union

import torch
from torch import nn

from models.adapter import as_adapter


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
    if hasattr(model, "layer") and hasattr(model, "read_layer"):   # a ModelAdapter
        return model.layer(layer)
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


def _has_recurrent_layer(model: nn.Module) -> bool:
    return any(isinstance(m, nn.RNNBase) for m in model.modules())


@contextlib.contextmanager
def method_context(model: nn.Module) -> Iterator[nn.Module]:
    """What every attribution method runs in, undone on exit even on error: eval mode for every
    sub-module (batch-norm statistics, no dropout: a map must not depend on how many copies of
    a clip share a batch), parameters frozen (only the input's gradient is computed) and, for
    recurrent models on CUDA, cuDNN off for the block (cuDNN's RNN backward refuses eval mode)."""
    on_cuda = any(p.is_cuda for p in model.parameters())
    no_cudnn = on_cuda and _has_recurrent_layer(model)
    with eval_mode(model), input_only_gradients(model), \
            (torch.backends.cudnn.flags(enabled=False) if no_cudnn else contextlib.nullcontext()):
        yield model


def attribution_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator of every public method ``fn(model, clip, target, **options)``: the model
    becomes a :class:`~models.adapter.ModelAdapter` (a bare module is wrapped with defaults)
    and the call runs inside :func:`method_context`."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, clip: torch.Tensor, target: Any, **options: Any) -> Any:
        adapter = as_adapter(model)
        with method_context(adapter):
            return fn(adapter, clip, target, **options)

    return wrapper
