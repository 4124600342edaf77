"""Order-independent tie-breaking for kNN results.

FAISS returns gallery items with equal scores in storage order, so duplicated or degenerate embeddings would
be ranked by how the rows happen to be sorted (sorted by class, all-zero embeddings scored MAP@R 0.25). Here
ties are broken by a hash of each item's id instead, which no ordering of rows can favour: results are
re-sorted by (score descending, hash ascending), and when items tie across the k-th position, the search is
widened until every item tied with the k-th one has been seen. Scores equal after rounding to ``DECIMALS``
decimals count as tied (identical vectors can differ in the last float32 bit through BLAS blocking).
See docs/metrics.md, "Ties".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

DECIMALS = 6
# Results searched beyond the k + 1 the check needs: a tie group that ends within them is resolved from the first
# search alone. Ties by rounding are pairs or triples; at 100,000 x 512 ~700 queries straddle their k-th position,
# and without the margin every one of them cost a second search of the whole gallery.
TIE_MARGIN = 16
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def id_hash_keys(ids: Sequence[object] | np.ndarray) -> np.ndarray:
    """A uint64 per item: the first 8 bytes of BLAKE2b of ``str(id)`` (stable across runs and machines)."""
    values = np.asarray(ids)
    uniq, codes = np.unique(values.astype(str), return_inverse=True)
    hashed = np.fromiter(
        (int.from_bytes(hashlib.blake2b(u.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
         for u in uniq.tolist()),
        dtype=np.uint64, count=len(uniq),
    )
    return hashed[codes.reshape(-1)]


def _order(scores: np.ndarray, rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each result row (Q x K) by (rounded score desc, key asc); empty slots (-1) last.

    Searches return their rows best first, so only equal rounded scores can be out of order, and those are mostly
    pairs: a pair is swapped when its keys say so, and only rows with a longer run of equal scores (or not in
    search order at all) are sorted whole (0.29 s instead of 1.2 s for 100,000 x 261 rows, 38 % with a tie).
    """
    s = np.round(scores.astype(np.float64), DECIMALS)
    empty = rows < 0
    if empty.any():
        s[empty] = -np.inf
    out = rows.copy()
    equal = s[:, 1:] == s[:, :-1]
    whole = (s[:, 1:] > s[:, :-1]).any(axis=1) | (equal[:, 1:] & equal[:, :-1]).any(axis=1)
    r, j = np.nonzero(equal & ~whole[:, None])  # runs of two equal scores in rows otherwise in order
    if len(r):
        first, second = rows[r, j], rows[r, j + 1]
        swap = keys[np.maximum(first, 0)] > keys[np.maximum(second, 0)]
        out[r[swap], j[swap]], out[r[swap], j[swap] + 1] = second[swap], first[swap]
    sort = np.flatnonzero(whole)
    if len(sort):
        su, ru = s[sort], rows[sort]
        order = np.lexsort((keys[np.maximum(ru, 0)], -su), axis=-1)
        s[sort] = np.take_along_axis(su, order, axis=-1)
        out[sort] = np.take_along_axis(ru, order, axis=-1)
    return s, out


def search_tiebroken(search: Search, x: np.ndarray, k: int, keys: np.ndarray, n_gallery: int,
                     max_k: int | None = None, first: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Top-``k`` gallery rows per query with ties broken by ``keys`` (see the module docstring).

    Args:
        search: ``search(x, k) -> (scores, rows)``, rows ``-1`` for empty slots.
        x: Q x D queries.
        k: Results wanted (``<= n_gallery``).
        keys: Per gallery row, the tie-break key (``id_hash_keys``).
        n_gallery: Gallery size.
        max_k: Largest ``k`` the searcher accepts (GPU), if any.
        first: What ``search(x, w)`` returns for some ``w >= min(k + 1, n_gallery)``, when the caller has it
            already (``index.symmetric_knn``; ``TIE_MARGIN`` more columns spare most widening searches); only
            the widening searches are then run here.
    """
    limit = n_gallery if max_k is None else min(n_gallery, max_k)
    want = min(k + 1, limit)
    if first is not None:
        if first[1].shape[1] < want:
            raise ValueError(f"first holds {first[1].shape[1]} results per query, {want} needed")
        width = min(first[1].shape[1], k + 1 + TIE_MARGIN, limit)
        found = first[0][:, :width], first[1][:, :width]
    else:
        width = min(k + 1 + TIE_MARGIN, limit)
        found = search(x, width)
    scores, rows = _order(*found, keys)
    if want <= k:
        return rows[:, :k]
    out: np.ndarray = rows[:, :k].copy()
    tied = (rows[:, k] >= 0) & (scores[:, k] == scores[:, k - 1])
    _widen(search, x, k, keys, limit, width, np.flatnonzero(tied & ~_group_seen(scores, rows, k, limit)), out)
    return out


def _group_seen(scores: np.ndarray, rows: np.ndarray, k: int, limit: int) -> np.ndarray:
    """Per ordered result row: has it seen every item tied with its k-th? Yes when the group ends inside the
    result, the result has empty slots (nothing more to find) or it is ``limit`` wide (it holds every item)."""
    w = rows.shape[1]
    seen: np.ndarray = (w >= limit) | (rows[:, w - 1] < 0) | (scores[:, w - 1] != scores[:, k - 1])
    return seen


# results held at once by a widening search (queries x width): with the sort's float64 and int64 copies about
# 56 bytes each, ~230 MB at most
WIDEN_ENTRIES = 1 << 22


def _widen(search: Search, x: np.ndarray, k: int, keys: np.ndarray, limit: int, want: int, todo: np.ndarray,
           out: np.ndarray) -> None:
    """Re-search the queries ``todo`` (duplicates or degenerate vectors straddle their k-th position), doubling
    the width until the items tied with the k-th one have all been seen; their top ``k`` go to ``out``.

    The queries still tied at a width are searched together, in one call per ``WIDEN_ENTRIES`` scores rather
    than one query at a time: at 100,000 x 512 a few hundred queries straddle their k-th position by rounding
    alone, and searching them one by one cost 13 s of a 74 s evaluation. Together they take FAISS's BLAS path,
    as the first search did (one query alone takes its sequential path).
    """
    w = want
    while len(todo):
        w = min(limit, 2 * w)
        per_call = max(1, WIDEN_ENTRIES // w)
        still = []
        for a in range(0, len(todo), per_call):
            part = todo[a : a + per_call]
            si, ri = _order(*search(x[part], w), keys)
            done = _group_seen(si, ri, k, limit)
            out[part[done]] = ri[done, :k]
            still.append(part[~done])
        todo = np.concatenate(still)
