"""Run set-up shared by the command line, the views and the evaluations: the model spec, its
class names, the device, and the loaded network checked against the run."""
from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from models import MODEL_NAMES, get_model_spec
from utils.io.errors import SetupError
from utils.io.labels import epic_classes, read_class_file

# torch is imported where it is used: resolving a name and the command line's usage errors
# must not wait for it.
if TYPE_CHECKING:
    import torch

    from models.adapter import ModelAdapter


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
        from models import WeightsUnavailableError
        from models.hf import load_hf_model
        try:
            _, spec = load_hf_model(args.model[3:])
        except (ValueError, WeightsUnavailableError, OSError, ImportError) as error:
            raise SetupError(" ".join(str(error).split())) from None
        return spec
    if ":" in args.model:
        from models import WeightsUnavailableError
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
    import torch
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
    """Load the network and check it against the run before any clip: the layer exists.
    Problems raise :class:`SetupError` (one line). The output size is checked against the
    class list on the first real batch (:func:`checked_outputs`), not by a probe pass."""
    from models import WeightsUnavailableError
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
    return adapter


@contextlib.contextmanager
def checked_outputs(adapter: ModelAdapter, class_names: Sequence[str]) -> Iterator[ModelAdapter]:
    """For the block, every forward of a classifier ``adapter`` checks its output size against
    ``class_names``: a mismatch raises :class:`SetupError` (one line) on the run's first batch,
    before any of its files is written. The hook is removed on exit."""
    if not class_names or adapter.task != "classification":
        yield adapter
        return
    expected = len(class_names)

    def hook(_module, _inputs, output) -> None:
        size = output.shape[-1] if getattr(output, "dim", None) and output.dim() else None
        if size is not None and size != expected:
            raise SetupError(f"model {adapter.name} has {size} outputs but the class list has "
                             f"{expected} names")

    handle = adapter.register_forward_hook(hook)
    try:
        yield adapter
    finally:
        handle.remove()
