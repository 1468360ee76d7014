"""Attention-based explanations for video transformers: attention rollout and gradient-weighted
attention relevance.

Both read the attention probabilities of every layer from the model's
``attention_record(clip)`` (the project's demo transformer and the Hugging Face wrapper
:class:`models.hf.HFVideoClassifier` have one), a dict with

- ``output``: the model output ``(N, K)``;
- ``attentions``: one entry per layer, either a tensor ``(N, heads, L, L)`` (``structure
  "joint"``: all tokens attend to all) or ``{"temporal": (N*S, heads, T', T'), "spatial":
  (N*T', heads, 1 + S, 1 + S)}`` (``"divided"`` space-time attention as in TimeSformer:
  temporal attention among the ``T'`` tokens of each of the ``S = h' x w'`` cells, rows
  ``n*S + cell``, then spatial attention among a copy of the class token and the tokens of one
  time slice, rows ``n*T' + t``, the copies averaged afterwards);
- ``grid``: the patch-token grid ``(T', h', w')``; ``prefix_tokens``: 1 with a class token
  in front, 0 without; ``token_order``: ``"tcell"`` (token ``t*S + cell``) or ``"cellt"``
  (``cell*T' + t``, TimeSformer).

A divided layer is turned into two ``L x L`` token-mixing matrices, temporal then spatial:
temporal ``(t, c) -> (t', c)`` with the temporal weights, the class token mapped to itself;
spatial ``(t, c) -> (t, c')`` and ``(t, c) -> class`` with the weights of slice ``t``, and the
class token's row the mean over the ``T'`` copies' rows (its copies are averaged). The layer is
the spatial matrix times the temporal one, each with its own residual; this is the joint
matrix that TimeSformer's divided attention amounts to, so rollout and the gradient method run
over ``2 x layers`` matrices.

The relevance of the patch tokens is the class token's row of the aggregated matrix (the mean
over all rows for models without a class token, e.g. VideoMAE), mapped to ``(T', h', w')`` and
upsampled trilinearly to the clip: ``(N, 1, T, H, W)``, non-negative, not normalised.

Windowed or pooled attention (Video Swin, MViT) has no token-to-token matrix over the whole
clip, so rollout is not defined there and a ``ValueError`` says so.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._context import attribution_method
from .targets import Target, as_target_fn

HEAD_FUSIONS = ("mean", "max", "min")
_WINDOWED = {"SwinTransformer3d": "Video Swin attends within shifted local windows",
             "MViT": "MViT pools keys, values and queries"}


# ----------------------------------------------------------------------- model records
def _recorder(model: nn.Module):
    for candidate in (model, getattr(model, "network", None), getattr(model, "model", None),
                      getattr(model, "module", None)):
        if candidate is not None and callable(getattr(candidate, "attention_record", None)):
            return candidate
    return None


def attention_unsupported(model: nn.Module) -> Optional[str]:
    """Why the attention methods cannot run on ``model`` (None when they can); known without
    running it, so a run can refuse before its first clip."""
    if _recorder(model) is not None:
        return None
    for module in model.modules():
        reason = _WINDOWED.get(type(module).__name__)
        if reason is not None:
            return (f"attention rollout is not defined for {type(module).__name__}: "
                    f"{reason}, so there is no token-to-token attention over the clip; "
                    "use the CAM or gradient methods")
    return (f"{type(model).__name__} exposes no attention probabilities (it needs an "
            "attention_record(clip) method, see vis_methods/attention.py)")


def attention_record(model: nn.Module, clip: torch.Tensor) -> dict:
    """The model's attention record (see the module docstring); ``ValueError`` for models
    whose attention is windowed or pooled, or that expose no attention probabilities."""
    recorder = _recorder(model)
    if recorder is None:
        raise ValueError(attention_unsupported(model))
    return recorder.attention_record(clip)


def _fuse_heads(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """``(M, heads, L, L)`` -> ``(M, L, L)``."""
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.amax(1)
    return attention.amin(1)


def _discard(matrix: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the lowest ``discard_ratio`` fraction of every row of ``(..., L, L)``."""
    if discard_ratio <= 0:
        return matrix
    count = int(matrix.shape[-1] * discard_ratio)
    if count == 0:
        return matrix
    lowest = matrix.topk(count, dim=-1, largest=False).indices
    return matrix.scatter(-1, lowest, 0.0)


