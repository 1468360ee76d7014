"""Black-box attribution by masking the input: sliding-window ``occlusion`` and video ``rise``.

Both only run the model forward (no gradients), in batches of ``internal_batch_size`` masked
clips.

- ``occlusion``: a spatio-temporal window slides over the clip; the voxels inside it are
  replaced (by a blurred copy of the clip or by the clip's mean colour) and the drop of the
  target score is credited to every voxel of the window. A voxel's attribution is the mean drop
  over the windows that cover it (Zeiler & Fergus 2014; as Captum's ``Occlusion``).
- ``rise``: random low-resolution binary masks over ``(T, H, W)``, upsampled trilinearly with a
  random sub-cell shift, keep part of the clip and replace the rest by ``baseline``; the map is
  the score-weighted mean of the masks divided by ``p_keep`` (Petsiuk et al., BMVC 2018,
  extended to time).

Scores: occlusion uses the target score as given (the logit for class targets), so the map is
signed; RISE weights masks by the softmax probability of a class target (the callable's own
score for other targets).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._context import attribution_method
from .perturbation import blur_frames, default_max_blur, score_function, scores_of_rows
from .targets import Target, as_target_fn

FILLS = ("blur", "mean", "static")
RISE_MASKS = 500
RISE_P_KEEP = 0.5


def _triple(value, name: str) -> Tuple[int, int, int]:
    values = tuple(int(v) for v in ((value,) * 3 if isinstance(value, int) else value))
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{name} must be three positive integers (t, h, w), got {value!r}")
    return values


def window_starts(length: int, window: int, stride: int) -> list:
    """Start indices of a window of ``window`` sliding by ``stride`` over ``length``; the last
    window is moved flush with the end so that every position is covered."""
    window = min(window, length)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def _default_window(shape: Sequence[int]) -> Tuple[int, int, int]:
    """A quarter of each dimension: 4 x 28 x 28 for 16 x 112 x 112."""
    return tuple(max(1, math.ceil(d / 4)) for d in shape)


@attribution_method
def occlusion(model: nn.Module, clip: torch.Tensor, target: Target, *,
              occlusion_window: Optional[Sequence[int]] = None,
              occlusion_stride: Optional[Sequence[int]] = None,
              occlusion_fill: str = "blur", internal_batch_size: Optional[int] = None,
              info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Sliding-window occlusion: ``clip (N, C, T, H, W)`` -> score drop ``(N, 1, T, H, W)``.

    ``occlusion_window`` ``(t, h, w)`` defaults to a quarter of each dimension,
    ``occlusion_stride`` to half the window; windows are clamped to the clip and the last one in
    each dimension ends at the clip's end. ``occlusion_fill``: ``"blur"`` (each frame blurred
    with the extremal perturbation's strongest blur, 20 px at 112 px), ``"mean"`` (the clip's
    mean colour) or ``"static"`` (the clip's mean frame: only what changes over time is
    occluded).
    ``internal_batch_size`` occluded clips are evaluated at once (default 16).
    ``info["model_evaluations"]`` counts the occluded clips evaluated.
    """
    window, stride, fill = occlusion_window, occlusion_stride, occlusion_fill
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose from {', '.join(FILLS)}")
    n, _, t, h, w = clip.shape
    window = _triple(window, "window") if window is not None else _default_window((t, h, w))
    window = tuple(min(k, d) for k, d in zip(window, (t, h, w)))
    stride = (_triple(stride, "stride") if stride is not None
              else tuple(max(1, k // 2) for k in window))
    target_fn = as_target_fn(target)
    batch = internal_batch_size or 16
    boxes = [(a, b, c) for a in window_starts(t, window[0], stride[0])
             for b in window_starts(h, window[1], stride[1])
             for c in window_starts(w, window[2], stride[2])]
    clip = clip.detach()
    if fill == "blur":
        filler = blur_frames(clip, default_max_blur(min(h, w)))
    elif fill == "static":
        filler = model.baseline("static", clip)
    else:
        filler = clip.mean(dim=(2, 3, 4), keepdim=True).expand_as(clip)

    regions = [tuple(slice(start, start + size) for start, size in zip(box, window))
               for box in boxes]                                     # (T, H, W) slices
    total = torch.zeros(n, 1, t, h, w, device=clip.device, dtype=torch.float32)
    count = torch.zeros(1, 1, t, h, w, device=clip.device, dtype=torch.float32)
    for region in regions:
        count[(0, 0) + region] += 1
    evaluations = 0
    with torch.no_grad():
        base_score = target_fn(model(clip).float())                            # (N,)
        bar = tqdm(total=n * len(boxes), desc="occlusion", disable=not progress, leave=False)
        for index in range(n):
            for start in range(0, len(regions), batch):
                chunk = regions[start:start + batch]
                occluded = clip[index:index + 1].repeat(len(chunk), 1, 1, 1, 1)
                for row, region in enumerate(chunk):
                    occluded[(row, slice(None)) + region] = filler[(index, slice(None)) + region]
                rows = torch.arange(start, start + len(chunk), device=clip.device)
                rows = rows + index * len(boxes)
                scores = scores_of_rows(target_fn, model(occluded).float(), rows, n * len(boxes))
                drops = base_score[index] - scores
                for row, region in enumerate(chunk):
                    total[(index, 0) + region] += drops[row]
                evaluations += len(chunk)
                bar.update(len(chunk))
        bar.close()
    if info is not None:
        info["model_evaluations"] = evaluations + n
        info["windows"] = len(boxes)
    return total / count


def rise_masks(num_masks: int, size: Sequence[int], cell: Sequence[int], p_keep: float,
               generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random draws of RISE: binary grids ``(M, 1, gT, gH, gW)`` (``g = ceil(size / cell) + 1``)
    and shifts ``(M, 3)`` in ``[0, cell)``; :func:`upsample_rise_masks` turns them into masks."""
    grid = [math.ceil(d / c) + 1 for d, c in zip(size, cell)]
    grids = (torch.rand(num_masks, 1, *grid, generator=generator) < p_keep).float()
    shifts = torch.stack([torch.randint(0, c, (num_masks,), generator=generator) for c in cell],
                         dim=1)
    return grids, shifts


def upsample_rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: Sequence[int],
                        cell: Sequence[int]) -> torch.Tensor:
    """Masks ``(M, 1, T, H, W)`` in ``[0, 1]``: each grid upsampled trilinearly by ``cell`` and
    cropped to ``size`` at its shift."""
    up = F.interpolate(grids, size=tuple(g * c for g, c in zip(grids.shape[2:], cell)),
                       mode="trilinear", align_corners=False)
    t, h, w = size
    return torch.stack([up[i, :, s0:s0 + t, s1:s1 + h, s2:s2 + w]
                        for i, (s0, s1, s2) in enumerate(shifts.tolist())])


@attribution_method
def rise(model: nn.Module, clip: torch.Tensor, target: Target, *, num_iter: Optional[int] = RISE_MASKS,
         rise_cell: Optional[Sequence[int]] = None, rise_p: float = RISE_P_KEEP,
         rise_baseline: Union[str, torch.Tensor] = "black",
         internal_batch_size: Optional[int] = None,
         seed: int = 0, info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Video RISE: ``clip (N, C, T, H, W)`` -> saliency ``(N, 1, T, H, W)``.

    ``num_iter`` random masks (default 500) with low-resolution cells of ``rise_cell``
    ``(t, h, w)`` voxels (default a quarter of each dimension: a 5 x 5 x 5 grid with the shift
    margin), each cell kept with probability ``rise_p``; dropped voxels become
    ``rise_baseline``: ``"black"`` (default: a black clip in pixel space), ``"zeros"`` (zeros
    in model-input space), ``"static"`` (the clip's mean frame) or a tensor.
    The masks come from a local generator seeded with ``seed``, so a run is reproducible and
    independent of ``internal_batch_size`` (default 16).
    """
    mask_cell, p_keep = rise_cell, rise_p
    if not 0 < p_keep <= 1:
        raise ValueError(f"p_keep must be in (0, 1], got {p_keep}")
    num_masks = RISE_MASKS if num_iter is None else int(num_iter)
    if num_masks < 1:
        raise ValueError(f"num_iter (number of masks) must be positive, got {num_iter}")
    n, _, t, h, w = clip.shape
    cell = _triple(mask_cell, "mask_cell") if mask_cell is not None else _default_window((t, h, w))
    cell = tuple(min(c, d) for c, d in zip(cell, (t, h, w)))
    clip = clip.detach()
    baseline = model.baseline(rise_baseline, clip)
    score_fn, is_probability = score_function(target)
    generator = torch.Generator().manual_seed(seed)
    grids, shifts = rise_masks(num_masks, (t, h, w), cell, p_keep, generator)
    grids = grids.to(clip.device)
    batch = internal_batch_size or 16

    saliency = torch.zeros(n, 1, t, h, w, device=clip.device, dtype=torch.float32)
    with torch.no_grad():
        bar = tqdm(total=n * num_masks, desc="rise", disable=not progress, leave=False)
        for start in range(0, num_masks, batch):
            masks = upsample_rise_masks(grids[start:start + batch], shifts[start:start + batch],
                                        (t, h, w), cell)                      # (B, 1, T, H, W)
            for index in range(n):
                masked = baseline[index] + masks * (clip[index] - baseline[index])
                rows = torch.arange(start, start + masks.shape[0], device=clip.device)
                rows = rows + index * num_masks
                scores = scores_of_rows(score_fn, model(masked).float(), rows, n * num_masks)
                if is_probability:
                    scores = scores.exp()
                saliency[index] += (scores.view(-1, 1, 1, 1, 1) * masks).sum(dim=0)
                bar.update(masks.shape[0])
        bar.close()
    if info is not None:
        info["model_evaluations"] = n * num_masks
    return saliency / (num_masks * p_keep)
