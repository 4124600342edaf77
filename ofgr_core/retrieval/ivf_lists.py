"""An IVF-Flat search of many queries, list by list: each inverted list meets its queries in one matrix product.

faiss's IVF search walks the probed lists one query at a time, a distance loop per query and list (~85 ns a
512-d vector on the 2-core box of docs/benchmarks.md), while an exact search is one BLAS product (~8 ns a
vector): at 1M x 512 an IVF that scans 6 % of the lists took 0.7 of the exact time. ``ivf_knn_by_list`` turns the
loops around: for a chunk of queries it finds each query's ``nprobe`` lists with the index's own quantizer (as
faiss's search does), gathers, for each list, the queries that probe it and multiplies them with the list's
vectors in one GEMM, and offers those scores to the queries' heaps (faiss's own heaps, ``addn_with_ids``).
Every query meets exactly the vectors faiss's search would show it, so the result is faiss's IVF search to float
rounding (two BLAS blockings can differ in a score's last bit; ``ties.search_tiebroken`` then orders ties by item
id either way), at the speed of matrix products.

It pays when many queries share each list: an all-vs-all evaluation over the index's own rows, which is where
``retrieval.evaluate`` uses it (the first search of every query chunk, like ``index.symmetric_knn`` for exact
search). The lists' vectors are read in place from the index (no copy); each chunk holds its queries' heaps,
split over a few threads by query (each with one BLAS thread: see ``_search_chunk``). At 1M x 512, nprobe 256,
the whole evaluation (build, search, exact audit) took 0.12 of an exact one (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ofgr_core.common.threads import map_slices, usable_cpus
from ofgr_core.retrieval.index import Progress, TopK, faiss_threads, import_faiss

# (query, probed list) pairs per chunk of queries (their probes and sort, 16 bytes each): 65,536 queries at
# nprobe 256, of which ~4,000 meet each of 4,000 lists in one product; chunks of 1,024 to 65,536 queries
PAIRS_PER_CHUNK = 1 << 24


def by_list_index(index: Any) -> Any | None:
    """The ``IndexIVFFlat`` (inner product, lists in memory) that ``ivf_knn_by_list`` can search, or None."""
    faiss = import_faiss()
    # exactly IndexIVFFlat: a wrapper (refinement, pre-transform) or a subclass (dedup) searches otherwise
    if type(index) is not faiss.IndexIVFFlat or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    if not isinstance(faiss.downcast_InvertedLists(index.invlists), faiss.ArrayInvertedLists):
        return None
    return index


def ivf_knn_by_list(index: Any, queries: np.ndarray, k: int, *, chunk: int | None = None,
                    threads: int | None = None, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What ``index.search(queries, k)`` returns (its ``nprobe``), computed one inverted list at a time.

    Args:
        index: A CPU ``faiss.IndexIVFFlat`` with inner-product metric and in-memory lists (``by_list_index``).
        queries: Q x D float32 queries (float16 or a memmap is read a chunk at a time as float32).
        k: Results per query.
        chunk: Queries searched together (default: ``PAIRS_PER_CHUNK / nprobe``, within 1,024-65,536).
        threads: Threads, each searching its share of a chunk's queries with one BLAS thread (default: the
            CPUs this process may use, at most 8).
        progress: ``progress(queries_done, Q)`` after each chunk.

    Returns:
        ``(scores, rows)``: Q x k float32 scores, best first, and int64 row numbers of the index; ``-1`` rows
        (with faiss's lowest score) where the probed lists hold fewer than ``k`` vectors.
    """
    faiss = import_faiss()
    ivf = by_list_index(index)
    if ivf is None:
        raise ValueError("ivf_knn_by_list needs a CPU IndexIVFFlat with inner-product metric and in-memory lists")
    nq, d = queries.shape
    if d != ivf.d:
        raise ValueError(f"queries have dimension {d}, the index {ivf.d}")
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    nlist, nprobe = int(ivf.nlist), int(min(ivf.nprobe, ivf.nlist))
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    lists: list[tuple[np.ndarray, np.ndarray] | None] = []
    for lst in range(nlist):  # views of each list's ids and vectors inside the index (no copies)
        m = int(invlists.list_size(lst))
        if m == 0:
            lists.append(None)
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), m)
        vectors = faiss.rev_swig_ptr(invlists.get_codes(lst), m * d * 4).view(np.float32).reshape(m, d)
        lists.append((ids, vectors))
    if chunk is None:
        chunk = max(1024, min(65536, PAIRS_PER_CHUNK // nprobe))
    if threads is None:
        threads = min(8, usable_cpus())
    scores = np.empty((nq, k), dtype=np.float32)
    rows = np.empty((nq, k), dtype=np.int64)
    for a in range(0, nq, chunk):
        b = min(a + chunk, nq)
        x = np.ascontiguousarray(queries[a:b], dtype=np.float32)
        scores[a:b], rows[a:b] = _search_chunk(faiss, ivf.quantizer.search(x, nprobe)[1], x, lists, k, threads)
        if progress is not None:
            progress(b, nq)
    return scores, rows


def _search_chunk(faiss: Any, probes: np.ndarray, x: np.ndarray, lists: list[tuple[np.ndarray, np.ndarray] | None],
                  k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of the queries ``x`` over the lists ``probes`` names for each (C x nprobe, -1 for none).

    The queries are cut into ``threads`` contiguous parts, one thread each, every thread going through all the
    lists for its part's heaps (disjoint rows) with one BLAS thread and faiss's heap loops on one OpenMP thread:
    BLAS threads and OpenMP workers sharing the cores spin-wait against each other between the many small
    calls (measured in docs/benchmarks.md, "IVF-Flat searched list by list").
    """
    nlist, d = len(lists), x.shape[1]
    top = TopK(faiss, len(x), k)  # CMin heaps: the root is the k-th best score kept
    flat = probes.ravel()
    valid = flat >= 0  # fewer lists than nprobe: the quantizer pads with -1
    # the queries of each list: a stable sort of the (query, probe) pairs by list keeps queries ascending
    order = np.argsort(flat if valid.all() else np.where(valid, flat, nlist), kind="stable")
    by_list = order // probes.shape[1]
    counts = np.bincount(flat[valid], minlength=nlist)
    ends = np.cumsum(counts)
    probed = [(int(lst), held) for lst in np.flatnonzero(counts) if (held := lists[lst]) is not None]
    widest = max((len(ids) for _, (ids, _) in probed), default=0)

    def part(span: tuple[int, int]) -> None:
        lo, hi = span
        # one buffer each for the gathered queries and the scores, reused list after list (no page faults)
        gathered = np.empty(int(counts.max()) * d, dtype=np.float32)
        sim = np.empty(int(counts.max()) * widest, dtype=np.float32)
        for lst, (ids, vectors) in probed:
            members = by_list[ends[lst] - counts[lst] : ends[lst]]
            members = members[np.searchsorted(members, lo) : np.searchsorted(members, hi)]
            if len(members):
                q = np.take(x, members, axis=0, out=gathered[: len(members) * d].reshape(len(members), d))
                s = np.matmul(q, vectors.T, out=sim[: len(members) * len(ids)].reshape(len(members), -1))
                _offer_list(faiss, top, s, members, ids)

    n = len(x)
    spans = [(n * t // threads, n * (t + 1) // threads) for t in range(threads)]
    with faiss_threads(1), threadpool_limits(1, user_api="blas"):
        map_slices(part, spans, threads)
    return top.sorted()


def _offer_list(faiss: Any, top: TopK, s: np.ndarray, members: np.ndarray, ids: np.ndarray) -> None:
    """Scores ``s`` (one row per heap in ``members``, sorted; one column per item ``ids`` of a list) offered to
    ``top``'s heaps ``members``.

    Only scores above a heap's root can enter it. Once a query has seen a few lists these are a small share, and
    only the heaps that get one are gathered and offered them (``TopK.push``); while they are many (the first
    lists a heap sees, its root still the lowest float), every score of the members goes through their heap
    loops.
    """
    above = s > top.scores[members, 0][:, None]
    n_above = int(np.count_nonzero(above))
    if n_above == 0:
        return
    if n_above <= TopK.SPARSE_MAX * s.size:
        r, c = np.divmod(np.flatnonzero(above), s.shape[1])  # r sorted (a 1-D search is ~5x a 2-D one)
        starts = np.flatnonzero(np.diff(r, prepend=-1))
        heaps = members[r[starts]]
        sub = TopK(faiss, len(heaps), top.k, (top.scores[heaps], top.rows[heaps]))
        heap = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(r))))
        if sub.push(0, len(heaps), heap, s[r, c], ids[c]):
            top.scores[heaps], top.rows[heaps] = sub.scores, sub.rows
            return
    sub = TopK(faiss, len(members), top.k, (top.scores[members], top.rows[members]))
    sub.heaps.addn_with_ids(s.shape[1], faiss.swig_ptr(s), faiss.swig_ptr(ids), 0)
    top.scores[members], top.rows[members] = sub.scores, sub.rows
