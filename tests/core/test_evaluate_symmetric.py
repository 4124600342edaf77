"""The symmetric all-vs-all search (``index.symmetric_knn``) gives exactly the numbers of the plain search.

Leave-one-out evaluation searches every item against the others; the symmetric path computes each block of
the similarity matrix once and feeds the top-k of its rows and of its columns. Its results go through the same
tie-breaking by item-id hash, self/group exclusion and scoring, so every metric must come out bit for bit as
the plain path gives it. The reference is the plain path (symmetry switched off: one exact search per query
chunk).

Two kinds of data. Unit vectors on a 1/32 grid have dot products that float32 holds exactly, so
every BLAS agrees on every score: there the equality is guaranteed, and the data carry many exact ties
(duplicates, and distinct vectors with equal products). Gaussian vectors check the ordinary case, where a
score may differ in its last bit between two GEMM blockings (faiss's own scores do between query chunk
sizes); their metrics must still agree.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import faiss
import numpy as np
import pytest
from evalcases import CallSpy, assert_same, exact_case, gaussian_case

from ofgr_core.config import EvalConfig
from ofgr_core.retrieval import evaluate as ev
from ofgr_core.retrieval import index
from ofgr_core.retrieval.evaluate import SplitResult, evaluate_embeddings, run_split
from ofgr_core.retrieval.index import TopK, _knn_inner_product, symmetric_knn


def _both_ways(monkeypatch: pytest.MonkeyPatch, c: dict[str, Any], cfg: EvalConfig, **kw: Any
               ) -> tuple[SplitResult, SplitResult]:
    """(symmetric, plain) on the same leave-one-out problem."""
    spy = CallSpy(monkeypatch, ev, "symmetric_knn")
    monkeypatch.setattr(ev, "SYMMETRIC_MIN_DIM", 1)
    monkeypatch.setattr(ev, "SYMMETRIC_BLOCK", 64)  # 600 rows: 10 blocks, the last one ragged
    sym = run_split(c["x"], c["labels"], cfg=cfg, **kw)
    assert spy.calls == 1
    monkeypatch.setattr(ev, "SYMMETRIC_BLOCK", 10**9)
    plain = run_split(c["x"], c["labels"], cfg=cfg, **kw)
    assert spy.calls == 1
    return sym, plain


@pytest.mark.parametrize(("seed", "n", "k", "block", "sparse", "dense"),
                         [(0, 600, 45, 64, True, True),  # seeded sparse, then too many candidates: dense
                          (1, 2000, 12, 128, True, True),  # mostly sparse
                          (3, 700, 100, 64, False, True)])  # k above the block: heaps fill in the dense loop
def test_symmetric_knn_scores_every_pair_like_faiss(monkeypatch: pytest.MonkeyPatch, seed: int, n: int, k: int,
                                                    block: int, sparse: bool, dense: bool) -> None:
    pushed: list[bool] = []
    real_push = TopK.push

    def push(self: TopK, *args: Any) -> bool:
        ok = real_push(self, *args)
        pushed.append(ok)
        return ok

    monkeypatch.setattr(TopK, "push", push)
    monkeypatch.setattr(TopK, "PARALLEL_MIN_ROWS", 16)  # the diagonal blocks' rows in two halves on two threads
    transposed: list[int] = []
    real_transpose = index._transpose_into
    monkeypatch.setattr(index, "_transpose_into", lambda out, x: transposed.append(1) or real_transpose(out, x))
    x = exact_case(seed, n=n)["x"]
    scores, rows = symmetric_knn(x, k, block=block)
    ref_scores, ref_rows = _knn_inner_product(faiss, x, x, k)
    assert np.array_equal(scores, ref_scores)  # the same k best scores of every row, in the same order
    # the same items wherever the k-th score does not tie (ties may take other equal items)
    for i in range(len(x)):
        above = scores[i] > scores[i, -1]
        assert set(rows[i, above].tolist()) == set(ref_rows[i, ref_scores[i] > ref_scores[i, -1]].tolist())
        assert np.array_equal(np.sort(x[rows[i]] @ x[i]), np.sort(scores[i]))  # rows carry their own score
    assert any(pushed) == sparse and bool(transposed) == dense  # the paths this case is meant to take
    with pytest.raises(ValueError, match=f"k={n + 1}"):
        symmetric_knn(x, n + 1)


def test_rows_offered_in_two_halves_on_two_threads_leave_the_same_heaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TopK.offer_rows`` with a pool (a diagonal block's seeding) against the same offers on one thread: empty
    heaps (the seeding partition), full heaps with few candidates (the sparse push) and with many (the dense
    loop)."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(TopK, "PARALLEL_MIN_ROWS", 8)
    rng = np.random.default_rng(5)
    n, k = 90, 7
    offers = [rng.random((n, 40), dtype=np.float32),  # empty heaps: seeded from each row's k-th best
              rng.random((n, 40), dtype=np.float32) - 0.5,  # full heaps, few scores above their roots
              rng.random((n, 40), dtype=np.float32) + 1.0]  # full heaps, every score above: the dense loop
    one, two = TopK(faiss, n, k), TopK(faiss, n, k)
    halves: list[int] = []
    real_offer = TopK.offer_rows

    def offer_rows(self: TopK, s: np.ndarray, h0: int, id0: int, pool: Any = None) -> None:
        halves.append(len(s))
        real_offer(self, s, h0, id0, pool)

    monkeypatch.setattr(TopK, "offer_rows", offer_rows)
    with ThreadPoolExecutor(max_workers=1) as pool:
        for m, s in enumerate(offers):
            one.offer_rows(s, 0, 40 * m)
            two.offer_rows(s, 0, 40 * m, pool)
    assert halves == [90, 90, 45, 45] * 3  # one thread whole; with the pool, two halves of 45 rows
    for a, b in zip(one.sorted(), two.sorted(), strict=True):
        assert np.array_equal(a, b)


def test_a_process_without_torch_searches_symmetrically_without_importing_it(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    """``ofgr eval-embeddings`` and library callers hold no torch: the dense column-wise offers transpose their
    block in numpy tiles instead of importing torch (~1.5 s, ~0.5 GB), with the same results."""
    import torch  # noqa: F401  (loaded: the first transposes take torch's copy)

    x = exact_case(3, n=700)["x"]
    block = np.arange(600 * 700, dtype=np.float32).reshape(600, 700)
    with_torch = np.empty((700, 600), dtype=np.float32)
    index._transpose_into(with_torch, block)
    torch_results = symmetric_knn(x, 100, block=64)
    transposed: list[int] = []
    real_transpose = index._transpose_into
    monkeypatch.setattr(index, "_transpose_into", lambda out, x: transposed.append(1) or real_transpose(out, x))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails, as if it were not installed
    without = np.empty((700, 600), dtype=np.float32)
    index._transpose_into(without, block)
    assert np.array_equal(without, block.T) and np.array_equal(with_torch, block.T)
    scores, rows = symmetric_knn(x, 100, block=64)  # k above the block: dense column-wise offers
    assert len(transposed) > 1
    assert np.array_equal(scores, torch_results[0]) and np.array_equal(rows, torch_results[1])


def test_topk_heaps_keep_the_best_of_every_offer_on_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TopK`` against a brute-force sort of everything offered, with each path forced in turn."""
    paths: list[str] = []
    real_candidates, real_push = TopK._candidates, TopK.push

    def candidates(self: TopK, *args: Any, **kwargs: Any) -> np.ndarray | None:
        found = real_candidates(self, *args, **kwargs)
        paths.append("dense" if found is None else "sparse")
        return found

    def push(self: TopK, *args: Any) -> bool:
        ok = real_push(self, *args)
        if not ok:
            paths[-1] = "refused"
        return ok

    monkeypatch.setattr(TopK, "_candidates", candidates)
    monkeypatch.setattr(TopK, "push", push)
    rng = np.random.default_rng(11)
    n, k = 40, 6
    top = TopK(faiss, n, k)
    offered: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    item = 0

    def offer(s: np.ndarray, h0: int, by_rows: bool) -> None:
        nonlocal item
        (top.offer_rows if by_rows else top.offer_columns)(s, h0, item)
        per_heap = s if by_rows else s.T
        for h, line in enumerate(per_heap):
            offered[h0 + h] += [(float(v), item + j) for j, v in enumerate(line)]
        item += per_heap.shape[1]

    g = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    offer(g(20, 4), 0, True)  # narrower than k: heaps 0-19 partly filled, dense loop
    offer(g(20, 30), 0, True)  # partly filled heaps, k or more each: each row's k-th best is the bar
    offer(g(20, 30), 20, True)  # empty heaps: the same
    offer(g(25, 40), 0, False)  # full heaps, column-wise: many candidates, dense with a transposed copy
    offer(g(3000, 40) - 1.0, 0, False)  # lower scores: few candidates, the sparse path
    lopsided = g(200, 40) - 3.0
    lopsided[:, 7] = 5.0 + rng.random(200, dtype=np.float32)  # all candidates in heap 7: too ragged to pad
    offer(lopsided, 0, False)
    ties = np.full((40, 30), 4.0, dtype=np.float32)  # equal scores (which ones are kept is arbitrary): dense
    offer(ties, 0, True)
    assert paths == ["dense", "sparse", "sparse", "dense", "sparse", "refused", "dense"]
    scores, rows = top.sorted()
    for h in range(n):
        best = sorted(offered[h], key=lambda vi: -vi[0])[:k]
        assert scores[h].tolist() == [v for v, _ in best]
        value_of = dict((i, v) for v, i in offered[h])
        assert [value_of[int(i)] for i in rows[h]] == scores[h].tolist()  # every id is the item of its score

    seeded = TopK(faiss, 10, k)  # one seeding offer alone: each heap holds exactly its k best
    s = g(10, 30)
    seeded.offer_rows(s, 0, 0)
    scores, rows = seeded.sorted()
    assert np.array_equal(scores, -np.sort(-s, axis=1)[:, :k])
    assert np.array_equal(np.take_along_axis(s, rows, axis=1), scores)

    # seeded heaps, tied scores included: later offers keep exactly the best of everything
    tied = TopK(faiss, 10, k)
    first = np.round(g(10, 30), 1)  # many equal scores, also at the k-th place
    later = np.round(g(10, 50), 1)
    tied.offer_rows(first, 0, 0)
    tied.offer_rows(later, 0, 30)
    scores, rows = tied.sorted()
    both = np.concatenate([first, later], axis=1)
    assert np.array_equal(scores, -np.sort(-both, axis=1)[:, :k])
    assert np.array_equal(np.take_along_axis(both, rows, axis=1), scores)
    assert all(len(set(r.tolist())) == k for r in rows)  # no item twice


