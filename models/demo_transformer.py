"""``demo_transformer``: a small video transformer trained by the project on the synthetic clips.

Architecture (input ``(N, 3, 16, 112, 112)`` normalised like the other demo models):

- a convolutional tubelet embedding (``stem``): the four convolution blocks of ``demo_3dcnn``
  (``1x5x5 / (1, 2, 2)``, ``3x3x3 / (2, 2, 2)``, ``3x3x3 / (1, 2, 2)``, ``3x3x3``, each with
  batch norm and ReLU), then a linear 1x1x1 projection to ``dim`` channels (``embed``). The
  token grid has stride 2 frames x 8 x 8 pixels: ``8 x 14 x 14 = 1568`` patch tokens, ordered
  ``(t, y, x)`` with ``x`` fastest. Training starts the stem from the bundled ``demo_3dcnn``
  weights (see :mod:`utils.demo.train_transformer`);
- separable learned position embeddings (one per time slice plus one per spatial cell) and a
  class token in front (sequence ``(N, 1 + 1568, dim)``);
- ``depth`` pre-norm blocks with *divided space-time attention* (as TimeSformer): temporal
  attention among the 8 tokens of each spatial cell, then spatial attention among the class
  token and the 196 tokens of each time slice; the class token's copies (one per time slice)
  are averaged after the spatial step. Each sub-layer is residual;
- a final layer norm (``norm``) and a linear classifier on the class token.

Default CAM layer: ``blocks.0``, whose output ``((N, 1 + 1568, dim), attentions)`` feeds the last
block's attention (after the last block only the class token reaches the head, so the patch
tokens there receive no gradient); read with :func:`read_tokens_with_class_token`.

``forward(clip, return_attentions=True)`` also returns the attention probabilities of every
block as ``{"temporal": (N*196, heads, 8, 8), "spatial": (N*8, heads, 197, 197)}`` (temporal
rows ordered ``n * 196 + cell``, spatial rows ``n * 8 + t``); they stay in the autograd graph so
gradient-weighted attention methods can differentiate the output with respect to them.
:meth:`DemoVideoTransformer.attention_record` packs them for :mod:`vis_methods.attention`.

The checkpoint is made by ``python -m utils.demo.train_transformer`` (see that module).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional, Tuple

import torch
from torch import nn

from .demo import (CHECKPOINT_DIR, FRAME_SIZE, MEAN, NUM_CLASSES, NUM_FRAMES, PRETRAIN_DATASET,
                   STD, ConvBlock3d, synthetic_class_names)
from .registry import ModelSpec, WeightsUnavailableError

NAME = "demo_transformer"
# Pixels of the clip covered by one token (time, height, width).
TUBELET = (2, 8, 8)


class DividedAttention(nn.Module):
    """Multi-head self-attention over ``(M, L, dim)`` sequences that returns its probabilities
    ``(M, heads, L, L)`` next to its output."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        m, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(m, length, 3, self.heads, dim // self.heads).permute(
            2, 0, 3, 1, 4)
        attention = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(m, length, dim)
        return self.proj(out), attention


