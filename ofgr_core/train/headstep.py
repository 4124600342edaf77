"""A head's training step on cached features with its backward pass written out, without autograd.

On 32-row batches of cached tower features a step of the demo's head (1280 -> 512 -> 128, ArcFace + batch-hard
hierarchical triplet) is mostly per-operation cost: autograd records ~120 nodes in the forward pass and
replays them backward, where the arithmetic is two matrix products each way. :class:`HeadStep` computes the
same loss with the same forward operations, then each parameter's gradient directly from the formulas: for
the ArcFace logits softmax minus one-hot through the margin's derivative, for batch-hard mining the selected
distances' ±1/count, for L2 normalisation ``(dy - y <y, dy>) / |v|``, and ``torch.ops.aten.gelu_backward``
for the activation (autograd's own kernel).

What it covers (``HeadStep.build`` returns ``None`` for anything else, which trains through autograd):

- the model: ``FeatureHead`` over an ``MLPHead`` (any depth, GELU either approximation, dropout, residual);
- the losses: ``CombinedLoss`` of plain ``ArcFaceLoss`` (not sub-centre) and ``HierarchicalTripletLoss`` with
  ``batch_hard`` mining, any weights, coarse-only rows (fine id -1) included;
- float32 parameters; the loop uses it only on CPU, without DDP, autocast or loss scaling (``train.head_step: auto``;
  ``ofgr_core.train.loop._head_step_applies``).

The loss values are the autograd path's bit for bit (the forward operations are the same); the gradients
agree to float rounding (~1e-7 relative: sums run in another order), so a trained head differs from the
autograd path's only by rounding's drift (tests/core/test_headstep.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ofgr_core.losses.arcface import ArcFaceLoss
from ofgr_core.losses.combined import CombinedLoss
from ofgr_core.losses.hierarchical_triplet import (
    _ABOVE_ANY_DISTANCE,
    _BELOW_ANY_DISTANCE,
    HierarchicalTripletLoss,
    relations,
)
from ofgr_core.models.base import FeatureHead, MLPHead

_EPS = 1e-12  # F.normalize's default


@dataclass
class _Block:
    """One ``Linear -> GELU -> Dropout`` block of an ``MLPHead`` (the last Linear has neither)."""

    linear: nn.Linear
    gelu: str | None  # the GELU's approximation ("none", "tanh"); None: no activation
    dropout: float


def _normalized(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.normalize(v, dim=1)`` with the same operations (same bits), and the clamped norms."""
    n = v.norm(2, 1, keepdim=True).clamp_min(_EPS)
    return v / n.expand_as(v), n


