"""The list-wise IVF-Flat search (``ivf_lists.ivf_knn_by_list``) returns faiss's IVF search, and an all-vs-all
evaluation through it gives the numbers of the per-chunk search.

The reference is faiss itself: ``index.search`` with the same ``nprobe`` (the same quantizer picks the same lists,
so each query meets the same vectors). Scores can differ in the last bit (a BLAS product against faiss's
per-vector loop); on Gaussian data no two scores of a row are that close, so the rows must come out equal.
Through ``run_split`` the reference is the evaluation with the list-wise pass switched off (one faiss search
per query chunk), on data with exact products and many ties (``evalcases.exact_case``) and on
Gaussian data with groups and exclusions.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pytest
from evalcases import CallSpy, assert_same, exact_case, gaussian_case

from ofgr_core.config import EvalConfig, IndexConfig
from ofgr_core.retrieval import evaluate as ev
from ofgr_core.retrieval.evaluate import run_split
from ofgr_core.retrieval.index import build_index
from ofgr_core.retrieval.ivf_lists import by_list_index, ivf_knn_by_list


def _clustered(n: int, d: int, seed: int, classes: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(classes, d))[rng.integers(0, classes, n)] + rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ivf(x: np.ndarray, nlist: int, nprobe: int, train: np.ndarray | None = None) -> Any:
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 0
    index.train(x if train is None else train)
    index.add(x)
    index.nprobe = nprobe
    return index


@pytest.mark.parametrize(("n", "d", "nlist", "nprobe", "k", "chunk", "threads"),
                         [(1500, 32, 30, 4, 20, 400, 3),  # several chunks, the last one ragged
                          (1500, 32, 30, 4, 20, 400, 1),
                          (800, 16, 20, 1, 60, 10**6, 2),  # one list probed: k above most lists' sizes (-1 pads)
                          (600, 24, 12, 50, 8, 128, 5)])  # nprobe above nlist: every list, as faiss clamps it
def test_by_list_search_returns_faiss_ivf_search(n: int, d: int, nlist: int, nprobe: int, k: int,
                                                  chunk: int, threads: int) -> None:
    x = _clustered(n, d, seed=n)
    index = _ivf(x, nlist, nprobe)
    ref_scores, ref_rows = index.search(x, k)
    omp_before = faiss.omp_get_max_threads()
    seen: list[tuple[int, int]] = []
    scores, rows = ivf_knn_by_list(index, x, k, chunk=chunk, threads=threads,
                                   progress=lambda a, b: seen.append((a, b)))
    assert np.array_equal(rows, ref_rows)
    assert np.allclose(scores, ref_scores, rtol=0, atol=1e-6)
    assert seen[-1] == (n, n) and len(seen) == -(-n // chunk)
    assert faiss.omp_get_max_threads() == omp_before  # faiss's threads put back
    if nprobe == 1:
        assert (rows == -1).any()  # the padded slots: row -1 and faiss's lowest score, as faiss leaves them
        assert np.array_equal(scores[rows == -1], ref_scores[ref_rows == -1])


def test_by_list_search_with_empty_lists_and_other_queries() -> None:
    """Lists that hold nothing (trained on other data), queries that are not the indexed rows, float16 queries."""
    train = _clustered(2000, 16, seed=1, classes=40)
    x = _clustered(300, 16, seed=2, classes=3)  # three clusters: most of the 40 lists stay empty
    index = _ivf(x, 40, 6, train=train)
    sizes = [index.invlists.list_size(i) for i in range(40)]
    assert sizes.count(0) > 5
    queries = _clustered(250, 16, seed=3, classes=40)
    ref_scores, ref_rows = index.search(queries, 15)
    scores, rows = ivf_knn_by_list(index, queries, 15, chunk=64)
    assert np.array_equal(rows, ref_rows) and np.allclose(scores, ref_scores, rtol=0, atol=1e-6)
    half = queries.astype(np.float16)
    ref_scores, ref_rows = index.search(half.astype(np.float32), 15)
    assert np.array_equal(ivf_knn_by_list(index, half, 15)[1], ref_rows)


def test_by_list_search_takes_only_a_plain_ivf_flat() -> None:
    x = _clustered(500, 16, seed=4)
    flat = _ivf(x, 10, 2)
    assert by_list_index(flat) is flat
    pq = faiss.IndexIVFPQ(faiss.IndexFlatIP(16), 16, 10, 4, 4, faiss.METRIC_INNER_PRODUCT)
    pq.train(x)
    l2 = faiss.IndexIVFFlat(faiss.IndexFlatL2(16), 16, 10)
    l2.train(x)
    empty = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 10, faiss.METRIC_INNER_PRODUCT)
    empty.train(x)
    refined = faiss.IndexRefineFlat(empty)
    for other in (pq, l2, refined, faiss.IndexFlatIP(16), faiss.IndexHNSWFlat(16, 8)):
        assert by_list_index(other) is None
        with pytest.raises(ValueError, match="needs a CPU IndexIVFFlat"):
            ivf_knn_by_list(other, x, 5)
    with pytest.raises(ValueError, match="queries have dimension 8, the index 16"):
        ivf_knn_by_list(flat, x[:, :8], 5)
    with pytest.raises(ValueError, match="k=0 must be at least 1"):
        ivf_knn_by_list(flat, x, 0)


def _ivf_cfg(nprobe: int, **kw: Any) -> EvalConfig:
    return EvalConfig(index=IndexConfig(type="ivf_flat", nlist=16, nprobe=nprobe, exact_check=150), **kw)


@pytest.mark.parametrize("case", ["exact", "gaussian"])
def test_ivf_evaluation_by_list_gives_the_per_chunk_numbers(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """Leave-one-out through an IVF-Flat index: the list-wise first search, then the same ties, exclusions,
    scoring and exact audit; every number equal to the per-chunk faiss search's."""
    c = exact_case(7, tol=0) if case == "exact" else gaussian_case(8)
    runs: list[tuple[dict[str, Any], EvalConfig]] = [({}, _ivf_cfg(3, bootstrap=25))]
    if case == "gaussian":
        runs.append(({"ids": c["ids"], "groups": c["groups"]}, _ivf_cfg(5, bootstrap=0, exclude_same_group=True)))
    for kw, cfg in runs:
        spy = CallSpy(monkeypatch, ev, "ivf_knn_by_list")
        monkeypatch.setattr(ev, "BY_LIST_MIN_ROWS", 1)
        by_list = run_split(c["x"], c["labels"], cfg=cfg, **kw)
        assert spy.calls == 1
        monkeypatch.setattr(ev, "BY_LIST_MIN_ROWS", 10**9)
        per_chunk = run_split(c["x"], c["labels"], cfg=cfg, **kw)
        assert spy.calls == 1
        assert_same(by_list, per_chunk)
        assert by_list.block["index"]["type"] == "ivf_flat" and "approximation" in by_list.block


