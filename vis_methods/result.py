"""The attribution result: maps, their names, whether they are signed, and diagnostics per clip."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import torch


@dataclass(frozen=True)
class Attribution:
    """What a method returns through :func:`vis_methods.explain`.

    ``maps``: raw floats ``(N, S, T, H, W)`` with one map per output set when ``len(names) > 1``
    (e.g. one per ``perturb_area``), else ``(N, 1|C, T, H, W)`` (channels summed for display).
    ``names``: one per output set (``("",)`` for a single one). ``signed``: whether negative
    values mean evidence against the target (follows the options actually used).
    ``diagnostics``: one dict per clip (completeness gap, final area ...); a value for several
    output sets is a list in output-set order. ``options``: the resolved options.
    """

    maps: torch.Tensor
    names: Tuple[str, ...]
    signed: bool
    diagnostics: Tuple[Dict[str, Any], ...]
    method: str
    options: Mapping[str, Any]

    def output_sets(self, index: int) -> Iterator[Tuple[str, torch.Tensor]]:
        """``(name, map (1|C, T, H, W))`` for each output set of clip ``index``."""
        maps = self.maps[index]
        if len(self.names) == 1:
            yield self.names[0], maps
            return
        for s, name in enumerate(self.names):
            yield name, maps[s:s + 1]


def split_diagnostics(info: Mapping[str, Any], num_clips: int, num_sets: int
                      ) -> Tuple[Dict[str, Any], ...]:
    """A method's ``info`` as one dict per clip.

    A list of ``num_clips * k`` values (clip-major) gives each clip its ``k`` values (a scalar
    when ``k == 1``); scalars and anything else apply to every clip (e.g. a batch's count of
    model evaluations)."""
    per_clip: List[Dict[str, Any]] = [{} for _ in range(num_clips)]
    for key, value in info.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().tolist() if value.numel() > 1 else float(value)
        if isinstance(value, Sequence) and not isinstance(value, str) \
                and len(value) > 0 and len(value) % num_clips == 0:
            k = len(value) // num_clips
            for i in range(num_clips):
                part = list(value[i * k:(i + 1) * k])
                per_clip[i][key] = part[0] if k == 1 else part
        else:
            for i in range(num_clips):
                per_clip[i][key] = value
    return tuple(per_clip)
