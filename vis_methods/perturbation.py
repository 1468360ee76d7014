"""Extremal perturbations for video: ``2d_ep``, ``3d_ep`` and ``step``.

A mask ``m`` in ``[0, 1]`` over the clip ``(T, H, W)`` keeps the voxels where ``m = 1`` and
perturbs the rest (blurs them, or fades them to a baseline). The mask is optimised so that the
perturbed clip still scores the target (the *preserve* game), or so that removing the masked
voxels kills the score (*delete*), or both (*dual*), while its area matches a requested
fraction of the clip:

- ``extremal_2d`` (``2d_ep``): the area is constrained in every frame separately;
- ``extremal_3d`` (``3d_ep``): the area is constrained over the whole clip;
- ``step`` (STEP, spatio-temporal extremal perturbation, Li et al. WACV 2021): as ``3d_ep`` plus
  a *core* loss that favours compact, temporally smooth regions (a 7-frame ellipsoid slid over
  the mask: its strongest responses are pushed to 1, the others to 0) and a growing area weight.

The mask is smooth by construction: every frame has a coarse grid of parameters (one per
``mask_step`` pixels) and a pixel's value is the soft maximum, over nearby grid points, of the
parameter times a radial kernel of width ``mask_sigma`` (Fong et al., ICCV 2019). The area
term compares the sorted mask with the ideal sorted mask (a fraction ``area`` of ones).

Optimisers:

- ``"reference"``: reproduces the reference demo's optimisation as its code runs (see "reference
  setting" below): TorchRay's full-resolution mask generator, whose zero-padded grid points
  beyond the frame take part in the soft maximum; the area target on the padded mask (10 % of
  it is about 14 % of a 112 px frame); STEP's core loss on the padded mask with a fresh random
  tie-break every iteration, from iteration 101; TorchRay's zero-padded blur; parameters at 1,
  SGD lr 0.05 with momentum and dampening 0.9, game weight 100 (2d/3d_ep) or 1 (STEP), area
  weight 300 (STEP: x1.0008668 per iteration), 2000 iterations. On demo_3dcnn it lands within
  0.05 of the demo's final probability and 0.01 of its final area (bench/bench_perturbation.py).
- ``"adam"`` (default): Adam (lr 0.05) for 100 iterations (STEP on frames above 112 px: 190,
  see :func:`default_num_iter`), stopped early once the mask and the loss stop moving. Two
  starting points (parameters at 0.5 and at 1; deletion: 0 and 0.5) run side by side in one
  batch and the better is kept after a quarter of the run. STEP's weights follow the
  reference's trajectory compressed into the run, with the game weight decaying from 10 to 3
  over the first 30 % and staying at 3. For the preserve game, one last model evaluation
  orders the voxels of the kept region, where the optimised mask saturates, by how much
  keeping each helps the score (``RELEVANCE_ORDER``: no value moves by more than 5 %). That is
  126 model evaluations per clip and area (STEP above 112 px: 239) instead of 2000; the docs'
  STEP benchmark has the measured speed and quality.

The default uses our own building blocks, which differ from the reference's: ties in the
sorted mask are broken by one fixed random draw (with ``seed``), the mask is drawn with a
margin of ``mask_sigma`` beyond the frame for the area term, whose target is a fraction of the
frame (so the frame's edge does not hide a region's rim and make the corners the cheapest place
for unneeded area), grid points beyond the frame take no part in the soft maximum, and by
default the mask is computed on a grid of 2 pixels per cell and upsampled.

Scores: for class targets the game uses the softmax probability of the class (``-log p`` to
preserve, ``-log(1 - p)`` to delete), never the logit. For a callable target (regression,
counterfactual) the callable's score ``s`` is used as it is (``-s`` to preserve, ``+s`` to
delete), and ``info`` reports it as ``final_score``.

The helpers :func:`blur_frames`, :func:`score_function` and
:func:`scores_of_rows` are shared with :mod:`vis_methods.occlusion`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from models.adapter import blur_frames  # noqa: F401  (re-exported: shared with occlusion)

from ._context import attribution_method
from .targets import ClassTarget, Target, as_target_fn

VARIANTS = ("preserve", "delete", "dual")
PERTURBATIONS = ("blur", "fade", "static")
OPTIMIZERS = ("adam", "reference")

# Reference settings (the WACV 2021 demo), for 112-pixel frames unless said otherwise.
REFERENCE_ITERATIONS = 2000
REFERENCE_SIZE = 112
REFERENCE_STEP = 7                 # mask grid step, px
REFERENCE_SIGMA = 11.0             # mask smoothing at 112 px (23 at 224 px)
REFERENCE_SIGMA_224 = 23.0
REFERENCE_MAX_BLUR = 20.0          # largest blur of the perturbation pyramid, px
REFERENCE_LEVELS = 8               # blur levels
COLDNESS = 20.0                    # soft-max pooling of the mask generator
AREA_WEIGHT = 300.0
CORE_WEIGHT = 300.0
CORE_START = 100                   # iteration at which the reference switches the core loss on
REFERENCE_LR = 0.05                # SGD, momentum 0.9, dampening 0.9
STEP_AREA_GROWTH = 1.0008668       # STEP's area weight factor per iteration
CORE_FRAMES = 7                    # core kernel: 7 frames x 11 x 11 px (at 112 px)
CORE_SIDE = 11

# Our default optimiser.
FAST_ITERATIONS = 100
FAST_ITERATIONS_STEP_LARGE = 190   # STEP above 112 px (docs/benchmarks/step.md, "On I3D")
FAST_LR = 0.05
# Initial grid parameters, two starts run together (the better one is kept after FAST_SELECT
# of the run): half way and full for preservation, intact and half way for deletion.
FAST_STARTS = MappingProxyType({"preserve": (0.5, 1.0), "delete": (0.0, 0.5), "dual": (0.5, 1.0)})
FAST_SELECT = 0.25
FAST_REWARD_START = 10.0           # STEP: reward weight at the start ...
FAST_REWARD_DECAY = 0.3            # ... decaying over this fraction of the run ...
FAST_REWARD_END = 3.0              # ... to this weight, kept to the end (the reference: 1)
RELEVANCE_ORDER = 0.05             # preserve: final mask x (1 - e + e relevance), see below
STOP_WINDOW = 10                   # early stopping looks this many iterations back
STOP_MOVE = 0.02                   # largest change of a grid parameter over the window
STOP_LOSS = 0.005                  # relative change of the loss over the window


# --------------------------------------------------------------------------- shared helpers
def score_function(target: Target) -> Tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """``(score_fn, is_probability)``: ``score_fn(output (B, K)) -> (B,)``.

    For class targets the score is the log-probability of the class (softmax over the output);
    for any other callable it is the callable's own score.
    """
    target_fn = as_target_fn(target)
    if isinstance(target_fn, ClassTarget):
        return (lambda output: target_fn(torch.log_softmax(output.float(), dim=1))), True
    return (lambda output: target_fn(output).float()), False


def default_mask_step(size: int) -> float:
    """Mask grid step in px: 7 (the reference's) from 112 px up, scaled down below."""
    if size >= REFERENCE_SIZE:
        return float(REFERENCE_STEP)
    return max(1.0, REFERENCE_STEP * size / REFERENCE_SIZE)


def default_mask_sigma(size: int) -> float:
    """Mask smoothing in px: 11 per 112 px up to 112 px, 23 per 224 px above."""
    if size <= REFERENCE_SIZE:
        return REFERENCE_SIGMA * size / REFERENCE_SIZE
    return REFERENCE_SIGMA_224 * size / 224


def default_num_iter(mode: str, optimizer: str, size: int) -> int:
    """Iterations when ``num_iter`` is not given: the reference setting's 2000; ours 100,
    except STEP on frames larger than 112 px: 190. With the mask grid step fixed in pixels, a
    224 px frame has four times the grid cells of a 112 px one, and on I3D 100 iterations left
    STEP's mask still shrinking towards its area while losing the evidence (190 iterations:
    239 evaluations, 8.4x fewer than the reference's 2000). On the 112 px demo model 190
    iterations were slightly worse than 100, so 100 stays there."""
    if optimizer == "reference":
        return REFERENCE_ITERATIONS
    if mode == "step" and size > REFERENCE_SIZE:
        return FAST_ITERATIONS_STEP_LARGE
    return FAST_ITERATIONS


def default_max_blur(size: int) -> float:
    """Strongest blur of the pyramid: 20 px (the reference's), scaled down below 112 px."""
    return REFERENCE_MAX_BLUR * min(1.0, size / REFERENCE_SIZE)


# --------------------------------------------------------------------------- smooth masks
class _SoftMaxPool(torch.autograd.Function):
    """``sum_k v_k e_k / sum_k e_k`` with ``e_k = valid_k exp(c v_k)`` over dim 1, fused: the
    soft maximum of the mask generator, with its gradient written out
    (``d out / d v_j = e_j (1 + c (v_j - out)) / sum_k e_k``) so autograd keeps one tensor.
    Values lie in ``[0, 1]``, so ``exp(c v)`` needs no shift for ``c <= 80``."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, valid: torch.Tensor, coldness: float) -> torch.Tensor:
        weights = torch.exp(coldness * values).mul_(valid)
        total = weights.sum(dim=1)
        pooled = (values * weights).sum(dim=1).div_(total)
        ctx.save_for_backward(values, weights, total, pooled)
        ctx.coldness = coldness
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled: torch.Tensor):
        values, weights, total, pooled = ctx.saved_tensors
        slope = (values - pooled.unsqueeze(1)).mul_(ctx.coldness).add_(1).mul_(weights)
        return slope.mul_((grad_pooled / total).unsqueeze(1)), None, None


class SmoothMask:
    """Smooth masks ``(B, H + 2 margin, W + 2 margin)`` from coarse parameters ``(B, h, w)`` in
    ``[0, 1]``.

    Grid point ``(i, j)`` sits at the centre of cell ``(i, j)`` of an ``h x w`` partition of the
    frame (``h = ceil(H / step)``). A pixel's value is the soft maximum (coldness 20) over the grid
    points within ``1 + ceil(sigma / spacing)`` cells of ``param * k(distance / sigma)`` with the
    radial kernel ``k(z) = exp(-2 max(z - 1/2, 0)^2)``: flat up to ``sigma / 2``, then decaying.
    So a parameter of 1 gives a disc of ones of radius ``sigma / 2`` with a smooth rim.

    The mask is also drawn ``margin`` pixels beyond the frame (the grid stays on the frame), so
    that the area term sees the rim of a region at the border as it sees any other rim: without
    it, the frame's edge would hide half a region's rim and make corners the cheapest place to
    leave unneeded area. :meth:`crop` cuts the frame out.
    """

    def __init__(self, height: int, width: int, step: float, sigma: float,
                 device: Union[str, torch.device] = "cpu", coldness: float = COLDNESS,
                 margin: int = 0):
        if step <= 0 or sigma <= 0:
            raise ValueError(f"mask step and sigma must be positive, got {step}, {sigma}")
        self.height, self.width, self.sigma, self.coldness = height, width, float(sigma), coldness
        self.margin = int(margin)
        self.grid = (max(1, math.ceil(height / step)), max(1, math.ceil(width / step)))
        self.radius = tuple(1 + math.ceil(sigma / (size / cells))
                            for size, cells in zip((height, width), self.grid))
        # Margin pixels read the neighbourhood of virtual cells beyond the grid (zero
        # parameters, left out of the soft maximum): this many per side.
        self.outer = tuple(math.ceil(self.margin / (size / cells))
                           for size, cells in zip((height, width), self.grid))
        device = torch.device(device)
        rows = self._axis(height, self.grid[0], self.radius[0], self.margin, self.outer[0], device)
        cols = self._axis(width, self.grid[1], self.radius[1], self.margin, self.outer[1], device)
        self.rows_cell, rows_offset, rows_valid = rows
        self.cols_cell, cols_offset, cols_valid = cols
        # Kernel weight of neighbour (dy, dx) at pixel (y, x): (Ky * Kx, H', W').
        distance = torch.sqrt(rows_offset[:, None, :, None] ** 2
                              + cols_offset[None, :, None, :] ** 2)
        weight = torch.exp(-2 * ((distance / self.sigma - 0.5).clamp(min=0)) ** 2)
        valid = rows_valid[:, None, :, None] & cols_valid[None, :, None, :]
        self.weight = (weight * valid).flatten(0, 1)
        # Neighbours outside the grid take no part in the soft maximum (no dark border).
        self.valid = valid.flatten(0, 1).float()

    @staticmethod
    def _axis(size: int, cells: int, radius: int, margin: int, outer: int, device: torch.device):
        """Per pixel of ``[-margin, size + margin)``: the index of its cell among the grid padded
        by ``outer`` virtual cells per side, the signed distance to each neighbouring grid point
        ``(2r+1, size')``, and whether that neighbour is a real grid point ``(2r+1, size')``."""
        spacing = size / cells
        pixel = torch.arange(-margin, size + margin, device=device, dtype=torch.float32)
        cell = ((pixel + 0.5) / spacing).floor().clamp(-outer, cells - 1 + outer).long()
        neighbour = cell[None, :] + torch.arange(-radius, radius + 1, device=device)[:, None]
        centre = (neighbour.float() + 0.5) * spacing - 0.5
        return cell + outer, pixel[None, :] - centre, (neighbour >= 0) & (neighbour < cells)

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        """``params (B, h, w)`` -> masks ``(B, H + 2 margin, W + 2 margin)``."""
        ky, kx = 2 * self.radius[0] + 1, 2 * self.radius[1] + 1
        oy, ox = self.outer
        padded = F.pad(params, (ox, ox, oy, oy)) if (oy or ox) else params
        # (B, Ky * Kx, cells): every cell's neighbourhood of parameters.
        neighbours = F.unfold(padded.unsqueeze(1), (ky, kx), padding=self.radius)
        neighbours = neighbours.view(params.shape[0], ky * kx, *padded.shape[1:])
        # Nearest upsampling: every pixel reads the neighbourhood of its own cell.
        neighbours = neighbours.index_select(2, self.rows_cell).index_select(3, self.cols_cell)
        return _SoftMaxPool.apply(neighbours * self.weight, self.valid, self.coldness)

    def crop(self, masks: torch.Tensor) -> torch.Tensor:
        """The frame ``(..., H, W)`` of masks ``(..., H + 2 margin, W + 2 margin)``."""
        m = self.margin
        return masks[..., m:m + self.height, m:m + self.width]


# --------------------------------------------------------------------------- perturbation
class _Perturbation:
    """Perturbed clips from masks: ``m = 1`` keeps a voxel, ``m = 0`` perturbs it fully.

    ``blur``: linear interpolation in a pyramid of ``levels`` blurs with sigma from ``max_blur``
    (level 0) down to 0 (the clip); ``fade``: ``baseline + m (clip - baseline)``.
    """

    def __init__(self, clip: torch.Tensor, kind: str, baseline: torch.Tensor,
                 levels: int, max_blur: float):
        self.kind, self.clip, self.levels, self.baseline = kind, clip, levels, baseline
        if kind == "blur":
            sigmas = [max_blur * (1 - level / (levels - 1)) for level in range(levels)]
            with torch.no_grad():
                # Levels last, (N, C, T, H, W, L): the two levels a voxel reads are adjacent.
                self.pyramid = torch.stack([blur_frames(clip, s) for s in sigmas], dim=-1)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """``masks (N, A, T, H, W)`` -> perturbed clips ``(N, A, C, T, H, W)``."""
        n, a = masks.shape[:2]
        m = masks.unsqueeze(2)                                        # (N, A, 1, T, H, W)
        if self.kind == "fade":
            return self.baseline.unsqueeze(1) + m * (self.clip - self.baseline).unsqueeze(1)
        position = m * (self.levels - 1)
        lower = position.detach().floor().clamp(max=self.levels - 2)
        fraction = position - lower
        pyramid = self.pyramid.unsqueeze(1).expand(n, a, *self.pyramid.shape[1:])
        index = lower.long().unsqueeze(-1).expand(*pyramid.shape[:-1], 1)
        low = torch.gather(pyramid, -1, index).squeeze(-1)
        high = torch.gather(pyramid, -1, index + 1).squeeze(-1)
        return low + fraction * (high - low)


def scores_of_rows(score_fn: Callable[[torch.Tensor], torch.Tensor], output: torch.Tensor,
                   rows: torch.Tensor, total_rows: int) -> torch.Tensor:
    """Scores ``(B,)`` of the model outputs ``(B, K)`` of rows ``rows (B,)`` of a clip-major
    batch of ``total_rows`` (``N`` clips x ``R`` copies each).

    Targets hold one class (or regression truth) per clip and expand it over a clip-major batch
    (see :mod:`vis_methods.targets`); a chunk of that batch is placed at its rows of a full batch
    so that every row meets its own clip's target.
    """
    if output.shape[0] == total_rows:
        return score_fn(output)
    full = output.new_zeros(total_rows, *output.shape[1:])
    full[rows] = output
    return score_fn(full)[rows]


# --------------------------------------------------------------------------- losses
def _sort_with_tie_break(values: torch.Tensor, tie_break: Optional[torch.Tensor],
                         descending: bool = False) -> torch.Tensor:
    """``values`` sorted along the last dimension; equal values (a clamped mask is full of
    them) are ordered by the fixed random ``tie_break`` (same length, values below 1e-4)
    instead of by position, so that no region of the clip is favoured."""
    if tie_break is None:
        return values.sort(dim=-1, descending=descending).values
    order = (values.detach() + tie_break).argsort(dim=-1, descending=descending)
    return values.gather(-1, order)


def _area_loss(masks: torch.Tensor, areas: torch.Tensor, per_frame: bool,
               tie_break: Optional[torch.Tensor] = None,
               in_frame: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared distance between the sorted mask values and the ideal sorted mask holding a
    fraction ``area`` of ones, over the clip (or per frame, then averaged).

    ``masks (N, A, T, H', W')``; ``areas (A,)``; ``tie_break (T * H' * W',)``. When the masks
    include a margin around the frame, ``in_frame (H', W')`` marks the frame: the ideal then
    holds ``area`` times the frame's voxel count of ones *plus* as many ones as the margin
    currently has (voxels above 1/2), so that a region reaching past the border is neither
    charged for its part outside nor excused its rim. Returns ``(N, A)``.
    """
    values = masks.flatten(3) if per_frame else masks.flatten(2).unsqueeze(2)   # (N, A, F, V)
    count = values.shape[-1]
    ranks = torch.arange(count, device=masks.device, dtype=masks.dtype)
    if in_frame is None:
        ones = torch.round(areas * count)[None, :, None]                        # (1, A, 1)
    else:
        inside = in_frame.expand(masks.shape[2:]).reshape(values.shape[2:])      # (F, V)
        frame_count = inside.sum(-1)                                             # (F,)
        outside_ones = ((values.detach() > 0.5) & ~inside).sum(-1)               # (N, A, F)
        ones = torch.round(areas[None, :, None] * frame_count) + outside_ones
    ideal = (ranks >= (count - ones).unsqueeze(-1)).to(masks.dtype)             # (N|1, A, F|1, V)
    if tie_break is not None:
        tie_break = tie_break.view(-1, count) if per_frame else tie_break.view(1, count)
    ordered = _sort_with_tie_break(values, tie_break)
    return ((ordered - ideal) ** 2).mean(dim=(-1, -2))


@dataclass(frozen=True)
class _CoreKernel:
    """STEP's core loss: an ellipsoid kernel ``(1, 1, kt, ks, ks)`` normalised to sum 1, slid
    over the mask with spatial stride ``ks``; the ``top_k`` strongest responses (per area) are
    pushed to 1 and all others to 0."""

    kernel: torch.Tensor
    top_k: Tuple[int, ...]

    @staticmethod
    def build(frames: int, height: int, width: int, areas: Sequence[float], side: int,
              device: torch.device) -> "_CoreKernel":
        kt = min(CORE_FRAMES, frames)
        ks = max(3, min(side, height, width))
        axes = [torch.linspace(-1, 1, k, device=device) for k in (kt, ks, ks)]
        zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
        inside = ((zz ** 2 + yy ** 2 + xx ** 2) <= 1).float()
        positions = (frames - kt + 1) * ((height - ks) // ks + 1) * ((width - ks) // ks + 1)
        volume = float(inside.sum())
        # As many kernel placements as the area holds kernel volumes.
        top_k = tuple(max(1, min(positions, math.ceil(a * frames * height * width / volume)))
                      for a in areas)
        return _CoreKernel((inside / volume)[None, None], top_k)

    def loss(self, masks: torch.Tensor, tie_break: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``masks (N, A, T, H, W)`` -> ``(N, A)``; ``tie_break`` as for the area loss, at
        least as long as the number of kernel positions."""
        n, a = masks.shape[:2]
        ks = self.kernel.shape[-1]
        response = F.conv3d(masks.reshape(n * a, 1, *masks.shape[2:]), self.kernel,
                            stride=(1, ks, ks))
        response = response.view(n, a, -1)
        if tie_break is not None:
            tie_break = tie_break[:response.shape[-1]]
        ordered = _sort_with_tie_break(response, tie_break, descending=True)
        losses = []
        for index, k in enumerate(self.top_k):
            top, rest = ordered[:, index, :k], ordered[:, index, k:]
            rest_loss = (rest ** 2).mean(-1) if rest.shape[-1] else torch.zeros_like(top[:, 0])
            losses.append(((top - 1) ** 2).mean(-1) + rest_loss)
        return torch.stack(losses, dim=1)


def _game_loss(log_score: torch.Tensor, is_probability: bool, delete: torch.Tensor) -> torch.Tensor:
    """Loss to minimise per row: preserve ``-log p``, delete ``-log(1 - p)`` (``delete`` is a
    bool tensor); for callable targets ``-s`` / ``+s``."""
    if not is_probability:
        return torch.where(delete, log_score, -log_score)
    # log(1 - p) from log p without cancellation; clamped so p = 1 stays finite.
    deleted = -torch.log((-torch.expm1(log_score)).clamp(min=1e-12))
    return torch.where(delete, deleted, -log_score)


# --------------------------------------------------------------------------- the optimisation
@dataclass(frozen=True)
class _Schedule:
    """Loss weights and step size at each iteration."""

    reward_weight: float          # weight of the game loss (2d/3d_ep 100, STEP 1) ...
    reward_start: float           # ... starting from this weight (equal: constant) ...
    reward_until: int             # ... and reaching reward_weight geometrically at this iteration
    area_growth: float            # area weight factor per iteration (reference STEP: 1.0008668)
    core_start: Optional[int]     # iteration from which the core loss counts (None: never)
    lr: float

    def reward_at(self, iteration: int) -> float:
        if iteration >= self.reward_until:
            return self.reward_weight
        ratio = self.reward_weight / self.reward_start
        return self.reward_start * ratio ** (iteration / self.reward_until)

    def area_weight(self, iteration: int) -> float:
        return AREA_WEIGHT * self.area_growth ** iteration

    def core_weight(self, iteration: int) -> float:
        return CORE_WEIGHT if self.core_start is not None and iteration >= self.core_start else 0.0


def _make_schedule(mode: str, optimizer: str, num_iter: int) -> _Schedule:
    """Our default's schedule (the reference setting runs its own loop)."""
    if optimizer != "adam":
        raise ValueError(f"no compressed schedule for optimizer {optimizer!r}")
    if mode != "step":
        return _Schedule(100.0, 100.0, 0, 1.0, None, FAST_LR)
    # STEP: the reference's 2000-iteration weight trajectory compressed into num_iter (the same
    # total growth of the area weight, the core loss from the same fraction of the run), and a
    # reward weight that starts at FAST_REWARD_START and decays to FAST_REWARD_END over the first
    # FAST_REWARD_DECAY of the run. At STEP's weight 1 the area and core terms dominate the reward
    # so much that, in a short run on a real network, they settle the mask wherever it is
    # cheapest for them; the stronger start lets the mask find the evidence and the end weight
    # keeps it there (docs/benchmarks/step.md, "On I3D").
    return _Schedule(FAST_REWARD_END, FAST_REWARD_START, round(FAST_REWARD_DECAY * num_iter),
                     STEP_AREA_GROWTH ** (REFERENCE_ITERATIONS / num_iter),
                     round(num_iter * CORE_START / REFERENCE_ITERATIONS), FAST_LR)


def _normalise_areas(areas: Union[float, Sequence[float], None]) -> Tuple[float, ...]:
    if areas is None:
        areas = (0.1,)
    elif isinstance(areas, (int, float)):
        areas = (float(areas),)
    areas = tuple(float(a) for a in areas)
    if not areas or any(not 0 < a < 1 for a in areas):
        raise ValueError(f"areas must be fractions in (0, 1), got {areas}")
    return areas


def _report(values: torch.Tensor) -> Union[float, list]:
    """``values (N, A)`` -> a float for one map, else a list in output order (clip-major)."""
    flat = [round(v, 6) for v in values.detach().float().reshape(-1).tolist()]
    return flat[0] if len(flat) == 1 else flat


def _report_final(info: dict, final: dict, evaluations: int, iterations: int,
                  is_probability: bool, variant: str, area_list: Sequence[float]) -> None:
    """The diagnostics of an extremal run's final masks ``(N, A, ...)`` and scores into ``info``."""
    info["model_evaluations"] = evaluations
    info["iterations"] = iterations
    info["final_loss"] = _report(final["loss"])
    # The area is the mask's mean; the regulariser targets the number of ones, which the
    # fraction of voxels above 1/2 measures (the smooth rim adds a little to the mean).
    info["final_area"] = _report(final["masks"].mean(dim=(2, 3, 4)))
    info["final_area_above_half"] = _report((final["masks"] > 0.5).float().mean(dim=(2, 3, 4)))
    key = "final_probability" if is_probability else "final_score"
    kept = final["scores"][:, 0]
    info[key] = _report(kept.exp() if is_probability else kept)
    if variant == "dual":
        removed = final["scores"][:, 1]
        removed = removed.exp() if is_probability else removed
        info[key.replace("final", "final_deleted")] = _report(removed)
    if len(area_list) > 1:
        info["output_names"] = [f"area_{a:g}" for a in area_list]


def _extremal(model: nn.Module, clip: torch.Tensor, target: Target, *, mode: str,
              areas: Union[float, Sequence[float], None], num_iter: Optional[int], variant: str,
              perturbation: str, optimizer: str, baseline: Optional[torch.Tensor],
              internal_batch_size: Optional[int], mask_step: Optional[float],
              mask_sigma: Optional[float], max_blur: Optional[float], num_levels: int,
              early_stop: Optional[bool], mask_resolution: str, seed: int,
              info: Optional[dict], progress: bool) -> torch.Tensor:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturbation!r}; "
                         f"choose from {', '.join(PERTURBATIONS)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    if mask_resolution not in ("coarse", "full"):
        raise ValueError(f"mask_resolution must be 'coarse' or 'full', got {mask_resolution!r}")
    if clip.dim() != 5:
        raise ValueError(f"clip must be (N, C, T, H, W), got shape {tuple(clip.shape)}")
    area_list = _normalise_areas(areas)
    if num_iter is None:
        num_iter = default_num_iter(mode, optimizer, min(clip.shape[-2:]))
    if num_iter < 1:
        raise ValueError(f"num_iter must be positive, got {num_iter}")
    if early_stop is None:
        early_stop = optimizer != "reference"

    device = clip.device
    clip = clip.detach()
    n, _, t, h, w = clip.shape
    num_areas = len(area_list)
    size = min(h, w)
    step_px = mask_step if mask_step is not None else default_mask_step(size)
    sigma_px = mask_sigma if mask_sigma is not None else default_mask_sigma(size)
    # The mask is smooth at the scale of sigma, so by default it is generated with 2 pixels per
    # grid cell and upsampled bilinearly (at 112 px: on 32 px, ~25x cheaper than on the full
    # grid); the grid parameters are the same, and the area and core terms see the same mask.
    shrink = max(1.0, step_px / 2) if mask_resolution == "coarse" else 1.0
    work_h, work_w = max(1, round(h / shrink)), max(1, round(w / shrink))
    work_sigma = sigma_px * work_h / h
    generator = SmoothMask(work_h, work_w, step_px * work_h / h, work_sigma, device,
                           margin=math.ceil(work_sigma))
    if perturbation == "static":
        baseline = model.baseline("static", clip)
    elif baseline is None:
        baseline = model.baseline("black", clip)
    baseline = torch.as_tensor(baseline, dtype=clip.dtype, device=device).expand_as(clip)
    perturb = _Perturbation(clip, "blur" if perturbation == "blur" else "fade", baseline,
                            num_levels,
                            max_blur if max_blur is not None else default_max_blur(size))
    if optimizer == "reference":
        if early_stop:
            raise ValueError("early_stop applies to ep_optimizer='adam' only; the reference "
                             "setting runs all num_iter iterations")
        return _extremal_reference(
            model, clip, target, mode=mode, area_list=area_list, num_iter=num_iter,
            variant=variant, perturbation=perturbation, baseline=baseline,
            internal_batch_size=internal_batch_size, step_px=step_px, sigma_px=sigma_px,
            max_blur=max_blur if max_blur is not None else default_max_blur(size),
            num_levels=num_levels, seed=seed, info=info, progress=progress)
    schedule = _make_schedule(mode, optimizer, num_iter)
    # The core kernel is 7 frames x 11 x 11 px at 112 px and scales with the frame; it runs on
    # the mask at the clip's grid (a strided convolution: cheap even at full resolution).
    core_side = round(CORE_SIDE * size / REFERENCE_SIZE) | 1
    # Ties in the sorted mask are broken at random, as the reference does, but with one fixed
    # draw per run from a local generator, so that a run is reproducible.
    generator_cpu = torch.Generator().manual_seed(seed)
    extended = (work_h + 2 * generator.margin, work_w + 2 * generator.margin)
    in_frame = torch.zeros(extended, dtype=torch.bool, device=device)
    margin = generator.margin
    in_frame[margin:margin + work_h, margin:margin + work_w] = True
    tie_break = torch.rand(t * extended[0] * extended[1], generator=generator_cpu)
    tie_break = (tie_break * 1e-4).to(device)
    core_tie_break = (torch.rand(t * h * w, generator=generator_cpu) * 1e-4).to(device)
    score_fn, is_probability = score_function(target)
    games = ("preserve", "delete") if variant == "dual" else (variant,)
    num_games = len(games)

    # Starting points. Ours runs two starts side by side in one batch, as extra "slots" next to the
    # areas, and keeps the one with the lower loss per clip and area after FAST_SELECT of the
    # run: the objective is not convex, and on demo_3dcnn neither start is best for every clip
    # (half way, a moderately blurred clip where the reward's gradient is informative, is
    # usually better; a full mask sometimes escapes where half way gets stuck).
    starts = FAST_STARTS[variant]
    # The best start is chosen after at least one iteration; a run too short to reach that
    # point keeps the best start at its end (below).
    select_at = max(1, round(FAST_SELECT * num_iter)) if len(starts) > 1 else None
    slot_areas = [a for a in area_list for _ in starts]           # slot = area * S + start
    params = torch.tensor(starts * num_areas, device=device).view(1, -1, 1, 1, 1)
    params = params.expand(n, -1, t, *generator.grid).contiguous()
    opt = torch.optim.Adam([params], lr=schedule.lr)
    use_autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def layout(slot_list: Sequence[float]) -> dict:
        """What depends on the slots ``(N, slots)``: their areas, the core kernel, and the
        rows of the batch of perturbed clips, clip-major ``(N, game, slot)`` as targets expect."""
        slots = len(slot_list)
        deleting = torch.tensor([g == "delete" for g in games], device=device)
        total_rows = n * num_games * slots
        return {"slots": slots, "areas": torch.tensor(slot_list, device=device),
                "core": (_CoreKernel.build(t, h, w, slot_list, core_side, device)
                         if schedule.core_start is not None else None),
                "total_rows": total_rows, "chunk": internal_batch_size or total_rows,
                "row_is_delete": deleting.repeat_interleave(slots).repeat(n)}

    def to_clip_grid(masks: torch.Tensor) -> torch.Tensor:
        """Masks with margin ``(N, S, T, h'', w'')`` -> the clip's grid ``(N, S, T, H, W)``."""
        frame = generator.crop(masks)
        if (work_h, work_w) == (h, w):
            return frame
        up = F.interpolate(frame.reshape(-1, 1, work_h, work_w), size=(h, w), mode="bilinear",
                           align_corners=False)
        return up.view(n, -1, t, h, w)

    def evaluate(clips: torch.Tensor, now: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the weighted game loss w.r.t. the perturbed clips ``(B, C, T, H, W)`` and
        the scores ``(B,)``, one chunk of ``internal_batch_size`` clips at a time, so that only
        one chunk's model graph is alive."""
        grads, scores = [], []
        total_rows, chunk = now["total_rows"], now["chunk"]
        for first in range(0, total_rows, chunk):
            part = clips[first:first + chunk].detach().requires_grad_(True)
            rows = torch.arange(first, first + part.shape[0], device=device)
            model_input = (part.contiguous(memory_format=torch.channels_last_3d)
                           if use_autocast else part)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
                output = model(model_input)
            score = scores_of_rows(score_fn, output.float(), rows, total_rows)
            loss = _game_loss(score, is_probability, now["row_is_delete"][rows])
            grads.append(torch.autograd.grad(loss.sum() * reward_weight, part)[0])
            scores.append(score.detach())
        return torch.cat(grads), torch.cat(scores)

    now = layout(slot_areas)
    history: list = []
    evaluations = 0
    final: dict = {}
    snapshot = None                    # grid parameters STOP_WINDOW iterations ago
    bar = tqdm(range(num_iter), desc=mode, disable=not progress, leave=False)
    for iteration in bar:
        if iteration == select_at:
            params, opt, now = _keep_best_start(params, opt, final["loss"], len(starts),
                                                layout, area_list)
        reward_weight = schedule.reward_at(iteration)
        slots = now["slots"]
        params.requires_grad_(True)
        masks = generator(params.reshape(-1, *generator.grid)).view(n, slots, t, *extended)
        full = to_clip_grid(masks)                                 # (N, S, T, H, W)
        games_clips = [perturb(full if g == "preserve" else 1 - full) for g in games]
        clips = torch.stack(games_clips, dim=1).reshape(now["total_rows"], *clip.shape[1:])
        clip_grads, scores = evaluate(clips, now)
        evaluations += now["total_rows"]
        regulariser = schedule.area_weight(iteration) * _area_loss(
            masks, now["areas"], mode == "2d", tie_break, in_frame)          # (N, S)
        core_weight = schedule.core_weight(iteration)
        if now["core"] is not None and core_weight > 0:
            regulariser = regulariser + core_weight * now["core"].loss(full, core_tie_break)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward([clips, regulariser.sum()],
                                [clip_grads, torch.ones_like(regulariser.sum())])
        opt.step()
        with torch.no_grad():
            params.clamp_(0, 1)
            # Bookkeeping on the masks that produced this iteration's scores.
            game_losses = _game_loss(scores, is_probability, now["row_is_delete"])
            reward = game_losses.view(n, num_games, slots).sum(1)
            loss_now = reward_weight * reward + regulariser.detach()
            final = {"masks": full.detach(), "scores": scores.view(n, num_games, slots),
                     "loss": loss_now}
            history.append(float(loss_now.sum()))
        if progress:
            kept = final["scores"][:, 0]
            kept = kept.exp() if is_probability else kept
            bar.set_postfix({"loss": f"{history[-1]:.3g}",
                             "prob" if is_probability else "score": f"{float(kept.mean()):.3g}",
                             "area": f"{float(full.detach().mean()):.3f}"})
        if early_stop and iteration % STOP_WINDOW == 0:
            if snapshot is not None and snapshot.shape == params.shape and _converged(
                    iteration, num_iter, params, snapshot, history):
                break
            snapshot = params.detach().clone()
    bar.close()
    if now["slots"] != num_areas:
        # A run that ended before the selection point: keep the best start now.
        best = final["loss"].view(n, num_areas, -1).argmin(dim=-1)
        pick = torch.arange(num_areas, device=device) * len(starts) + best      # (N, A)
        rows = torch.arange(n, device=device)[:, None]
        scores = final["scores"].gather(2, pick[:, None, :].expand(n, num_games, num_areas))
        final = {"masks": final["masks"][rows, pick], "scores": scores,
                 "loss": final["loss"][rows, pick]}
    if RELEVANCE_ORDER > 0 and variant == "preserve":
        final["masks"] = _order_by_relevance(final["masks"], perturb, evaluate, layout,
                                             area_list, clip.shape, sigma_px, model)
        evaluations += n * num_areas

    if info is not None:
        _report_final(info, final, evaluations, len(history), is_probability, variant,
                      area_list)
    return final["masks"]                                              # (N, A, T, H, W)


def _order_by_relevance(masks: torch.Tensor, perturb: Callable, evaluate: Callable,
                        layout: Callable, areas: Sequence[float], shape: torch.Size,
                        sigma: float, model: nn.Module) -> torch.Tensor:
    """Final masks ``(N, A, T, H, W)`` modulated by ``1 - e + e r`` (``e = RELEVANCE_ORDER``),
    ``r`` in ``[0, 1]`` the smoothed gain in score from keeping each voxel (the preserve game's
    negative gradient w.r.t. the mask, clipped at 0, blurred at sigma / 2, over its maximum):
    one more model evaluation. The optimised mask saturates at 1 over its kept region, where
    the game's gradient is all that tells the voxels apart; this orders them (the peak lands on
    the most useful voxel, deletion removes it first) and changes no value by more than ``e``."""
    n, num_areas = masks.shape[:2]
    full = masks.detach().requires_grad_(True)
    now = layout(list(areas))
    clips = perturb(full).reshape(n * num_areas, *shape[1:])
    clip_grads, _ = evaluate(clips, now)
    relevance = torch.autograd.grad(clips, full, clip_grads)[0].neg().clamp(min=0)
    relevance = blur_frames(relevance, sigma / 2)
    peak = relevance.amax(dim=(2, 3, 4), keepdim=True)
    relevance = torch.where(peak > 0, relevance / peak.clamp(min=1e-30), torch.ones_like(peak))
    return masks.detach() * (1 - RELEVANCE_ORDER + RELEVANCE_ORDER * relevance)


def _keep_best_start(params: torch.Tensor, opt: torch.optim.Optimizer, loss: torch.Tensor,
                     num_starts: int, layout: Callable[[Sequence[float]], dict],
                     areas: Sequence[float]):
    """Keep, per clip and area, the start with the lowest ``loss (N, A * S)``: the parameters
    ``(N, A * S, ...)`` become ``(N, A, ...)`` and Adam carries on with their moments."""
    n = params.shape[0]
    best = loss.view(n, len(areas), num_starts).argmin(dim=-1)                 # (N, A)
    pick = torch.arange(len(areas), device=params.device) * num_starts + best
    rows = torch.arange(n, device=params.device)[:, None]
    kept = params.detach()[rows, pick].clone()
    new_opt = torch.optim.Adam([kept], **{k: v for k, v in opt.defaults.items()
                                          if k in ("lr", "betas", "eps", "weight_decay")})
    state = opt.state.get(params, {})
    if state:
        new_opt.state[kept] = {key: (value[rows, pick].clone()
                                     if torch.is_tensor(value) and value.dim() == params.dim()
                                     else value.clone() if torch.is_tensor(value) else value)
                               for key, value in state.items()}
    return kept, new_opt, layout(list(areas))


def _converged(iteration: int, num_iter: int, params: torch.Tensor, snapshot: torch.Tensor,
               history: list) -> bool:
    """Early stop: past half the run, the grid parameters moved by less than ``STOP_MOVE`` and
    the loss by less than ``STOP_LOSS`` (relative) over the last ``STOP_WINDOW`` iterations."""
    if iteration < num_iter // 2 or len(history) <= STOP_WINDOW:
        return False
    moved = float((params.detach() - snapshot).abs().max())
    before, now = history[-1 - STOP_WINDOW], history[-1]
    return moved < STOP_MOVE and abs(before - now) <= STOP_LOSS * max(abs(before), 1e-6)


# --------------------------------------------------------------------------- reference setting
# ``ep_optimizer="reference"`` reproduces the WACV 2021 demo's optimisation as its code runs
# (facts read from it and checked by running it on demo_3dcnn; see bench/bench_perturbation.py):
#
# - mask generator: TorchRay's (full resolution; a 112 px frame has a 16 x 16 grid and a mask
#   of 134 x 134 with its margin of sigma = 11 px; the zero-padded grid points beyond the frame
#   take part in the soft maximum, so the mask fades towards the margin's edge);
# - area term: on the whole padded mask (margin included), its sorted values against an ideal
#   with ``int(V * (1 - area))`` zeros, ``V`` the padded voxel count (per frame for 2d_ep), so
#   the target of 10 % of the padded mask is about 14 % of the frame;
# - STEP's core loss: a binary 7 x 11 x 11 ellipsoid (counted as ``int(7 * 11 * 11 * 0.5236)``
#   = 443 voxels) convolved over the padded mask with stride 11 (10 x 12 x 12 = 1440
#   positions at 16 frames of 112 px), the ``ceil(area * V / 443)`` (65) strongest responses,
#   after a fresh random permutation at every iteration, pushed to the kernel's sum, the rest
#   to 0; its weight, 300, counts from iteration 101 (0-based; the demo switches it on after
#   the update of iteration 100); the area weight grows by x1.0008668 after every iteration;
# - blur: TorchRay's ``imsmooth`` (zero padding) per frame, 8 levels from sigma 20 to 0, a voxel
#   interpolating between levels ``floor(7 m)`` and the next (so a fully kept voxel, m = 1, has
#   no gradient from the game);
# - parameters start at 1; SGD lr 0.05, momentum and dampening 0.9, clamped to [0, 1] after
#   every step; game weight 100 (2d/3d_ep) or 1 (STEP); 2000 iterations, no early stopping.
REFERENCE_CORE_FROM = 101          # first iteration (0-based) that counts the core loss
REFERENCE_ELLIPSOID_FILL = 0.5236  # the demo counts the ellipsoid kernel as this fraction of its box


def reference_mask_generator(height: int, width: int, step: float, sigma: float,
                             device: Union[str, torch.device] = "cpu"):
    """TorchRay's mask generator for ``(height, width)`` frames (``step`` rounded to whole px):
    ``generate(params (K, 1, h, w))`` returns ``(cropped (K, 1, H, W), padded (K, 1, H', W'))``,
    both clamped to ``[0, 1]``."""
    from torchray.attribution.extremal_perturbation import MaskGenerator
    if step <= 0 or sigma <= 0:
        raise ValueError(f"mask step and sigma must be positive, got {step}, {sigma}")
    generator = MaskGenerator((height, width), max(1, int(round(step))), sigma)
    return generator.to(torch.device(device))


def reference_blur_pyramid(clip: torch.Tensor, levels: int, max_blur: float) -> torch.Tensor:
    """``clip (N, C, T, H, W)`` -> ``(N * T, L, C, H, W)``: every frame blurred by TorchRay's
    ``imsmooth`` (zero padding) with sigma ``(1 - s) max_blur``, ``s`` evenly from 0 to 1."""
    from torchray.utils import imsmooth
    if levels < 2:
        raise ValueError(f"num_levels must be at least 2, got {levels}")
    n, c, t, h, w = clip.shape
    frames = clip.transpose(1, 2).reshape(n * t, c, h, w)
    with torch.no_grad():
        return torch.stack([imsmooth(frames, sigma=(1 - s) * max_blur)
                            for s in torch.linspace(0, 1, levels)], dim=1)


def reference_perturb(pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``pyramid (F, L, C, H, W)``, ``masks (F, 1, H, W)`` -> ``(F, C, H, W)``: level
    ``m (L - 1)`` interpolated between ``floor`` and the next level (the top level with itself)."""
    levels = pyramid.shape[1]
    position = masks.unsqueeze(1) * (levels - 1)                      # (F, 1, 1, H, W)
    lower = position.floor()
    fraction = position - lower
    index = lower.long().expand(-1, 1, *pyramid.shape[2:])
    low = torch.gather(pyramid, 1, index)
    high = torch.gather(pyramid, 1, (index + 1).clamp(max=levels - 1))
    return ((1 - fraction) * low + fraction * high).squeeze(1)


def reference_area_loss(padded: torch.Tensor, areas: Sequence[float],
                        per_frame: bool) -> torch.Tensor:
    """``padded (N, S, T, H', W')`` masks with their margin, one area per slot ``S`` ->
    ``(N, S)``: the mean squared distance of the sorted values (per frame, then averaged, for
    ``per_frame``) to an ideal of ``int(V (1 - area))`` zeros then ones."""
    values = padded.flatten(3) if per_frame else padded.flatten(2).unsqueeze(2)   # (N, S, F, V)
    count = values.shape[-1]
    zeros = torch.tensor([int(count * (1 - a)) for a in areas], device=padded.device)
    ideal = (torch.arange(count, device=padded.device)[None, :] >= zeros[:, None])
    ideal = ideal.to(padded.dtype)[None, :, None, :]                               # (1, S, 1, V)
    ordered = values.sort(dim=-1)[0]
    return ((ordered - ideal) ** 2).mean(dim=-1).mean(dim=-1)


class ReferenceCore:
    """STEP's core loss as the demo computes it, on padded masks ``(N, S, T, H', W')``."""

    def __init__(self, frames: int, height: int, width: int, areas: Sequence[float],
                 device: Union[str, torch.device] = "cpu", kernel_frames: int = CORE_FRAMES,
                 kernel_side: int = CORE_SIDE):
        import numpy as np
        kt, ks = min(kernel_frames, frames), min(kernel_side, height, width)
        axes = np.meshgrid(np.linspace(-1, 1, kt), np.linspace(-1, 1, ks), np.linspace(-1, 1, ks),
                           indexing="ij")
        inside = np.sqrt(sum(a ** 2 for a in axes)) <= 1
        self.kernel = torch.from_numpy(inside[None, None]).float().to(device)
        self.kernel_sum = float(self.kernel.sum())
        self.stride = ks
        self.volume = int(kt * ks * ks * REFERENCE_ELLIPSOID_FILL)
        self.top_k = tuple(math.ceil(a * frames * height * width / self.volume) for a in areas)

    def loss(self, padded: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(N, S)``: per slot, the responses in a fresh random order (drawn from
        ``generator``), sorted descending; the top ``k`` against 1, the rest against 0."""
        n, slots = padded.shape[:2]
        response = F.conv3d(padded.reshape(n * slots, 1, *padded.shape[2:]), self.kernel,
                            stride=(1, self.stride, self.stride)).view(n, slots, -1)
        losses = []
        for slot, k in enumerate(self.top_k):
            order = torch.randperm(response.shape[-1], generator=generator).to(padded.device)
            ordered = response[:, slot, order].sort(dim=-1, descending=True)[0] / self.kernel_sum
            top, rest = ordered[:, :k], ordered[:, k:]
            rest_loss = (rest ** 2).mean(-1) if rest.shape[-1] else torch.zeros_like(top[:, 0])
            losses.append(((top - 1) ** 2).mean(-1) + rest_loss)
        return torch.stack(losses, dim=1)


def _extremal_reference(model: nn.Module, clip: torch.Tensor, target: Target, *, mode: str,
                        area_list: Tuple[float, ...], num_iter: int, variant: str,
                        perturbation: str, baseline: Optional[torch.Tensor],
                        internal_batch_size: Optional[int], step_px: float, sigma_px: float,
                        max_blur: float, num_levels: int, seed: int, info: Optional[dict],
                        progress: bool) -> torch.Tensor:
    """The reference setting (see the notes above); masks ``(N, A, T, H, W)``."""
    device = clip.device
    n, c, t, h, w = clip.shape
    slots = len(area_list)
    generator = reference_mask_generator(h, w, step_px, sigma_px, device)
    gh, gw = generator.shape_in
    if perturbation == "blur":
        pyramid = reference_blur_pyramid(clip, num_levels, max_blur)        # (N * T, L, C, H, W)
        level_shape = pyramid.shape[1:]
        pyramid = pyramid.view(n, 1, t, *level_shape).expand(n, slots, t, *level_shape)
        pyramid = pyramid.reshape(n * slots * t, *level_shape)

        def perturb(masks: torch.Tensor) -> torch.Tensor:                   # (N, S, T, H, W)
            frames = reference_perturb(pyramid, masks.reshape(-1, 1, h, w))
            return frames.view(n, slots, t, c, h, w).transpose(2, 3)        # (N, S, C, T, H, W)
    else:
        base = baseline.unsqueeze(1)

        def perturb(masks: torch.Tensor) -> torch.Tensor:
            return base + masks.unsqueeze(2) * (clip - baseline).unsqueeze(1)
    score_fn, is_probability = score_function(target)
    games = ("preserve", "delete") if variant == "dual" else (variant,)
    total_rows = n * len(games) * slots
    chunk = internal_batch_size or total_rows
    row_is_delete = torch.tensor([g == "delete" for g in games], device=device)
    row_is_delete = row_is_delete.repeat_interleave(slots).repeat(n)
    reward_weight = 1.0 if mode == "step" else 100.0
    core = None
    if mode == "step":
        core = ReferenceCore(t, *generator.shape_out, area_list, device)
    random = torch.Generator().manual_seed(seed)
    params = torch.ones(n * slots * t, 1, gh, gw, device=device)
    opt = torch.optim.SGD([params], lr=REFERENCE_LR, momentum=0.9, dampening=0.9)
    area_weight = AREA_WEIGHT
    final: dict = {}
    evaluations = 0
    bar = tqdm(range(num_iter), desc=mode, disable=not progress, leave=False)
    for iteration in bar:
        params.requires_grad_(True)
        cropped, padded = generator.generate(params)
        cropped = cropped.view(n, slots, t, h, w)
        padded = padded.view(n, slots, t, *padded.shape[2:])
        clips = torch.stack([perturb(cropped if g == "preserve" else 1 - cropped)
                             for g in games], dim=1).reshape(total_rows, c, t, h, w)
        grads, scores = [], []
        for first in range(0, total_rows, chunk):
            part = clips[first:first + chunk].detach().requires_grad_(True)
            rows = torch.arange(first, first + part.shape[0], device=device)
            score = scores_of_rows(score_fn, model(part).float(), rows, total_rows)
            loss = _game_loss(score, is_probability, row_is_delete[rows])
            grads.append(torch.autograd.grad(loss.sum() * reward_weight, part)[0])
            scores.append(score.detach())
        scores = torch.cat(scores)
        evaluations += total_rows
        regulariser = area_weight * reference_area_loss(padded, area_list, mode == "2d")
        if core is not None:
            # Drawn every iteration, counted from REFERENCE_CORE_FROM on.
            core_loss = core.loss(padded, random)
            if iteration >= REFERENCE_CORE_FROM:
                regulariser = regulariser + CORE_WEIGHT * core_loss
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward([clips, regulariser.sum()],
                                [torch.cat(grads), torch.ones_like(regulariser.sum())])
        opt.step()
        with torch.no_grad():
            params.clamp_(0, 1)
            game = _game_loss(scores, is_probability, row_is_delete)
            reward = game.view(n, len(games), slots).sum(1)
            final = {"masks": cropped.detach(), "padded": padded.detach(),
                     "scores": scores.view(n, len(games), slots),
                     "loss": reward_weight * reward + regulariser.detach()}
        if mode == "step":
            area_weight *= STEP_AREA_GROWTH
        if progress:
            kept = final["scores"][:, 0]
            kept = kept.exp() if is_probability else kept
            bar.set_postfix({"prob" if is_probability else "score": f"{float(kept.mean()):.3g}",
                             "area": f"{float(cropped.detach().mean()):.3f}"})
    bar.close()
    if info is not None:
        _report_final(info, final, evaluations, num_iter, is_probability, variant, area_list)
        info["final_area_padded"] = _report(final["padded"].mean(dim=(2, 3, 4)))
    return final["masks"]


# --------------------------------------------------------------------------- public methods
@attribution_method
def extremal_2d(model: nn.Module, clip: torch.Tensor, target: Target, *,
                perturb_area: Union[float, Sequence[float], None] = (0.1,),
                num_iter: Optional[int] = None, ep_variant: str = "preserve",
                perturbation: str = "blur", ep_optimizer: str = "adam",
                baseline: Optional[torch.Tensor] = None, internal_batch_size: Optional[int] = None,
                mask_step: Optional[float] = None, mask_sigma: Optional[float] = None,
                max_blur: Optional[float] = None, num_levels: int = REFERENCE_LEVELS,
                early_stop: Optional[bool] = None, mask_resolution: str = "coarse", seed: int = 0,
                info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """``2d_ep``: extremal perturbation whose area is constrained in every frame.

    ``clip (N, C, T, H, W)`` -> masks ``(N, 1, T, H, W)`` in ``[0, 1]`` (1 = the evidence), or
    ``(N, A, T, H, W)`` for ``A`` areas, optimised together and named
    ``info["output_names"] = ["area_0.05", ...]``.

    Options (named as the CLI flags): ``perturb_area`` (default ``(0.1,)``); ``num_iter``
    (default 100 with ``ep_optimizer="adam"``, for STEP on frames above 112 px 190; 2000 with
    ``"reference"``); ``ep_variant``
    (``"preserve"``, ``"delete"``, ``"dual"``); ``perturbation`` (``"blur"``; ``"fade"`` to
    ``baseline``, default the black clip in pixel space; ``"static"``: the clip's mean frame
    repeated over time, so only what moves is removed); ``internal_batch_size``
    (perturbed clips per model call, default all ``N * A`` (x2 for dual)); ``mask_step``,
    ``mask_sigma``, ``max_blur`` (px; default 7, 11 and 20 at 112 px, sigma 23 at 224 px,
    scaled with the frame); ``num_levels`` (blur levels, 8); ``early_stop`` (default on for
    ``"adam"``; the reference setting rejects it); ``mask_resolution`` (``"coarse"``: 2 px per
    grid cell, upsampled; ``"full"``; the reference setting is always at full resolution);
    ``seed`` (tie-breaking of the area term). ``info`` gets ``model_evaluations`` (perturbed
    clips evaluated, forward + backward), ``iterations``, ``final_loss``, ``final_area`` (mask
    mean), ``final_area_above_half`` and ``final_probability`` (``final_score`` for callable
    targets; ``final_deleted_*`` for the dual game's deletion side), as floats for one map and
    ``"v1;v2"`` strings (clip-major) for several. ``progress`` shows a bar with the current
    loss, probability (or score) and mask area.
    """
    return _extremal(model, clip, target, mode="2d", areas=perturb_area, num_iter=num_iter,
                     variant=ep_variant, perturbation=perturbation, optimizer=ep_optimizer,
                     baseline=baseline, internal_batch_size=internal_batch_size,
                     mask_step=mask_step, mask_sigma=mask_sigma, max_blur=max_blur,
                     num_levels=num_levels, early_stop=early_stop,
                     mask_resolution=mask_resolution, seed=seed, info=info, progress=progress)


@attribution_method
def extremal_3d(model: nn.Module, clip: torch.Tensor, target: Target, *,
                perturb_area: Union[float, Sequence[float], None] = (0.1,),
                num_iter: Optional[int] = None, ep_variant: str = "preserve",
                perturbation: str = "blur", ep_optimizer: str = "adam",
                baseline: Optional[torch.Tensor] = None, internal_batch_size: Optional[int] = None,
                mask_step: Optional[float] = None, mask_sigma: Optional[float] = None,
                max_blur: Optional[float] = None, num_levels: int = REFERENCE_LEVELS,
                early_stop: Optional[bool] = None, mask_resolution: str = "coarse", seed: int = 0,
                info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """``3d_ep``: extremal perturbation whose area is constrained over the whole clip.

    Same options and output as :func:`extremal_2d`: ``(N, 1, T, H, W)`` or ``(N, A, T, H, W)``.
    """
    return _extremal(model, clip, target, mode="3d", areas=perturb_area, num_iter=num_iter,
                     variant=ep_variant, perturbation=perturbation, optimizer=ep_optimizer,
                     baseline=baseline, internal_batch_size=internal_batch_size,
                     mask_step=mask_step, mask_sigma=mask_sigma, max_blur=max_blur,
                     num_levels=num_levels, early_stop=early_stop,
                     mask_resolution=mask_resolution, seed=seed, info=info, progress=progress)


@attribution_method
def step(model: nn.Module, clip: torch.Tensor, target: Target, *,
         perturb_area: Union[float, Sequence[float], None] = (0.1,),
         num_iter: Optional[int] = None, ep_variant: str = "preserve",
         perturbation: str = "blur", ep_optimizer: str = "adam",
         baseline: Optional[torch.Tensor] = None, internal_batch_size: Optional[int] = None,
         mask_step: Optional[float] = None, mask_sigma: Optional[float] = None,
         max_blur: Optional[float] = None, num_levels: int = REFERENCE_LEVELS,
         early_stop: Optional[bool] = None, mask_resolution: str = "coarse", seed: int = 0,
         info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """``step``: spatio-temporal extremal perturbation (clip-level area, core loss that favours
    compact and temporally smooth regions, growing area weight).

    Same options and output as :func:`extremal_2d`: ``(N, 1, T, H, W)`` or ``(N, A, T, H, W)``.
    """
    return _extremal(model, clip, target, mode="step", areas=perturb_area, num_iter=num_iter,
                     variant=ep_variant, perturbation=perturbation, optimizer=ep_optimizer,
                     baseline=baseline, internal_batch_size=internal_batch_size,
                     mask_step=mask_step, mask_sigma=mask_sigma, max_blur=max_blur,
                     num_levels=num_levels, early_stop=early_stop,
                     mask_resolution=mask_resolution, seed=seed, info=info, progress=progress)
