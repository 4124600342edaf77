"""``create_loss``: the weighted sum of every ``LossConfig`` section with a non-zero weight."""

from __future__ import annotations

from ofgr_core.common.errors import ConfigError
from ofgr_core.common.registry import Registry
from ofgr_core.config import ArcFaceConfig, HTripletConfig, LossConfig
from ofgr_core.losses.arcface import ArcFaceLoss
from ofgr_core.losses.base import EmbeddingLoss
from ofgr_core.losses.combined import CombinedLoss
from ofgr_core.losses.hierarchical_triplet import HierarchicalTripletLoss
from ofgr_core.losses.subcenter_arcface import SubCenterArcFaceLoss

# Keyed by the LossConfig field name; factories take (cfg=<section>, num_classes=, embed_dim=).
LOSSES: Registry[EmbeddingLoss] = Registry("loss")


@LOSSES.register("arcface")
def _arcface(cfg: ArcFaceConfig, num_classes: int, embed_dim: int) -> EmbeddingLoss:
    if cfg.subcenters > 1:
        return SubCenterArcFaceLoss(num_classes, embed_dim, subcenters=cfg.subcenters, scale=cfg.scale,
                                    margin=cfg.margin, lr=cfg.lr)
    return ArcFaceLoss(num_classes, embed_dim, scale=cfg.scale, margin=cfg.margin, lr=cfg.lr)


@LOSSES.register("htriplet")
def _htriplet(cfg: HTripletConfig, num_classes: int, embed_dim: int) -> EmbeddingLoss:
    return HierarchicalTripletLoss(cfg.margin_fine, cfg.margin_coarse, cfg.mining)


def create_loss(cfg: LossConfig, num_classes: int, embed_dim: int) -> CombinedLoss:
    """The losses of ``cfg`` with weight > 0, summed with their weights.

    Args:
        cfg: the ``loss`` config section.
        num_classes: number of training fine classes (ArcFace's class centres); labels passed to the loss
            must use contiguous fine ids ``0 .. num_classes - 1``.
        embed_dim: the model's embedding width.

    Raises:
        ConfigError: every weight is 0, or a section's values are out of range.
    """
    losses: dict[str, EmbeddingLoss] = {}
    weights: dict[str, float] = {}
    for name in type(cfg).model_fields:
        section = getattr(cfg, name)
        if section.weight == 0:
            continue  # skipped entirely: no parameters, no compute
        try:
            losses[name] = LOSSES.create(name, cfg=section, num_classes=num_classes, embed_dim=embed_dim)
        except ValueError as e:
            raise ConfigError(f"loss.{name}: {e}") from None
        weights[name] = section.weight
    if not losses:
        names = ", ".join(f"loss.{n}.weight" for n in type(cfg).model_fields)
        raise ConfigError(f"loss: every loss has weight 0; set one of {names} above 0")
    return CombinedLoss(losses, weights)
