"""Your own network: a builder named on the command line, its checkpoint, its input layout.

``--model path/to/file.py:builder`` (or ``package.module:builder``) names a function that takes
no arguments and returns either an ``nn.Module`` or a full :class:`~models.registry.ModelSpec`.
A module is wrapped in a spec by :func:`user_model_spec` with the preprocessing flags
(``--resize --crop --mean --std --clip_length --target_layer --input_layout``) and its weights
(``--weights``) and class names (``--classes``).

Checkpoints are read with ``torch.load(weights_only=True)``: loading one never runs code from it.
The helpers here (:func:`read_state_dict`, :func:`load_state_strict`) also serve the TSM and
CNN-LSTM specs.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import pathlib
import re
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .adapter import ModelAdapter
from .registry import ModelSpec, WeightsUnavailableError

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
INPUT_LAYOUTS = ("NCTHW", "NTCHW", "N(TC)HW")
_WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")
# Plain classes some published checkpoints pickle next to their tensors (the training script's
# argparse namespace, paths). Rebuilding them runs no code from the file.
_SAFE_CHECKPOINT_GLOBALS = (argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath,
                            pathlib.WindowsPath, pathlib.PureWindowsPath)


# ------------------------------------------------------------------------------ checkpoints

def read_state_dict(path: Union[str, Path], what: str = "weights file") -> Dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, unwrapped and without a ``module.`` prefix.

    Accepts a bare state dict or a checkpoint dict holding it under ``state_dict``, ``model``,
    ``net`` or ``model_state_dict``. Read with ``torch.load(weights_only=True)``. Raises
    :class:`WeightsUnavailableError` (one line) when the file is missing or unreadable.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightsUnavailableError(f"{what} {path} is a folder; name the checkpoint file")
    if not path.is_file():
        raise WeightsUnavailableError(f"{what} {path} does not exist")
    payload = load_tensors(path, what)
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}}
        if isinstance(payload, Mapping):
            inner = next((payload[k] for k in _WRAPPER_KEYS
                          if isinstance(payload.get(k), Mapping)), None)
            if inner is not None:
                payload = inner
    if not isinstance(payload, Mapping) or not payload:
        raise WeightsUnavailableError(f"{what} {path} holds no state dict")
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(payload):
        others = [k for k, v in payload.items() if not isinstance(v, torch.Tensor)][:3]
        raise WeightsUnavailableError(
            f"{what} {path} is not a state dict: entries such as {', '.join(map(str, others))} "
            "are not tensors")
    return strip_prefix(tensors, "module.")


def checkpoint_problem(path: Union[str, Path], error: BaseException,
                       what: str = "weights file") -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` failed: what the file is
    (or is not) rather than torch's several-line message."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as read_error:
        return f"cannot read {what} {path}: {read_error.strerror or read_error}"
    text = str(error)
    if not head:
        return f"{what} {path} is empty"
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        kind = ("a text file" if all(32 <= b < 127 or b in b"\t\r\n" for b in head)
                else "binary data")
        return f"{what} {path} is not a PyTorch checkpoint (it holds {kind})"
    if "Weights only load failed" in text or "weights_only" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        detail = f" ({found.group(1)})" if found else ""
        return (f"{what} {path} is not a tensor-only checkpoint: it pickles objects{detail} "
                "whose loading could run code; save the model's state_dict() instead")
    first = (text.strip().splitlines() or [type(error).__name__])[0]
    return f"{what} {path} is a damaged or unsupported PyTorch checkpoint: {first[:160]}"


def load_tensors(path: Union[str, Path], what: str = "weights file", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warnings; any failure
    is a one-line :class:`WeightsUnavailableError` (:func:`checkpoint_problem`). ``mmap``: the
    tensors map the file (read as used, not copied): only for files replaced atomically."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(list(_SAFE_CHECKPOINT_GLOBALS)):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # not a torch file, or a pickle needing code to load
        raise WeightsUnavailableError(checkpoint_problem(path, error, what)) from None


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """``state`` with ``prefix`` removed from its keys when every key carries it."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)


