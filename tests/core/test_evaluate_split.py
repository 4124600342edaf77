"""``evaluate_retrieval`` split at its seams (issue 17) returns exactly what the unsplit function returned.

The reference is a frozen copy of the function from before the split (``evaluate_before_split.py``). Inputs
are random and cover every branch that moved: default and explicit ids (numeric and string, queries inside
and outside the gallery), group exclusion, one and two levels, skipped queries, small chunks, the exact-check
audit of an approximate index, sharding, domains and class names, and the K-above-gallery warning.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pytest
from evaluate_before_split import evaluate_retrieval_before_split

from ofgr_core.config import EvalConfig
from ofgr_core.retrieval import evaluate as ev
from ofgr_core.retrieval.evaluate import SplitResult, evaluate_retrieval
from ofgr_core.retrieval.shard import QueryShard


def _case(seed: int, nq: int = 90, ng: int = 160, d: int = 8, classes: int = 14) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    gl = rng.integers(0, classes, ng)
    ql = rng.integers(0, classes + 3, nq)  # some query classes have no gallery item: skipped queries
    g = centres[gl] + rng.normal(size=(ng, d))
    q = centres[ql % classes] + rng.normal(size=(nq, d))
    g[::7] = g[1::7][: len(g[::7])]  # exact duplicates: ties broken by id hash
    return {
        "q": q.astype(np.float32), "g": g.astype(np.float32),
        "ql": np.stack([ql, ql // 4], axis=1), "gl": np.stack([gl, gl // 4], axis=1),
        "groups_q": rng.integers(0, 25, nq), "groups_g": rng.integers(0, 25, ng),
        "domains": rng.choice(["sky", "road", "studio"], nq),
    }


def _same(got: SplitResult, ref: SplitResult) -> None:
    # repr-exact floats (json writes repr), NaN included
    assert json.dumps(got.block, sort_keys=True) == json.dumps(ref.block, sort_keys=True)
    assert got.query_ids.dtype == ref.query_ids.dtype and np.array_equal(got.query_ids, ref.query_ids)
    assert got.per_query.keys() == ref.per_query.keys()
    for lv, metrics in ref.per_query.items():
        assert got.per_query[lv].keys() == metrics.keys()
        for key, vals in metrics.items():
            assert got.per_query[lv][key].dtype == vals.dtype
            assert got.per_query[lv][key].tobytes() == vals.tobytes(), (lv, key)


def _both(*args: Any, **kwargs: Any) -> tuple[SplitResult, SplitResult]:
    with warnings.catch_warnings(record=True) as w_new:
        warnings.simplefilter("always")
        got = evaluate_retrieval(*args, **kwargs)
    with warnings.catch_warnings(record=True) as w_old:
        warnings.simplefilter("always")
        ref = evaluate_retrieval_before_split(*args, **kwargs)
    assert [(str(w.message), w.filename) for w in w_new] == [(str(w.message), w.filename) for w in w_old]
    return got, ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_split_is_bit_identical(seed: int) -> None:
    c = _case(seed)
    ids_g = np.array([f"item{i}" for i in range(160)])
    ids_q = np.concatenate([ids_g[:30], np.array([f"query{i}" for i in range(60)])])  # 30 queries in the gallery
    approx = {"type": "ivf_flat", "nlist": 6, "nprobe": 1}
    cases: list[tuple[dict[str, Any], EvalConfig]] = [
        ({}, EvalConfig(bootstrap=40, batch_size=16)),
        ({"query_ids": ids_q, "gallery_ids": ids_g, "query_domains": c["domains"], "class_names": {3: "three"}},
         EvalConfig(bootstrap=30, ks=[1, 3, 5])),
        ({"query_ids": ids_q, "gallery_ids": ids_g, "query_groups": c["groups_q"],
          "gallery_groups": c["groups_g"]}, EvalConfig(bootstrap=30, exclude_same_group=True, max_r=6)),
        ({"gallery_ids": np.arange(1000, 1160)}, EvalConfig(bootstrap=0, index={**approx, "exact_check": 25})),
        ({"query_groups": c["groups_q"], "gallery_groups": c["groups_g"]},
         EvalConfig(bootstrap=20, exclude_same_group=True, index={**approx, "exact_check": 10**6})),
    ]
    for kwargs, cfg in cases:
        _same(*_both(c["q"], c["g"], c["ql"], c["gl"], cfg=cfg, seed=seed, **kwargs))
    # one level, and the same array on both sides (leave-one-out by id)
    _same(*_both(c["g"], c["g"], c["gl"][:, 0], c["gl"][:, 0], query_ids=ids_g, gallery_ids=ids_g,
                 level_names=("fine",), cfg=EvalConfig(bootstrap=25), seed=seed))


def test_evaluate_split_warning_and_sharding_are_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _case(7, ng=40)
    got, ref = _both(c["q"], c["g"], c["ql"], c["gl"], cfg=EvalConfig(bootstrap=10, ks=[1, 64]))
    _same(got, ref)  # K=64 exceeds the 40-item gallery: the same warning, pointing at this file

    monkeypatch.setattr(ev, "_CHUNK_ELEMENTS", 64 * 8)  # many small chunks
    cfg = EvalConfig(bootstrap=30, index={"type": "ivf_flat", "nlist": 4, "nprobe": 1, "exact_check": 30})
    c = _case(8, nq=400)
    got = _sharded(evaluate_retrieval, c, cfg)
    ref = _sharded(evaluate_retrieval_before_split, c, cfg)
    _same(got, ref)


def _sharded(fn: Any, c: dict[str, Any], cfg: EvalConfig) -> SplitResult:
    """Two simulated ranks (no process group): each searches its chunks, the gather fills in the others."""
    parts: dict[int, dict[str, Any]] = {}

    class FakeShard(QueryShard):
        def all_gather(self, obj: Any) -> list[Any]:
            parts[self.rank] = obj
            if self.rank == 0:  # rank 1 has not run yet: run it to get its part
                fn(c["q"], c["g"], c["ql"], c["gl"], cfg=cfg, shard=FakeShard(1, 2))
            return [parts[0], parts[1]]

    result: SplitResult = fn(c["q"], c["g"], c["ql"], c["gl"], cfg=cfg, shard=FakeShard(0, 2))
    assert len(parts[0]["ranges"]) > 1 and len(parts[1]["ranges"]) > 1
    return result
