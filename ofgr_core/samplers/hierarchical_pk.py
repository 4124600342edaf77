"""Class-balanced hierarchical P x K batches: C coarse classes, P fine classes each, K images per fine."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from ofgr_core.common.errors import ConfigError, DataError


class HierarchicalPKSampler(Sampler[list[int]]):
    """Yields batches of dataset indices for ``DataLoader(batch_sampler=...)``.

    **Batch composition.** Each batch holds ``C`` distinct coarse classes; for each, a *group* of ``P``
    distinct fine classes of that coarse class; for each fine class, ``K`` images. Batch size is
    ``C * P * K`` except that a coarse class with fewer than ``P`` fine classes contributes all of them
    (its group is smaller), so batches can be smaller. A fine class with fewer than ``K`` images
    contributes every image once, topped up with images drawn uniformly *with replacement* from the same
    class; larger classes are drawn *without* replacement, cycling through a shuffled order of their images.

    **Coverage.** Sampling cycles through classes instead of drawing them at random. A *pass* shuffles the
    fine classes of every coarse class and cuts them into groups of ``P`` (the last group of a coarse
    class is filled up with other fine classes of it), so a pass holds every fine class at least once.
    Groups are scheduled into batches largest-remaining-first (the coarse classes with most groups left in
    the oldest unfinished pass go first, ties broken at random), which finishes a pass in the fewest
    batches possible: ``max(ceil(groups / C), max groups of one coarse class)``. When fewer than ``C``
    coarse classes have groups left, the next pass starts and fills the batch. Every epoch starts a fresh
    pass, so an epoch at least one pass long (the default) shows every fine class.

    **Reproducibility.** Epoch ``e`` is a function of ``(seed, e)`` only: call ``set_epoch(e)`` before
    iterating, as with ``DistributedSampler``. ``state_dict()`` / ``load_state_dict()`` record the epoch and
    the number of batches already consumed, and the next iteration continues the identical sequence.

    **Distributed.** All ranks generate the same global sequence; the global batch at step ``i`` is the
    ``world_size`` consecutive batches ``i * world_size .. i * world_size + world_size - 1`` and rank ``r``
    takes the ``r``-th of them. So every rank's batch is a complete ``C x P x K`` batch (the per-rank batch
    size is the configured one, global batch ``world_size`` times it), ranks never share a group within a
    step, and all ranks yield the same number of batches. With ``world_size=1`` the sequence is the same
    global sequence, so rank batches interleaved reproduce a single-process run.

    **Coarse-only images.** Rows whose fine id is negative (``-1``: fine label missing, coarse known) never
    form fine groups, so they are never anyone's fine positive. Each group of a coarse class is followed by
    ``coarse_only_k`` coarse-only images of that coarse class (cycled like the others), which the losses use
    with their coarse terms only. Coarse-only rows of a coarse class without any labelled fine class are
    never drawn (counted in ``unsampled_coarse_only``).

    Args:
        labels: ``(N, L)`` integer labels, column 0 the fine class (``-1`` for coarse-only rows), column 1
            the coarse class; each fine class must belong to one coarse class. A ``(N,)`` or ``(N, 1)``
            array puts every fine class in a single coarse class (a flat P x K sampler; use
            ``coarse_per_batch=1``).
        coarse_per_batch: ``C``, distinct coarse classes per batch.
        fine_per_coarse: ``P``, fine classes per coarse class.
        k: ``K``, images per fine class.
        batches_per_epoch: batches each rank yields per epoch. ``None``: enough for about one look at every
            image across ranks, ``N // (C * P * K * world_size)``, and never less than one pass.
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        rank: this process's rank.
        world_size: number of processes.
        coarse_only_k: coarse-only images per group; ``None`` = ``k``.
    """

    def __init__(
        self,
        labels: np.ndarray,
        coarse_per_batch: int,
        fine_per_coarse: int,
        k: int,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        coarse_only_k: int | None = None,
    ) -> None:
        labels = _checked(labels, coarse_per_batch, fine_per_coarse, k, rank, world_size)
        self.coarse_per_batch = coarse_per_batch
        self.fine_per_coarse = fine_per_coarse
        self.k = k
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_samples = len(labels)
        self.coarse_only_k = k if coarse_only_k is None else int(coarse_only_k)
        all_coarse = labels[:, 1] if labels.shape[1] > 1 else np.zeros(len(labels), dtype=np.int64)
        labelled = np.flatnonzero(labels[:, 0] >= 0)
        unlabelled = np.flatnonzero(labels[:, 0] < 0)
        if len(labelled) == 0:
            raise DataError("sampler labels: every row is coarse-only (no fine label); nothing to sample")
        self.num_coarse_only = len(unlabelled)

        fine_ids, fine = np.unique(labels[labelled, 0], return_inverse=True)
        coarse_col = all_coarse[labelled]
        pairs = np.unique(np.stack([fine, coarse_col], axis=1), axis=0)
        if len(pairs) != len(fine_ids):
            twice = pairs[np.flatnonzero(np.diff(pairs[:, 0]) == 0)[0], 0]
            parents = sorted(set(coarse_col[fine == twice].tolist()))
            raise DataError(
                f"sampler labels: fine class {fine_ids[twice]} has several coarse classes {parents}; "
                "every fine class needs exactly one"
            )
        coarse_ids, coarse_of_fine = np.unique(pairs[:, 1], return_inverse=True)
        if len(coarse_ids) < coarse_per_batch:
            raise ConfigError(
                f"sampler.coarse_per_batch: {coarse_per_batch} but the training labels have only "
                f"{len(coarse_ids)} coarse classes; set it to at most {len(coarse_ids)}"
            )
        order = labelled[np.argsort(fine, kind="stable")]
        self._images = np.split(order, np.cumsum(np.bincount(fine))[:-1])  # per fine class (dense id)
        dense = np.searchsorted(coarse_ids, all_coarse[unlabelled])
        known = (dense < len(coarse_ids)) & (coarse_ids[np.minimum(dense, len(coarse_ids) - 1)]
                                             == all_coarse[unlabelled])
        self._coarse_only = [unlabelled[known & (dense == c)] for c in range(len(coarse_ids))]
        self.unsampled_coarse_only = int((~known).sum())
        self._fines = [np.flatnonzero(coarse_of_fine == c) for c in range(len(coarse_ids))]
        self._groups = np.array([math.ceil(len(f) / fine_per_coarse) for f in self._fines])
        self.num_fine = len(fine_ids)
        self.num_coarse = len(coarse_ids)
        self.batches_per_pass = max(math.ceil(self._groups.sum() / coarse_per_batch), int(self._groups.max()))

        if batches_per_epoch is None:
            by_images = self.num_samples // (self.batch_size * world_size)
            batches_per_epoch = max(by_images, math.ceil(self.batches_per_pass / world_size))
        elif batches_per_epoch < 1:
            raise ConfigError(f"sampler.batches_per_epoch: must be >= 1, got {batches_per_epoch}")
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0
        self._consumed = 0
        self._resume: tuple[int, int] | None = None

    @property
    def batch_size(self) -> int:
        """Nominal per-rank batch size ``C * P * K`` (smaller when a coarse class has fewer than P fines)."""
        return self.coarse_per_batch * self.fine_per_coarse * self.k

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration yields (its shuffles derive from ``(seed, epoch)``)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        self._consumed = start
        batches = islice(self._global_batches(self.epoch), self.rank, None, self.world_size)
        for i, batch in enumerate(islice(batches, self.batches_per_epoch)):
            if i >= start:
                self._consumed = i + 1
                yield batch

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where the sequence stands: epoch and batches consumed in it.

        Args:
            batches_done: batches of the current epoch the training loop has finished. Pass it when a
                ``DataLoader`` prefetches (it draws batches ahead of training); ``None`` counts the batches
                this sampler has yielded.
        """
        return {
            "epoch": self.epoch,
            "batch": self._consumed if batches_done is None else int(batches_done),
            "seed": self.seed,
            "world_size": self.world_size,
            "layout": self._layout(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: sets the epoch; its next iteration skips the consumed batches.

        A state saved with another ``world_size`` resumes at the same point of the global sequence,
        rounded down to a whole step of the new world size.
        """
        if state.get("seed") != self.seed or state.get("layout") != self._layout():
            raise ValueError(
                "sampler state was saved with another seed, C/P/K or label set; "
                f"saved {state.get('seed')}/{state.get('layout')}, now {self.seed}/{self._layout()}"
            )
        batch = int(state["batch"]) * int(state.get("world_size", 1)) // self.world_size
        self.epoch = int(state["epoch"])
        self._consumed = batch
        self._resume = (self.epoch, batch)

    def _layout(self) -> list[int]:
        layout = [self.coarse_per_batch, self.fine_per_coarse, self.k, self.num_samples, self.num_fine]
        if self.num_coarse_only:
            layout += [self.coarse_only_k, self.num_coarse_only]
        return layout

    # ------------------------------------------------------------------------------------------ sequence
    def _global_batches(self, epoch: int) -> Iterator[list[int]]:
        """The endless batch sequence of one epoch, shared by all ranks."""
        rng = np.random.default_rng([self.seed % 2**63, epoch])
        images = _ImageCycler(self._images, self.k, rng)
        coarse_only = _ImageCycler(self._coarse_only, self.coarse_only_k, rng) if self.coarse_only_k else None
        queues: list[deque[np.ndarray]] = [deque() for _ in self._fines]
        head_pass = np.zeros(self.num_coarse, dtype=np.int64)  # pass of each queue's next group
        head_left = np.zeros(self.num_coarse, dtype=np.int64)  # groups left in that pass
        passes = 0
        while True:
            while np.count_nonzero(head_left) < self.coarse_per_batch:
                for c, fines in enumerate(self._fines):
                    groups = _chunk(fines, self.fine_per_coarse, rng)
                    if not queues[c]:
                        head_pass[c], head_left[c] = passes, len(groups)
                    queues[c].extend(groups)
                passes += 1
            # oldest pass first, then most groups left in it, then random
            ready = head_left > 0
            order = np.lexsort((rng.random(self.num_coarse), -head_left, np.where(ready, head_pass, passes)))
            batch = []
            for c in order[: self.coarse_per_batch]:
                for f in queues[c].popleft():
                    batch.append(images.take(f))
                if coarse_only is not None and len(self._coarse_only[c]):
                    batch.append(coarse_only.take(c))
                head_left[c] -= 1
                if head_left[c] == 0 and queues[c]:
                    head_pass[c] += 1
                    head_left[c] = self._groups[c]
            yield np.concatenate(batch).tolist()


def _chunk(fines: np.ndarray, p: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled groups of ``p`` distinct fine classes covering ``fines``; the last one filled up if short."""
    perm = rng.permutation(fines)
    if len(perm) <= p:
        return [perm]
    groups = [perm[i : i + p] for i in range(0, len(perm), p)]
    short = p - len(groups[-1])
    if short:
        others = perm[: len(perm) - len(groups[-1])]
        groups[-1] = np.concatenate([groups[-1], rng.choice(others, short, replace=False)])
    return groups


class _ImageCycler:
    """K images of a fine class at a time, cycling through a shuffled order of its images."""

    def __init__(self, images: list[np.ndarray], k: int, rng: np.random.Generator) -> None:
        self.images = images
        self.k = k
        self.rng = rng
        self.order: dict[int, np.ndarray] = {}
        self.cursor: dict[int, int] = {}

    def take(self, fine: int) -> np.ndarray:
        pool = self.images[fine]
        if len(pool) <= self.k:
            # every image once, then repeats drawn with replacement
            extra = self.rng.choice(pool, self.k - len(pool), replace=True)
            return np.concatenate([self.rng.permutation(pool), extra])
        order = self.order.get(fine)
        if order is None:
            order = self.rng.permutation(pool)
            self.cursor[fine] = 0
        at = self.cursor[fine]
        if at + self.k <= len(order):
            self.order[fine], self.cursor[fine] = order, at + self.k
            return order[at : at + self.k]
        # wrap around: a new shuffle, with the images still owed from the old one moved to its end so that
        # no image appears twice in this draw
        head = order[at:]
        fresh = self.rng.permutation(pool)
        owed = np.isin(fresh, head)
        fresh = np.concatenate([fresh[~owed], fresh[owed]])
        need = self.k - len(head)
        self.order[fine], self.cursor[fine] = fresh, need
        return np.concatenate([head, fresh[:need]])


def _checked(labels: np.ndarray, coarse_per_batch: int, fine_per_coarse: int, k: int, rank: int,
             world_size: int) -> np.ndarray:
    """``labels`` as an (N, L) integer array, after checking it and the sampler's arguments."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a non-empty (N, L) integer array, got {labels.dtype} {labels.shape}"
        )
    for name, value in (
        ("coarse_per_batch", coarse_per_batch),
        ("fine_per_coarse", fine_per_coarse),
        ("k", k),
    ):
        if value < 1:
            raise ConfigError(f"sampler.{name}: must be >= 1, got {value}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return labels
