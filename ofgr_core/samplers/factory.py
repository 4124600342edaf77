"""``create_sampler``: batch samplers by ``sampler.type``."""

from __future__ import annotations

import warnings

import numpy as np
from torch.utils.data import Sampler

from ofgr_core.common.registry import Registry
from ofgr_core.config import SamplerConfig
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


def adapt_to_coarse_classes(cfg: SamplerConfig, labels: np.ndarray) -> SamplerConfig:
    """C x P x K for data with fewer coarse classes than ``coarse_per_batch`` (e.g. a flat image folder has
    one): keep the batch size with more fine classes per coarse class, and say so (a ``UserWarning``)."""
    n_coarse = len(np.unique(labels[:, 1])) if labels.ndim > 1 and labels.shape[1] > 1 else 1
    if n_coarse >= cfg.coarse_per_batch:
        return cfg
    per_batch = cfg.coarse_per_batch * cfg.fine_per_coarse
    adapted = cfg.model_copy(update={"coarse_per_batch": n_coarse, "fine_per_coarse": max(1, per_batch // n_coarse)})
    warnings.warn(
        f"training data has {n_coarse} coarse class(es) < sampler.coarse_per_batch={cfg.coarse_per_batch}: "
        f"sampling C={adapted.coarse_per_batch} x P={adapted.fine_per_coarse} x K={adapted.k}",
        stacklevel=3,
    )
    return adapted


@SAMPLERS.register("hierarchical_pk")
def _hierarchical_pk(
    cfg: SamplerConfig, labels: np.ndarray, seed: int, rank: int, world_size: int
) -> HierarchicalPKSampler:
    cfg = adapt_to_coarse_classes(cfg, labels)
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
