"""``create_sampler``: batch samplers by ``sampler.type``."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

from ofgr_core.config import SamplerConfig
from ofgr_core.registry import Registry
from ofgr_core.samplers.hierarchical_pk import HierarchicalPKSampler

SAMPLERS: Registry[Sampler[list[int]]] = Registry("sampler")


def create_sampler(
    cfg: SamplerConfig, labels: np.ndarray, seed: int, rank: int = 0, world_size: int = 1
) -> Sampler[list[int]]:
    """A batch sampler over the training set (pass it as ``DataLoader(batch_sampler=...)``).

    Args:
        cfg: the ``sampler`` config section.
        labels: ``(N, L)`` training labels (column 0 fine, ``-1`` for coarse-only rows; column 1 coarse),
            indexed like the dataset.
        seed: the run's seed.
        rank: this process's rank.
        world_size: number of processes; each rank yields its own full batches.
    """
    return SAMPLERS.create(cfg.type, cfg=cfg, labels=labels, seed=seed, rank=rank, world_size=world_size)


@SAMPLERS.register("hierarchical_pk")
def _hierarchical_pk(
    cfg: SamplerConfig, labels: np.ndarray, seed: int, rank: int, world_size: int
) -> HierarchicalPKSampler:
    return HierarchicalPKSampler(
        labels,
        coarse_per_batch=cfg.coarse_per_batch,
        fine_per_coarse=cfg.fine_per_coarse,
        k=cfg.k,
        batches_per_epoch=cfg.batches_per_epoch,
        seed=seed,
        rank=rank,
        world_size=world_size,
        coarse_only_k=cfg.coarse_only_k,
    )
