"""What a run does (:class:`RunSettings`, its fingerprint) and which share of the clips this
process takes (:class:`Shard`)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Tuple

import torch
from utils.io.errors import SetupError
from utils.render.formats import FORMATS


@dataclass(frozen=True)
class Target:
    """One thing to explain for a clip: ``fn`` scores the model output, ``name`` is shown,
    ``suffix`` goes into file names ('' when the target is the clip's label), ``index``: the
    class (None for regression)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    suffix: str = ""
    index: Optional[int] = None       # the class explained (classifiers), for rank and scores


@dataclass(frozen=True)
class RunSettings:
    """What a run does. ``methods``: one or more method names, each with its resolved options
    in ``method_options`` (name -> options). ``model_identity``: the model name, the identity
    of its weights, the pretraining dataset, the preprocessing and the CAM layer;
    ``target_layer``: the layer asked for on the command line."""

    methods: Tuple[str, ...]
    model_name: str
    out_dir: Path
    formats: Sequence[str] = FORMATS
    polarity: str = "positive"
    target: str = "label"
    topk: Optional[int] = None
    counterfactual: bool = False
    regression_target: Optional[str] = None
    clip_length: Optional[int] = None
    overwrite: bool = False
    method_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    model_identity: Mapping[str, object] = field(default_factory=dict)
    progress: bool = True
    save_label: Optional[str] = None
    batch_size: Optional[int] = None
    precision: str = "float32"
    colormap: Optional[str] = None        # None: inferno for unsigned maps, RdBu_r for signed
    opacity: float = 1.0
    normalize: str = "robust"
    scores: Tuple[str, ...] = ()          # faithfulness scores per map: deletion, insertion
    score_steps: int = 10
    writers: Optional[int] = None      # writer processes (0: threads; None: from the free cores)
    # --target_layer (None: the model's own); checked when the model loads (setup.load_model),
    # fingerprinted through model_identity
    target_layer: Optional[str] = None

    def fingerprint(self, method: str) -> str:
        """Short hash of everything that changes a clip's outputs for ``method``: the method
        and its resolved options, the model identity (name, weights, pretraining dataset,
        preprocessing), clip length, target choice and polarity. A rerun skips a clip only when
        its earlier outputs carry the same fingerprint."""
        relevant = {"method": method,
                    "options": dict(sorted(self.method_options.get(method, {}).items())),
                    "model": dict(sorted(self.model_identity.items())),
                    "clip_length": self.clip_length, "target": self.target, "topk": self.topk,
                    "counterfactual": self.counterfactual,
                    "regression_target": self.regression_target, "polarity": self.polarity,
                    "precision": self.precision, "colormap": self.colormap,
                    "opacity": self.opacity, "normalize": self.normalize,
                    "scores": list(self.scores), "score_steps": self.score_steps}
        text = json.dumps(relevant, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def weights_identity(weights: Optional[Path], default: str = "") -> str:
    """The weights in the fingerprint: a local file by path, size and modification time (a
    changed file redoes the clips), the default weights by the spec's id."""
    if weights is None:
        return f"default:{default}"
    path = Path(weights).resolve()
    try:
        stat = path.stat()
    except OSError:
        return f"file:{path}"
    return f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"


# ------------------------------------------------------------------------------ sharding

@dataclass(frozen=True)
class Shard:
    """This process's share of the clips: every ``count``-th clip from ``index`` (0-based here;
    ``--shard`` and the log count from 1: ``--shard 1/4`` is ``index`` 0)."""

    index: int = 0
    count: int = 1
    source: str = "single process"

    def select(self, items: Sequence) -> list:
        return list(items[self.index::self.count])


def shard_from(flag: Optional[str], environ: Mapping[str, str] = os.environ) -> Shard:
    """The shard of this process: ``--shard I/N`` (any scheduler; ``I`` from 1 to ``N``), else torchrun's ``RANK`` /
    ``WORLD_SIZE``, else a SLURM array's ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``
    (task ids counted from ``SLURM_ARRAY_TASK_MIN``), else the whole folder. Launching is the
    engine's job (torchrun, SLURM); we only read what it sets."""
    if flag is not None:
        try:
            number, count = (int(v) for v in flag.split("/"))
        except ValueError:
            raise SetupError(f"--shard {flag!r} must be I/N counted from 1, e.g. 1/4") from None
        if count < 1 or not 1 <= number <= count:
            raise SetupError(f"--shard {flag!r}: need 1 <= I <= N (shards count from 1)")
        return Shard(number - 1, count, f"--shard {flag}")
    world_size = _environ_int(environ, "WORLD_SIZE", 1)
    if world_size < 1:
        raise SetupError(f"WORLD_SIZE={environ['WORLD_SIZE']} must be at least 1")
    if world_size > 1:
        rank = _environ_int(environ, "RANK", 0)
        if not 0 <= rank < world_size:
            raise SetupError(f"RANK={environ.get('RANK')} is outside 0..{world_size - 1} "
                             f"(WORLD_SIZE={world_size})")
        return Shard(rank, world_size, "torchrun")
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        first = _environ_int(environ, "SLURM_ARRAY_TASK_MIN", 0)
        count = _environ_int(environ, "SLURM_ARRAY_TASK_COUNT", 1)
        index = _environ_int(environ, "SLURM_ARRAY_TASK_ID", 0) - first
        if count < 1 or not 0 <= index < count:
            raise SetupError(f"SLURM array task {environ['SLURM_ARRAY_TASK_ID']} is outside "
                             f"{first}..{first + count - 1}")
        return Shard(index, count, "SLURM array")
    return Shard()


def _environ_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """An integer environment variable (empty or unset: ``default``); anything else that is not
    an integer is a :class:`SetupError` naming the variable."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise SetupError(f"{name}={environ[name]!r} is not an integer") from None