def test_off_diagonal_blocks_offered_both_ways_keep_the_best_on_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TopK.offer_both`` (one pass over a block for its rows and its columns) against a brute-force sort of
    everything offered, with each of its paths taken: the shared candidates, both dense loops, the two offers of
    before (too many candidates for one pass), a row-wise and a column-wise push too ragged to pad."""
    from concurrent.futures import ThreadPoolExecutor

    # each direction's pushes, told apart by thread: the rows' run here, the columns' on the pool's thread (the two
    # interleave in any order, and a column push that declines may be followed by offer_columns' own)
    pushes: dict[str, list[bool]] = {"rows": [], "columns": []}
    here = threading.get_ident()
    real_push = TopK.push

    def recording_push(self: TopK, *args: Any) -> bool:
        ok = real_push(self, *args)
        pushes["rows" if threading.get_ident() == here else "columns"].append(ok)
        return ok

    monkeypatch.setattr(TopK, "push", recording_push)
    rng = np.random.default_rng(5)
    g = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    n, k, w = 400, 5, 100
    top = TopK(faiss, n, k)
    offered: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for a in range(0, n, w):  # the diagonal blocks first, as symmetric_knn offers them: every heap full
        s = g(w, w)
        top.offer_rows(s, a, a)
        for i in range(w):
            offered[a + i] += [(float(v), a + j) for j, v in enumerate(s[i])]
    one_row = g(w, w) - 3.0
    one_row[7] = 5.0 + rng.random(w, dtype=np.float32)  # every row-wise candidate in one heap
    one_column = g(w, w) - 3.0
    one_column[:, 9] = 5.0 + rng.random(w, dtype=np.float32)
    # (a, c, block, path, pushes): "shared" = one pass, candidates of both directions found at once; "dense" = both
    # directions' dense loops at once; "separate" = the two offers of before (each decides for itself)
    cases = [(0, 100, g(w, w) - 2.0, "shared", [True, True]),  # few candidates: one pass, both pushed
             (0, 200, g(w, w) + 1.0, "dense", []),  # most scores above the roots: both dense loops
             (0, 300, one_row, "shared", [False, True]),  # rows too ragged: the dense loop for them
             (100, 200, one_column, "shared", [True, False]),  # columns too ragged: offer_columns decides
             (100, 300, g(w, w) + 0.5, "separate", []),  # over SPARSE_MAX, DENSE_ABOVE off: the two offers
             (200, 300, g(w, w) - 2.0, "shared", [True, True])]
    taken: list[str] = []
    real_rows, real_dense = TopK.offer_rows, TopK._dense_both
    monkeypatch.setattr(TopK, "offer_rows", lambda self, *a: taken.append("separate") or real_rows(self, *a))
    monkeypatch.setattr(TopK, "_dense_both", lambda self, *a: taken.append("dense") or real_dense(self, *a))
    with ThreadPoolExecutor(max_workers=1) as pool:
        for a, c, s, path, pushed in cases:
            taken.clear()
            pushes["rows"].clear()
            pushes["columns"].clear()
            top.DENSE_ABOVE = 1.0 if path == "separate" else TopK.DENSE_ABOVE
            top.offer_both(s, a, c, pool)
            assert (taken[:1] or ["shared"]) == [path], (a, c, taken)
            if path == "shared":
                assert [pushes["rows"][:1], pushes["columns"][:1]] == [pushed[:1], pushed[1:]], (a, c, pushes)
            for i in range(w):
                offered[a + i] += [(float(v), c + j) for j, v in enumerate(s[i])]
                offered[c + i] += [(float(v), a + j) for j, v in enumerate(s[:, i])]
    scores, rows = top.sorted()
    for h in range(n):
        best = sorted(offered[h], key=lambda vi: -vi[0])[:k]
        assert scores[h].tolist() == [v for v, _ in best], h
        value_of = {i: v for v, i in offered[h]}
        assert [value_of[int(i)] for i in rows[h]] == scores[h].tolist(), h


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symmetric_evaluation_is_bit_identical_on_exact_products(monkeypatch: pytest.MonkeyPatch,
                                                                  seed: int) -> None:
    c = exact_case(seed)
    cases: list[tuple[dict[str, Any], EvalConfig]] = [
        ({}, EvalConfig(bootstrap=30)),
        ({"ids": c["ids"]}, EvalConfig(bootstrap=0, ks=[1, 3, 7], batch_size=50)),
        ({"ids": c["ids"]}, EvalConfig(bootstrap=0, max_r=5)),  # k = 10: the heaps take the sparse path
        ({"ids": c["ids"], "groups": c["groups"]}, EvalConfig(bootstrap=20, exclude_same_group=True)),
        ({"ids": c["ids"], "groups": c["groups"]}, EvalConfig(bootstrap=0, exclude_same_group=True, max_r=5)),
    ]
    for kw, cfg in cases:
        assert_same(*_both_ways(monkeypatch, c, cfg, **kw))


def test_symmetric_evaluation_matches_on_gaussian_data(monkeypatch: pytest.MonkeyPatch) -> None:
    c = gaussian_case(5)
    for kw, cfg in [({}, EvalConfig(bootstrap=25)),
                    ({"ids": c["ids"], "groups": c["groups"]}, EvalConfig(bootstrap=0, exclude_same_group=True))]:
        assert_same(*_both_ways(monkeypatch, c, cfg, **kw))


def test_split_evaluation_takes_the_symmetric_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-split evaluation (one mask for queries and gallery) is leave-one-out too, hence symmetric."""
    c = exact_case(3, n=900)
    split = np.where(np.arange(900) % 3 == 0, "seen", "unseen")
    table = {"fine": c["labels"][:, 0], "coarse": c["labels"][:, 1], "id": c["ids"], "split": split}
    cfg = EvalConfig(bootstrap=10)
    spy = CallSpy(monkeypatch, ev, "symmetric_knn")
    monkeypatch.setattr(ev, "SYMMETRIC_MIN_DIM", 1)
    monkeypatch.setattr(ev, "SYMMETRIC_BLOCK", 64)
    sym = evaluate_embeddings(c["x"], table, cfg)
    assert spy.calls == 2  # one per split
    monkeypatch.setattr(ev, "SYMMETRIC_BLOCK", 10**9)
    assert evaluate_embeddings(c["x"], table, cfg) == sym
    assert spy.calls == 2