def _few(names: Sequence[str], count: int = 3) -> str:
    shown = ", ".join(names[:count])
    return shown + (", ..." if len(names) > count else "")


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor],
                      source: Union[str, Path]) -> nn.Module:
    """``model.load_state_dict(state, strict=True)`` with a one-line error.

    BatchNorm ``num_batches_tracked`` counters missing from old checkpoints are taken from the
    model (they do not affect inference). Raises :class:`WeightsUnavailableError` naming the
    counts of missing and unexpected keys, a few of each, and the first shape mismatch.
    """
    own = model.state_dict()
    state = dict(state)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (file vs model: "
                         f"{_few(mismatched, 2)})")
        raise WeightsUnavailableError(f"{source} does not fit this model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
    return model


def load_checkpoint_into(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a checkpoint file into ``model`` strictly (see :func:`read_state_dict`) and return
    the model in eval mode."""
    return load_state_strict(model, read_state_dict(path), f"weights file {path}").eval()


# ------------------------------------------------------------------------------ builders

def _import_builder(model_arg: str) -> Callable[[], Any]:
    if ":" not in model_arg or model_arg.endswith(":") or model_arg.startswith(":"):
        raise ValueError(f"--model {model_arg!r}: name a builder as path/to/file.py:function "
                         "or package.module:function")
    source, _, attribute = model_arg.rpartition(":")
    if source.endswith(".py") or "/" in source or "\\" in source:
        path = Path(source).expanduser()
        if path.is_dir():
            raise ValueError(f"--model {model_arg!r}: {path} is a folder; name the Python file "
                             f"in it, e.g. {path / 'model.py'}:{attribute}")
        if not path.is_file():
            raise ValueError(f"--model {model_arg!r}: file {path} does not exist")
        module_name = f"videovisual_user_model_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"--model {model_arg!r}: {path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        # Registered for the duration of the import only, so dataclasses and pickling inside the
        # file can find their module; removed afterwards to leave no global state behind.
        sys.modules[module_name] = module
        try:
            with _beside(path):
                spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:
            raise ValueError(f"--model {model_arg!r}: importing {path} failed: "
                             f"{type(error).__name__}: {_first_line(error)}") from None
        finally:
            sys.modules.pop(module_name, None)
    else:
        try:
            module = importlib.import_module(source)
        except (Exception, SystemExit) as error:
            raise ValueError(f"--model {model_arg!r}: importing {source} failed: "
                             f"{type(error).__name__}: {_first_line(error)}") from None
    builder = getattr(module, attribute, None)
    if builder is None or not callable(builder):
        raise ValueError(f"--model {model_arg!r}: {source} has no function {attribute!r}")
    folder = path.parent if source.endswith(".py") or "/" in source or "\\" in source else None
    return builder, folder


@contextlib.contextmanager
def _beside(path: Optional[Path]):
    """The builder file's folder first on the import path while it is imported and its builder
    runs, so the file can import modules beside it; the path is restored afterwards."""
    if path is None:
        yield
        return
    folder = str(Path(path).resolve().parent if Path(path).is_file() else Path(path).resolve())
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""


def load_user_builder(model_arg: str) -> Union[nn.Module, ModelSpec]:
    """Import the builder named by ``model_arg`` and call it with no arguments.

    ``model_arg`` is ``"path/to/file.py:builder"`` or ``"package.module:builder"``. Returns the
    builder's ``nn.Module`` or ``ModelSpec``. Every failure (missing file, import error, an
    exception in the builder, a wrong return type) is a one-line ``ValueError`` naming the file.
    """
    builder, folder = _import_builder(model_arg)
    try:
        with _beside(folder):
            result = builder()
    except (Exception, SystemExit) as error:
        raise ValueError(f"--model {model_arg!r}: the builder raised {type(error).__name__}: "
                         f"{_first_line(error)}") from None
    if not isinstance(result, (nn.Module, ModelSpec)):
        raise ValueError(f"--model {model_arg!r}: the builder returned {type(result).__name__}; "
                         "it must return an nn.Module or a ModelSpec")
    return result


# ------------------------------------------------------------------------------ layouts

def LayoutAdapter(model: nn.Module, layout: str = "NCTHW") -> ModelAdapter:
    """``model`` fed its own input layout from canonical ``(N, C, T, H, W)`` clips (see
    :class:`models.adapter.ModelAdapter`: ``NCTHW``, ``NTCHW`` or frames folded ``N(TC)HW``,
    channel ``t*C + c``). Layer names stay the network's own."""
    return ModelAdapter(model, input_layout=layout)


def last_conv_name(model: nn.Module) -> str:
    """Dotted name of the last convolution registered in ``model``."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not names:
        raise ValueError("the model has no convolution; pass --target_layer")
    return names[-1]


# ------------------------------------------------------------------------------ spec

def _load_user_model(model_arg: str, layout: str, default_weights: Optional[Path],
                     weights_file: Optional[Path], pretrain_dataset: str) -> nn.Module:
    built = load_user_builder(model_arg)
    if isinstance(built, ModelSpec):
        raise ValueError(f"--model {model_arg!r}: the builder returned a ModelSpec; load it "
                         "through user_model_spec")
    path = weights_file if weights_file is not None else default_weights
    if path is None:
        warnings.warn(f"{model_arg}: no --weights given; the network keeps the weights its "
                      "builder gave it", stacklevel=2)
    else:
        load_checkpoint_into(built, path)
    return built.eval()   # the model adapter feeds it its input layout


def _output_count(model: nn.Module, crop: int, clip_length: int, layout: str) -> Optional[int]:
    """The network's output size from one dry run on a zero clip (None if it cannot run)."""
    probe = LayoutAdapter(model, layout)
    try:
        with torch.no_grad():
            output = probe.eval()(torch.zeros(1, 3, clip_length, crop, crop))
    except (Exception, SystemExit):  # problems surface in the run's probe, as one line
        return None
    return int(output.shape[-1]) if output.dim() == 2 else None


def user_model_spec(model_arg: str, weights: Optional[Union[str, Path]] = None,
                    classes_file: Optional[Union[str, Path]] = None, resize: Optional[int] = None,
                    crop: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                    std: Optional[Sequence[float]] = None, clip_length: Optional[int] = None,
                    target_layer: Optional[str] = None,
                    input_layout: Optional[str] = None) -> ModelSpec:
    """A :class:`ModelSpec` for ``--model path.py:builder``.

    Defaults: resize 128, crop 112, Kinetics mean/std, clip length 16, target layer = the last
    convolution in the network, layout ``NCTHW``. With ``classes_file`` (see
    :func:`models.class_lists.read_class_file`) the class count is checked against the network's
    output size (one dry run on a zero clip). A builder returning a ``ModelSpec`` is used as
    it is, with any flags given here replacing its fields.
    """
    from .class_lists import check_class_count, read_class_file

    layout = input_layout or "NCTHW"
    if layout not in INPUT_LAYOUTS:
        raise ValueError(f"unknown --input_layout {layout!r}; choose from {', '.join(INPUT_LAYOUTS)}")
    for flag, value in (("resize", resize), ("crop", crop), ("clip_length", clip_length)):
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be at least 1")
    for flag, value in (("mean", mean), ("std", std)):
        if value is not None and len(value) != 3:
            raise ValueError(f"--{flag} takes 3 numbers (R G B); got {len(value)}")
    if std is not None and any(s <= 0 for s in std):
        raise ValueError("--std values must be positive")
    class_names: Optional[List[str]] = None
    if classes_file is not None:
        class_names, _synonyms = read_class_file(classes_file)
    weights_path = Path(weights) if weights is not None else None

    built = load_user_builder(model_arg)
    if isinstance(built, ModelSpec):
        overrides: Dict[str, Any] = {k: v for k, v in dict(
            resize=resize, crop=crop, mean=tuple(mean) if mean else None,
            std=tuple(std) if std else None, clip_length=clip_length,
            target_layer=target_layer).items() if v is not None}
        if class_names is not None:
            overrides["class_names"] = partial(_fixed_names, tuple(class_names))
        if weights_path is not None:
            overrides["load"] = partial(_spec_load_with_file, built.load, weights_path)
        return _replace(built, **overrides)

    crop = crop or 112
    clip_length = clip_length or 16
    layer = target_layer or last_conv_name(built)
    outputs = _output_count(built, crop, clip_length, layout)
    if class_names is not None:
        if outputs is not None:
            check_class_count(outputs, class_names, f"--classes {classes_file}")
        names: Optional[tuple] = tuple(class_names)
    else:
        names = tuple(f"class {i}" for i in range(outputs)) if outputs else None
    return ModelSpec(
        name=model_arg,
        load=partial(_load_user_model, model_arg, layout, weights_path),
        class_names=partial(_fixed_names, names),
        clip_length=clip_length,
        resize=resize or 128,
        crop=crop,
        mean=tuple(mean) if mean else KINETICS_MEAN,
        std=tuple(std) if std else KINETICS_STD,
        target_layer=layer,
        pretrain_datasets=("custom",),
        description=f"user model {model_arg}",
        input_layout=layout,
        weights_id=model_arg,
    )


def _fixed_names(names: Optional[tuple], _pretrain_dataset: str = "custom") -> List[str]:
    return list(names) if names is not None else []


def _spec_load_with_file(load: Callable[[Optional[Path], str], nn.Module], weights_path: Path,
                         weights_file: Optional[Path], pretrain_dataset: str) -> nn.Module:
    return load(weights_file if weights_file is not None else weights_path, pretrain_dataset)


def _replace(spec: ModelSpec, **changes: Any) -> ModelSpec:
    import dataclasses
    return dataclasses.replace(spec, **changes)