def _patch_index(grid: Sequence[int], prefix: int, order: str, device) -> torch.Tensor:
    """Sequence index of patch token ``(t, cell)`` as a ``(T', S)`` tensor."""
    frames, cells = grid[0], grid[1] * grid[2]
    t = torch.arange(frames, device=device).view(-1, 1)
    c = torch.arange(cells, device=device).view(1, -1)
    return prefix + (t * cells + c if order == "tcell" else c * frames + t)


def _divided_matrices(temporal: torch.Tensor, spatial: torch.Tensor, num_clips: int,
                      grid: Sequence[int], order: str) -> List[torch.Tensor]:
    """Fused divided attention ``temporal (N*S, T', T')``, ``spatial (N*T', 1+S, 1+S)`` as the
    two token-mixing matrices ``(N, L, L)`` (temporal, spatial) over the full sequence."""
    frames, cells = grid[0], grid[1] * grid[2]
    length = 1 + frames * cells
    index = _patch_index(grid, 1, order, temporal.device)                  # (T', S)
    n = torch.arange(num_clips, device=temporal.device)
    # Temporal: (t, c) -> (t', c).
    mix_t = temporal.new_zeros(num_clips, length, length)
    mix_t[:, 0, 0] = 1.0
    weights = temporal.reshape(num_clips, cells, frames, frames)         # [n, c, t, t']
    rows = index.t().reshape(1, cells, frames, 1).expand(num_clips, cells, frames, frames)
    cols = index.t().reshape(1, cells, 1, frames).expand(num_clips, cells, frames, frames)
    mix_t[n.view(-1, 1, 1, 1).expand_as(rows), rows, cols] = weights
    # Spatial: (t, c) -> (t, c') and (t, c) -> class; the class row averages its T' copies.
    mix_s = spatial.new_zeros(num_clips, length, length)
    weights = spatial.reshape(num_clips, frames, 1 + cells, 1 + cells)  # [n, t, i, j]
    full = torch.cat([torch.zeros(frames, 1, dtype=torch.long, device=index.device), index], 1)
    rows = full.reshape(1, frames, 1 + cells, 1).expand(num_clips, frames, 1 + cells, 1 + cells)
    cols = full.reshape(1, frames, 1, 1 + cells).expand(num_clips, frames, 1 + cells, 1 + cells)
    patch_rows = rows[:, :, 1:]
    mix_s[n.view(-1, 1, 1, 1).expand_as(patch_rows), patch_rows, cols[:, :, 1:]] = weights[:, :, 1:]
    class_cols = cols[:, :, 0]                                           # (N, T', 1+S)
    class_row = mix_s.new_zeros(num_clips, length)
    class_row.scatter_add_(1, class_cols.reshape(num_clips, -1),
                           weights[:, :, 0].reshape(num_clips, -1) / frames)
    mix_s[:, 0] = class_row
    return [mix_t, mix_s]


def layer_matrices(record: dict, fuse, num_clips: int) -> List[torch.Tensor]:
    """Per-layer token-mixing matrices ``(N, L, L)`` (two per divided layer), each made by
    ``fuse(attention (M, heads, L, L)) -> (M, L, L)``, in forward order."""
    matrices = []
    for layer in record["attentions"]:
        if record["structure"] == "divided":
            matrices.extend(_divided_matrices(fuse(layer["temporal"]), fuse(layer["spatial"]),
                                              num_clips, record["grid"], record["token_order"]))
        else:
            matrices.append(fuse(layer))
    return matrices


def _start_row(record: dict, num_clips: int, length: int, device, dtype) -> torch.Tensor:
    """The row the relevance is read from: the class token, or the mean over all rows."""
    if record["prefix_tokens"]:
        row = torch.zeros(num_clips, length, device=device, dtype=dtype)
        row[:, 0] = 1.0
        return row
    return torch.full((num_clips, length), 1.0 / length, device=device, dtype=dtype)


def _to_clip(relevance: torch.Tensor, record: dict, clip: torch.Tensor,
             info: Optional[dict], num_matrices: int) -> torch.Tensor:
    """Patch-token relevance ``(N, L)`` -> ``(N, 1, T, H, W)``."""
    grid = tuple(record["grid"])
    index = _patch_index(grid, record["prefix_tokens"], record["token_order"], relevance.device)
    maps = relevance[:, index.reshape(-1)].reshape(relevance.shape[0], 1, *grid)
    if info is not None:
        info["attention_matrices"] = num_matrices
        info["layer_grid"] = "x".join(str(g) for g in grid)
    if tuple(maps.shape[2:]) != tuple(clip.shape[2:]):
        maps = F.interpolate(maps, size=tuple(clip.shape[2:]), mode="trilinear",
                             align_corners=False)
    return maps


