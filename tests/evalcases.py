"""Leave-one-out evaluation problems shared by the tests of the faster all-vs-all paths (``index.symmetric_knn``,
``ivf_lists.ivf_knn_by_list``), which must give the numbers of the per-chunk search, and the check that they do.

Two kinds of data. Unit vectors on a 1/32 grid have dot products that float32 holds exactly, so every BLAS
agrees on every score: there the equality is guaranteed, and the data carry many exact ties (duplicates, and
distinct vectors with equal products). Gaussian vectors check the ordinary case, where a score may differ in its
last bit between two GEMM blockings (faiss's own scores do between query chunk sizes).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from ofgr_core.retrieval.evaluate import SplitResult


def on_grid(u: np.ndarray, rng: np.random.Generator, scale: int = 32, tol: float = 1.5e-3) -> np.ndarray:
    """Rows of ``u`` moved to the 1/``scale`` grid with norm within ``tol`` of 1 (kept as they are, not
    re-normalised).

    Dot products of such vectors are multiples of 1/scale**2 that float32 holds exactly, whatever the order of
    the sums. ``tol=0``: norm exactly 1 and largest component exactly 1/2 in magnitude, so that normalising a
    row (``index.unit_rows``: divided by its peak, then by its norm, both powers of two) leaves it unchanged, as
    an index built over them holds it.
    """
    v = np.rint(u / np.linalg.norm(u, axis=1, keepdims=True) * scale).astype(np.int64)
    lo, hi = scale**2 * (1 - tol), scale**2 * (1 + tol)
    cap = scale // 2 if tol == 0 else scale
    for row in v:
        if tol == 0:
            peak = int(np.argmax(np.abs(row)))
            np.clip(row, -cap, cap, out=row)
            row[peak] = cap if row[peak] >= 0 else -cap
        while not lo <= (row**2).sum() <= hi:
            j = rng.integers(len(row))
            if tol == 0 and j == peak:
                continue
            step = -np.sign(row[j]) if (row**2).sum() > hi else (np.sign(row[j]) or 1)
            if abs(row[j] + step) <= cap:
                row[j] += step
    return v / scale


def exact_case(seed: int, n: int = 600, d: int = 16, classes: int = 40, tol: float = 1.5e-3) -> dict[str, Any]:
    """Clustered unit vectors with exact products (many ties), duplicates, groups, string ids; norms within
    ``tol`` of 1 (``on_grid``)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    fine = rng.integers(0, classes, n)
    x = on_grid(centres[fine] + 0.8 * rng.normal(size=(n, d)), rng, tol=tol)
    dup = len(x[4::9])
    x[::9][:dup] = x[4::9]  # exact duplicates across rows far apart: ties straddling the k-th place
    fine[::9][:dup] = fine[4::9]
    return {"x": x.astype(np.float32), "labels": np.stack([fine, fine // 5], axis=1),
            "ids": np.array([f"img{i:04d}" for i in rng.permutation(n)]), "groups": rng.integers(0, 60, n)}


def gaussian_case(seed: int, n: int = 700, d: int = 24, classes: int = 35) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    fine = rng.integers(0, classes, n)
    x = centres[fine] + 1.2 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return {"x": x.astype(np.float32), "labels": np.stack([fine, fine // 5], axis=1),
            "ids": np.arange(n) * 7 + 3, "groups": rng.integers(0, 80, n)}


def assert_same(got: SplitResult, ref: SplitResult) -> None:
    """Bit for bit: the block (repr-exact floats, as json writes them), query ids and every per-query value."""
    assert json.dumps(got.block, sort_keys=True) == json.dumps(ref.block, sort_keys=True)
    assert got.query_ids.dtype == ref.query_ids.dtype and np.array_equal(got.query_ids, ref.query_ids)
    assert got.per_query.keys() == ref.per_query.keys()
    for lv, metrics in ref.per_query.items():
        assert got.per_query[lv].keys() == metrics.keys()
        for key, vals in metrics.items():
            assert got.per_query[lv][key].tobytes() == vals.tobytes(), (lv, key)


class CallSpy:
    """Counts the calls of ``module.name`` (so a test knows which search path ran), calling the real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
        self.calls = 0
        real = getattr(module, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
