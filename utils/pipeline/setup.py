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
from utils.render.formats import RENDERED

# torch is imported where it is used: resolving a name and the command line's usage errors
# must not wait for it.
if TYPE_CHECKING:
    import torch

    from models.adapter import ModelAdapter
    from utils.pipeline.settings import RunSettings


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
        except Exception as error:  # noqa: BLE001 - a missing or damaged model: one line
            raise SetupError(" ".join(str(error).split()) or type(error).__name__) from None
        return spec
    if ":" in args.model:
        from models.user import user_model_spec
        try:
            return user_model_spec(args.model, weights=args.weights, classes_file=args.classes,
                                   resize=args.resize, crop=args.crop, mean=args.mean,
                                   std=args.std, clip_length=args.clip_length,
                                   target_layer=args.target_layer,
                                   input_layout=args.input_layout)
        except Exception as error:  # noqa: BLE001 - the user's code, whatever it raises
            raise SetupError(" ".join(str(error).split()) or type(error).__name__) from None
    try:
        return get_model_spec(args.model)
    except ValueError:
        raise UnknownModel(f"--model {args.model!r} is neither a registered model "
                           f"({', '.join(MODEL_NAMES)}) nor FILE.py:FUNCTION / "
                           "package.module:FUNCTION") from None


# Bytes a run holds at its peak per value of one clip's input (3 x T x crop x crop): the decoded
# frames, the model input, its gradient, the network's activations (measured with grad and
# grad_cam on the tiny test network at T = 2000 and 4000: 40), and the pictures and animations
# drawn from them (png and gif: 240 in all).
BYTES_PER_INPUT_VALUE = 40
BYTES_PER_INPUT_VALUE_DRAWN = 240


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still get (``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(count: int) -> str:
    return f"{count / 2 ** 30:.1f} GiB" if count >= 2 ** 30 else f"{count / 2 ** 20:.0f} MiB"


def check_settings(spec, settings) -> None:
    """What can be refused from the settings and the model's spec alone, before any clip is
    read: a clip length whose input cannot fit in memory, ``--segments`` above the clip length,
    ``--regression_target`` for a classifier. Raises :class:`SetupError` (one line)."""
    clip_length = settings.clip_length or spec.clip_length or 16
    crop = spec.crop or spec.resize or 112
    memory = available_memory()
    drawn = any(f in RENDERED for f in settings.formats)
    per_value = BYTES_PER_INPUT_VALUE_DRAWN if drawn else BYTES_PER_INPUT_VALUE
    need = 3 * clip_length * crop * crop * per_value
    if memory is not None and need > memory:
        fits = max(1, memory // (3 * crop * crop * per_value))
        raise SetupError(f"--clip_length {clip_length} at {crop}x{crop} needs about "
                         f"{_size(need)}, more than the {_size(memory)} available; at most "
                         f"about {fits} frames fit")
    segments = settings.method_options.get("temporal_sensitivity", {}).get("segments")
    if segments is not None and segments > clip_length:
        raise SetupError(f"--segments {segments} is more than the {clip_length} frames of a "
                         "clip (--clip_length)")
    if settings.regression_target is not None and spec.task != "regression":
        raise SetupError(f"--regression_target is for regression models; {spec.name} is a "
                         f"{spec.task} model (use --target)")


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


def decode_device(device: torch.device) -> Optional[torch.device]:
    """Where frame folders' JPEGs are decoded: on the run's GPU (nvjpeg, one batch per clip),
    else None (Pillow, the CPU runs' pictures unchanged)."""
    import torch
    device = torch.device(device)
    return device if device.type == "cuda" else None


def load_model(spec, weights: Optional[Path], dataset: str, device: torch.device,
               class_names: Sequence[str], target_layer: Optional[str] = None, *,
               settings: Optional[RunSettings] = None) -> ModelAdapter:
    """Load the network and check it against the run before any clip: the layer the run's
    ``settings`` ask for (``settings.target_layer``; ``target_layer`` where no settings are
    given) exists. Problems raise :class:`SetupError` (one line). The output size is checked
    against the class list on the first real batch (:func:`checked_outputs`), not by a probe
    pass."""
    if settings is not None:
        target_layer = settings.target_layer
    import torch

    from models import WeightsUnavailableError
    try:
        if "num_classes" in inspect.signature(spec.load).parameters and class_names:
            network = spec.load(weights, dataset, num_classes=len(class_names))
        else:
            network = spec.load(weights, dataset)
    except WeightsUnavailableError:
        raise
    except (Exception, SystemExit) as error:  # a user's builder or checkpoint: one line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SetupError(f"cannot load model {spec.name}: {first[:300]}") from None
    adapter = spec.adapter(network.to(device).eval(), class_names)
    if target_layer is not None:
        try:
            adapter.layer(target_layer)
        except ValueError as error:
            raise SetupError(f"--target_layer: {error}") from None
    # A user's network (a builder or a Hugging Face folder) gets one forward pass on a zero clip:
    # one that fails, or returns what no method can use, fails every clip, so it stops the run
    # here. Registered networks are known to run; their class count is checked on the first
    # real batch (checked_outputs), which saves a full-size pass per call.
    if spec.name in MODEL_NAMES:
        return adapter
    size = spec.crop or 112
    probe = torch.zeros(1, 3, spec.clip_length, size, size, device=device)
    try:
        with torch.no_grad():
            output = adapter(adapter.normalize(probe))
    except (Exception, SystemExit) as error:  # noqa: BLE001 - reported as one line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SetupError(f"model {spec.name} fails on a {spec.clip_length}x{size}x{size} "
                         f"clip: {type(error).__name__}: {first[:300]}") from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 1:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise SetupError(f"model {spec.name} returns {shape} for one clip; it must return "
                         "(clips, outputs) scores")
    if not output.is_floating_point():
        raise SetupError(f"model {spec.name} returns {output.dtype} scores; they must be "
                         "floating point (gradients flow through them)")
    outputs = output.shape[-1]
    if class_names and spec.task == "classification" and outputs != len(class_names):
        raise SetupError(f"model {spec.name} has {outputs} outputs but the class list has "
                         f"{len(class_names)} names")
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
