"""Deletion and insertion (Petsiuk et al., RISE): how fast the target's probability falls when
the most relevant voxels of a map are removed first, and how fast it rises when they are put
back first. One implementation for the evaluation (:mod:`utils.evaluation.metrics`) and for the
per-clip ``--score`` of the command line.

Maps are one clip's relevance ``(T, H, W)`` (numpy or torch; leading size-1 axes squeezed).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ArrayLike = Union[np.ndarray, torch.Tensor]


def as_map(attribution: ArrayLike) -> np.ndarray:
    """``(T, H, W)`` float64 numpy array from a map with optional leading size-1 axes."""
    if isinstance(attribution, torch.Tensor):
        attribution = attribution.detach().cpu().double().numpy()
    array = np.asarray(attribution, dtype=np.float64)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected one clip's map (T, H, W), got shape {array.shape}")
    return array


# ----------------------------------------------------------------- deletion and insertion
def gaussian_blur_frames(clip: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every frame of ``(N, C, T, H, W)`` with a spatial Gaussian of ``sigma`` pixels
    (kernel cut at 3 sigma, mirrored borders).

    Why not the methods' :func:`models.adapter.blur_frames`: the metric curves blur one clip
    once on the CPU with a large sigma (20 px), where OpenCV's separable filter is about ten
    times faster than a one-channel conv2d; the two differ only at the frame border (mirrored
    here, replicated there), and the evaluation table's deletion/insertion numbers were
    measured with this one."""
    if sigma <= 0:
        return clip.clone()
    n, c, t, h, w = clip.shape
    planes = clip.detach().cpu().float().reshape(n * c * t, h, w).numpy()
    radius = int(math.ceil(3 * sigma))
    size = 2 * radius + 1
    # OpenCV's separable filter is an order of magnitude faster than a 1-channel conv2d here.
    blurred = np.stack([cv2.GaussianBlur(plane, (size, size), sigmaX=sigma, sigmaY=sigma,
                                         borderType=cv2.BORDER_REFLECT_101) for plane in planes])
    return torch.from_numpy(blurred).view(n, c, t, h, w).to(clip.device, clip.dtype)


def _relevance_order(attribution: ArrayLike, shape: Tuple[int, int, int], seed: int) -> torch.Tensor:
    """Voxel indices ``(T*H*W,)`` from most to least relevant; ties in random (seeded) order
    so a flat map does not delete the top-left corner first."""
    maps = torch.from_numpy(as_map(attribution)).float()
    if tuple(maps.shape) != tuple(shape):
        maps = F.interpolate(maps[None, None], size=shape, mode="trilinear",
                             align_corners=False)[0, 0]
    flat = maps.reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    shuffle = torch.randperm(flat.numel(), generator=generator)
    order = torch.argsort(flat[shuffle], descending=True, stable=True)
    return shuffle[order]


def _score_fn(target: Union[int, Callable[[torch.Tensor], torch.Tensor]]
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(target) and not isinstance(target, torch.Tensor):
        return target
    index = int(target)
    return lambda output: torch.softmax(output, dim=1)[:, index]


@torch.no_grad()
def _perturbation_curve(model: nn.Module, clip: torch.Tensor, attribution: ArrayLike,
                        target, steps: int, mode: str, baseline: Optional[torch.Tensor],
                        blur_sigma: float, insert: bool, batch_size: int, seed: int,
                        progress: bool) -> Tuple[float, np.ndarray]:
    if clip.dim() != 5 or clip.shape[0] != 1:
        raise ValueError(f"expected one clip (1, C, T, H, W), got {tuple(clip.shape)}")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    clip = clip.detach()
    if baseline is None:
        if mode == "blur":
            baseline = gaussian_blur_frames(clip, blur_sigma)
        elif mode == "fade":
            baseline = torch.zeros_like(clip)
        else:
            raise ValueError(f"unknown mode {mode!r} (use 'blur' or 'fade')")
    baseline = torch.as_tensor(baseline, dtype=clip.dtype, device=clip.device).expand_as(clip)
    _, channels, frames, height, width = clip.shape
    voxels = frames * height * width
    order = _relevance_order(attribution, (frames, height, width), seed).to(clip.device)
    # rank[v] = position of voxel v in the order; voxel v is changed at step k iff rank < count_k.
    rank = torch.empty(voxels, dtype=torch.long, device=clip.device)
    rank[order] = torch.arange(voxels, device=clip.device)
    counts = [round(k * voxels / steps) for k in range(steps + 1)]
    start, end = (baseline, clip) if insert else (clip, baseline)
    score_fn = _score_fn(target)
    scores: List[float] = []
    was_training = model.training
    model.eval()
    chunks = range(0, steps + 1, batch_size)
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc="insertion" if insert else "deletion", leave=False)
    try:
        for first in chunks:
            chunk = counts[first:first + batch_size]
            changed = torch.stack([(rank < count) for count in chunk]).float()
            changed = changed.view(len(chunk), 1, frames, height, width)
            batch = start + changed * (end - start)  # (b, C, T, H, W)
            scores.extend(score_fn(model(batch)).float().cpu().tolist())
    finally:
        model.train(was_training)
    curve = np.asarray(scores, dtype=np.float64)
    auc = float(((curve[:-1] + curve[1:]) / 2.0).sum() / steps)
    return auc, curve


def deletion(model: nn.Module, clip: torch.Tensor, attribution: ArrayLike, target,
             steps: int = 20, mode: str = "blur", baseline: Optional[torch.Tensor] = None, *,
             blur_sigma: float = 20.0, batch_size: int = 7, seed: int = 0,
             progress: bool = False) -> Tuple[float, np.ndarray]:
    """Deletion game: replace the most relevant voxels first and watch the target fall.

    ``clip``: normalised model input ``(1, C, T, H, W)``; ``attribution``: ``(T, H, W)``
    (resized trilinearly if its grid differs). At step ``k`` of ``steps`` the top ``k/steps``
    of the voxels (all channels of a pixel together) take the values of the replacement:
    ``mode="blur"`` a spatially blurred copy of the clip (Gaussian, ``blur_sigma`` px),
    ``mode="fade"`` a constant ``baseline`` (default zeros, i.e. the normalisation mean);
    an explicit ``baseline`` tensor overrides either. ``target``: a class index (scored as
    softmax probability) or a callable ``output -> (N,)`` (e.g. a regression target, scored
    raw). Returns ``(auc, curve)``: the trapezoid area under ``curve`` ``(steps + 1,)`` over the
    removed fraction in [0, 1]. Lower is better.
    """
    return _perturbation_curve(model, clip, attribution, target, steps, mode, baseline,
                               blur_sigma, False, batch_size, seed, progress)


def insertion(model: nn.Module, clip: torch.Tensor, attribution: ArrayLike, target,
              steps: int = 20, mode: str = "blur", baseline: Optional[torch.Tensor] = None, *,
              blur_sigma: float = 20.0, batch_size: int = 7, seed: int = 0,
              progress: bool = False) -> Tuple[float, np.ndarray]:
    """Insertion game: start from the replacement (see :func:`deletion`) and put the most
    relevant voxels back first. Returns ``(auc, curve)``; higher is better."""
    return _perturbation_curve(model, clip, attribution, target, steps, mode, baseline,
                               blur_sigma, True, batch_size, seed, progress)