def rollout_relevance(matrices: Sequence[torch.Tensor], start: torch.Tensor) -> torch.Tensor:
    """``start (N, L)`` times the rollout ``A'_last ... A'_first`` with
    ``A' = rownorm(0.5 A + 0.5 I)`` (Abnar & Zuidema 2020): a row of the rollout matrix."""
    row = start
    for matrix in reversed(matrices):
        eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
        mixed = 0.5 * matrix + 0.5 * eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        row = torch.bmm(row.unsqueeze(1), mixed).squeeze(1)
    return row


# ----------------------------------------------------------------------- public methods
@attribution_method
def attention_rollout(model: nn.Module, clip: torch.Tensor, target: Target = None, *,
                      head_fusion: str = "mean", discard_ratio: float = 0.0,
                      info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): ``(N, C, T, H, W)`` -> ``(N, 1, T, H, W)``.

    Per layer the heads are fused (``head_fusion``: mean, max or min), the lowest
    ``discard_ratio`` of each row's weights are set to 0, the residual is added as
    ``0.5 A + 0.5 I`` and rows renormalised; the layers are multiplied (last layer on the left)
    and the class token's row (mean row without a class token) gives the patch relevance.
    Class-agnostic: ``target`` is not used.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"unknown head_fusion {head_fusion!r}; choose from {HEAD_FUSIONS}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    with torch.no_grad():
        record = attention_record(model, clip.detach())
        matrices = layer_matrices(
            record, lambda a: _discard(_fuse_heads(a.float(), head_fusion), discard_ratio),
            clip.shape[0])
        start = _start_row(record, clip.shape[0], matrices[0].shape[-1], clip.device,
                           matrices[0].dtype)
        relevance = rollout_relevance(matrices, start)
    return _to_clip(relevance, record, clip, info, len(matrices))


@attribution_method
def attention_gradient(model: nn.Module, clip: torch.Tensor, target: Target, *,
                       info: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """Gradient-weighted attention relevance (Chefer et al. 2021, "Generic Attention-model
    Explainability"): ``(N, C, T, H, W)`` -> ``(N, 1, T, H, W)``.

    With ``Ā = mean_heads(relu(dA * A))`` (``dA`` the target's gradient w.r.t. the attention
    probabilities ``A``), ``R = I`` and, layer by layer from the first, ``R <- R + Ā R``; the
    class token's row of ``R`` (mean row without a class token) gives the patch relevance.
    """
    target_fn = as_target_fn(target)
    with torch.enable_grad():
        inputs = clip.detach().requires_grad_(True)
        record = attention_record(model, inputs)
        scores = target_fn(record["output"])
        if scores.dim() != 1 or scores.shape[0] != clip.shape[0]:
            raise ValueError(f"the target must return one score per clip, shape "
                             f"({clip.shape[0]},); got {tuple(scores.shape)}")
        tensors = []
        for layer in record["attentions"]:
            tensors.extend([layer["temporal"], layer["spatial"]] if isinstance(layer, dict)
                           else [layer])
        live = [a for a in tensors if a.requires_grad]
        if not live:
            raise ValueError("the attention probabilities do not depend on the clip")
        found = dict(zip(map(id, live), torch.autograd.grad(scores.sum(), live,
                                                            allow_unused=True)))
        grads = [found.get(id(a)) for a in tensors]
    weighted = {id(a): ((g * a).clamp(min=0).mean(1) if g is not None
                        else torch.zeros_like(a[:, 0])).detach().float()
                for a, g in zip(tensors, grads)}
    with torch.no_grad():
        matrices = layer_matrices(record, lambda a: weighted[id(a)], clip.shape[0])
        row = _start_row(record, clip.shape[0], matrices[0].shape[-1], clip.device,
                         matrices[0].dtype)
        for matrix in reversed(matrices):
            row = row + torch.bmm(row.unsqueeze(1), matrix).squeeze(1)
    return _to_clip(row, record, clip, info, len(matrices))
