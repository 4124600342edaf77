"""ArcFace (additive angular margin) on the fine labels, wrapping pytorch-metric-learning's implementation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from ofgr_core.losses.base import EmbeddingLoss


class ArcFaceLoss(EmbeddingLoss):
    """Additive angular margin softmax (Deng et al., 2019) on the fine labels.

    Cross-entropy over logits ``scale * cos(theta_y + margin)`` for the target class and
    ``scale * cos(theta_j)`` for the others, ``theta_j`` being the angle between the embedding and the class
    weight ``W[:, j]``.

    The margin is in **radians** (the paper's convention: 0.5 rad = 28.6 degrees); pytorch-metric-learning
    takes degrees, so it is converted here. Past ``theta_y > pi - margin`` PML switches to the paper's
    monotonic extension ``cos(theta_y) - margin * sin(margin)``. With ``margin=0`` this is the normalised
    softmax (cosine) classifier.

    Args:
        num_classes: number of training fine classes; fine labels must be ``0 .. num_classes - 1``.
        embed_dim: embedding width.
        scale: logit scale ``s``.
        margin: additive angular margin ``m`` in radians, in ``[0, pi/2)``.
        lr: learning rate of the class-weight matrix; ``None`` = 10x the base learning rate (the class
            centres start random and must move faster than a pretrained backbone).
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        scale: float = 30.0,
        margin: float = 0.3,
        lr: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(
                f"margin is in radians and must be in [0, pi/2), got {margin} "
                f"(for {margin} degrees use {math.radians(margin):.3f})"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.scale = scale
        self.margin = margin
        self.lr = lr
        self.pml = self._make_pml(num_classes, embed_dim, math.degrees(margin), scale)
        # plain ArcFace runs its arithmetic here, without PML's per-call bookkeeping (stats, reducer and
        # regulariser dispatch), which costs more than the arithmetic on a small head's batches
        self._direct = type(self.pml) is pml_losses.ArcFaceLoss

    def _make_pml(self, num_classes: int, embed_dim: int, margin_degrees: float, scale: float
                  ) -> pml_losses.ArcFaceLoss:
        """The wrapped PML loss (subclasses swap in a variant with the same interface)."""
        return pml_losses.ArcFaceLoss(num_classes, embed_dim, margin=margin_degrees, scale=scale)

    @property
    def weight(self) -> torch.nn.Parameter:
        """The ``(embed_dim, num_classes * sub-centres)`` class-weight matrix (one column per class centre)."""
        weight: torch.nn.Parameter = self.pml.W  # pytorch-metric-learning is untyped
        return weight

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        fine = labels[:, 0]
        # coarse-only rows (fine id -1) have no class centre: ArcFace has no coarse term, so it skips them
        labelled = fine >= 0
        if not bool(labelled.all()):
            if not bool(labelled.any()):
                return embeddings.sum() * 0.0 + self.weight.sum() * 0.0
            embeddings, fine = embeddings[labelled], fine[labelled]
        self.check_labels(fine)
        # PML casts W to the embeddings' dtype in place; keep it in its own dtype for the optimizer.
        if self._direct:
            return self._arcface(embeddings.to(self.weight.dtype), fine)
        loss: torch.Tensor = self.pml(embeddings.to(self.weight.dtype), fine)
        return loss

    def check_labels(self, fine: torch.Tensor) -> None:
        """Raise when a (labelled) fine id has no class centre: an out-of-range id is a device-side assert on
        CUDA, far from its cause."""
        lo, hi = torch.stack([fine.min(), fine.max()]).tolist()
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(
                f"ArcFace fine labels must lie in [0, {self.num_classes}), got [{lo}, {hi}]; "
                "map the training classes to contiguous ids"
            )

    def _arcface(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """PML's ``ArcFaceLoss`` (no miner, no regulariser, mean reduction) operation for operation, so every
        value and gradient is bit for bit PML's (``tests/core/test_head_fit.py``)."""
        pml = self.pml
        margin, scale = pml.margin, pml.scale  # PML's own float64 radians (np.radians of our degrees)
        cosine = torch.matmul(F.normalize(embeddings, p=2, dim=1), F.normalize(self.weight.t(), p=2, dim=1).t())
        mask = torch.zeros(labels.size(0), self.weight.shape[1], dtype=embeddings.dtype, device=embeddings.device)
        mask[torch.arange(labels.size(0)), labels] = 1
        target = cosine[mask == 1]
        angles = torch.acos(torch.clamp(target, -1, 1))
        # past pi - margin the paper's monotonic extension keeps the loss decreasing
        modified = torch.where(angles <= np.deg2rad(180) - margin, torch.cos(angles + margin),
                               torch.cos(angles) - margin * np.sin(margin))
        logits = (cosine + mask * (modified - target).unsqueeze(1)) * scale
        losses = F.cross_entropy(logits, labels, reduction="none") * torch.ones_like(labels, dtype=embeddings.dtype)
        return torch.mean(losses)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Margin-free ``scale * cosine`` class logits ``(B, num_classes)``, e.g. for a training accuracy."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            logits: torch.Tensor = self.pml.get_logits(embeddings.to(self.weight.dtype))
            return logits

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return [{"params": [self.weight], "lr": self.lr if self.lr is not None else 10.0 * base_lr}]
