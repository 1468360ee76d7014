"""Motion or appearance? Building blocks that separate what moves from what is seen.

Two questions about a video model's decision:

- *Does the model use the order of the frames at all?* :func:`temporal_sensitivity` feeds the
  clip with its frames shuffled, reversed, frozen to one frame, and with one temporal segment
  at a time frozen, and reports the target's softmax probability under each condition plus a
  one-line verdict (thresholds below). It returns plain values; :mod:`utils.render.views` draws
  them.
- *What in the clip explains the decision beyond a still picture of it?* :func:`static_clip`
  is a baseline for integrated gradients, fading occlusion, RISE and the extremal
  perturbations: the clip's own mean frame (or first frame) repeated over time. Against it, an
  attribution explains ``f(clip) - f(static clip)``: the part of the score that a still image of
  the same scene does not give. A model that only sees the mean frame scores the same on both
  ends, so its integrated-gradients map sums to zero over time at every pixel.

Conditions of :func:`temporal_sensitivity` (all computed with the model in eval mode, no
gradients, one batch per ``batch_size`` clips):

========================  ===================================================================
``original``              the clip as given
``shuffled``              mean over ``num_shuffles`` random frame orders (seeded, never the
                          identity); each order's probability is in ``shuffled_each``
``reversed``              frames in reverse order
``frozen_middle``         frame ``T // 2`` repeated ``T`` times
``frozen_mean``           the mean frame repeated ``T`` times (``static_clip(clip, "mean")``)
``segment_1..S``          segment ``k`` of ``S`` contiguous, near-equal segments frozen: each of
                          its frames is replaced by the segment's **own first frame**; the rest
                          of the clip is untouched
========================  ===================================================================
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._context import eval_mode

# ------------------------------------------------------------------------ verdict thresholds
#: "uses order": shuffling or reversing lowers the target probability by more than this
#: (absolute, probability units) ...
ORDER_DROP_ABSOLUTE = 0.2
#: ... or by more than this fraction of the original probability, provided the absolute drop is
#: at least :data:`ORDER_DROP_FLOOR` (so that 0.02 -> 0.009 does not count as a verdict).
ORDER_DROP_RELATIVE = 0.5
ORDER_DROP_FLOOR = 0.05
#: "appearance suffices": a frozen clip (middle frame or mean frame, whichever is closer) stays
#: within this of the original probability ...
APPEARANCE_FROZEN_TOLERANCE = 0.1
#: ... and shuffling and reversing each change it by less than this.
APPEARANCE_ORDER_TOLERANCE = 0.1

USES_ORDER = "uses order"
APPEARANCE_SUFFICES = "appearance suffices"
MIXED = "mixed"
VERDICTS = (USES_ORDER, APPEARANCE_SUFFICES, MIXED)
THRESHOLDS: Mapping[str, float] = MappingProxyType({
    "order_drop_absolute": ORDER_DROP_ABSOLUTE,
    "order_drop_relative": ORDER_DROP_RELATIVE,
    "order_drop_floor": ORDER_DROP_FLOOR,
    "appearance_frozen_tolerance": APPEARANCE_FROZEN_TOLERANCE,
    "appearance_order_tolerance": APPEARANCE_ORDER_TOLERANCE,
})

BASE_CONDITIONS = ("original", "shuffled", "reversed", "frozen_middle", "frozen_mean")
STATIC_MODES = ("mean", "first")
SEGMENT_FILL = "the segment's own first frame"


def _check_clip(clip: torch.Tensor, name: str = "clip") -> None:
    if not isinstance(clip, torch.Tensor) or clip.dim() != 5:
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise ValueError(f"{name} must be a tensor (N, C, T, H, W), got {shape}")
    if clip.shape[2] < 1:
        raise ValueError(f"{name} has no frames")


def static_clip(clip: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """The clip's own still picture repeated over time: ``(N, C, T, H, W)`` -> same shape.

    ``mode="mean"``: every frame is the clip's mean frame (mean over T, per clip, channel and
    pixel). ``mode="first"``: every frame is the clip's first frame. Returns a new contiguous
    tensor (detached), on the clip's device and dtype; use it as the ``baseline`` tensor of
    integrated gradients, RISE or the fading extremal perturbations.
    """
    _check_clip(clip)
    if mode == "mean":
        still = clip.detach().mean(dim=2, keepdim=True)
    elif mode == "first":
        still = clip.detach()[:, :, :1]
    else:
        raise ValueError(f"unknown static mode {mode!r}; choose from {', '.join(STATIC_MODES)}")
    return still.expand_as(clip).contiguous()


def segment_bounds(num_frames: int, segments: int) -> List[tuple]:
    """``segments`` contiguous, near-equal ``(start, stop)`` frame ranges covering
    ``0 .. num_frames - 1`` (the first ``num_frames % segments`` are one frame longer)."""
    if not 1 <= segments <= num_frames:
        raise ValueError(f"segments must be between 1 and the number of frames ({num_frames}), "
                         f"got {segments}")
    bounds, start = [], 0
    for k in range(segments):
        length = num_frames // segments + (1 if k < num_frames % segments else 0)
        bounds.append((start, start + length))
        start += length
    return bounds


def shuffle_orders(num_frames: int, num_shuffles: int, seed: int) -> List[List[int]]:
    """``num_shuffles`` random frame orders from a local generator seeded with ``seed``; an
    order equal to the identity is drawn again (impossible to avoid only when T = 1)."""
    generator = torch.Generator().manual_seed(int(seed))
    identity = list(range(num_frames))
    orders = []
    for _ in range(num_shuffles):
        order = torch.randperm(num_frames, generator=generator).tolist()
        while num_frames > 1 and order == identity:
            order = torch.randperm(num_frames, generator=generator).tolist()
        orders.append(order)
    return orders


def _target_index(target_class) -> int:
    """A class index from an int or a one-element integer tensor."""
    if isinstance(target_class, torch.Tensor):
        if target_class.numel() != 1 or target_class.is_floating_point():
            raise ValueError("temporal_sensitivity explains one class of one clip: pass one "
                             f"class index, got a tensor {tuple(target_class.shape)} "
                             f"of {target_class.dtype}")
        target_class = int(target_class.item())
    if isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer)):
        raise ValueError(f"target_class must be a class index, got {target_class!r}")
    if target_class < 0:
        raise ValueError(f"target_class must be >= 0, got {target_class}")
    return int(target_class)


def verdict(probabilities: Mapping[str, float]) -> tuple:
    """``(verdict, reason)`` from the condition probabilities, by the module thresholds.

    "uses order" when shuffling or reversing lowers the probability by more than
    :data:`ORDER_DROP_ABSOLUTE`, or by more than :data:`ORDER_DROP_RELATIVE` of the original
    (with an absolute drop of at least :data:`ORDER_DROP_FLOOR`); otherwise "appearance
    suffices" when a frozen clip (the closer of ``frozen_middle`` and ``frozen_mean``) is within
    :data:`APPEARANCE_FROZEN_TOLERANCE` of the original and shuffling and reversing each change
    it by less than :data:`APPEARANCE_ORDER_TOLERANCE`; otherwise "mixed".
    """
    original = probabilities["original"]
    drop = max(original - probabilities["shuffled"], original - probabilities["reversed"])
    relative = drop / original if original > 0 else 0.0
    frozen = min(abs(probabilities["frozen_middle"] - original),
                 abs(probabilities["frozen_mean"] - original))
    if drop > ORDER_DROP_ABSOLUTE or (drop >= ORDER_DROP_FLOOR and relative > ORDER_DROP_RELATIVE):
        reason = (f"shuffled/reversed drop {drop:.3f} (relative {relative:.0%}) > "
                  f"{ORDER_DROP_ABSOLUTE} or {ORDER_DROP_RELATIVE:.0%}")
        still = max(probabilities["frozen_middle"], probabilities["frozen_mean"])
        if still >= original - APPEARANCE_FROZEN_TOLERANCE:
            # A still frame scores as well as the clip: the drop may come from the disturbed
            # clip's unnatural motion rather than from the order carrying the class.
            reason += f"; but a frozen clip keeps p = {still:.3f}"
        return USES_ORDER, reason
    order = max(abs(probabilities["shuffled"] - original), abs(probabilities["reversed"] - original))
    if frozen <= APPEARANCE_FROZEN_TOLERANCE and order < APPEARANCE_ORDER_TOLERANCE:
        return APPEARANCE_SUFFICES, (f"frozen within {frozen:.3f} <= {APPEARANCE_FROZEN_TOLERANCE}"
                                     f", order changes {order:.3f} < "
                                     f"{APPEARANCE_ORDER_TOLERANCE}")
    failed = []
    if frozen > APPEARANCE_FROZEN_TOLERANCE:
        failed.append(f"frozen clips off by {frozen:.3f} > {APPEARANCE_FROZEN_TOLERANCE}")
    if order >= APPEARANCE_ORDER_TOLERANCE:
        failed.append(f"shuffled/reversed change it by {order:.3f} >= "
                      f"{APPEARANCE_ORDER_TOLERANCE}")
    return MIXED, f"order drop {drop:.3f} too small; " + " and ".join(failed)


def _condition_clips(clip: torch.Tensor, bounds: Sequence[tuple],
                     orders: Sequence[Sequence[int]]) -> Dict[str, torch.Tensor]:
    """Every perturbed clip, ``(1, C, T, H, W)`` each, by condition name (shuffles separate)."""
    frames = clip.shape[2]
    clips: Dict[str, torch.Tensor] = {"original": clip}
    for k, order in enumerate(orders):
        clips[f"shuffle_{k}"] = clip[:, :, list(order)]
    clips["reversed"] = clip.flip(2)
    clips["frozen_middle"] = clip[:, :, frames // 2:frames // 2 + 1].expand_as(clip)
    clips["frozen_mean"] = static_clip(clip, "mean")
    for k, (start, stop) in enumerate(bounds):
        index = list(range(frames))
        index[start:stop] = [start] * (stop - start)
        clips[f"segment_{k + 1}"] = clip[:, :, index]
    return clips


@torch.no_grad()
def temporal_sensitivity(model: nn.Module, clip: torch.Tensor, target_class, *,
                         segments: int = 4, seed: int = 0, num_shuffles: int = 3,
                         batch_size: Optional[int] = None) -> dict:
    """How the target's softmax probability changes when the clip's time axis is disturbed.

    ``model``: ``(N, C, T, H, W) -> (N, K)`` logits; ``clip``: one normalised clip
    ``(1, C, T, H, W)``; ``target_class``: a class index (int or one-element tensor).
    ``segments``: number of contiguous segments frozen one at a time (each to its own first
    frame); ``num_shuffles`` random orders from ``seed``; ``batch_size`` clips per forward
    (``None``: all conditions in one batch). The model runs in eval mode (each module's own
    mode is restored afterwards) and is otherwise untouched.

    Returns plain Python values::

        {"target_class": int, "num_frames": T,
         "probabilities": {condition: float}   # original, shuffled, reversed, frozen_middle,
                                                # frozen_mean, segment_1 .. segment_S
         "predictions": {condition: int},      # argmax class (shuffled: of the first order)
         "shuffled_each": [float] * num_shuffles, "shuffle_orders": [[int]],
         "segment_frames": [[start, stop]] * S, "segment_fill": str,
         "verdict": str, "reason": str, "thresholds": {name: float}}
    """
    _check_clip(clip)
    if clip.shape[0] != 1:
        raise ValueError(f"temporal_sensitivity takes one clip (1, C, T, H, W), got "
                         f"{tuple(clip.shape)}")
    if num_shuffles < 1:
        raise ValueError(f"num_shuffles must be >= 1, got {num_shuffles}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index = _target_index(target_class)
    clip = clip.detach()
    frames = clip.shape[2]
    bounds = segment_bounds(frames, segments)
    orders = shuffle_orders(frames, num_shuffles, seed)
    clips = _condition_clips(clip, bounds, orders)
    names = list(clips)
    step = batch_size or len(names)
    probabilities: List[torch.Tensor] = []
    with eval_mode(model):
        for first in range(0, len(names), step):
            batch = torch.cat([clips[n] for n in names[first:first + step]])
            output = model(batch)
            if output.dim() != 2:
                raise ValueError(f"the model must return (N, K) scores, got {tuple(output.shape)}")
            if index >= output.shape[1]:
                raise ValueError(f"target_class {index} out of range 0..{output.shape[1] - 1}")
            probabilities.append(torch.softmax(output.double(), dim=1).cpu())
    table = torch.cat(probabilities)
    by_name = {n: table[i] for i, n in enumerate(names)}
    shuffled_each = [float(by_name[f"shuffle_{k}"][index]) for k in range(num_shuffles)]
    ordered = ["original", "shuffled", "reversed", "frozen_middle", "frozen_mean"] + \
        [f"segment_{k + 1}" for k in range(len(bounds))]
    probs: Dict[str, float] = {}
    predictions: Dict[str, int] = {}
    for name in ordered:
        source = "shuffle_0" if name == "shuffled" else name
        probs[name] = (float(np.mean(shuffled_each)) if name == "shuffled"
                       else float(by_name[name][index]))
        predictions[name] = int(by_name[source].argmax())
    label, reason = verdict(probs)
    return {
        "target_class": index,
        "num_frames": int(frames),
        "probabilities": probs,
        "predictions": predictions,
        "shuffled_each": shuffled_each,
        "shuffle_orders": [list(map(int, o)) for o in orders],
        "segment_frames": [[int(a), int(b)] for a, b in bounds],
        "segment_fill": SEGMENT_FILL,
        "verdict": label,
        "reason": reason,
        "thresholds": dict(THRESHOLDS),
    }


# ------------------------------------------------------------------------------ reporting
def _check_result(result: Mapping) -> None:
    missing = [k for k in ("probabilities", "predictions", "verdict", "target_class")
               if k not in result]
    if missing:
        raise ValueError(f"not a temporal_sensitivity result (missing {', '.join(missing)})")


def result_rows(result: Mapping, clip_name: str) -> List[dict]:
    """One row per condition: clip, target_class, condition, probability, change (against the
    original), predicted class, verdict and its reason."""
    _check_result(result)
    original = result["probabilities"]["original"]
    return [{"clip": clip_name, "target_class": int(result["target_class"]),
             "condition": name, "probability": float(p), "change": float(p - original),
             "predicted": int(result["predictions"][name]), "verdict": result["verdict"],
             "reason": result.get("reason", "")}
            for name, p in result["probabilities"].items()]


def summarise_temporal_sensitivity(results: Sequence[Mapping]) -> pd.DataFrame:
    """One row for a folder of clips: ``clips``, then per condition ``<condition>_mean`` and
    ``<condition>_std`` (sample standard deviation; NaN for one clip) of the target probability,
    then ``verdict_<verdict>`` counts (spaces as underscores) for every verdict in
    :data:`VERDICTS`, and ``reversed_changes_prediction`` (fraction of clips whose predicted
    class on the reversed clip differs from the original's)."""
    results = list(results)
    for result in results:
        _check_result(result)
    row: Dict[str, float] = {"clips": len(results)}
    conditions: List[str] = []
    for result in results:
        conditions += [c for c in result["probabilities"] if c not in conditions]
    for condition in conditions:
        values = [r["probabilities"][condition] for r in results if condition in r["probabilities"]]
        row[f"{condition}_mean"] = float(np.mean(values)) if values else math.nan
        row[f"{condition}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    for name in VERDICTS:
        row[f"verdict_{name.replace(' ', '_')}"] = int(sum(r["verdict"] == name for r in results))
    row["reversed_changes_prediction"] = (
        float(np.mean([r["predictions"]["reversed"] != r["predictions"]["original"]
                       for r in results])) if results else math.nan)
    return pd.DataFrame([row])
