"""``create_sampler``: batch samplers by ``sampler.type``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from ofgr_core.common.registry import Registry
from ofgr_core.config import SamplerConfig
from ofgr_core.samplers.hierarchical_pk import HierarchicalPKSampler


class BatchSampler(Protocol):
    """What the training loop needs of a batch sampler: batches of dataset indices per epoch, and a state
    that resumes it exactly (``state_dict(batches_done=n)`` after ``n`` batches of the current epoch)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[list[int]]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


SAMPLERS: Registry[BatchSampler] = Registry("sampler")


def create_sampler(
    cfg: SamplerConfig, labels: np.ndarray, seed: int, rank: int = 0, world_size: int = 1
) -> BatchSampler:
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
