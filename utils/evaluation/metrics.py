"""Scores for attribution maps against known evidence, and the model-randomisation sanity check.

Maps are one clip's relevance ``(T, H, W)`` (numpy or torch; leading size-1 axes such as
``(1, 1, T, H, W)`` are squeezed). Use :func:`relevance_map` to turn a method's raw output
``(N, C, T, H, W)`` into one.

- Pointing game (Zhang et al., excitation backprop; the video papers use a 15-pixel
  tolerance): per frame, the map's maximum must lie within ``tolerance`` pixels of the
  evidence box. :func:`pointing_chance` gives what a uniformly random peak scores.
- Deletion and insertion (Petsiuk et al., RISE): remove (or insert) the most relevant voxels
  first, in steps, and integrate the target's probability over the removed fraction.
- Temporal grounding: the frame with the largest summed relevance holds the evidence.
- Sanity check (Adebayo et al., model parameter randomisation): the rank correlation between
  the map of the trained model and that of a copy with its top layers re-initialised; a map
  that explains the model must change (low correlation).
"""
from __future__ import annotations

import copy
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from vis_methods.scores import (  # noqa: F401 - one implementation, shared with --score
    ArrayLike, as_map, deletion, gaussian_blur_frames, insertion)

NORMALISATION_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def relevance_map(attribution: ArrayLike, signed: bool, reduction: str = "abs") -> np.ndarray:
    """One clip's raw attribution ``(C, T, H, W)`` or ``(1, C, T, H, W)`` -> relevance ``(T, H, W)``.

    Channels are summed. For signed methods (gradients) ``reduction="abs"`` sums absolute
    values (evidence either way, as saliency maps do); ``"positive"`` keeps positive values.
    """
    if isinstance(attribution, torch.Tensor):
        attribution = attribution.detach().cpu().double().numpy()
    array = np.asarray(attribution, dtype=np.float64)
    if array.ndim == 5:
        if array.shape[0] != 1:
            raise ValueError("relevance_map takes one clip")
        array = array[0]
    if array.ndim != 4:
        raise ValueError(f"expected (C, T, H, W), got shape {array.shape}")
    if signed:
        if reduction == "abs":
            array = np.abs(array)
        elif reduction == "positive":
            array = np.clip(array, 0, None)
        else:
            raise ValueError(f"unknown reduction {reduction!r} (use 'abs' or 'positive')")
    return array.sum(axis=0)


# ---------------------------------------------------------------------------- pointing game
def peak_positions(attribution: ArrayLike) -> np.ndarray:
    """Per frame, the ``(x, y)`` pixel (column, row) of the map's maximum, ``(T, 2)`` int.
    Ties go to the first maximum in row-major order."""
    maps = as_map(attribution)
    flat = maps.reshape(maps.shape[0], -1).argmax(axis=1)
    rows, cols = np.unravel_index(flat, maps.shape[1:])
    return np.stack([cols, rows], axis=1)