def test_symmetric_path_only_when_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries distinct from the gallery, a gallery of one block, mostly skipped queries, or a small dimension:
    the plain path."""
    c = exact_case(4)
    spy = CallSpy(monkeypatch, ev, "symmetric_knn")
    monkeypatch.setattr(ev, "SYMMETRIC_BLOCK", 64)
    run_split(c["x"], c["labels"], cfg=EvalConfig(bootstrap=0))  # D = 16 < SYMMETRIC_MIN_DIM
    assert spy.calls == 0
    monkeypatch.setattr(ev, "SYMMETRIC_MIN_DIM", 16)
    x, lab = c["x"], c["labels"]
    ev.evaluate_retrieval(x, x.copy(), lab, lab, cfg=EvalConfig(bootstrap=0))  # two arrays: not symmetric
    half = np.arange(600) < 200
    run_split(x, lab, query_mask=half, cfg=EvalConfig(bootstrap=0))  # queries a third of the gallery
    singletons = lab.copy()
    singletons[:400, 0] = np.arange(1000, 1400)  # 400 queries with no relevant item are skipped
    run_split(x, singletons, cfg=EvalConfig(bootstrap=0))
    assert spy.calls == 0
    run_split(x[:64], lab[:64], cfg=EvalConfig(bootstrap=0))  # one block
    assert spy.calls == 0
    run_split(x, lab, cfg=EvalConfig(bootstrap=0))
    assert spy.calls == 1


def test_symmetric_search_reports_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    c = exact_case(6)
    monkeypatch.setattr(ev, "SYMMETRIC_MIN_DIM", 1)
    monkeypatch.setattr(ev, "SYMMETRIC_BLOCK", 128)
    seen: list[tuple[int, int]] = []
    res = run_split(c["x"], c["labels"], cfg=EvalConfig(bootstrap=0), progress=lambda d, t: seen.append((d, t)))
    nq = res.block["n_queries"]
    assert len(seen) == 15 and seen[-1] == (nq, nq)  # 5 row blocks: 15 blocks of the upper triangle
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
