"""Sub-center ArcFace: ArcFace with ``K`` centres per class, robust to mislabelled training images."""

from __future__ import annotations

from pytorch_metric_learning import losses as pml_losses

from ofgr_core.losses.arcface import ArcFaceLoss


class SubCenterArcFaceLoss(ArcFaceLoss):
    """ArcFace whose class ``j`` owns ``K`` weight vectors; its cosine is the largest of the ``K`` (Deng et al.,
    ECCV 2020, "Sub-center ArcFace: boosting face recognition by large-scale noisy web faces").

    Clean images of a class gather around one dominant sub-centre, while mislabelled images (an image of
    class ``a`` labelled ``b``) can settle on a non-dominant sub-centre of ``b`` instead of dragging the
    dominant one towards class ``a``: the margin still applies, but the noise no longer pulls the clean
    centre. Everything else (margin in radians, scale, class-weight learning rate, coarse-only rows skipped)
    is as in :class:`ArcFaceLoss`; this wraps pytorch-metric-learning's ``SubCenterArcFaceLoss``.

    Args:
        num_classes: number of training fine classes; fine labels must be ``0 .. num_classes - 1``.
        embed_dim: embedding width.
        subcenters: ``K >= 2`` centres per class (the paper uses 3).
        scale: logit scale ``s``.
        margin: additive angular margin ``m`` in radians, in ``[0, pi/2)``.
        lr: learning rate of the class-weight matrix; ``None`` = 10x the base learning rate.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        subcenters: int = 3,
        scale: float = 30.0,
        margin: float = 0.3,
        lr: float | None = None,
    ) -> None:
        if subcenters < 2:
            raise ValueError(f"subcenters must be >= 2 for sub-center ArcFace, got {subcenters}")
        self.subcenters = subcenters
        super().__init__(num_classes, embed_dim, scale=scale, margin=margin, lr=lr)

    def _make_pml(self, num_classes: int, embed_dim: int, margin_degrees: float, scale: float
                  ) -> pml_losses.ArcFaceLoss:
        return pml_losses.SubCenterArcFaceLoss(
            num_classes=num_classes, embedding_size=embed_dim, margin=margin_degrees, scale=scale,
            sub_centers=self.subcenters,
        )
