"""Hierarchical P x K sampler: composition, coverage, determinism, resume, distributed splitting."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.config import SamplerConfig
from ofgr_core.samplers import HierarchicalPKSampler, create_sampler


def _labels(seed: int = 0, n_coarse: int = 5) -> np.ndarray:
    """Imbalanced: 1-6 fine classes per coarse class, 1-12 images per fine class, sparse shuffled ids."""
    rng = np.random.default_rng(seed)
    rows, fine = [], 0
    for coarse in range(n_coarse):
        for _ in range(rng.integers(1, 7)):
            rows += [(3 * fine + 7, 10 * coarse)] * int(rng.integers(1, 13))
            fine += 1
    return np.array(rows)[rng.permutation(len(rows))]


def _check_batch(batch: list[int], labels: np.ndarray, c: int, p: int, k: int) -> None:
    rows = labels[batch]
    per_coarse: dict[int, set[int]] = {}
    for fine, coarse in rows:
        per_coarse.setdefault(int(coarse), set()).add(int(fine))
    assert len(per_coarse) == c
    for coarse, fines in per_coarse.items():
        available = np.unique(labels[labels[:, 1] == coarse, 0])
        assert len(fines) == min(p, len(available))
    counts = Counter(rows[:, 0].tolist())
    assert set(counts.values()) == {k}
    for fine in counts:
        chosen = [i for i in batch if labels[i, 0] == fine]
        pool = np.flatnonzero(labels[:, 0] == fine)
        if len(pool) >= k:
            assert len(set(chosen)) == k  # without replacement
        else:
            assert set(chosen) == set(pool.tolist())  # every image, then repeats


@pytest.mark.parametrize(("c", "p", "k"), [(2, 3, 4), (3, 2, 2), (1, 4, 5), (5, 1, 3)])
def test_batch_composition(c, p, k):
    labels = _labels(1)
    sampler = HierarchicalPKSampler(labels, c, p, k, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        _check_batch(batch, labels, c, p, k)


def test_default_length_and_explicit_length():
    labels = _labels(2)
    sampler = HierarchicalPKSampler(labels, 2, 2, 2, seed=0)
    assert len(sampler) == max(len(labels) // 8, sampler.batches_per_pass)
    assert sampler.batch_size == 8
    assert len(list(HierarchicalPKSampler(labels, 2, 2, 2, batches_per_epoch=3))) == 3


def test_seed_and_epoch_determine_the_sequence():
    labels = _labels(3)
    a, b = (HierarchicalPKSampler(labels, 2, 2, 3, seed=7) for _ in range(2))
    epoch0 = list(a)
    assert list(b) == epoch0 and list(a) == epoch0  # without set_epoch an epoch repeats
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != epoch0
    assert list(HierarchicalPKSampler(labels, 2, 2, 3, seed=8)) != epoch0


@pytest.mark.parametrize("seed", range(6))
def test_every_fine_class_appears_within_one_pass(seed):
    labels = _labels(seed, n_coarse=4 + seed)
    fines = set(labels[:, 0].tolist())
    for c, p in [(2, 2), (3, 4), (4, 1)]:
        sampler = HierarchicalPKSampler(labels, c, p, 2, seed=seed)
        tight = HierarchicalPKSampler(labels, c, p, 2, batches_per_epoch=sampler.batches_per_pass, seed=seed)
        for epoch in range(3):
            for s in (sampler, tight):
                s.set_epoch(epoch)
                seen = {int(labels[i, 0]) for batch in s for i in batch}
                assert seen == fines, (c, p, epoch, len(s))


def test_resume_continues_the_identical_sequence():
    labels = _labels(4)
    first = HierarchicalPKSampler(labels, 2, 3, 2, seed=3)
    first.set_epoch(2)
    expected = list(first)
    it = iter(first)
    consumed = [next(it) for _ in range(5)]
    assert consumed == expected[:5]
    state = first.state_dict()
    assert state["epoch"] == 2 and state["batch"] == 5
    assert first.state_dict(batches_done=4)["batch"] == 4  # what a prefetching loader would pass

    resumed = HierarchicalPKSampler(labels, 2, 3, 2, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the training loop's usual call before iterating keeps the resume point
    assert list(resumed) == expected[5:]
    for s in (first, resumed):
        s.set_epoch(3)
    assert list(resumed) == list(first)


def test_resume_rejects_another_configuration():
    labels = _labels(4)
    state = HierarchicalPKSampler(labels, 2, 3, 2, seed=3).state_dict()
    with pytest.raises(ValueError, match="another seed, C/P/K or label set"):
        HierarchicalPKSampler(labels, 2, 2, 2, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="another seed"):
        HierarchicalPKSampler(labels, 2, 3, 2, seed=4).load_state_dict(state)


def test_distributed_ranks_split_the_global_sequence():
    labels = _labels(5)
    world = 3
    ranks = [HierarchicalPKSampler(labels, 2, 2, 2, seed=1, rank=r, world_size=world) for r in range(world)]
    for s in ranks:
        s.set_epoch(4)
    per_rank = [list(s) for s in ranks]
    n = len(ranks[0])
    assert all(len(s) == n and len(b) == n for s, b in zip(ranks, per_rank, strict=True))
    assert n == max(len(labels) // (8 * world), -(-ranks[0].batches_per_pass // world))

    single = HierarchicalPKSampler(labels, 2, 2, 2, batches_per_epoch=n * world, seed=1)
    single.set_epoch(4)
    interleaved = [per_rank[r][i] for i in range(n) for r in range(world)]
    assert interleaved == list(single)
    for step in zip(*per_rank, strict=True):
        assert len({tuple(b) for b in step}) == world  # each rank its own groups
        for batch in step:
            _check_batch(batch, labels, 2, 2, 2)


def test_resume_on_another_world_size_keeps_the_global_position():
    labels = _labels(5)
    two = HierarchicalPKSampler(labels, 2, 2, 2, batches_per_epoch=6, seed=1, rank=1, world_size=2)
    state = two.state_dict(batches_done=3)  # 6 global batches done
    one = HierarchicalPKSampler(labels, 2, 2, 2, batches_per_epoch=12, seed=1)
    expected = list(one)
    one.load_state_dict(state)
    assert list(one) == expected[6:]


def test_works_as_a_dataloader_batch_sampler():
    labels = _labels(6)
    dataset = TensorDataset(torch.arange(len(labels)), torch.from_numpy(labels))
    sampler = create_sampler(SamplerConfig(coarse_per_batch=2, fine_per_coarse=2, k=3), labels, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler)
    assert len(loader) == len(sampler)
    for index, batch_labels in loader:
        assert torch.equal(batch_labels, torch.from_numpy(labels)[index])
        assert len(index) <= 12


def test_label_and_config_errors():
    labels = _labels(0, n_coarse=3)
    with pytest.raises(ConfigError, match="sampler.coarse_per_batch: 4 but the training labels have only 3"):
        HierarchicalPKSampler(labels, 4, 2, 2)
    bad = labels.copy()
    bad[0, 1] = 999
    with pytest.raises(DataError, match="has several coarse classes"):
        HierarchicalPKSampler(bad, 2, 2, 2)
    with pytest.raises(ConfigError, match="unknown sampler 'pk'"):
        create_sampler(SamplerConfig(type="pk"), labels, seed=0)
    flat = HierarchicalPKSampler(labels[:, 0], 1, 3, 2)  # one column: a flat P x K sampler
    for batch in flat:
        assert len(set(labels[batch, 0].tolist())) == 3
