"""Evaluation at scale: a float16 gallery searched block by block equals the float32 search of the same
values; sharded evaluation equals one process; approximate evaluation reports its measured error."""

from __future__ import annotations

import numpy as np
import pytest

from ofgr_core.config import EvalConfig
from ofgr_core.retrieval import index as index_mod
from ofgr_core.retrieval.evaluate import run_split


def _data(n: int = 600, d: int = 16, classes: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    x = centres[fine] + 0.9 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.stack([fine, fine // 5], axis=1)


def test_float16_gallery_blocked_equals_float32_of_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    x, labels = _data()
    half = x.astype(np.float16)
    cfg = EvalConfig(bootstrap=50)
    ref = run_split(half.astype(np.float32), labels, cfg=cfg)
    monkeypatch.setattr(index_mod, "HALF_BLOCK_ROWS", 97)  # many blocks, uneven last one
    got = run_split(half, labels, cfg=cfg)
    assert got.block == ref.block
    for lv in ref.per_query:
        for key in ref.per_query[lv]:
            assert np.array_equal(got.per_query[lv][key], ref.per_query[lv][key])


def test_blocked_knn_equals_one_pass_with_ties() -> None:
    import faiss

    rng = np.random.default_rng(1)
    g = rng.integers(-2, 3, size=(300, 8)).astype(np.float32)  # many exact ties
    q = rng.integers(-2, 3, size=(20, 8)).astype(np.float32)
    d1, i1 = index_mod._knn_inner_product(faiss, q, g, 25)
    d2, i2 = index_mod._knn_blocked(lambda a, b, k: index_mod._knn_inner_product(faiss, a, b, k), q,
                                    g.astype(np.float16), 25, 64)
    assert np.array_equal(d1, d2)  # the same scores as one exact pass
    for r in range(len(q)):  # and within a tie, rows in order (a stable sort of the full score row)
        assert list(i2[r]) == list(np.argsort(-(g @ q[r]), kind="stable")[:25])


def test_sharded_chunks_gathered_equal_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two simulated ranks (no process group): each searches its chunks, the gather fills in the others."""
    from ofgr_core.retrieval import evaluate as ev
    from ofgr_core.retrieval.shard import QueryShard

    x, labels = _data(n=700)
    cfg = EvalConfig(bootstrap=100, batch_size=64, index={"type": "ivf_flat", "nlist": 8, "nprobe": 2,
                                                          "exact_check": 50})
    monkeypatch.setattr(ev, "_CHUNK_ELEMENTS", 64 * 8)  # many small chunks
    ref = run_split(x, labels, cfg=cfg)
    mine: dict[int, dict] = {}

    class FakeShard(QueryShard):
        def all_gather(self, obj):  # noqa: ANN001, ANN202
            mine[self.rank] = obj
            if self.rank == 0:  # rank 1 has not run yet: run it to get its part
                run_split(x, labels, cfg=cfg, shard=FakeShard(1, 2))
            return [mine[0], mine[1]]

    got = run_split(x, labels, cfg=cfg, shard=FakeShard(0, 2))
    assert len(mine[0]["ranges"]) > 2 and len(mine[1]["ranges"]) > 2
    assert got.block == ref.block
    for lv in ref.per_query:
        for key in ref.per_query[lv]:
            assert np.array_equal(got.per_query[lv][key], ref.per_query[lv][key])


def test_approximate_evaluation_reports_its_error_against_exact() -> None:
    x, labels = _data(n=900, classes=60)
    exact = run_split(x, labels, cfg=EvalConfig(bootstrap=0))
    assert exact.block["index"]["exact"] is True and "approximation" not in exact.block
    ivf = {"type": "ivf_flat", "nlist": 30, "nprobe": 1}
    # every query re-searched exactly: the estimate is the exact number and the interval has zero width
    full = run_split(x, labels, cfg=EvalConfig(bootstrap=0, index={**ivf, "exact_check": 10**6})).block
    assert full["index"]["exact"] is False
    for key in ("recall@1", "map@r"):
        d = full["approximation"]["difference"]["fine"][key]
        assert d["mean"] == pytest.approx(full["fine"][key] - exact.block["fine"][key], abs=1e-12)
        assert d["ci"][0] == d["ci"][1] == d["mean"]
        assert full["approximation"]["exact_estimate"]["fine"][key] == pytest.approx(exact.block["fine"][key],
                                                                                      abs=1e-12)
    assert full["approximation"]["difference"]["fine"]["recall@1"]["mean"] < 0  # nprobe 1 loses neighbours
    # a 300-query sample: the interval is wide enough to hold the true difference
    part = run_split(x, labels, cfg=EvalConfig(bootstrap=0, index={**ivf, "exact_check": 300})).block
    appr = part["approximation"]
    assert appr["sample_queries"] == 300
    true = part["fine"]["map@r"] - exact.block["fine"]["map@r"]
    lo, hi = appr["difference"]["fine"]["map@r"]["ci"]
    assert lo < hi and lo <= true <= hi
    assert appr["max_abs_error"] >= max(abs(lo), abs(hi))
