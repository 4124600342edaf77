"""Metric-learning losses: ``create_loss(cfg.loss, num_classes, embed_dim)`` -> ``CombinedLoss``."""

from ofgr_core.losses.arcface import ArcFaceLoss
from ofgr_core.losses.base import EmbeddingLoss
from ofgr_core.losses.combined import CombinedLoss
from ofgr_core.losses.factory import LOSSES, create_loss
from ofgr_core.losses.hierarchical_triplet import MINING_MODES, HierarchicalTripletLoss
from ofgr_core.losses.subcenter_arcface import SubCenterArcFaceLoss

__all__ = [
    "LOSSES",
    "MINING_MODES",
    "ArcFaceLoss",
    "CombinedLoss",
    "EmbeddingLoss",
    "HierarchicalTripletLoss",
    "SubCenterArcFaceLoss",
    "create_loss",
]