def _box_distance(x: np.ndarray, y: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Euclidean distance from pixels ``(x, y)`` to the pixels covered by ``box`` (edge
    coordinates ``[x0, y0, x1, y1]``: columns ``x0 .. x1-1`` and rows ``y0 .. y1-1``)."""
    dx = np.maximum(np.maximum(box[0] - x, x - (box[2] - 1)), 0)
    dy = np.maximum(np.maximum(box[1] - y, y - (box[3] - 1)), 0)
    return np.hypot(dx, dy)


def pointing_hits(attribution: ArrayLike, boxes: np.ndarray, tolerance: float = 15.0) -> np.ndarray:
    """Per frame, 1.0 if the map's maximum lies within ``tolerance`` pixels of the evidence box,
    else 0.0; NaN where the box is NaN (evidence absent). ``boxes``: ``(T, 4)``.

    When several pixels share the maximum, the score is the fraction of them that hit (what a
    random choice among them scores on average), so a flat map scores chance, not whatever
    its first pixel happens to be.
    """
    maps = as_map(attribution)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (maps.shape[0], 4):
        raise ValueError(f"boxes {boxes.shape} do not match {maps.shape[0]} frames")
    hits = np.full(maps.shape[0], np.nan)
    for t, (box, frame) in enumerate(zip(boxes, maps)):
        if not np.isnan(box).any():
            rows, cols = np.nonzero(frame == frame.max())
            hits[t] = float((_box_distance(cols, rows, box) <= tolerance).mean())
    return hits


def pointing_game(attribution: ArrayLike, boxes: np.ndarray, present: Optional[np.ndarray] = None,
                  tolerance: float = 15.0) -> float:
    """Fraction of the frames holding the evidence whose map maximum hits the box (within
    ``tolerance`` pixels). ``present (T,)`` restricts the frames further; NaN if none."""
    hits = pointing_hits(attribution, boxes, tolerance)
    if present is not None:
        hits = np.where(np.asarray(present, dtype=bool), hits, np.nan)
    valid = ~np.isnan(hits)
    return float(hits[valid].mean()) if valid.any() else math.nan


def pointing_chance(boxes: np.ndarray, frame_shape: Tuple[int, int],
                    tolerance: float = 15.0) -> float:
    """Expected pointing-game score of a map whose peak is uniformly random: the mean, over
    frames with a box, of the fraction of pixels within ``tolerance`` of the box."""
    height, width = frame_shape
    rows, cols = np.mgrid[0:height, 0:width]
    fractions = [float((_box_distance(cols, rows, box) <= tolerance).mean())
                 for box in np.asarray(boxes, dtype=np.float64) if not np.isnan(box).any()]
    return float(np.mean(fractions)) if fractions else math.nan


def centre_map(num_frames: int, height: int, width: int, sigma: Optional[float] = None) -> np.ndarray:
    """Baseline map ``(T, H, W)``: a Gaussian bump at the frame centre in every frame."""
    sigma = sigma if sigma is not None else min(height, width) / 4.0
    rows = np.arange(height) - (height - 1) / 2.0
    cols = np.arange(width) - (width - 1) / 2.0
    bump = np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma ** 2))
    return np.broadcast_to(bump, (num_frames, height, width)).copy()


# ------------------------------------------------------------------------ temporal grounding
def frame_relevance(attribution: ArrayLike) -> np.ndarray:
    """Summed relevance per frame ``(T,)``."""
    return as_map(attribution).sum(axis=(1, 2))


def temporal_grounding(attribution: ArrayLike, present: np.ndarray) -> float:
    """1.0 if the frame with the largest summed relevance holds the evidence, else 0.0. Frames
    tied for the largest sum share the score (fraction of them holding the evidence), so a
    map that is the same in every frame scores chance."""
    present = np.asarray(present, dtype=bool)
    sums = frame_relevance(attribution)
    return float(present[sums == sums.max()].mean())


def temporal_grounding_chance(present: np.ndarray) -> float:
    """Score of a uniformly random frame choice: the fraction of frames holding the evidence."""
    return float(np.asarray(present, dtype=bool).mean())


# --------------------------------------------------------------------------- sanity check
def parameterised_layers(model: nn.Module, example_input: Optional[torch.Tensor] = None
                         ) -> List[str]:
    """Names of the modules that own parameters (normalisation layers excluded), bottom to top.

    Without ``example_input`` the order is registration order; with it, the order in which a
    forward pass calls them (right for models that register their head before other layers).
    """
    owners = [name for name, module in model.named_modules()
              if any(True for _ in module.parameters(recurse=False))
              and not isinstance(module, NORMALISATION_LAYERS)]
    if example_input is None:
        return owners
    called: List[str] = []
    modules = dict(model.named_modules())
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, _output):
            if name not in called:
                called.append(name)
        return hook

    try:
        for name in owners:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return called + [name for name in owners if name not in called]


def randomized_copy(model: nn.Module, top_k_layers: int, seed: int = 0,
                    example_input: Optional[torch.Tensor] = None) -> nn.Module:
    """A deep copy of ``model`` with its last ``top_k_layers`` parameterised layers
    re-initialised (cascading randomisation from the top). ``model`` is not modified.

    Layers are re-initialised with their own ``reset_parameters`` under a fixed ``seed`` (the
    global random state is restored afterwards). Order: see :func:`parameterised_layers`.
    """
    names = parameterised_layers(model, example_input)
    if not 0 <= top_k_layers <= len(names):
        raise ValueError(f"top_k_layers must be in [0, {len(names)}], got {top_k_layers}")
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names[len(names) - top_k_layers:]:
            module = modules[name]
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                with torch.no_grad():
                    for parameter in module.parameters(recurse=False):
                        if parameter.dim() > 1:
                            nn.init.kaiming_uniform_(parameter, a=math.sqrt(5))
                        else:
                            nn.init.zeros_(parameter)
    return clone


def rank_data(values: ArrayLike) -> np.ndarray:
    """Ranks 1..n of the flattened values; tied values share their average rank."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(flat, kind="mergesort")
    ordered = flat[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ordered) != 0) + 1])
    ends = np.concatenate([starts[1:], [flat.size]])
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(flat.size)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(first: ArrayLike, second: ArrayLike) -> float:
    """Spearman rank correlation of two maps of the same size (NaN if either is constant)."""
    a, b = rank_data(first), rank_data(second)
    if a.size != b.size:
        raise ValueError(f"maps differ in size: {a.size} vs {b.size}")
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def summarise(values: Sequence[float]) -> Tuple[float, float, int]:
    """``(mean, standard deviation, count)`` of the finite values (NaN mean if none)."""
    array = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan, 0
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0, int(array.size)