class DividedBlock(nn.Module):
    """Pre-norm block: temporal attention, spatial attention (with the class token), MLP.

    Input and output ``(N, 1 + T*S, dim)``, patch tokens ordered ``(t, cell)``, with the grid
    ``(T, S)`` given to :meth:`forward`.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm_time = nn.LayerNorm(dim)
        self.attn_time = DividedAttention(dim, heads)
        self.norm_space = nn.LayerNorm(dim)
        self.attn_space = DividedAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict(
            fc1=nn.Linear(dim, mlp_ratio * dim), act=nn.GELU(), fc2=nn.Linear(mlp_ratio * dim, dim)))

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> Tuple[torch.Tensor, dict]:
        n, _, dim = x.shape
        frames, cells = grid
        cls, patches = x[:, :1], x[:, 1:]
        # Temporal attention: one sequence of T tokens per spatial cell.
        seq = patches.reshape(n, frames, cells, dim).transpose(1, 2).reshape(n * cells, frames, dim)
        delta, attn_time = self.attn_time(self.norm_time(seq))
        seq = seq + delta
        patches = seq.reshape(n, cells, frames, dim).transpose(1, 2)           # (N, T, S, dim)
        # Spatial attention: the class token and the S tokens of each time slice.
        seq = torch.cat([cls.unsqueeze(1).expand(n, frames, 1, dim), patches], dim=2)
        seq = seq.reshape(n * frames, 1 + cells, dim)
        delta, attn_space = self.attn_space(self.norm_space(seq))
        seq = (seq + delta).reshape(n, frames, 1 + cells, dim)
        cls = seq[:, :, :1].mean(1)                                             # (N, 1, dim)
        x = torch.cat([cls, seq[:, :, 1:].reshape(n, frames * cells, dim)], dim=1)
        x = x + self.mlp(self.norm_mlp(x))
        return x, {"temporal": attn_time, "spatial": attn_space}


class DemoVideoTransformer(nn.Module):
    """Small divided space-time video transformer: ``(N, 3, T, H, W)`` -> ``(N, num_classes)``.

    ``T``, ``H``, ``W`` must be multiples of the tubelet ``(2, 8, 8)``; the position embeddings
    are made for the 16 x 112 x 112 training clips (8 x 14 x 14 tokens).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dim: int = 64, depth: int = 2,
                 heads: int = 4, grid: Tuple[int, int, int] = (8, 14, 14)):
        super().__init__()
        self.grid = tuple(grid)
        # The same layers as demo_3dcnn's ``features`` (so they can start from its weights).
        self.stem = nn.Sequential(OrderedDict(
            conv1=ConvBlock3d(3, 8, (1, 5, 5), (1, 2, 2)),
            conv2=ConvBlock3d(8, 16, 3, (2, 2, 2)),
            conv3=ConvBlock3d(16, 32, 3, (1, 2, 2)),
            conv4=ConvBlock3d(32, 32, 3, 1),
        ))
        self.embed = nn.Conv3d(32, dim, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, grid[0], 1, dim))
        self.space_embed = nn.Parameter(torch.zeros(1, 1, grid[1] * grid[2], dim))
        self.blocks = nn.ModuleList(DividedBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for parameter in (self.cls_token, self.time_embed, self.space_embed):
            nn.init.trunc_normal_(parameter, std=0.02)

    def token_grid(self, clip_shape: Tuple[int, ...]) -> Tuple[int, int, int]:
        """The patch-token grid ``(T', h', w')`` for a clip of shape ``(N, C, T, H, W)``."""
        t, h, w = clip_shape[2:]
        if t % TUBELET[0] or h % TUBELET[1] or w % TUBELET[2]:
            raise ValueError(f"clip {tuple(clip_shape)}: T, H, W must be multiples of {TUBELET}")
        return t // TUBELET[0], h // TUBELET[1], w // TUBELET[2]

    def forward(self, clip: torch.Tensor, return_attentions: bool = False) -> Any:
        tokens = self.embed(self.stem(clip))                      # (N, dim, T', h', w')
        n, dim, frames, height, width = tokens.shape
        if (frames, height, width) != self.grid:
            raise ValueError(f"clip {tuple(clip.shape)} gives a {frames}x{height}x{width} token "
                             f"grid; this model is made for {self.grid[0] * TUBELET[0]} frames of "
                             f"{self.grid[1] * TUBELET[1]} x {self.grid[2] * TUBELET[2]} pixels")
        cells = height * width
        tokens = tokens.flatten(3).transpose(1, 3).transpose(1, 2)  # (N, T', S, dim)
        tokens = (tokens + self.time_embed + self.space_embed).reshape(n, frames * cells, dim)
        x = torch.cat([self.cls_token.expand(n, 1, dim), tokens], dim=1)
        attentions = []
        for block in self.blocks:
            x, attention = block(x, (frames, cells))
            attentions.append(attention)
        logits = self.head(self.norm(x)[:, 0])
        return (logits, attentions) if return_attentions else logits

    def attention_record(self, clip: torch.Tensor) -> dict:
        """Logits and attention probabilities for :mod:`vis_methods.attention`:
        ``{"output", "attentions", "grid", "prefix_tokens", "structure": "divided",
        "token_order": "tcell"}``."""
        logits, attentions = self(clip, return_attentions=True)
        return {"output": logits, "attentions": attentions, "grid": self.token_grid(clip.shape),
                "prefix_tokens": 1, "structure": "divided", "token_order": "tcell"}


# ------------------------------------------------------------------------ layer readers
def read_tokens_with_class_token(layer_output: Any, clip_shape: Tuple[int, ...]) -> torch.Tensor:
    """Reader for ``norm`` / ``blocks.<i>`` of :class:`DemoVideoTransformer`:
    ``(N, 1 + T'*h'*w', C)`` (or a ``(tokens, attentions)`` tuple) -> ``(N, C, T', h', w')``,
    class token dropped, tokens ordered ``(t, y, x)``."""
    tokens = layer_output[0] if isinstance(layer_output, tuple) else layer_output
    n, c = clip_shape[0], tokens.shape[-1]
    t, h, w = clip_shape[2:]
    grid = (t // TUBELET[0], h // TUBELET[1], w // TUBELET[2])
    patches = tokens[:, 1:]
    if patches.shape[1] != grid[0] * grid[1] * grid[2]:
        raise ValueError(f"layer output {tuple(tokens.shape)} does not hold 1 + {grid} tokens "
                         f"for a clip {tuple(clip_shape)}")
    return patches.reshape(n, *grid, c).permute(0, 4, 1, 2, 3)


def build_demo_transformer() -> DemoVideoTransformer:
    return DemoVideoTransformer(NUM_CLASSES)


def checkpoint_path() -> Path:
    return CHECKPOINT_DIR / f"{NAME}.pt"


def load_demo_transformer(weights_file: Optional[Path] = None,
                          pretrain_dataset: Optional[str] = PRETRAIN_DATASET) -> nn.Module:
    """The trained demo transformer (``weights_file`` or the bundled checkpoint), eval mode."""
    if pretrain_dataset not in (None, PRETRAIN_DATASET):
        raise WeightsUnavailableError(
            f"{NAME} is trained on {PRETRAIN_DATASET!r} clips only, not {pretrain_dataset!r}; "
            f"use --pretrain_dataset {PRETRAIN_DATASET}")
    path = Path(weights_file) if weights_file is not None else checkpoint_path()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{NAME}: weights file {path} not found; make it with "
            f"`python -m utils.demo.train_transformer`")
    from .user import load_state_strict, read_state_dict   # one-line errors for bad files
    model = build_demo_transformer()
    load_state_strict(model, read_state_dict(path), path)
    return model.eval()


DEMO_TRANSFORMER = ModelSpec(
    name=NAME,
    load=load_demo_transformer,
    class_names=lambda _dataset: synthetic_class_names(),
    clip_length=NUM_FRAMES,
    resize=FRAME_SIZE,
    crop=FRAME_SIZE,
    mean=MEAN,
    std=STD,
    target_layer="blocks.0",
    pretrain_datasets=(PRETRAIN_DATASET,),
    description="small divided space-time video transformer trained on synthetic clips",
    layer_readers=MappingProxyType({"blocks.0": read_tokens_with_class_token,
                                    "blocks.1": read_tokens_with_class_token,
                                    "norm": read_tokens_with_class_token}),
)
DEMO_TRANSFORMER_READERS = DEMO_TRANSFORMER.layer_readers
