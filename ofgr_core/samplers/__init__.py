"""Batch samplers: ``create_sampler(cfg.sampler, labels, seed, rank, world_size)``."""

from ofgr_core.samplers.factory import SAMPLERS, create_sampler
from ofgr_core.samplers.hierarchical_pk import HierarchicalPKSampler

__all__ = ["SAMPLERS", "HierarchicalPKSampler", "create_sampler"]
