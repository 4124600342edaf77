"""Hierarchical two-margin triplet loss: fine negatives need margin ``m_f``, coarse negatives ``m_c``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ofgr_core.losses.base import EmbeddingLoss

Mining = Literal["batch_hard", "semi_hard", "all"]
MINING_MODES: tuple[str, ...] = ("batch_hard", "semi_hard", "all")

# Cosine distances lie in [0, 2]; these fill masked entries so that max/min never select them and no
# infinity enters the graph (inf - inf would be NaN in rows that are masked out later).
_BELOW_ANY_DISTANCE = -1.0
_ABOVE_ANY_DISTANCE = 3.0


class HierarchicalTripletLoss(EmbeddingLoss):
    """Triplet loss whose margin depends on how far up the hierarchy the negative differs.

    Distance is the cosine distance ``d(x, y) = 1 - <x, y> / (|x| |y|)``, in ``[0, 2]`` (embeddings are
    L2-normalised inside the loss). A triplet ``(a, p, n)`` of batch indices is valid when ``p != a``,
    ``fine(p) == fine(a)`` and ``fine(n) != fine(a)``. Its margin is

    - ``margin_fine`` when ``coarse(n) == coarse(a)`` (a *fine negative*: a sibling class, e.g. another
      model of the same car make), and
    - ``margin_coarse`` when ``coarse(n) != coarse(a)`` (a *coarse negative*),

    and its loss is ``max(0, d(a, p) - d(a, n) + margin)``. With ``margin_coarse > margin_fine`` classes
    of other coarse groups are pushed further away than siblings, so the embedding keeps the hierarchy.
    With a single label column every negative is a coarse negative (a plain triplet loss with
    ``margin_coarse``).

    Mining (all vectorised over the batch):

    - ``batch_hard``: per anchor, the hardest positive (largest ``d(a, p)``) is paired with the hardest
      fine negative (smallest ``d(a, n)`` among fine negatives) under ``margin_fine`` and, separately, with
      the hardest coarse negative under ``margin_coarse``. That gives up to two terms per anchor; a term
      exists when the anchor has a positive and a negative of that kind. The loss is the mean of the
      hinged terms over all existing terms, zeros included (Hermans et al., 2017, per margin type).
    - ``semi_hard``: every valid triplet with ``d(a, p) < d(a, n) < d(a, p) + margin``, i.e. loss strictly
      between 0 and the margin (FaceNet's semi-hard negatives, all of them rather than one per pair); the
      loss is their mean.
    - ``all``: every valid triplet with a positive loss; the loss is their mean ("batch all" averaged over
      the non-zero terms, so easy triplets do not dilute the gradient as training progresses).

    Coarse-only rows (fine id ``-1``: fine label missing) are never positives or fine negatives of anyone
    (their fine class is unknown and may be the anchor's), but they are coarse negatives of anchors from other
    coarse classes. As anchors they get the coarse term only: positive = any other row of their coarse class,
    negative = a row of another coarse class, margin ``margin_coarse - margin_fine`` (the gap between the two
    levels: a sibling at the fine margin must still be closer than another coarse class at the coarse
    margin). Mining is as above with these positives.

    A batch without any qualifying triplet gives a zero loss that is still connected to the embeddings.
    ``semi_hard`` and ``all`` build a ``(positive pairs, batch)`` matrix: ``B * (K - 1) * B`` entries for
    ``K`` images per class, small for P x K batches.

    Args:
        margin_fine: margin for negatives that share the anchor's coarse class.
        margin_coarse: margin for negatives from another coarse class.
        mining: ``batch_hard``, ``semi_hard`` or ``all``.
    """

    def __init__(self, margin_fine: float = 0.1, margin_coarse: float = 0.3, mining: Mining = "batch_hard"):
        super().__init__()
        if mining not in MINING_MODES:
            raise ValueError(f"mining must be one of {', '.join(MINING_MODES)}, got {mining!r}")
        if margin_fine < 0 or margin_coarse < 0:
            raise ValueError(f"margins must be >= 0, got fine {margin_fine}, coarse {margin_coarse}")
        self.margin_fine = margin_fine
        self.margin_coarse = margin_coarse
        self.mining = mining

    @property
    def gap(self) -> float:
        """The margin of a coarse-only anchor's terms: the gap between the two levels' margins."""
        return max(self.margin_coarse - self.margin_fine, 0.0)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings, dim=1)
        dist = 1.0 - x @ x.T
        rel = relations(labels)
        known, same_coarse = rel.known, rel.same_coarse
        positive, fine_negative, coarse_negative = rel.positive, rel.fine_negative, rel.coarse_negative
        coarse_positive, gap = rel.coarse_positive, self.gap
        if self.mining == "batch_hard":
            return self._batch_hard(dist, positive, fine_negative, coarse_negative, coarse_positive, gap)

        # one row per (anchor, positive) pair; a row can be a negative only if it is not the anchor's
        # positive (or an unknown-fine row of its coarse class)
        anchor, pos = (positive | coarse_positive).nonzero(as_tuple=True)
        coarse_level = ~known[anchor]
        margins = dist.new_tensor([self.margin_coarse, self.margin_fine])  # in the distances' precision
        # (pairs, B), indexed by negative: fine margin for a sibling negative, coarse margin otherwise
        margin = torch.where(coarse_level[:, None], dist.new_tensor(gap), margins[same_coarse[anchor].long()])
        losses = dist[anchor, pos][:, None] - dist[anchor] + margin
        negative = torch.where(coarse_level[:, None], coarse_negative[anchor],
                               fine_negative[anchor] | coarse_negative[anchor])
        keep = negative & (losses > 0)
        if self.mining == "semi_hard":
            keep &= losses < margin
        return _masked_mean(losses, keep)

    def _batch_hard(
        self,
        dist: torch.Tensor,
        positive: torch.Tensor,
        fine_negative: torch.Tensor,
        coarse_negative: torch.Tensor,
        coarse_positive: torch.Tensor,
        gap: float,
    ) -> torch.Tensor:
        terms, valid = [], []
        for pos_mask, pairs in (
            (positive, ((fine_negative, self.margin_fine), (coarse_negative, self.margin_coarse))),
            (coarse_positive, ((coarse_negative, gap),)),
        ):
            hardest_pos = torch.where(pos_mask, dist, _BELOW_ANY_DISTANCE).amax(dim=1)
            has_pos = pos_mask.any(dim=1)
            for negative, margin in pairs:
                hardest_neg = torch.where(negative, dist, _ABOVE_ANY_DISTANCE).amin(dim=1)
                terms.append(F.relu(hardest_pos - hardest_neg + margin))
                valid.append(has_pos & negative.any(dim=1))
        return _masked_mean(torch.stack(terms), torch.stack(valid))


@dataclass(frozen=True)
class Relations:
    """Who is whose positive and negative in a batch: ``(B, B)`` boolean masks, row = anchor."""

    known: torch.Tensor  # (B,) the fine label is known (not a coarse-only row)
    same_coarse: torch.Tensor
    positive: torch.Tensor  # same fine class, not the anchor itself, both known
    fine_negative: torch.Tensor  # same coarse class, another fine class, both known
    coarse_negative: torch.Tensor  # another coarse class
    coarse_positive: torch.Tensor  # a coarse-only anchor's positives: its coarse class, not itself


def relations(labels: torch.Tensor) -> Relations:
    """The masks of ``(B, L)`` labels (column 0 fine, -1 = unknown; column 1 coarse, else the fine label)."""
    fine = labels[:, 0]
    coarse = labels[:, 1] if labels.shape[1] > 1 else fine
    known = fine >= 0
    both_known = known[:, None] & known[None, :]
    same_fine = (fine[:, None] == fine[None, :]) & both_known
    same_coarse = coarse[:, None] == coarse[None, :]
    eye = torch.eye(len(fine), dtype=torch.bool, device=fine.device)
    return Relations(known=known, same_coarse=same_coarse, positive=same_fine & ~eye,
                     fine_negative=same_coarse & ~same_fine & both_known, coarse_negative=~same_coarse,
                     coarse_positive=same_coarse & ~eye & ~known[:, None])


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[mask]`` without a host sync; 0 (still in the graph) when the mask is empty."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)
