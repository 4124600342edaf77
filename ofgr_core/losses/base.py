"""Template-method base for embedding losses: ``forward`` validates and casts, ``compute_loss`` computes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class EmbeddingLoss(nn.Module, ABC):
    """A loss on a batch of embeddings and hierarchical labels.

    ``forward`` checks shapes, promotes half-precision embeddings to float32 and runs ``compute_loss`` with
    autocast disabled: margins of a few hundredths and scales of 30-64 are not representable safely in
    float16, and losses that own parameters (ArcFace class weights) must not have them cast by autocast.
    Subclasses implement ``compute_loss`` and, when they own parameters that need their own learning rate,
    ``param_groups``.
    """

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss.

        Args:
            embeddings: ``(B, D)`` embeddings (L2-normalised or not; losses normalise where they need to).
            labels: ``(B, L)`` int64 labels, column 0 the fine class, column 1 the coarse class; a ``(B,)``
                tensor is taken as fine labels only.
        """
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (batch, dim), got shape {tuple(embeddings.shape)}")
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels must be (batch, levels) with batch {embeddings.shape[0]}, got {tuple(labels.shape)}"
            )
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.compute_loss(embeddings.to(dtype), labels.long())

    @abstractmethod
    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss from float32 (or float64) ``(B, D)`` embeddings and ``(B, L)`` int64 labels."""

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups for this loss's own trainable parameters (none by default)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": base_lr}] if params else []
