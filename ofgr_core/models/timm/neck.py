"""Embedding neck: pooled backbone features -> Linear -> BatchNorm1d -> L2-normalised embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingNeck(nn.Module):
    """Projects pooled features to ``embed_dim`` and L2-normalises them.

    The projection has no bias because the BatchNorm that follows re-centres anyway. BatchNorm before the
    normalisation (as in BNNeck-style re-identification heads) keeps the embedding dimensions on a common
    scale, which makes cosine similarity better conditioned for ArcFace and triplet losses alike.

    Args:
        in_features: width of the pooled backbone features.
        embed_dim: output embedding width.
    """

    def __init__(self, in_features: int, embed_dim: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.embed_dim = embed_dim
        self.proj = nn.Linear(in_features, embed_dim, bias=False)
        self.bn = nn.BatchNorm1d(embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.bn(self.proj(features)), dim=-1)