def test_ivf_by_list_path_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other index types, queries distinct from the gallery, mostly skipped queries, a small gallery: per chunk."""
    c = gaussian_case(9)
    x, lab = c["x"], c["labels"]
    spy = CallSpy(monkeypatch, ev, "ivf_knn_by_list")
    run_split(x, lab, cfg=_ivf_cfg(3, bootstrap=0))  # 700 rows < BY_LIST_MIN_ROWS
    monkeypatch.setattr(ev, "BY_LIST_MIN_ROWS", 1)
    ev.evaluate_retrieval(x, x.copy(), lab, lab, cfg=_ivf_cfg(3, bootstrap=0))  # two arrays
    run_split(x, lab, query_mask=np.arange(700) < 200, cfg=_ivf_cfg(3, bootstrap=0))
    for other in (IndexConfig(type="ivf_pq", nlist=8, pq_m=4, pq_nbits=4, exact_check=0),
                  IndexConfig(type="hnsw", exact_check=0)):
        run_split(x, lab, cfg=EvalConfig(index=other, bootstrap=0))
    assert spy.calls == 0
    run_split(x, lab, cfg=_ivf_cfg(3, bootstrap=0))
    assert spy.calls == 1


def test_ofgr_ivf_index_is_searched_by_list() -> None:
    """``build_index``'s IVF-Flat (rows added in order, ids = rows) is one ``by_list_index`` takes."""
    x = _clustered(900, 24, seed=10)
    searcher = build_index(x, IndexConfig(type="ivf_flat", nlist=12, nprobe=4))
    assert by_list_index(searcher.index) is searcher.index
    ref = searcher.search_rows(x, 10)
    got = ivf_knn_by_list(searcher.index, x, 10)
    assert np.array_equal(got[1], ref[1]) and np.allclose(got[0], ref[0], rtol=0, atol=1e-6)
