"""run_split / evaluate_retrieval against a naive all-pairs reference, pytorch-metric-learning, and docs/metrics.md."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from ofgr_core.common.errors import DataError
from ofgr_core.config import EvalConfig, IndexConfig
from ofgr_core.retrieval.evaluate import compare_per_query, evaluate_embeddings, evaluate_retrieval, run_split

KS = [1, 2, 4, 8]


def split_block(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return run_split(*args, **kwargs).block


def clustered(n: int, d: int, n_fine: int, *, seed: int = 0, noise: float = 0.6, per_coarse: int = 4):
    """Unit vectors around class centres; coarse classes group ``per_coarse`` fine classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_fine, d))
    fine = rng.integers(0, n_fine, size=n)
    x = centres[fine] + noise * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.stack([fine, fine // per_coarse], axis=1).astype(np.int64)


def naive_block(x, labels, *, ids=None, groups=None, qmask=None, gmask=None, ks=KS, max_r=10**9):
    """All-pairs reference: one Python loop per query over an explicit, fully sorted ranking."""
    n = len(x)
    ids = np.arange(n) if ids is None else ids
    qmask = np.ones(n, bool) if qmask is None else qmask
    gmask = np.ones(n, bool) if gmask is None else gmask
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    rankings, rel_counts = [], []
    for q in np.flatnonzero(qmask):
        cand = [
            g
            for g in np.flatnonzero(gmask)
            if ids[g] != ids[q] and (groups is None or groups[g] != groups[q])
        ]
        order = sorted(cand, key=lambda g: -sims[q, g])
        rel = [[int(labels[g, lv] == labels[q, lv]) for g in order] for lv in range(labels.shape[1])]
        rankings.append((q, order, rel))
        rel_counts.append([sum(r) for r in rel])
    active = [i for i, rc in enumerate(rel_counts) if rc[0] > 0]
    n_gallery = int(gmask.sum())
    r_max = max(max(rel_counts[i]) for i in active)
    k = min(max(max(ks), min(r_max, max_r)), n_gallery)
    block = {
        "n_queries": len(active),
        "n_skipped_queries": len(rankings) - len(active),
        "n_gallery": n_gallery,
    }
    for lv, name in enumerate(["fine", "coarse"][: labels.shape[1]]):
        vals = {f"recall@{kk}": [] for kk in ks} | {"r_precision": [], "map@r": [], "map": []}
        for i in active:
            rel = rankings[i][2][lv][:k]
            big_r = min(rel_counts[i][lv], k)
            for kk in ks:
                vals[f"recall@{kk}"].append(float(any(rel[:kk])))
            vals["r_precision"].append(sum(rel[:big_r]) / big_r)
            precs = [sum(rel[: j + 1]) / (j + 1) for j in range(len(rel))]
            vals["map@r"].append(sum(p for p, h in zip(precs[:big_r], rel[:big_r], strict=True) if h) / big_r)
            vals["map"].append(sum(p for p, h in zip(precs, rel, strict=True) if h) / big_r)
        block[name] = {key: float(np.mean(v)) for key, v in vals.items()}
    if labels.shape[1] > 1:
        block["right_coarse_wrong_fine@1"] = float(
            np.mean([rankings[i][2][1][0] and not rankings[i][2][0][0] for i in active])
        )
    return block


def assert_block_matches(got: dict, ref: dict) -> None:
    for key in ("n_queries", "n_skipped_queries", "n_gallery"):
        assert got[key] == ref[key], key
    for level in ("fine", "coarse"):
        if level in ref:
            for key, value in ref[level].items():
                assert got[level][key] == pytest.approx(value, abs=1e-9), f"{level}/{key}"
    if "right_coarse_wrong_fine@1" in ref:
        assert got["right_coarse_wrong_fine@1"] == pytest.approx(ref["right_coarse_wrong_fine@1"])


def with_ties_and_singletons(seed: int):
    x, labels = clustered(150, 16, 20, seed=seed)
    # exact duplicates (same label, other ids): ties that are legitimate hits
    dup = np.arange(0, 30, 3)
    x = np.concatenate([x, x[dup]])
    labels = np.concatenate([labels, labels[dup]])
    # singleton fine classes: their queries have no relevant item and are skipped
    labels[5, 0] = 1000  # rows 5 and 7 have no duplicate (dup rows are multiples of 3)
    labels[7, 0] = 1001
    return x, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_reference_with_ties_and_singletons(seed: int) -> None:
    x, labels = with_ties_and_singletons(seed)
    got = split_block(x, labels, cfg=EvalConfig(ks=KS, bootstrap=0))
    ref = naive_block(x, labels)
    assert ref["n_skipped_queries"] == 2
    assert_block_matches(got, ref)


def test_matches_naive_reference_with_r_cap() -> None:
    x, labels = clustered(200, 8, 4, seed=3, noise=1.5)  # big classes: R up to ~60 fine, ~200 coarse
    got = split_block(x, labels, cfg=EvalConfig(ks=KS, bootstrap=0, max_r=16))
    assert got["r_cap"]["n_capped"]["fine"] > 0 and got["r_cap"]["k"] == 16
    assert_block_matches(got, naive_block(x, labels, max_r=16))


def test_query_and_gallery_masks_and_small_chunks() -> None:
    x, labels = clustered(240, 16, 12, seed=4)
    rng = np.random.default_rng(0)
    qmask = rng.random(240) < 0.4
    gmask = ~qmask | (rng.random(240) < 0.3)  # some queries are also in the gallery
    ids = rng.permutation(10**6)[:240]  # arbitrary ids: exclusion must use them, not rows
    cfg = EvalConfig(ks=KS, bootstrap=0, batch_size=7)
    got = split_block(x, labels, ids=ids, query_mask=qmask, gallery_mask=gmask, cfg=cfg)
    assert_block_matches(got, naive_block(x, labels, ids=ids, qmask=qmask, gmask=gmask))


def test_group_exclusion() -> None:
    x, labels = clustered(200, 16, 10, seed=5)
    groups = np.random.default_rng(1).integers(0, 40, size=200)
    cfg = EvalConfig(ks=KS, bootstrap=0, exclude_same_group=True)
    got = split_block(x, labels, groups=groups, cfg=cfg)
    assert_block_matches(got, naive_block(x, labels, groups=groups))
    plain = split_block(x, labels, cfg=EvalConfig(ks=KS, bootstrap=0))
    assert got["fine"]["map@r"] != plain["fine"]["map@r"]
    with pytest.raises(DataError, match="group"):
        split_block(x, labels, cfg=cfg)


def test_group_exclusion_removes_near_duplicates() -> None:
    # two near-identical shots of one object (same group) and one distant image of the same class
    x = np.array([[1, 0], [1, 0.01], [0, 1], [0.9, 0.3], [0.1, 1]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    groups = np.array([7, 7, 8, 9, 10])
    cfg = EvalConfig(ks=[1], bootstrap=0, exclude_same_group=True)
    with_groups = run_split(x, labels, groups=groups, cfg=cfg)
    first = dict(zip(with_groups.query_ids.tolist(), with_groups.per_query["fine"]["recall@1"], strict=True))
    assert first[0] == 0.0 and first[1] == 0.0  # their group-mate no longer counts; nearest is class 1
    plain = run_split(x, labels, cfg=EvalConfig(ks=[1], bootstrap=0))
    assert plain.per_query["fine"]["recall@1"][0] == 1.0


def test_self_exclusion_is_by_id_not_by_position() -> None:
    x = np.array([[1, 0], [1, 0], [0, 1], [0.1, 1]], dtype=np.float32)  # rows 0 and 1 are duplicates
    labels = np.array([0, 0, 1, 1])
    res = run_split(x, labels, ids=np.array(["d", "a", "c", "b"]), cfg=EvalConfig(ks=[1], bootstrap=0))
    assert res.query_ids.tolist() == ["d", "a", "c", "b"]
    # each duplicate retrieves the other (a legitimate hit), never itself
    assert res.per_query["fine"]["recall@1"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert res.block["n_queries"] == 4
    # a query whose only same-class item is far must not be rescued by a self-match
    x2 = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    b = split_block(x2, np.array([0, 1, 0]), cfg=EvalConfig(ks=[1], bootstrap=0))
    assert b["fine"]["recall@1"] == pytest.approx(0.0)
    with pytest.raises(DataError, match="unique"):
        split_block(x, labels, ids=np.array([1, 1, 2, 3]))


def test_worked_example_from_docs() -> None:
    """The numbers printed in docs/metrics.md, "Worked example"."""
    ang = np.deg2rad([0, 32, 20, 50, 45, 60, 95, 200, 210])
    x = np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)
    fine = np.array([0, 0, 1, 1, 2, 2, 3, 4, 4])
    coarse = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    res = run_split(x, np.stack([fine, coarse], 1), class_names="ABCDE", cfg=EvalConfig(ks=[1, 2, 4, 5]))
    b = res.block
    assert (b["n_queries"], b["n_gallery"], b["n_skipped_queries"]) == (8, 9, 1)
    assert b["fine"] == pytest.approx(
        {"recall@1": 0.25, "recall@2": 0.5, "recall@4": 0.875, "recall@5": 1.0,
         "map@r": 0.25, "r_precision": 0.25, "map": 121 / 240}
    )
    assert b["coarse"] == pytest.approx(
        {"recall@1": 0.625, "recall@2": 0.75, "recall@4": 1.0, "recall@5": 1.0,
         "map@r": 0.53125, "r_precision": 29 / 48, "map": 83 / 120}
    )
    assert b["right_coarse_wrong_fine@1"] == pytest.approx(0.375)
    assert b["r_cap"]["k"] == 5
    assert b["per_class"]["E"] == {"n": 2, "recall@1": 1.0, "map@r": 1.0}
    assert "D" not in b["per_class"]  # its only item is a skipped query
    lo, hi = b["ci95"]["fine"]["recall@1"]
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0
    # query 0 (A at 0 deg) ranks 2, 1, 4, 3, 5, 6, 8, 7: first fine hit at rank 2, AP = 1/2
    assert res.per_query["fine"]["map"][0] == pytest.approx(0.5)


def pml_accuracy(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    return calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))


def test_matches_pytorch_metric_learning() -> None:
    # tie-free data (PML drops the first neighbour as "self", which is only right without duplicates)
    x, labels = clustered(400, 24, 25, seed=7, noise=0.9)
    labels[:3, 0] = [500, 501, 502]  # singletons: PML drops them as "lone" queries, ofgr skips them
    for lv in range(2):
        # one level at a time: with both levels ofgr skips fine-lone queries at the coarse level too
        got = split_block(x, labels[:, lv], cfg=EvalConfig(ks=[1], bootstrap=0))["fine"]
        ref = pml_accuracy(x, labels[:, lv].copy())
        assert got["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-9)
        assert got["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-9)
        assert got["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-9)


def test_memmap_and_unnormalised_inputs(tmp_path) -> None:
    x, labels = clustered(300, 16, 15, seed=8)
    ref = split_block(x, labels, cfg=EvalConfig(bootstrap=50))
    path = tmp_path / "emb.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    assert split_block(mm, labels, cfg=EvalConfig(bootstrap=50)) == ref
    scaled = split_block(x * 3.0, labels, cfg=EvalConfig(bootstrap=50))
    assert scaled["fine"] == pytest.approx(ref["fine"])


def test_k_larger_than_gallery_warns_and_clips() -> None:
    x, labels = clustered(12, 4, 2, seed=9)
    with pytest.warns(UserWarning, match="exceeds"):
        b = split_block(x, labels, cfg=EvalConfig(ks=[1, 50], bootstrap=0))
    assert b["fine"]["recall@50"] == 1.0  # all 11 other items are retrieved


def test_progress_ci_and_breakdowns() -> None:
    x, labels = clustered(500, 16, 10, seed=10)
    domains = np.where(np.arange(500) % 2 == 0, "studio", "street")
    calls: list[tuple[int, int]] = []
    b = split_block(
        x, labels, domains=domains, cfg=EvalConfig(batch_size=100, bootstrap=200),
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls[-1] == (500, 500) and len(calls) == 5
    for level in ("fine", "coarse"):
        for key, value in b[level].items():
            lo, hi = b["ci95"][level][key]
            assert lo <= value + 1e-12 and value <= hi + 1e-12
    assert set(b["per_domain"]) == {"studio", "street"}
    assert sum(v["n"] for v in b["per_domain"].values()) == b["n_queries"]
    assert sum(v["n"] for v in b["per_class"].values()) == b["n_queries"]
    total = sum(v["n"] * v["recall@1"] for v in b["per_class"].values()) / b["n_queries"]
    assert total == pytest.approx(b["fine"]["recall@1"])


def test_approximate_index_reports_recall_vs_exact() -> None:
    x, labels = clustered(2000, 32, 40, seed=11)
    cfg = EvalConfig(ks=[1, 10], bootstrap=0, index=IndexConfig(type="hnsw", ef_search=64))
    b = split_block(x, labels, cfg=cfg)
    assert b["index"]["type"] == "hnsw" and b["index"]["device"] == "cpu"
    assert b["index"]["recall_vs_exact@10"] > 0.95
    exact = split_block(x, labels, cfg=EvalConfig(ks=[1, 10], bootstrap=0))
    assert abs(b["fine"]["recall@1"] - exact["fine"]["recall@1"]) < 0.02


def test_evaluate_embeddings_splits_and_strings() -> None:
    x, labels = clustered(300, 16, 12, seed=12)
    table = {
        "id": np.arange(300) + 1000,
        "fine": np.array([f"class_{v}" for v in labels[:, 0]]),
        "coarse": np.array([f"super_{v}" for v in labels[:, 1]]),
        "split": np.where(labels[:, 0] < 6, "seen", "unseen"),
    }
    res = evaluate_embeddings(x, table, EvalConfig(bootstrap=0))
    assert list(res) == ["unseen", "seen"]
    unseen = labels[:, 0] >= 6
    alone = split_block(x[unseen], labels[unseen], cfg=EvalConfig(bootstrap=0))
    assert res["unseen"]["fine"] == pytest.approx(alone["fine"])
    assert all(name.startswith("class_") for name in res["unseen"]["per_class"])
    assert list(evaluate_embeddings(x, {"fine": labels[:, 0]}, EvalConfig(bootstrap=0))) == ["all"]
    with pytest.raises(DataError, match="fine"):
        evaluate_embeddings(x, {"coarse": labels[:, 1]})


def test_paired_comparison_between_runs() -> None:
    x, labels = clustered(600, 16, 20, seed=13, noise=0.8)
    rng = np.random.default_rng(0)
    worse = x + 0.6 * rng.normal(size=x.shape).astype(np.float32)
    a = run_split(x, labels, cfg=EvalConfig(bootstrap=0))
    b = run_split(worse, labels, cfg=EvalConfig(bootstrap=0))
    same = compare_per_query(a, a, n_resamples=500)
    assert same["recall@1"]["delta"] == 0.0 and same["recall@1"]["p_value"] == 1.0
    diff = compare_per_query(a, b, n_resamples=500)
    assert diff["map@r"]["delta"] == pytest.approx(a.block["fine"]["map@r"] - b.block["fine"]["map@r"])
    assert diff["map@r"]["delta"] > 0 and diff["map@r"]["p_value"] < 0.01


def test_no_warning_in_normal_use() -> None:
    x, labels = clustered(100, 8, 5, seed=14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_block(x, labels, cfg=EvalConfig(bootstrap=10))


def naive_cross(q, g, q_labels, g_labels, ks):
    """Queries from one encoder, gallery from another, no shared ids: Recall@K and MAP@R by explicit sort."""
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    out = {f"recall@{k}": [] for k in ks} | {"map@r": []}
    for i in range(len(q)):
        order = np.argsort(-sims[i], kind="stable")
        rel = (g_labels[order] == q_labels[i]).astype(int)
        big_r = int(rel.sum())
        if big_r == 0:
            continue
        for k in ks:
            out[f"recall@{k}"].append(float(rel[:k].any()))
        precs = np.cumsum(rel[:big_r]) / np.arange(1, big_r + 1)
        out["map@r"].append(float((precs * rel[:big_r]).sum() / big_r))
    return {k: float(np.mean(v)) for k, v in out.items()}


def test_evaluate_retrieval_across_encoders_matches_naive_reference() -> None:
    # a "text" side: one query per class (its centre), in another width-compatible space; images as gallery
    x, labels = clustered(300, 16, 10, seed=7, noise=0.9)
    rng = np.random.default_rng(1)
    centres = np.stack([x[labels[:, 0] == c].mean(0) for c in range(10)]) + 0.2 * rng.normal(size=(10, 16))
    q_labels = np.stack([np.arange(10), np.arange(10) // 4], axis=1)
    res = evaluate_retrieval(
        centres.astype(np.float32), x, q_labels, labels, query_ids=np.array([f"text:{c}" for c in range(10)]),
        gallery_ids=np.array([f"img{i}" for i in range(300)]), cfg=EvalConfig(ks=KS, bootstrap=0),
    )
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    ref = naive_cross(unit, x, q_labels[:, 0], labels[:, 0], KS)
    assert res.block["n_queries"] == 10 and res.block["n_gallery"] == 300
    for key, value in ref.items():
        assert res.block["fine"][key] == pytest.approx(value, abs=1e-9), key
    assert list(res.query_ids) == [f"text:{c}" for c in range(10)]


def test_run_split_equals_evaluate_retrieval_on_the_same_rows() -> None:
    x, labels = clustered(200, 16, 8, seed=2)
    rng = np.random.default_rng(3)
    qmask = rng.random(200) < 0.5
    ids = np.array([f"i{j}" for j in range(200)])
    cfg = EvalConfig(ks=KS, bootstrap=20)
    a = run_split(x, labels, ids=ids, query_mask=qmask, cfg=cfg)
    b = evaluate_retrieval(x[qmask], x, labels[qmask], labels, query_ids=ids[qmask], gallery_ids=ids, cfg=cfg)
    assert a.block == b.block
    assert list(a.query_ids) == list(b.query_ids)


def test_evaluate_retrieval_rejects_mismatched_widths() -> None:
    with pytest.raises(DataError, match="dimensions"):
        evaluate_retrieval(np.ones((2, 4), np.float32), np.ones((3, 8), np.float32), np.zeros(2, int), np.zeros(3, int))


def _compact_naive(rows: np.ndarray, drop: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i in range(len(rows)):
        kept = [int(r) for r, d in zip(rows[i], drop[i], strict=True) if r >= 0 and not d][:k]
        out[i, : len(kept)] = kept
    return out


@pytest.mark.parametrize("case", ["one drop a row", "ragged drops", "empty slots", "rows left short", "no rows"])
def test_compacting_search_rows_matches_a_row_by_row_reference(case: str) -> None:
    from ofgr_core.retrieval.evaluate import _compact

    rng = np.random.default_rng(7)
    q, width = (0 if case == "no rows" else 300), 40
    rows = np.stack([rng.permutation(1000)[:width] for _ in range(q)]) if q else np.empty((0, width), np.int64)
    drop = np.zeros(rows.shape, dtype=bool)
    if q:
        drop[np.arange(q), rng.integers(0, width, q)] = True  # leave-one-out: each row's own id, anywhere
    if case == "ragged drops":  # group-mates too: rows drop different counts
        drop |= rng.random(rows.shape) < 0.1
    if case == "empty slots":  # a search that found fewer than asked pads with -1 at the end
        rows[:, -3:] = -1
    k = {"rows left short": width}.get(case, width - 5)
    assert np.array_equal(_compact(rows, drop, k), _compact_naive(rows, drop, k))


def test_query_keys_are_the_query_ids_hashes_whether_ids_are_shared_given_apart_or_left_out() -> None:
    # the bootstrap resamples queries in the order of their id hashes: one array of ids for both sides (hashed
    # once), an equal copy, and no ids at all (queries then have ids N..2N-1) must each give their own ids' CIs
    rng = np.random.default_rng(4)
    x = rng.standard_normal((120, 16)).astype(np.float32)
    labels = np.stack([np.repeat(np.arange(30), 4), np.repeat(np.arange(10), 12)], axis=1)
    ids = np.array([f"item{i}" for i in range(120)])
    cfg = EvalConfig(bootstrap=200)
    shared = evaluate_retrieval(x, x, labels, labels, query_ids=ids, gallery_ids=ids, cfg=cfg).block
    apart = evaluate_retrieval(x, x, labels, labels, query_ids=ids.copy(), gallery_ids=ids, cfg=cfg).block
    assert shared == apart
    none = evaluate_retrieval(x, x, labels, labels, cfg=cfg).block
    spelled = evaluate_retrieval(x, x, labels, labels, query_ids=np.arange(120, 240), gallery_ids=np.arange(120),
                                 cfg=cfg).block
    assert none == spelled and none["ci95"] != shared["ci95"]