def _normalize_backward(y: torch.Tensor, n: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Gradient through ``y = v / max(|v|, eps)``: ``(dy - y <y, dy>) / |v|``; below eps the norm is a
    constant and only ``dy / eps`` remains (clamp_min's gradient)."""
    radial = y * (y * dy).sum(1, keepdim=True)
    return (dy - torch.where(n > _EPS, radial, 0.0)) / n


class HeadStep:
    """Loss and gradients of one step of a ``FeatureHead(MLPHead)`` under a ``CombinedLoss``.

    ``step(x, labels)`` returns ``(total, {name: component})`` as ``TrainModule`` does and writes every
    trainable parameter's ``.grad`` (replacing it), as ``zero_grad(set_to_none=True)`` + ``backward()`` would.
    """

    def __init__(
        self,
        head: MLPHead,
        blocks: list[_Block],
        arcface: tuple[str, ArcFaceLoss] | None,
        triplet: tuple[str, HierarchicalTripletLoss] | None,
        weights: dict[str, float],
    ) -> None:
        self.head = head
        self.blocks = blocks
        self.arcface = arcface
        self.triplet = triplet
        self.weights = weights  # CombinedLoss's weights, in its order: the total is summed in it

    @classmethod
    def build(cls, model: nn.Module, loss_fn: nn.Module) -> HeadStep | None:
        """A step for this model and loss, or ``None`` when they are not what it covers (autograd trains)."""
        if not isinstance(model, FeatureHead) or not isinstance(model.head, MLPHead):
            return None
        if not isinstance(loss_fn, CombinedLoss):
            return None
        head = model.head
        blocks = cls._blocks(head)
        if blocks is None:
            return None
        arcface: tuple[str, ArcFaceLoss] | None = None
        triplet: tuple[str, HierarchicalTripletLoss] | None = None
        for name, loss in loss_fn.losses.items():
            # sub-centre ArcFace (a subclass) has other arithmetic; plain ArcFace runs its own (``_arcface``)
            if type(loss) is ArcFaceLoss and arcface is None:
                arcface = (name, loss)
            elif type(loss) is HierarchicalTripletLoss and loss.mining == "batch_hard" and triplet is None:
                triplet = (name, loss)
            else:
                return None
        params = list(model.parameters()) + list(loss_fn.parameters())
        if any(p.dtype != torch.float32 or not p.requires_grad for p in params):
            return None
        return cls(head, blocks, arcface, triplet, {name: loss_fn.weights[name] for name in loss_fn.losses})

    @staticmethod
    def _blocks(head: MLPHead) -> list[_Block] | None:
        layers = list(head.mlp)
        blocks: list[_Block] = []
        i = 0
        while i < len(layers):
            linear = layers[i]
            if not isinstance(linear, nn.Linear) or linear.bias is None:
                return None
            if i == len(layers) - 1:
                blocks.append(_Block(linear, None, 0.0))
                break
            if i + 2 >= len(layers):
                return None
            gelu, drop = layers[i + 1], layers[i + 2]
            if not isinstance(gelu, nn.GELU) or not isinstance(drop, nn.Dropout) or drop.inplace or drop.p >= 1:
                return None
            blocks.append(_Block(linear, gelu.approximate, float(drop.p)))
            i += 3
        return blocks if blocks and blocks[-1].gelu is None else None

    @torch.no_grad()
    def step(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and backward of one batch: ``(total loss, {name: component})``; gradients written."""
        if labels.ndim == 1:
            labels = labels[:, None]
        labels = labels.long()
        training = self.head.training
        # forward, keeping what the backward pass needs: each block's input, pre-activation and dropout mask
        saved: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        h = x
        for block in self.blocks:
            pre = F.linear(h, block.linear.weight, block.linear.bias)
            if block.gelu is None:
                saved.append((h, None, None))
                h = pre
                continue
            act = F.gelu(pre, approximate=block.gelu)
            mask = None
            if training and block.dropout > 0:
                # nn.Dropout's arithmetic: a Bernoulli(1 - p) draw scaled by 1 / (1 - p), same generator calls
                mask = torch.empty_like(act).bernoulli_(1 - block.dropout).div_(1 - block.dropout)
                act = act * mask
            saved.append((h, pre, mask))
            h = act
        out = x + h if self.head.residual else h
        z, nz = _normalized(out.float())  # head_embeddings: the model's output, each loss's input
        components: dict[str, torch.Tensor] = {}
        dz = torch.zeros_like(z)
        if self.arcface is not None:
            name, loss = self.arcface
            components[name], dz_a = self._arcface(loss, z, labels, self.weights[name])
            dz += dz_a
        if self.triplet is not None:
            name, tri = self.triplet
            components[name], dz_t = self._triplet(tri, z, labels, self.weights[name])
            dz += dz_t
        total: torch.Tensor | None = None
        for name, w in self.weights.items():
            weighted = w * components[name]
            total = weighted if total is None else total + weighted
        assert total is not None  # CombinedLoss has at least one loss
        # backward: the model's normalisation, then the blocks in reverse
        grad = _normalize_backward(z, nz, dz)
        for block, (inp, before, mask) in zip(reversed(self.blocks), reversed(saved), strict=True):
            if before is not None:
                if mask is not None:
                    grad = grad * mask
                grad = torch.ops.aten.gelu_backward(grad, before, approximate=block.gelu)
            block.linear.weight.grad = grad.t().mm(inp)
            assert block.linear.bias is not None  # _blocks takes only Linears with a bias
            block.linear.bias.grad = grad.sum(0)
            if block is not self.blocks[0]:
                grad = grad.mm(block.linear.weight)
        return total, components

    @staticmethod
    def _arcface(
        loss: ArcFaceLoss, z: torch.Tensor, labels: torch.Tensor, weight: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ArcFace's value (``ArcFaceLoss._arcface``'s operations) and its weighted gradient on its input ``z``;
        writes the class weights' gradient."""
        fine = labels[:, 0]
        w = loss.weight
        labelled = fine >= 0
        rows: torch.Tensor | None = None
        emb = z
        if not bool(labelled.all()):
            if not bool(labelled.any()):  # the reference's 0 loss, still connected: zero gradients
                w.grad = torch.zeros_like(w)
                return z.new_zeros(()), torch.zeros_like(z)
            rows = labelled.nonzero().squeeze(1)
            emb, fine = z[rows], fine[rows]
        loss.check_labels(fine)
        pml = loss.pml
        margin, scale = pml.margin, pml.scale  # PML's float64 radians, as in the reference
        en, nen = _normalized(emb)
        wt = w.t()
        wn, nwn = _normalized(wt)
        cosine = torch.matmul(en, wn.t())
        idx = fine[:, None]
        target = cosine.gather(1, idx)
        clamped = torch.clamp(target, -1, 1)
        angles = torch.acos(clamped)
        beyond = angles <= np.deg2rad(180) - margin
        modified = torch.where(beyond, torch.cos(angles + margin), torch.cos(angles) - margin * np.sin(margin))
        logits = cosine * scale
        logits.scatter_(1, idx, (target + (modified - target)) * scale)
        logp = torch.log_softmax(logits, 1)
        value = torch.mean(-logp.gather(1, idx).squeeze(1))
        # d value / d logits = (softmax - onehot) / B; the target's logit moves with cos(theta + m)
        n = len(fine)
        g = logp.exp_()
        g.scatter_add_(1, idx, torch.full_like(target, -1.0))
        g.mul_(weight * scale / n)
        sines = torch.sqrt(1 - clamped * clamped)  # acos' derivative is -1 / sin(theta)
        slope = torch.where(beyond, torch.sin(angles + margin), torch.sin(angles)) / sines
        slope = torch.where((target >= -1) & (target <= 1), slope, 0.0)  # clamp passes the gradient inside only
        g.scatter_(1, idx, g.gather(1, idx) * slope)
        d_en = g.mm(wn)
        w.grad = _normalize_backward(wn, nwn, g.t().mm(en)).t().contiguous()
        d_emb = _normalize_backward(en, nen, d_en)
        if rows is None:
            return value, d_emb
        return value, torch.zeros_like(z).index_copy_(0, rows, d_emb)

    @staticmethod
    def _triplet(
        loss: HierarchicalTripletLoss, z: torch.Tensor, labels: torch.Tensor, weight: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch-hard ``HierarchicalTripletLoss``'s value (its operations) and its weighted gradient on its input
        ``z``."""
        x, nx = _normalized(z)
        dist = 1.0 - x @ x.T
        rel = relations(labels)
        gap = loss.gap
        # the reference's three terms per anchor, stacked: (fine negative, coarse negative, coarse-only anchor)
        pos = torch.stack([rel.positive, rel.positive, rel.coarse_positive])
        neg = torch.stack([rel.fine_negative, rel.coarse_negative, rel.coarse_negative])
        margins = [loss.margin_fine, loss.margin_coarse, gap]
        pos_d = torch.where(pos, dist, _BELOW_ANY_DISTANCE)
        neg_d = torch.where(neg, dist, _ABOVE_ANY_DISTANCE)
        hardest_pos, hardest_neg = pos_d.amax(2), neg_d.amin(2)
        raw = torch.stack([hardest_pos[i] - hardest_neg[i] + margins[i] for i in range(3)])
        valid = pos.any(2) & neg.any(2)
        count = valid.sum().clamp(min=1)
        value = torch.where(valid, F.relu(raw), 0.0).sum() / count
        # each active term: +1/count on its hardest positive's distance, -1/count on its hardest negative's
        # (amax/amin share the gradient evenly between tied extremes, as autograd does)
        coef = (valid & (raw > 0)).to(dist.dtype) * weight / count
        at_pos = pos_d == hardest_pos[..., None]
        at_neg = neg_d == hardest_neg[..., None]
        d_dist = (
            at_pos * (coef / at_pos.sum(2).clamp(min=1))[..., None]
            - at_neg * (coef / at_neg.sum(2).clamp(min=1))[..., None]
        ).sum(0)
        d_x = -(d_dist + d_dist.t()).mm(x)
        return value, _normalize_backward(x, nx, d_x)
