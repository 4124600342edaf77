"""``evaluate_coarse_first`` split at its seams (issue 17) returns exactly what the unsplit function returned.

The reference is a frozen copy from before the split (``coarse_first_before_split.py``). Random inputs cover
both coarse decisions, group exclusion, string ids, query and gallery masks (queries inside and outside the
gallery), queries without a relevant item, the R cap and several query blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from coarse_first_before_split import evaluate_coarse_first_before_split

from ofgr_core.retrieval import coarse_first as cf
from ofgr_core.retrieval.coarse_first import evaluate_coarse_first


def _same(got: tuple[Any, ...], ref: tuple[Any, ...]) -> None:
    ids, flat, first, pred, true = got
    r_ids, r_flat, r_first, r_pred, r_true = ref
    for a, b in ((ids, r_ids), (pred, r_pred), (true, r_true)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    for a, b in ((flat, r_flat), (first, r_first)):
        assert a.per_query.keys() == b.per_query.keys()
        for key, vals in b.per_query.items():
            assert a.per_query[key].dtype == vals.dtype and a.per_query[key].tobytes() == vals.tobytes(), key


@pytest.mark.parametrize("method", ["knn", "centroid"])
@pytest.mark.parametrize("seed", [0, 1])
def test_coarse_first_split_is_bit_identical(method: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cf, "_BLOCK_ELEMENTS", 37 * 150)  # several query blocks, an uneven last one
    rng = np.random.default_rng(seed)
    n, d = 260, 12
    fine = rng.integers(0, 30, n)
    x = rng.normal(size=(30, d))[fine] + 0.8 * rng.normal(size=(n, d))
    x[::9] = x[1::9][: len(x[::9])]  # exact duplicates: ties
    fine_names = np.array([f"f{v}" for v in fine])
    coarse = np.array([f"c{v // 5}" for v in fine])
    ids = np.array([f"id{i}" for i in rng.permutation(n)])
    qmask = rng.random(n) < 0.5
    gmask = ~qmask | (rng.random(n) < 0.3)
    groups = rng.integers(0, 40, n)
    cases: list[dict[str, Any]] = [
        {},
        {"ids": ids, "query_mask": qmask, "gallery_mask": gmask, "max_r": 5, "ks": (1, 3)},
        {"groups": groups, "k_vote": 3},
        {"ids": ids, "groups": groups.astype(str), "query_mask": qmask, "gallery_mask": gmask, "k_vote": 1},
    ]
    for kwargs in cases:
        got = evaluate_coarse_first(x, fine_names, coarse, method=method, **kwargs)
        ref = evaluate_coarse_first_before_split(x, fine_names, coarse, method=method, **kwargs)
        _same(got, ref)
