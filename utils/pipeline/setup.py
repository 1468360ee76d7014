"""Run set-up shared by the command line, the views and the evaluations: the model spec, its
class names, the device, and the loaded network checked against the run."""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from models import MODEL_NAMES, WeightsUnavailableError, get_model_spec
from models.adapter import ModelAdapter
from utils.io.errors import SetupError
from utils.io.labels import epic_classes, read_class_file


class UnknownModel(ValueError):
    """``--model`` names nothing we can load: a usage error."""


def class_names_for(spec, dataset: str, classes_file: Optional[Path] = None):
    """``(class names, synonyms or None)``: from ``--classes``, the EPIC-Kitchens lists (with
    their synonyms), or the model's own list."""
    if classes_file is not None:
        names, synonyms = read_class_file(classes_file)
        return list(names), synonyms
    if dataset.startswith("epic-kitchens-"):
        names, synonyms = epic_classes(dataset.rsplit("-", 1)[1])
        if dataset not in spec.pretrain_datasets:
            return list(names), synonyms
        return list(spec.class_names(dataset)), synonyms
    return list(spec.class_names(dataset)), None


def resolve_spec(args: argparse.Namespace):
    """The model spec named by ``--model``: a registered model, a Hugging Face folder or a user's
    builder. An unknown name raises :class:`UnknownModel` (a usage error: exit 2)."""
    if args.model in MODEL_NAMES:
        return get_model_spec(args.model)
    if args.model.startswith("hf:"):
        from models.hf import load_hf_model
        try:
            _, spec = load_hf_model(args.model[3:])
        except (ValueError, WeightsUnavailableError, OSError, ImportError) as error:
            raise SetupError(" ".join(str(error).split())) from None
        return spec
    if ":" in args.model:
        from models.user import user_model_spec
        try:
            return user_model_spec(args.model, weights=args.weights, classes_file=args.classes,
                                   resize=args.resize, crop=args.crop, mean=args.mean,
                                   std=args.std, clip_length=args.clip_length,
                                   target_layer=args.target_layer,
                                   input_layout=args.input_layout)
        except (ValueError, WeightsUnavailableError, OSError) as error:
            raise SetupError(" ".join(str(error).split())) from None
    try:
        return get_model_spec(args.model)
    except ValueError:
        raise UnknownModel(f"--model {args.model!r} is neither a registered model "
                           f"({', '.join(MODEL_NAMES)}) nor FILE.py:FUNCTION / "
                           "package.module:FUNCTION") from None


def choose_device(no_gpu: bool) -> torch.device:
    """The CPU with ``--no_gpu``; else CUDA, the GPU of torchrun's ``LOCAL_RANK`` when set."""
    if no_gpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    print("note: CUDA is not available; running on the CPU (pass --no_gpu to silence this)",
          file=sys.stderr)
    return torch.device("cpu")


def load_model(spec, weights: Optional[Path], dataset: str, device: torch.device,
               class_names: Sequence[str], target_layer: Optional[str]) -> ModelAdapter:
    """Load the network and check it against the run before any clip: the layer exists, the
    output size matches the class list. Problems raise :class:`SetupError` (one line)."""
    try:
        if "num_classes" in inspect.signature(spec.load).parameters and class_names:
            network = spec.load(weights, dataset, num_classes=len(class_names))
        else:
            network = spec.load(weights, dataset)
    except WeightsUnavailableError:
        raise
    except Exception as error:  # a user's builder or checkpoint: one line, not a traceback
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SetupError(f"cannot load model {spec.name}: {first[:300]}") from None
    adapter = spec.adapter(network.to(device).eval(), class_names)
    if target_layer is not None:
        try:
            adapter.layer(target_layer)
        except ValueError as error:
            raise SetupError(f"--target_layer: {error}") from None
    if class_names and spec.task == "classification":
        size = spec.crop or 112
        probe = torch.zeros(1, 3, spec.clip_length, size, size, device=device)
        try:
            with torch.no_grad():
                outputs = adapter(adapter.normalize(probe)).shape[-1]
        except Exception as error:  # noqa: BLE001 - reported as one line
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise SetupError(f"model {spec.name} fails on a {spec.clip_length}x{size}x{size} "
                             f"clip: {first[:300]}") from None
        if outputs != len(class_names):
            raise SetupError(f"model {spec.name} has {outputs} outputs but the class list has "
                             f"{len(class_names)} names")
    return adapter
