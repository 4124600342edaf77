"""Coarse-first retrieval: equal to flat with one coarse class, better when coarse votes are informative."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ofgr_core.common.errors import DataError
from ofgr_core.retrieval.coarse_first import coarse_first_for_run, evaluate_coarse_first
from ofgr_core.retrieval.evaluate import run_split


def _world(seed: int = 0, n_coarse: int = 4, fine_per: int = 4, per_class: int = 6, coarse_sep: float = 3.0,
           fine_sep: float = 0.6, noise: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = 16
    xs, fine, coarse = [], [], []
    for c in range(n_coarse):
        cc = rng.normal(size=d) * coarse_sep
        for f in range(fine_per):
            fc = cc + rng.normal(size=d) * fine_sep
            xs.append(fc + rng.normal(size=(per_class, d)) * noise)
            fine += [f"c{c}f{f}"] * per_class
            coarse += [f"c{c}"] * per_class
    return np.concatenate(xs).astype(np.float32), np.asarray(fine), np.asarray(coarse)


@pytest.mark.parametrize("method", ["knn", "centroid"])
def test_equals_flat_with_one_coarse_class(method: str) -> None:
    x, fine, _ = _world(seed=1)
    one = np.full(len(fine), "vehicle")
    ids, flat, cf, pred, true = evaluate_coarse_first(x, fine, one, method=method)
    assert set(pred) == {"vehicle"} and len(ids) == len(x)
    assert flat.per_query.keys() == cf.per_query.keys()
    for key in flat.per_query:
        np.testing.assert_array_equal(flat.per_query[key], cf.per_query[key], err_msg=key)


def test_flat_equals_the_evaluation_engine() -> None:
    x, fine, coarse = _world(seed=2)
    _, flat, _, _, _ = evaluate_coarse_first(x, fine, coarse, ks=(1, 2, 4))
    codes = np.stack([np.unique(fine, return_inverse=True)[1], np.unique(coarse, return_inverse=True)[1]], 1)
    from ofgr_core.config import EvalConfig

    ref = run_split(x, codes, cfg=EvalConfig(ks=[1, 2, 4], bootstrap=0))
    for level in ("fine", "coarse"):
        for metric in ("recall@1", "recall@4", "map@r"):
            np.testing.assert_allclose(flat.per_query[f"{level}_{metric}"], ref.per_query[level][metric])


def test_informative_coarse_votes_change_and_help_the_ranking() -> None:
    # 2-D toy: query q (class A1) has a B item as its single nearest neighbour, but A items dominate its
    # 5 nearest neighbours; coarse-first puts every A item above that B item.
    x = np.array([
        [1.0, 0.00],   # q   A1
        [1.0, 0.02],   # A1 (the fine match, 3rd nearest overall)
        [1.0, 0.01],   # B1 outlier: nearest to q
        [1.0, -0.03],  # A2
        [1.0, 0.04],   # A2
        [1.0, -0.05],  # A3
        [0.0, 1.0],    # B1
        [0.1, 1.0],    # B2
    ], dtype=np.float32)
    fine = np.array(["A1", "A1", "B1", "A2", "A2", "A3", "B1", "B2"])
    coarse = np.array(["A", "A", "B", "A", "A", "A", "B", "B"])
    qmask = np.zeros(8, bool)
    qmask[0] = True
    ids, flat, cf, pred, true = evaluate_coarse_first(x, fine, coarse, query_mask=qmask, ks=(1, 2), k_vote=5)
    assert list(pred) == ["A"] and list(true) == ["A"]
    assert flat.per_query["coarse_recall@1"][0] == 0.0 and cf.per_query["coarse_recall@1"][0] == 1.0
    assert flat.per_query["fine_recall@1"][0] == 0.0 and cf.per_query["fine_recall@1"][0] == 1.0
    # the ordering differs, so the hierarchical ranking is not the flat one in disguise
    assert flat.per_query["fine_recall@2"][0] == 1.0


def test_on_a_clustered_world_coarse_first_keeps_coarse_hits() -> None:
    x, fine, coarse = _world(seed=3, coarse_sep=2.0, fine_sep=0.4, noise=1.2)
    _, flat, cf, pred, true = evaluate_coarse_first(x, fine, coarse, ks=(1, 4, 8))
    acc = float(np.mean(pred == true))
    assert acc > 0.8
    # once the coarse decision is right, the top ranks are all of the right coarse class
    assert cf.per_query["coarse_recall@8"].mean() >= acc - 1e-9
    assert not np.array_equal(flat.per_query["coarse_map@r"], cf.per_query["coarse_map@r"])
    assert cf.per_query["coarse_map@r"].mean() > flat.per_query["coarse_map@r"].mean()


def test_bad_method_and_shapes() -> None:
    x, fine, coarse = _world()
    with pytest.raises(DataError, match="method must be one of"):
        evaluate_coarse_first(x, fine, coarse, method="vote")
    with pytest.raises(DataError, match="labels must have"):
        evaluate_coarse_first(x, fine[:-1], coarse)


def test_on_a_real_run_flat_matches_metrics_json(finished_run: Path) -> None:
    res = coarse_first_for_run(finished_run, "unseen", use_cache=False)
    assert res is not None
    m = json.loads((finished_run / "metrics.json").read_text())["unseen"]
    for level in ("fine", "coarse"):
        for key in ("recall@1", "recall@4", "map@r"):
            assert res.flat_block[level][key] == pytest.approx(m[level][key]), (level, key)
    assert res.block["n_queries"] == m["n_queries"]
    assert 0.0 <= res.coarse_accuracy <= 1.0
    assert set(res.vs_flat) >= {"fine_recall@1", "coarse_map@r"}
    cached = coarse_first_for_run(finished_run, "unseen")
    again = coarse_first_for_run(finished_run, "unseen")
    assert cached is not None and again is not None
    np.testing.assert_array_equal(cached.coarse_first.per_query["fine_map@r"],
                                  again.coarse_first.per_query["fine_map@r"])
