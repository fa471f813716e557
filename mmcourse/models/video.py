"""Time in video: pooling a clip's per-frame features into one clip feature.

A video model built on an image model (CLIP4Clip, Luo et al. 2021) encodes every frame with the
image tower, then pools the T frame features (B, T, E) into one (B, E):

- `mean_pool_frames`: CLIP4Clip's "meanP", the average over frames. It is blind to order: a clip
  and the same clip played backwards get the same feature.
- `TemporalTransformer`: CLIP4Clip's "seqTransf": learned frame-position embeddings added to the
  frame features, Transformer blocks (the course's one `Block`) attending across frames, then the
  mean; position embeddings make the order visible.

`ClipClassifier(pooling, ...)` puts a small MLP head on either, for classifying clips from frame
features computed once with a frozen image tower.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mmcourse.models.clip import Block

POOLINGS = ("mean", "temporal")


def _check_frames(frame_features: torch.Tensor) -> None:
    if not isinstance(frame_features, torch.Tensor) or not frame_features.is_floating_point():
        raise TypeError("frame_features must be a float tensor (B, T, E)")
    if frame_features.dim() != 3:
        raise ValueError(f"frame_features must have shape (B, T, E), got {tuple(frame_features.shape)}")


def mean_pool_frames(frame_features: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip's mean pooling: (B, T, E) -> (B, E), the average over the T frames."""
    _check_frames(frame_features)
    return frame_features.mean(dim=1)


class TemporalTransformer(nn.Module):
    """(B, T, E) frame features -> (B, E): + frame-position embedding, `layers` Blocks, mean over time.

    Args:
        dim: E, the frame features' width; heads: attention heads (dim divisible by heads);
        max_frames: the longest clip; layers: Blocks.

    Raises (forward): ValueError for a clip longer than max_frames or of the wrong width.
    """

    def __init__(self, dim: int, max_frames: int = 8, layers: int = 1, heads: int = 4):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(max_frames, dim) * 0.02)  # (T_max, E)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)

    def forward(self, frame_features: torch.Tensor) -> torch.Tensor:
        _check_frames(frame_features)
        T, E = frame_features.shape[1:]
        if T > len(self.positional_embedding) or E != self.positional_embedding.shape[1]:
            raise ValueError(f"expected at most {len(self.positional_embedding)} frames of width "
                             f"{self.positional_embedding.shape[1]}, got (T, E) = ({T}, {E})")
        x = frame_features + self.positional_embedding[:T]  # (B, T, E): which frame is which
        for block in self.blocks:
            x = block(x)  # (B, T, E): every frame attends to every other
        return self.ln(x).mean(dim=1)  # (B, E)


class ClipClassifier(nn.Module):
    """Classify clips from frame features: pooling ("mean" or "temporal") then an MLP head.

    forward(frame_features (B, T, E)) -> logits (B, num_classes).
    """

    def __init__(self, pooling: str, dim: int, num_classes: int, max_frames: int = 8, hidden: int = 64):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.temporal = TemporalTransformer(dim, max_frames) if pooling == "temporal" else None
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes))

    def forward(self, frame_features: torch.Tensor) -> torch.Tensor:
        pooled = mean_pool_frames(frame_features) if self.temporal is None else self.temporal(frame_features)
        return self.head(pooled)  # (B, C)
