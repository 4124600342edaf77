"""Batch samplers: ``create_sampler(cfg.sampler, labels, seed, rank, world_size)``."""

from ofgr_core.samplers.factory import SAMPLERS, BatchSampler, create_sampler
from ofgr_core.samplers.hierarchical_pk import HierarchicalPKSampler

__all__ = ["SAMPLERS", "BatchSampler", "HierarchicalPKSampler", "create_sampler"]
