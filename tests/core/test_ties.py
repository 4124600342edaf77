"""Tie-breaking at the k-th position: the batched widening gives every query exactly the naive top k."""

from __future__ import annotations

import numpy as np
import pytest

from ofgr_core.retrieval import ties
from ofgr_core.retrieval.index import exact_searcher
from ofgr_core.retrieval.ties import DECIMALS, id_hash_keys, search_tiebroken


def _naive_top(x: np.ndarray, gallery: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Every gallery item scored, sorted by (score rounded to DECIMALS descending, key ascending): the definition."""
    out = np.empty((len(x), k), dtype=np.int64)
    for i, q in enumerate(x.astype(np.float64)):
        s = np.round((gallery.astype(np.float64) @ q).astype(np.float32).astype(np.float64), DECIMALS)
        out[i] = np.lexsort((keys, -s))[:k]
    return out


@pytest.mark.parametrize("per_call", [1, 7, 1 << 22])
def test_batched_widening_equals_the_naive_ranking(per_call: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of identical vectors of several sizes straddle the k-th position of most queries, so most queries
    are widened, some more than once; however many go to one search, each gets the naive ranking."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(12, 8)).astype(np.float32)
    sizes = rng.integers(1, 40, size=12)  # tie groups from 1 to 39 identical vectors
    gallery = np.repeat(base, sizes, axis=0)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    n = len(gallery)
    keys = id_hash_keys([f"item{i}" for i in range(n)])
    monkeypatch.setattr(ties, "WIDEN_ENTRIES", per_call * 64)  # widths of 64 and up: per_call queries a search
    calls: list[int] = []
    searcher = exact_searcher(np.ascontiguousarray(gallery), ids=np.arange(n), device="cpu")

    def search(q: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(q))
        return searcher.search_chunk(q, w)

    for k in (5, 16, 33):
        calls.clear()
        got = search_tiebroken(search, gallery, k, keys, n)
        np.testing.assert_array_equal(got, _naive_top(gallery, gallery, keys, k))
        assert len(calls) > 1  # widened
        if per_call > 100:
            assert max(calls[1:]) > 1  # the widened queries went together


def test_a_tie_group_inside_the_margin_needs_no_second_search() -> None:
    """Pairs of identical vectors straddle the k-th position of many queries; the first search holds k + 1 +
    TIE_MARGIN results, so every pair is resolved from it: one search in all, and still the naive ranking."""
    rng = np.random.default_rng(5)
    gallery = np.repeat(rng.normal(size=(60, 16)).astype(np.float32), 2, axis=0)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    n = len(gallery)
    keys = id_hash_keys([f"pair{i}" for i in range(n)])
    searcher = exact_searcher(np.ascontiguousarray(gallery), ids=np.arange(n), device="cpu")
    calls: list[int] = []

    def search(q: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(w)
        return searcher.search_chunk(q, w)

    for k in (3, 8, 21):  # odd k: the k-th and (k+1)-th are one pair for many queries
        calls.clear()
        got = search_tiebroken(search, gallery, k, keys, n)
        np.testing.assert_array_equal(got, _naive_top(gallery, gallery, keys, k))
        assert calls == [k + 1 + ties.TIE_MARGIN]


def test_order_equals_sorting_every_row() -> None:
    """``_order`` leaves rows in order already untouched, swaps tied pairs and sorts rows with longer runs of
    ties: the same arrays as sorting every row by (rounded score descending, key ascending), for rows in search
    order, with pairs and triples of ties, with empty slots, and for rows in no order at all."""
    rng = np.random.default_rng(8)
    q, w = 300, 40
    scores = -np.sort(-rng.normal(0.3, 0.1, (q, w)).astype(np.float32), axis=1)  # best first, as searches return
    scores[::3, 5:8] = scores[::3, 5:6]  # runs of three equal scores in a third of the rows: sorted whole
    scores[1::3, 20:22] = scores[1::3, 20:21]  # pairs: swapped when their keys say so
    scores[1::3, 30:32] = scores[1::3, 30:31]
    scores[1::7, 10] = scores[1::7, 9] + np.float32(1e-8)  # equal only after rounding (an unrounded order)
    rows = rng.permutation(q * w)[: q * w].reshape(q, w) % 500
    rows[4, -5:] = -1  # empty slots: last, whatever their scores
    scores[4, -5:] = np.finfo(np.float32).min
    keys = id_hash_keys([f"g{i}" for i in range(500)])
    shuffled = rng.permuted(np.arange(w)[None].repeat(q, 0), axis=1)
    for s, r in [(scores, rows), (np.take_along_axis(scores, shuffled, 1), np.take_along_axis(rows, shuffled, 1))]:
        rounded = np.where(r >= 0, np.round(s.astype(np.float64), DECIMALS), -np.inf)
        order = np.lexsort((keys[np.maximum(r, 0)], -rounded), axis=-1)
        got_s, got_r = ties._order(s, r, keys)
        assert np.array_equal(got_s, np.take_along_axis(rounded, order, axis=-1))
        assert np.array_equal(got_r, np.take_along_axis(r, order, axis=-1))
        assert got_r is not r and not np.shares_memory(got_r, r)  # the caller's array is not reordered
