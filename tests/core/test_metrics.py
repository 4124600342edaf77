"""Metric functions against naive per-query loops, and the bootstrap machinery."""

from __future__ import annotations

import numpy as np
import pytest

from ofgr_core.retrieval.metrics import (
    bootstrap_ci,
    hit_matrix,
    metrics_from_hits,
    paired_bootstrap_test,
    retrieval_metrics,
)


def naive(neigh: np.ndarray, qlab: np.ndarray, r: np.ndarray, ks: list[int]) -> dict[str, list[float]]:
    """Textbook definitions, one query at a time (docs/metrics.md)."""
    out: dict[str, list[float]] = {f"recall@{k}": [] for k in ks}
    out.update({"precision@1": [], "r_precision": [], "map@r": [], "map": []})
    kmax = neigh.shape[1]
    for row, lab, big_r in zip(neigh, qlab, r, strict=True):
        rel = [int(x == lab and x >= 0) for x in row]
        for k in ks:
            out[f"recall@{k}"].append(float(any(rel[:k])))
        out["precision@1"].append(float(rel[0]))
        rr = min(big_r, kmax)
        out["r_precision"].append(sum(rel[:rr]) / rr)
        ap_r = 0.0
        ap = 0.0
        for i in range(kmax):
            if rel[i]:
                p = sum(rel[: i + 1]) / (i + 1)
                ap += p
                if i < rr:
                    ap_r += p
        out["map@r"].append(ap_r / rr)
        out["map"].append(ap / rr)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, k, n_cls = 300, 12, 4
    neigh = rng.integers(0, n_cls, size=(q, k))
    # empty slots at the end of some rows, as when a query has fewer candidates than k
    short = rng.random(q) < 0.2
    neigh[short, rng.integers(3, k) :] = -1
    qlab = rng.integers(0, n_cls, size=q)
    # R from 1 to beyond k (the capped case)
    r = rng.integers(1, 2 * k, size=q)
    ks = [1, 2, 5, 10, 20]
    got = retrieval_metrics(neigh, qlab, r, ks)
    ref = naive(neigh, qlab, r, ks)
    assert set(got) == set(ref)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-12, err_msg=key)


def test_hit_matrix_never_matches_empty_slots() -> None:
    hits = hit_matrix(np.array([[-1, 2, -1]]), np.array([-1]))
    assert not hits.any()


def test_small_hand_computed_case() -> None:
    # ranks: miss, hit, hit, miss; R = 2
    hits = np.array([[False, True, True, False]])
    m = metrics_from_hits(hits, np.array([2]), [1, 2])
    assert m["recall@1"][0] == 0.0 and m["recall@2"][0] == 1.0
    assert m["r_precision"][0] == pytest.approx(0.5)
    assert m["map@r"][0] == pytest.approx((1 / 2) / 2)  # only rank 2 is inside the top R
    assert m["map"][0] == pytest.approx((1 / 2 + 2 / 3) / 2)


@pytest.mark.parametrize("block", [None, 200 * 37])  # one block of resamples; 37 a block (14 blocks, two threads)
def test_bootstrap_ci_equals_explicit_resampling(block: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if block is not None:
        monkeypatch.setattr("ofgr_core.retrieval.metrics._BOOTSTRAP_BLOCK", block)
    rng = np.random.default_rng(5)
    values = {"a": rng.random(200), "b": (rng.random(200) < 0.3).astype(float)}
    ci = bootstrap_ci(values, n_resamples=500, confidence=0.9, seed=11)
    # same generator, same draws: explicit index resampling must give the same interval
    idx = np.random.default_rng(11).integers(0, 200, size=(500, 200))
    for name, v in values.items():
        means = v[idx].mean(axis=1)
        lo, hi = np.quantile(means, [0.05, 0.95])
        assert ci[name] == pytest.approx([lo, hi], abs=1e-12)
        assert lo <= v.mean() <= hi


def test_bootstrap_ci_is_seeded_and_degenerate_for_constants() -> None:
    v = {"x": np.linspace(0, 1, 50)}
    assert bootstrap_ci(v, seed=3) == bootstrap_ci(v, seed=3)
    assert bootstrap_ci(v, seed=3) != bootstrap_ci(v, seed=4)
    assert bootstrap_ci({"c": np.full(40, 0.25)}) == {"c": [0.25, 0.25]}
    assert bootstrap_ci(v, n_resamples=0) == {}


def test_bootstrap_ci_width_shrinks_with_more_queries() -> None:
    rng = np.random.default_rng(0)
    small = bootstrap_ci({"x": (rng.random(100) < 0.5).astype(float)})["x"]
    large = bootstrap_ci({"x": (rng.random(10000) < 0.5).astype(float)})["x"]
    assert (large[1] - large[0]) < (small[1] - small[0]) / 5


def test_bootstrap_ci_blocks_match_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import ofgr_core.retrieval.metrics as m

    v = {"x": np.random.default_rng(1).random(1000)}
    whole = bootstrap_ci(v, n_resamples=64, seed=2)
    monkeypatch.setattr(m, "_BOOTSTRAP_BLOCK", 5000)  # 5 resamples per block
    blocked = bootstrap_ci(v, n_resamples=64, seed=2)
    # the generator yields the same index stream whether drawn in one block or several
    assert blocked["x"] == pytest.approx(whole["x"], abs=1e-12)


def test_paired_test_identical_runs() -> None:
    a = np.random.default_rng(0).random(300)
    t = paired_bootstrap_test(a, a.copy(), n_resamples=2000)
    assert t.delta == 0.0 and t.ci == (0.0, 0.0) and t.p_value == 1.0


def test_paired_test_detects_a_real_difference_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    base = (rng.random(2000) < 0.5).astype(float)
    better = base.copy()
    flip = np.flatnonzero(base == 0)[:200]  # +10 points on the same queries
    better[flip] = 1.0
    t = paired_bootstrap_test(better, base, n_resamples=2000, seed=0)
    assert t.delta == pytest.approx(0.1)
    assert t.ci[0] > 0.08 and t.ci[1] < 0.12
    assert t.p_value < 0.001
    # two independent draws of the same distribution: no evidence of a difference
    x = (rng.random(2000) < 0.5).astype(float)
    y = (rng.random(2000) < 0.5).astype(float)
    null = paired_bootstrap_test(x, y, n_resamples=2000, seed=0)
    assert null.ci[0] < 0 < null.ci[1] or null.p_value > 0.05
    assert null.p_value > 0.01
    swapped = paired_bootstrap_test(base, better, n_resamples=2000, seed=0)
    assert swapped.delta == pytest.approx(-t.delta) and swapped.p_value == pytest.approx(t.p_value)


def test_paired_test_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap_test(np.zeros(3), np.zeros(4))
