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
    ``suffix`` goes into file names ('' when the target is the clip's label)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    suffix: str = ""


@dataclass(frozen=True)
class RunSettings:
    """What a run does. ``methods``: one or more method names, each with its resolved options
    in ``method_options`` (name -> options). ``model_identity``: the model name, the identity
    of its weights, the pretraining dataset and the preprocessing."""

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
    writers: Optional[int] = None      # writer processes (0: threads; None: from the free cores)

    @property
    def method(self) -> str:
        return self.methods[0]

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
                    "precision": self.precision}
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
    """This process's share of the clips: every ``count``-th clip from ``index``."""

    index: int = 0
    count: int = 1
    source: str = "single process"

    def select(self, items: Sequence) -> list:
        return list(items[self.index::self.count])


def shard_from(flag: Optional[str], environ: Mapping[str, str] = os.environ) -> Shard:
    """The shard of this process: ``--shard I/N`` (any scheduler), else torchrun's ``RANK`` /
    ``WORLD_SIZE``, else a SLURM array's ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``
    (task ids counted from ``SLURM_ARRAY_TASK_MIN``), else the whole folder. Launching is the
    engine's job (torchrun, SLURM); we only read what it sets."""
    if flag is not None:
        try:
            index, count = (int(v) for v in flag.split("/"))
        except ValueError:
            raise SetupError(f"--shard {flag!r} must be I/N, e.g. 0/4") from None
        if count < 1 or not 0 <= index < count:
            raise SetupError(f"--shard {flag!r}: need 0 <= I < N")
        return Shard(index, count, f"--shard {flag}")
    if int(environ.get("WORLD_SIZE", "1") or 1) > 1:
        return Shard(int(environ.get("RANK", "0")), int(environ["WORLD_SIZE"]), "torchrun")
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        count = int(environ["SLURM_ARRAY_TASK_COUNT"])
        index = int(environ["SLURM_ARRAY_TASK_ID"]) - first
        if not 0 <= index < count:
            raise SetupError(f"SLURM array task {environ['SLURM_ARRAY_TASK_ID']} is outside "
                             f"{first}..{first + count - 1}")
        return Shard(index, count, "SLURM array")
    return Shard()