# ------------------------------------------------------------------- localisation (boxes)
def localisation_boxes(attribution: ArrayLike, threshold: float = 0.15) -> np.ndarray:
    """Per frame, the box of the map's largest region, as the Grad-CAM paper localises objects.

    Each frame is binarised at ``threshold`` times its own maximum (pixels ``>=`` that value);
    of the connected regions (8-connectivity) the one with the most pixels is kept (ties: the
    larger summed map, then the first in row-major order) and its bounding box returned as
    ``[x0, y0, x1, y1]`` in pixel edges (``x1`` = last column + 1), ``(T, 4)`` float. Frames
    whose maximum is not positive get a NaN row.
    """
    from scipy import ndimage

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    maps = as_map(attribution)
    boxes = np.full((maps.shape[0], 4), np.nan)
    structure = np.ones((3, 3), dtype=bool)
    for t, frame in enumerate(maps):
        peak = frame.max()
        if not np.isfinite(peak) or peak <= 0:
            continue
        labels, count = ndimage.label(frame >= threshold * peak, structure=structure)
        indices = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(np.ones_like(frame), labels, indices)
        masses = ndimage.sum_labels(frame, labels, indices)
        best = indices[np.lexsort((-masses, -sizes))[0]]
        rows, cols = np.nonzero(labels == best)
        boxes[t] = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    return boxes


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``[x0, y0, x1, y1]`` (pixel edges), row by row;
    ``(..., 4)`` -> ``(...)``. NaN where either box is NaN."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    missing = np.isnan(a).any(axis=-1) | np.isnan(b).any(axis=-1)
    return np.where(missing, np.nan, iou)


def localisation_iou(attribution: ArrayLike, boxes: np.ndarray,
                     present: Optional[np.ndarray] = None, threshold: float = 0.15) -> float:
    """Mean IoU between the map's box per frame (:func:`localisation_boxes`) and the evidence
    box ``boxes (T, 4)`` ``[x0, y0, x1, y1]`` (pixel edges), over the frames that hold the
    evidence (a box without NaN, and ``present`` where given). A frame whose map has no
    positive value scores 0 there. NaN if no frame holds the evidence.
    """
    maps = as_map(attribution)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (maps.shape[0], 4):
        raise ValueError(f"boxes {boxes.shape} do not match {maps.shape[0]} frames")
    valid = ~np.isnan(boxes).any(axis=1)
    if present is not None:
        present = np.asarray(present, dtype=bool)
        if present.shape != (maps.shape[0],):
            raise ValueError(f"present {present.shape} does not match {maps.shape[0]} frames")
        valid &= present
    if not valid.any():
        return math.nan
    predicted = localisation_boxes(maps, threshold)
    scores = box_iou(predicted[valid], boxes[valid])
    return float(np.nan_to_num(scores, nan=0.0).mean())
