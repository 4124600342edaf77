"""Weighted sum of embedding losses, with the unweighted components kept apart for logging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from ofgr_core.losses.base import EmbeddingLoss


class CombinedLoss(nn.Module):
    """``total = sum(weight[name] * loss[name](embeddings, labels))``.

    Args:
        losses: named losses, e.g. ``{"arcface": ..., "htriplet": ...}``; the names key the components.
        weights: a weight per name.

    A module: move it to the training device with ``.to(device)`` and checkpoint its ``state_dict()``
    (ArcFace's class weights live here).
    """

    def __init__(self, losses: Mapping[str, EmbeddingLoss], weights: Mapping[str, float]) -> None:
        super().__init__()
        if not losses:
            raise ValueError("CombinedLoss needs at least one loss")
        if set(losses) != set(weights):
            raise ValueError(f"loss names {sorted(losses)} and weight names {sorted(weights)} differ")
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {name: float(weights[name]) for name in losses}

    def _named(self) -> list[tuple[str, EmbeddingLoss]]:
        # nn.ModuleDict types its values as Module; __init__ only accepts EmbeddingLoss
        return [(name, cast(EmbeddingLoss, loss)) for name, loss in self.losses.items()]

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and ``{name: unweighted component}`` (detached: for logging, not for backward)."""
        total: torch.Tensor | None = None
        components: dict[str, torch.Tensor] = {}
        for name, loss in self._named():
            value = loss(embeddings, labels)
            components[name] = value.detach()
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        assert total is not None  # at least one loss, checked in __init__
        return total, components

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups for the losses' own parameters, each tagged ``name="loss.<name>"``.

        Add them next to the model's groups: ``AdamW(model_groups + loss.param_groups(lr), lr=lr)``.
        """
        groups = []
        for name, loss in self._named():
            for group in loss.param_groups(base_lr):
                groups.append({**group, "name": f"loss.{name}"})
        return groups
