"""FAISS indexes over L2-normalised embeddings: exact inner product, IVF-Flat, IVF-PQ and HNSW.

All indexes score by inner product, which on unit vectors is cosine similarity and ranks exactly like
L2 distance. An index answers in *rows* (positions of the vectors it was built from); ``SearchIndex.ids``
maps rows to item ids, so a persisted index returns item ids without a FAISS ``IndexIDMap`` (which GPU
indexes do not support for every type).

The device is chosen once, here: ``auto`` means GPU exactly when ``faiss.get_num_gpus() > 0``, with the
index sharded over all GPUs when there are several. No GPU function is called without that check, because
faiss-gpu's ``index_cpu_to_all_gpus`` silently returns an empty index on a machine without GPUs.

``faiss`` is imported inside functions so that ``ofgr --help`` does not pay for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofgr_core.common.atomic import atomic_path, atomic_save_npy, atomic_write_text
from ofgr_core.common.errors import ConfigError, DataError, DependencyError, NotFoundError
from ofgr_core.config import IndexConfig

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
META_FILE = "index.json"
# faiss GPU k-selection is limited to this many neighbours per query (faiss >= 1.7.3).
GPU_MAX_K = 2048

Progress = Callable[[int, int], None]


def import_faiss() -> Any:
    """Import faiss or explain, in one line, how to install it."""
    try:
        import faiss
    except ImportError:
        raise DependencyError(
            "faiss is not installed: pip install 'ofgr[cpu]' (or 'ofgr[gpu]' on a CUDA machine)"
        ) from None
    return faiss


def num_gpus() -> int:
    """GPUs faiss can use (0 for faiss-cpu builds, which lack the function or report none)."""
    faiss = import_faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_device(requested: str = "auto") -> str:
    """``"gpu"`` or ``"cpu"`` for a requested ``auto``/``cpu``/``gpu``.

    Raises:
        ConfigError: ``gpu`` was requested but faiss sees no GPU.
    """
    if requested == "cpu":
        return "cpu"
    n = num_gpus()
    if requested == "gpu" and n == 0:
        raise ConfigError(
            "eval.index.device=gpu but faiss reports no GPU (install 'ofgr[gpu]' on a CUDA host)"
        )
    return "gpu" if n > 0 else "cpu"


class IndexBuildError(DataError):
    """An index type that cannot be built on this data (too few vectors to train it); names the type, the
    count and faiss's reason. Front ends name their own option (``--index``, ``eval.index.type``)."""

    def __init__(self, index_type: str, n: int, reason: str, option: str = "eval.index.type={}") -> None:
        self.index_type, self.n, self.reason = index_type, n, reason
        super().__init__(f"{option.format(index_type)} cannot be built on {n} vectors ({reason}); use "
                         f"{option.format('flat')} (exact, fine at this size) or more data")


def iter_chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(n)`` in steps of ``size``."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def unit_rows(x: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """A C-contiguous copy of ``x`` (as ``dtype``) with unit L2 rows; zero rows stay zero.

    Each row is first divided by its largest absolute value, then by its norm: squaring 1e38 (or 1e-42) in
    float32 overflows to inf (underflows to 0) and a norm taken directly turns such a row into zeros or NaN.
    Scaling first keeps every finite non-zero row's direction; a row scaled by a power of two normalises to
    exactly the same bits as the unscaled row.
    """
    src = np.asarray(x)
    # scale in the wider of the two types: float64 rows of 1e300 would overflow in a float32 copy
    work = np.result_type(src.dtype, dtype) if src.dtype.kind == "f" else np.dtype(dtype)
    out = np.array(src, dtype=work, order="C", copy=True)
    if out.ndim != 2 or not out.size:
        return out.astype(dtype, copy=False)
    peak = np.max(np.abs(out), axis=1, keepdims=True)
    np.divide(out, peak, out=out, where=(peak > 0) & np.isfinite(peak))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return np.ascontiguousarray(out, dtype=dtype)


def normalized_chunk(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy of ``x`` with unit rows (zero rows stay zero); see :func:`unit_rows`."""
    return unit_rows(x, np.float32)


def is_normalized(x: np.ndarray, *, chunk: int = 65536, atol: float = 1e-3) -> bool:
    """Whether every row of ``x`` has unit L2 norm, read in chunks so memmaps stay on disk."""
    for a, b in iter_chunks(len(x), chunk):
        norms = np.linalg.norm(np.asarray(x[a:b], dtype=np.float32), axis=1)
        if not np.all(np.abs(norms - 1.0) <= atol):
            return False
    return True


def as_unit_float32(x: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """``x`` itself when it is already unit-norm C-contiguous float32 (no copy, memmaps stay memmaps),
    otherwise a normalised float32 copy built chunk by chunk."""
    if x.ndim != 2:
        raise DataError(f"embeddings must be a 2-D array (N x D), got shape {tuple(x.shape)}")
    if x.dtype == np.float32 and x.flags.c_contiguous and is_normalized(x, chunk=chunk):
        return x
    out = np.empty(x.shape, dtype=np.float32)
    for a, b in iter_chunks(len(x), chunk):
        out[a:b] = normalized_chunk(x[a:b])
    return out


def as_searchable(x: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """Like ``as_unit_float32``, but a unit-norm float16 array is also kept as it is (no float32 copy).

    The exact searcher reads a float16 gallery in blocks converted on the fly, so a 10M x 512 float16
    memmap (10 GB) is searched without the 20 GB float32 copy.
    """
    if (x.ndim == 2 and x.dtype == np.float16 and x.flags.c_contiguous
            and is_normalized(x, chunk=chunk, atol=2e-3)):
        return x
    return as_unit_float32(x, chunk=chunk)


# Gallery rows per block when a float16 gallery is searched (a float32 block of 262k x 512 is 512 MB).
HALF_BLOCK_ROWS = 1 << 18


def _knn_blocked(knn: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]], xq: np.ndarray,
                 xb: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over a gallery that is not float32 (float16), one float32 block at a time, merged.

    ``knn(queries, block, k)`` searches one in-memory block. Ties are ordered by row, as one pass would.
    """
    nq = len(xq)
    best_d = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.full((nq, 0), -1, dtype=np.int64)
    for a, b in iter_chunks(len(xb), block):
        d, i = knn(xq, np.ascontiguousarray(xb[a:b], dtype=np.float32), min(k, b - a))
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, i + a], axis=1)
        order = np.lexsort((i, -d), axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
    return best_d, best_i


def _transpose_into(out: np.ndarray, x: np.ndarray) -> None:
    """``out[:] = x.T``: by torch's blocked transpose copy (on its threads) where torch is loaded already, ~20
    ms for a 4096 x 4096 float32 block on the 2-core box; else in numpy tiles of 256, ~70 ms (one strided numpy
    copy: ~131 ms). An evaluation outside a training process (``ofgr eval-embeddings``, a library caller) does
    not import torch for it: the import alone costs ~1.5 s and ~0.4-0.7 GB of resident memory."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.from_numpy(out).copy_(torch.from_numpy(x).T)
        return
    tile = 256
    for i in range(0, x.shape[0], tile):
        for j in range(0, x.shape[1], tile):
            out[j : j + tile, i : i + tile] = x[i : i + tile, j : j + tile].T


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """faiss's OpenMP threads set to ``n`` for the block (process-wide), then put back.

    Between BLAS products from numpy, faiss's heap loops on one thread: its OpenMP workers spin-wait for a
    while after each parallel loop (libgomp's default) and take the cores from numpy's BLAS threads (measured
    in docs/benchmarks.md, "IVF-Flat searched list by list").
    """
    faiss = import_faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _above(s: np.ndarray, bar: np.floating[Any] | float) -> np.ndarray:
    """Flat positions of the scores of ``s`` above ``bar``."""
    return np.flatnonzero(s > bar)


class TopK:
    """The ``k`` best scores of each of ``n`` rows in faiss min-heaps (the selection ``faiss.knn`` uses).

    Blocks of scores are offered row-wise or column-wise. A heap's root is the lowest score it keeps, so only
    the scores above it can enter; once a row has seen a few thousand items these are a small fraction. They
    are found by one vectorised comparison and pushed alone (``addn_with_ids``), instead of walking every
    score through the heap loop, and a column-wise offer then needs no transposed copy of the block. Empty
    heaps are seeded the same way, with each row's k-th best score (``np.partition``) as the bar.
    """

    # Candidates above this share of a block go through the dense loop (per candidate the sparse path costs
    # about as much as ~15 scores of the dense one).
    SPARSE_MAX = 0.08
    # An off-diagonal block with more than this share of its scores above the lower of its heap roots goes to
    # both directions' dense loops at once (the rows' here, the columns' transposed on the other thread): while
    # the heaps are loose (the first blocks of each row, ~4-8 % at 40,000 x 512) finding and grouping the shared
    # candidates costs more than the two loops (~100 ms against ~180 ms a 4096 x 4096 block); from ~2 % on
    # it costs less (benchmarks/bench_symmetric.py).
    DENSE_ABOVE = 0.03
    # Rows below which a row-wise offer stays on one thread (starting a half on the other costs ~0.1 ms).
    PARALLEL_MIN_ROWS = 256

    def __init__(self, faiss: Any, n: int, k: int, held: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """``n`` empty heaps of ``k``, or, with ``held``, the heaps already in those C-contiguous n x k float32
        scores and int64 rows (as this class leaves them), which are then updated in place."""
        self.faiss = faiss
        self.k = k
        if held is None:
            self.scores = np.empty((n, k), dtype=np.float32)
            self.rows = np.empty((n, k), dtype=np.int64)
        else:
            self.scores, self.rows = held
        self.heaps = faiss.float_minheap_array_t()  # CMin: the root is the k-th best score kept
        self.heaps.nh, self.heaps.k = n, k
        self.heaps.val, self.heaps.ids = faiss.swig_ptr(self.scores), faiss.swig_ptr(self.rows)
        if held is None:
            self.heaps.heapify()  # empty slots hold the lowest float
        self._scratch = np.empty(0, dtype=np.float32)  # the transposed block of a dense column-wise offer

    def offer_rows(self, s: np.ndarray, h0: int, id0: int, pool: Any = None) -> None:
        """Row ``i`` of ``s`` holds the scores of heap ``h0 + i`` for items ``id0, id0 + 1, ...``.

        With ``pool`` (an executor with a free thread), the second half of the rows goes to it while this thread
        offers the first: the halves touch disjoint heaps, and numpy's partition and comparisons and faiss's
        heap loop run outside the GIL (a diagonal block's seeding: ~0.6 of its time on one thread).
        """
        if pool is not None and len(s) >= 2 * self.PARALLEL_MIN_ROWS:
            m = len(s) // 2
            later = pool.submit(self.offer_rows, s[m:], h0 + m, id0)
            self.offer_rows(s[:m], h0, id0)
            later.result()
            return
        nh, width = s.shape
        idx = self._candidates(s, h0, axis=1)
        if idx is not None:
            heap = idx // width  # sorted already
            if self.push(h0, nh, heap, s.ravel()[idx], idx - heap * width + id0):
                return
        self._dense_rows(s, h0, id0)

    def _dense_rows(self, s: np.ndarray, h0: int, id0: int) -> None:
        """Every score of row ``i`` of ``s`` through heap ``h0 + i``'s loop (items ``id0, id0 + 1, ...``)."""
        self.heaps.addn(s.shape[1], self.faiss.swig_ptr(s), id0, h0, s.shape[0])

    def offer_columns(self, s: np.ndarray, h0: int, id0: int) -> None:
        """Column ``j`` of ``s`` holds the scores of heap ``h0 + j`` for items ``id0, id0 + 1, ...``."""
        nh = s.shape[1]
        idx = self._candidates(s, h0, axis=0)
        if idx is not None:
            i, j = np.divmod(idx, nh)
            # group by column; a stable sort of int16 keys is a radix sort
            order = np.argsort(j.astype(np.int16) if nh <= 1 << 15 else j, kind="stable")
            if self.push(h0, nh, j[order], s.ravel()[idx[order]], i[order] + id0):
                return
        self._dense_columns(s, h0, id0)

    def _dense_columns(self, s: np.ndarray, h0: int, id0: int) -> None:
        """Every score of column ``j`` of ``s`` through heap ``h0 + j``'s loop, from a transposed copy."""
        if self._scratch.size < s.size:
            self._scratch = np.empty(s.size, dtype=np.float32)
        t = self._scratch[: s.size].reshape(s.shape[1], s.shape[0])
        _transpose_into(t, s)
        self.heaps.addn(s.shape[0], self.faiss.swig_ptr(t), id0, h0, s.shape[1])

    def offer_both(self, s: np.ndarray, a: int, c: int, pool: Any) -> None:
        """An off-diagonal block both ways: row ``i`` of ``s`` to heap ``a + i`` (items ``c, c + 1, ...``) and
        column ``j`` to heap ``c + j`` (items ``a, a + 1, ...``), as ``offer_rows`` and ``offer_columns`` would.

        Once every heap of both is full, one comparison against the lower of their roots finds the candidates of
        both directions (a superset of each: ~1 % of the scores at 40k x 512 clustered, against 0.3 % and 0.7 %
        for the rows and the columns alone), so the block is read once instead of twice; each direction then
        keeps its own. The column-wise push runs on ``pool``'s thread. When a sample of the block's rows has more
        than ``DENSE_ABOVE`` of its scores above that bar, both directions take their dense loops instead (the
        columns' on ``pool``'s thread). Otherwise (heaps not yet full), or when the superset is over
        ``SPARSE_MAX`` of the block, the two offers run as before.
        """
        nr, nc = s.shape
        bar_r, bar_c = self.scores[a : a + nr, 0], self.scores[c : c + nc, 0]
        lowest = np.finfo(np.float32).min
        idx = None
        if nr >= 2 and bool((bar_r > lowest).all()) and bool((bar_c > lowest).all()):
            bar, half = min(bar_r.min(), bar_c.min()), nr // 2  # the two halves of the block on two threads
            sample = s[:: max(1, nr // 64)]
            if np.count_nonzero(sample > bar) > self.DENSE_ABOVE * sample.size:
                self._dense_both(s, a, c, pool)
                return
            upper = pool.submit(_above, s[half:], bar)
            idx = np.concatenate([_above(s[:half], bar), upper.result() + half * nc])
            if len(idx) > self.SPARSE_MAX * s.size:
                idx = None
        if idx is None:
            columns = pool.submit(self.offer_columns, s, c, a)
            self.offer_rows(s, a, c)
            columns.result()
            return
        values = s.ravel()[idx]
        i, j = np.divmod(idx, nc)
        columns = pool.submit(self._offer_column_candidates, s, c, a, values, i, j)
        keep = values > bar_r[i]
        if not self.push(a, nr, i[keep], values[keep], j[keep] + c):  # i is sorted: idx is
            self._dense_rows(s, a, c)
        columns.result()

    def _dense_both(self, s: np.ndarray, a: int, c: int, pool: Any) -> None:
        """``s`` through the dense loops of its rows' heaps (here) and its columns' (on ``pool``'s thread)."""
        columns = pool.submit(self._dense_columns, s, c, a)
        self._dense_rows(s, a, c)
        columns.result()

    def _offer_column_candidates(self, s: np.ndarray, h0: int, id0: int, values: np.ndarray, i: np.ndarray,
                                 j: np.ndarray) -> None:
        keep = values > self.scores[h0 + j, 0]
        i, j, values = i[keep], j[keep], values[keep]
        nh = s.shape[1]
        order = np.argsort(j.astype(np.int16) if nh <= 1 << 15 else j, kind="stable")
        if not self.push(h0, nh, j[order], values[order], i[order] + id0):
            self.offer_columns(s, h0, id0)

    def _candidates(self, s: np.ndarray, h0: int, axis: int) -> np.ndarray | None:
        """Flat positions in ``s`` of the scores that can enter their heap (heaps along ``1 - axis``).

        Full heaps: the scores above the root. Heaps with empty slots (the first offers), offered rows of at
        least ``k`` scores: the scores at or above each row's k-th best of this offer (a score below k others
        of the same offer is never among the k best). None, for the dense loop: heaps with empty slots offered
        narrower rows or columns (no strided partition), or full heaps with more than ``SPARSE_MAX`` of the
        scores above their roots.
        """
        nh, width = (s.shape[0], s.shape[1]) if axis == 1 else (s.shape[1], s.shape[0])
        bar = self.scores[h0 : h0 + nh, 0]
        if bool((bar > np.finfo(np.float32).min).all()):
            mask = s > (bar[:, None] if axis == 1 else bar[None, :])
            if np.count_nonzero(mask) > self.SPARSE_MAX * mask.size:
                return None
        elif width >= self.k and axis == 1:
            kth = np.partition(s, width - self.k, axis=1)[:, width - self.k]
            mask = s >= kth[:, None]
        else:
            return None
        return np.flatnonzero(mask)

    def push(self, h0: int, nh: int, heap: np.ndarray, values: np.ndarray, ids: np.ndarray) -> bool:
        """Offers ``values`` (with ``ids``) to heaps ``h0 + heap`` (``heap`` sorted); False if too ragged.

        They go in one padded ``nh x width`` matrix, a row per heap; padding is ``-inf``, which no heap takes.
        """
        if len(heap) == 0:
            return True
        counts = np.bincount(heap, minlength=nh)
        width = int(counts.max())
        if nh * width > 4 * len(heap) + 64 * nh:  # one heap with most of them: the dense loop is cheaper
            return False
        # slot of each candidate: its heap's row start plus its rank among that heap's candidates
        slot = np.arange(len(heap)) + np.repeat(np.arange(nh) * width - (np.cumsum(counts) - counts), counts)
        vals = np.full(nh * width, -np.inf, dtype=np.float32)
        pad_ids = np.empty(nh * width, dtype=np.int64)  # read only where a value enters a heap
        vals[slot] = values
        pad_ids[slot] = ids
        swig_ptr = self.faiss.swig_ptr
        self.heaps.addn_with_ids(width, swig_ptr(vals), swig_ptr(pad_ids), width, h0, nh)
        return True

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, each row best first."""
        self.heaps.reorder()
        return self.scores, self.rows


def symmetric_knn(vectors: np.ndarray, k: int, *, block: int = 4096, progress: Progress | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product of rows of ``vectors`` against all of them, each product computed once.

    All-vs-all is symmetric: the similarity block of row blocks ``I`` and ``J`` (one GEMM) feeds the top-k of
    the rows of ``I`` through its rows and those of ``J`` through its columns, so the N x N products cost
    about half of searching every row against the gallery. The diagonal blocks go first: they seed every
    row's heap with its k best in its own block, so the off-diagonal blocks offer few candidates (``TopK``).
    The result ranks like an exact search of the rows against ``vectors``, each row's own item included: the
    top ``k`` by float32 score, descending. Items whose scores are exactly equal may come in another order,
    and a score may differ from faiss's in the last bit (another BLAS blocking, as faiss's own scores do
    between thread counts and query chunk sizes); ``ties.search_tiebroken`` then orders ties by item id.

    Args:
        vectors: N x D unit-norm embeddings (float32, or float16 read as float32 block by block; a memmap
            is read one block at a time).
        k: Neighbours per row (at most N).
        block: Rows per block (the GEMM is ``block x block x D``).
        progress: ``progress(blocks_done, blocks_total)`` after each block.

    Returns:
        ``(scores, neighbours)``: N x k float32 scores (descending) and int64 row numbers (N x k x 12 bytes).
    """
    from concurrent.futures import ThreadPoolExecutor

    n = len(vectors)
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be in 1..{n}")
    top = TopK(import_faiss(), n, k)
    starts = list(range(0, n, block))
    # diagonal blocks first, then the off-diagonal ones by distance from the diagonal: every heap then sees its
    # blocks at the same pace, so no block meets heaps that have seen only their own diagonal block while the
    # others are tight (row by row the later columns' heaps lag; 2-3 % less time at 60,000 x 512)
    pairs = [(a, a) for a in starts] + [(starts[i], starts[i + r]) for r in range(1, len(starts))
                                        for i in range(len(starts) - r)]
    sim = np.empty(min(block, n) ** 2, dtype=np.float32)  # reused: no page faults per block
    # The two directions of a block touch disjoint heaps and release the GIL in numpy and faiss: half of the
    # candidate search and the column-wise push run on a second thread, as does the second half of a diagonal
    # block's rows (the GEMM uses every core through BLAS).
    with ThreadPoolExecutor(max_workers=1) as pool:
        for done, (a, c) in enumerate(pairs, 1):
            b, d = min(a + block, n), min(c + block, n)
            xa = np.ascontiguousarray(vectors[a:b], dtype=np.float32)  # in this order no two pairs in a row share it
            xc = xa if c == a else np.ascontiguousarray(vectors[c:d], dtype=np.float32)
            s = sim[: (b - a) * (d - c)].reshape(b - a, d - c)
            np.matmul(xa, xc.T, out=s)
            if c == a:
                top.offer_rows(s, a, c, pool)  # a diagonal block holds both directions
            else:  # rows a..b against items c..d, and rows c..d against items a..b (the same products by column)
                top.offer_both(s, a, c, pool)
            if progress is not None:
                progress(done, len(pairs))
    return top.sorted()


def index_bytes(n: int, d: int, cfg: IndexConfig) -> int:
    """Approximate bytes an index of ``n`` x ``d`` vectors holds (vectors or codes, ids, lists, graph)."""
    if cfg.type == "flat":
        return n * d * 4
    if cfg.type == "hnsw":
        return n * d * 4 + n * cfg.hnsw_m * 2 * 4  # vectors + ~2M links per node on the base level
    nlist = cfg.nlist or default_nlist(n)
    codes = n * d * 4 if cfg.type == "ivf_flat" else n * cfg.pq_m * cfg.pq_nbits // 8
    refine = n * d * 4 if cfg.type == "ivf_pq" and cfg.refine_k_factor > 0 else 0
    return codes + n * 8 + nlist * d * 4 + refine


def gpu_plan(n: int, d: int, cfg: IndexConfig, n_gpus: int) -> dict[str, Any]:
    """How an index spreads over ``n_gpus`` GPUs under ``cfg.multi_gpu`` and what each GPU must hold."""
    mode = cfg.multi_gpu or "shard"
    total = index_bytes(n, d, cfg)
    quantizer = (cfg.nlist or default_nlist(n)) * d * 4 if cfg.type in ("ivf_flat", "ivf_pq") else 0
    per_gpu = total if mode == "replicate" or n_gpus <= 1 else (total - quantizer) // n_gpus + quantizer
    return {"mode": mode if n_gpus > 1 else "single", "n_gpus": n_gpus, "bytes_total": total,
            "bytes_per_gpu": per_gpu}


def _gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**27 else f"{b / 2**20:.1f} MiB"


def describe_plan(plan: dict[str, Any], n: int, d: int, index_type: str) -> str:
    """One line for the user, printed before the index is built."""
    what = f"{index_type} index of {n:,} x {d}"
    if plan["mode"] == "single":
        return f"{what}: {_gib(plan['bytes_per_gpu'])} on 1 GPU"
    return (f"{what}: {plan['mode']} over {plan['n_gpus']} GPUs, {_gib(plan['bytes_per_gpu'])} per GPU "
            f"({_gib(plan['bytes_total'])} in all)")


def default_nlist(n: int) -> int:
    """About ``4 * sqrt(n)`` lists, but never fewer than 39 training points per list (faiss's minimum)."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


@dataclass
class SearchIndex:
    """A FAISS index plus the item id of every row it holds.

    Attributes:
        index: The faiss index (CPU or GPU); ``None`` for the copy-free exact searcher, which keeps
            ``vectors`` and calls ``faiss.knn``/``faiss.knn_gpu`` instead.
        ids: int64 item id per row.
        type: ``flat``, ``ivf_flat``, ``ivf_pq`` or ``hnsw``.
        device: ``cpu`` or ``gpu`` (where searches actually run).
        dim: Embedding dimension.
        params: The parameters the index was built and is searched with (recorded in metadata).
        vectors: Only for the copy-free exact searcher: the unit-norm float32 gallery (may be a memmap).
    """

    index: Any
    ids: np.ndarray
    type: str
    device: str
    dim: int
    params: dict[str, Any] = field(default_factory=dict)
    vectors: np.ndarray | None = None
    _gpu_res: Any = None

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    @property
    def n_gpus(self) -> int:
        return int(self.params.get("n_gpus", 0))

    def info(self) -> dict[str, Any]:
        """The JSON-able description recorded in metrics.json and ``index.json``."""
        return {"type": self.type, "device": self.device, "dim": self.dim, "n": self.ntotal, **self.params}

    def search_rows(
        self,
        queries: np.ndarray,
        k: int,
        *,
        batch_size: int = 4096,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product for each query, searched chunk by chunk.

        Args:
            queries: Q x D unit-norm embeddings (a memmap is read one chunk at a time).
            k: Neighbours per query; clipped to the index size, missing slots are row ``-1``.
            batch_size: Queries per FAISS call.
            progress: Called as ``progress(done, total)`` after each chunk.

        Returns:
            ``(scores, rows)``: Q x k float32 similarities (descending) and int64 rows.
        """
        nq = len(queries)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        rows = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, self.ntotal)
        if kk == 0:
            return scores, rows
        for a, b in iter_chunks(nq, batch_size):
            d, i = self.search_chunk(np.ascontiguousarray(queries[a:b], dtype=np.float32), kk)
            scores[a:b, :kk] = d
            rows[a:b, :kk] = i
            if progress is not None:
                progress(b, nq)
        return scores, rows

    def search(
        self, queries: np.ndarray, k: int, *, batch_size: int = 4096, progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``search_rows`` but answers item ids (``-1`` where fewer than ``k`` results exist)."""
        scores, rows = self.search_rows(queries, k, batch_size=batch_size, progress=progress)
        ids = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
        return scores, ids

    def search_chunk(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """One FAISS call on an in-memory float32 chunk; ``k`` must not exceed ``ntotal``."""
        faiss = import_faiss()
        if self.device == "gpu" and k > GPU_MAX_K:
            raise ConfigError(
                f"GPU search supports at most k={GPU_MAX_K} neighbours, {k} needed: lower eval.max_r "
                "or set eval.index.device=cpu"
            )
        if self.index is None:
            # np.asarray drops the memmap subclass without copying: faiss.contrib.torch_utils (imported by
            # pytorch-metric-learning) replaces faiss.knn*/knn_gpu with versions that reject subclasses.
            xb = np.asarray(self._exact_vectors())
            if xb.dtype != np.float32:  # a float16 gallery: searched block by block, never copied whole
                res, ip = self._gpu_res, faiss.METRIC_INNER_PRODUCT
                if self.device == "gpu":
                    return _knn_blocked(lambda q, g, kk: faiss.knn_gpu(res, q, g, kk, metric=ip), x, xb, k,
                                        HALF_BLOCK_ROWS)
                return _knn_blocked(lambda q, g, kk: _knn_inner_product(faiss, q, g, kk), x, xb, k,
                                    HALF_BLOCK_ROWS)
            if self.device == "gpu":
                on_gpu: tuple[np.ndarray, np.ndarray] = faiss.knn_gpu(self._gpu_res, x, xb, k,
                                                                       metric=faiss.METRIC_INNER_PRODUCT)
                return on_gpu
            return _knn_inner_product(faiss, x, xb, k)
        found: tuple[np.ndarray, np.ndarray] = self.index.search(x, k)
        return found

    def _exact_vectors(self) -> np.ndarray:
        """The gallery the copy-free exact searcher (``index is None``) searches."""
        if self.vectors is None:
            raise ValueError("a SearchIndex without a faiss index needs its vectors")
        return self.vectors

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss``, ``ids.npy`` and ``index.json`` into ``folder`` (created if needed)."""
        faiss = import_faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index = self.index
        if index is None:  # copy-free exact searcher: persist as a regular flat index
            index = faiss.IndexFlatIP(self.dim)
            vectors = self._exact_vectors()
            for a, b in iter_chunks(len(vectors), 65536):
                index.add(np.ascontiguousarray(vectors[a:b], dtype=np.float32))
        elif self.device == "gpu":
            index = faiss.index_gpu_to_cpu(index)
        # each file atomically, so a reader never sees half an index
        with atomic_path(folder / INDEX_FILE) as tmp:
            faiss.write_index(index, str(tmp))
        atomic_save_npy(folder / IDS_FILE, self.ids.astype(np.int64))
        meta = {**self.info(), "metric": "inner_product", "normalized": True, "faiss": faiss.__version__}
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2) + "\n")
        return folder


def _knn_inner_product(faiss: Any, xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product through the C++ routine that ``IndexFlatIP.search`` uses, called on
    ``xb`` in place (no copy of the gallery, unlike building an ``IndexFlatIP``)."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xb.dtype != np.float32 or not xb.flags.c_contiguous:
        raise ValueError("gallery must be C-contiguous float32")
    nq, d = xq.shape
    dist = np.empty((nq, k), dtype=np.float32)
    rows = np.empty((nq, k), dtype=np.int64)
    faiss.knn_inner_product(
        faiss.swig_ptr(xq), faiss.swig_ptr(xb), d, nq, len(xb), k, faiss.swig_ptr(dist), faiss.swig_ptr(rows)
    )
    return dist, rows


def _to_device(index: Any, device: str, index_type: str, multi_gpu: str | None = None
               ) -> tuple[Any, str, Any, int]:
    """Move a CPU index to GPU(s) when asked and possible: ``(index, device, resources, n_gpus)``.

    With several GPUs the index is sharded (``multi_gpu`` ``shard``/None) or replicated (``replicate``).
    """
    if device != "gpu":
        return index, "cpu", None, 0
    # faiss has no GPU HNSW, and a refine wrapper does not clone as a whole: these stay on CPU, and say so
    if index_type == "hnsw" or "Refine" in type(index).__name__:
        return index, "cpu", None, 0
    faiss = import_faiss()
    n = num_gpus()
    if n == 0:  # resolve_device already checked; keep the guard next to the GPU calls
        return index, "cpu", None, 0
    if n == 1:
        res = faiss.StandardGpuResources()
        co = faiss.GpuClonerOptions()
        co.useFloat16 = False  # exactness over memory: metrics must match the CPU index
        return faiss.index_cpu_to_gpu(res, 0, index, co), "gpu", res, 1
    co = faiss.GpuMultipleClonerOptions()
    co.shard = multi_gpu != "replicate"  # shard: split the database; replicate: a full copy per GPU
    co.common_ivf_quantizer = index_type != "flat"
    co.useFloat16 = False
    return faiss.index_cpu_to_all_gpus(index, co=co), "gpu", None, n


def exact_searcher(
    vectors: np.ndarray, *, ids: np.ndarray | None = None, device: str = "auto",
    multi_gpu: str | None = None, note: Callable[[str], None] | None = None,
) -> SearchIndex:
    """An exact inner-product searcher that does not copy ``vectors`` (unit-norm float32, may be a memmap).

    On one GPU (or CPU) this calls ``faiss.knn_gpu``/``faiss.knn`` on the array directly, which ranks
    exactly like ``IndexFlatIP.search`` without holding a second copy of the gallery; with several GPUs
    it builds a sharded ``IndexFlatIP``.
    """
    import_faiss()
    dev = resolve_device(device)
    n = len(vectors)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if dev == "gpu" and num_gpus() > 1:
        return build_index(vectors, IndexConfig(type="flat", device="gpu", multi_gpu=multi_gpu), ids=ids,
                           note=note)
    if multi_gpu is not None and note is not None:
        note(f"eval.index.multi_gpu={multi_gpu}: {'one GPU' if dev == 'gpu' else 'no GPU'} here, "
             f"searching on {dev.upper()}")
    params: dict[str, Any] = {}
    res = None
    if dev == "gpu":
        faiss = import_faiss()
        res = faiss.StandardGpuResources()
        params["n_gpus"] = 1
    return SearchIndex(None, ids, "flat", dev, vectors.shape[1], params, vectors=vectors, _gpu_res=res)


def build_index(
    embeddings: np.ndarray,
    cfg: IndexConfig | None = None,
    *,
    ids: np.ndarray | None = None,
    seed: int = 0,
    add_batch: int = 65536,
    progress: Progress | None = None,
    note: Callable[[str], None] | None = None,
) -> SearchIndex:
    """Build (train and fill) an index over ``embeddings``.

    Args:
        embeddings: N x D embeddings, normalised here chunk by chunk if they are not unit-norm.
        cfg: Index type and parameters; ``nlist=None`` picks ``default_nlist(N)``.
        ids: N unique int64 item ids (default ``arange(N)``).
        seed: Seed for the training sample and the k-means initialisation.
        add_batch: Rows per ``index.add`` call (bounds the temporary float32 copy of a memmap).
        progress: Called as ``progress(rows_added, N)``.
        note: Called with one line before building: the memory each GPU needs (sharded or replicated), or
            that a multi-GPU setting runs on CPU here.

    Raises:
        ConfigError: Parameters that cannot work for this data (e.g. ``pq_m`` not dividing D).
        DataError: Empty input or duplicate ids.
    """
    faiss = import_faiss()
    cfg = cfg or IndexConfig()
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise DataError(f"cannot index embeddings of shape {tuple(embeddings.shape)}: need N x D with N > 0")
    n, d = embeddings.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise DataError(f"ids has shape {ids.shape}, expected ({n},)")
    if len(np.unique(ids)) != n:
        raise DataError("item ids must be unique")
    device = resolve_device(cfg.device)
    if note is not None:
        _note_plan(note, n, d, cfg, device)
    index, params = _new_index(faiss, embeddings, cfg, seed)
    for a, b in iter_chunks(n, add_batch):
        index.add(normalized_chunk(embeddings[a:b]))
        if progress is not None:
            progress(b, n)
    index, device, res, n_gpus = _to_device(index, device, cfg.type, cfg.multi_gpu)
    if n_gpus:
        params["n_gpus"] = n_gpus
        if n_gpus > 1:
            params["multi_gpu"] = cfg.multi_gpu or "shard"
    return SearchIndex(index, ids, cfg.type, device, d, params, _gpu_res=res)


def _note_plan(note: Callable[[str], None], n: int, d: int, cfg: IndexConfig, device: str) -> None:
    """Tells ``note`` the memory each GPU needs, or that a multi-GPU setting builds on CPU here."""
    gpus = num_gpus() if device == "gpu" and cfg.type != "hnsw" else 0
    if gpus:
        note(describe_plan(gpu_plan(n, d, cfg, gpus), n, d, cfg.type))
    elif cfg.multi_gpu is not None:
        why = "faiss has no GPU HNSW" if cfg.type == "hnsw" and device == "gpu" else "no GPU here"
        note(f"eval.index.multi_gpu={cfg.multi_gpu}: {why}, building the {cfg.type} index on CPU "
             f"({_gib(index_bytes(n, d, cfg))})")


def _new_index(faiss: Any, embeddings: np.ndarray, cfg: IndexConfig, seed: int) -> tuple[Any, dict[str, Any]]:
    """An empty CPU index of ``cfg.type`` (IVF types trained on a sample of ``embeddings``) and its parameters.

    ``faiss`` is the imported module (untyped, as are the indexes it returns).
    """
    n, d = embeddings.shape
    params: dict[str, Any] = {}
    metric = faiss.METRIC_INNER_PRODUCT
    if cfg.type == "flat":
        return faiss.IndexFlatIP(d), params
    if cfg.type == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, metric)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        params.update(hnsw_m=cfg.hnsw_m, ef_construction=cfg.ef_construction, ef_search=cfg.ef_search)
        return index, params
    if cfg.type not in ("ivf_flat", "ivf_pq"):  # pragma: no cover - IndexConfig validates the literal
        raise ConfigError(f"unknown index type {cfg.type!r}")
    nlist = cfg.nlist or default_nlist(n)
    if nlist > n:
        raise ConfigError(f"eval.index.nlist={nlist} exceeds the {n} vectors to index")
    quantizer = faiss.IndexFlatIP(d)
    if cfg.type == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
    else:
        if d % cfg.pq_m:
            raise ConfigError(f"eval.index.pq_m={cfg.pq_m} must divide the embedding dimension {d}")
        index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.pq_m, cfg.pq_nbits, metric)
        index.pq.cp.seed = seed
        params.update(pq_m=cfg.pq_m, pq_nbits=cfg.pq_nbits)
    index.cp.seed = seed
    # faiss wants at least 39 points per centroid; 64 per list keeps k-means cheap at 1M+ vectors
    # and the PQ codebooks get their recommended 256 points per code.
    need = max(nlist * 64, (2**cfg.pq_nbits) * 256 if cfg.type == "ivf_pq" else 0)
    if cfg.type == "ivf_pq" and n < 2**cfg.pq_nbits:  # faiss's PQ k-means refuses (or aborts) below this
        raise IndexBuildError(cfg.type, n, f"pq_nbits={cfg.pq_nbits} needs at least {2**cfg.pq_nbits} vectors "
                                           "to train its codebooks")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, need), replace=False))
    try:
        index.train(normalized_chunk(embeddings[sample]))
    except RuntimeError as e:  # faiss's C++ error with its source location: keep the reason
        text = str(e)
        reason = text.split("failed:", 1)[-1].strip() if "failed:" in text else text
        raise IndexBuildError(cfg.type, n, reason.splitlines()[0][:200] if reason else "faiss error") from None
    index.nprobe = min(cfg.nprobe, nlist)
    params.update(nlist=nlist, nprobe=int(index.nprobe))
    if cfg.type == "ivf_pq" and cfg.refine_k_factor > 0:
        # PQ codes rank coarsely; re-scoring k * factor candidates with the raw vectors restores
        # near-exact top-k at the cost of keeping those vectors in memory.
        index = faiss.IndexRefineFlat(index)
        index.k_factor = float(cfg.refine_k_factor)
        params["refine_k_factor"] = cfg.refine_k_factor
    return index, params


def load_index(folder: str | os.PathLike[str], *, device: str = "auto", multi_gpu: str | None = None
               ) -> SearchIndex:
    """Load an index written by ``SearchIndex.save``, moved to ``device`` (``auto``: GPU if present).

    Raises:
        NotFoundError: The folder or one of its three files is missing.
        DataError: The files disagree (row count, dimension) or the metadata is unreadable.
    """
    faiss = import_faiss()
    folder = Path(folder)
    for name in (INDEX_FILE, IDS_FILE, META_FILE):
        if not (folder / name).is_file():
            raise NotFoundError(f"{folder / name}: not found (build it with `ofgr index build`)")
    from ofgr_core.runs.validate import NUM, OPT_STR, read_run_json

    meta, why = read_run_json(folder / META_FILE, {"dim": NUM, "type": OPT_STR, "nprobe": NUM, "ef_search": NUM})
    if why is not None or not isinstance(meta, dict):
        raise DataError(f"{folder / META_FILE}: {(why or 'expected a JSON object').split(': ', 1)[-1]}")
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
    except RuntimeError as e:  # faiss's C++ message with a source location: keep its reason
        raise DataError(f"{folder / INDEX_FILE}: not a readable faiss index "
                        f"({str(e).split('failed:', 1)[-1].strip().splitlines()[0][:120]})") from None
    try:
        ids = np.load(folder / IDS_FILE, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{folder / IDS_FILE}: not a readable .npy ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise DataError(f"{folder / IDS_FILE}: expected a 1-D integer array of ids")
    if index.ntotal != len(ids) or index.d != meta.get("dim", index.d):
        raise DataError(
            f"{folder}: index holds {index.ntotal} x {index.d} vectors but ids.npy has {len(ids)} rows "
            f"and index.json says dim {meta.get('dim')}"
        )
    index_type = meta.get("type", "flat")
    fixed = ("type", "device", "dim", "n", "metric", "normalized", "faiss", "n_gpus", "multi_gpu")
    params = {k: v for k, v in meta.items() if k not in fixed}
    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    if "ef_search" in params:
        index.hnsw.efSearch = int(params["ef_search"])
    index, dev, res, n_gpus = _to_device(index, resolve_device(device), index_type, multi_gpu)
    if n_gpus:
        params["n_gpus"] = n_gpus
    return SearchIndex(index, ids.astype(np.int64), index_type, dev, int(index.d), params, _gpu_res=res)


def set_search_params(index: SearchIndex, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Change the speed/recall knobs of a built index in place (recorded in ``params``)."""
    faiss = import_faiss()
    if nprobe is not None and index.type in ("ivf_flat", "ivf_pq"):
        if index.device == "gpu":
            faiss.GpuParameterSpace().set_index_parameter(index.index, "nprobe", nprobe)
        else:
            faiss.extract_index_ivf(index.index).nprobe = nprobe
        index.params["nprobe"] = nprobe
    if ef_search is not None and index.type == "hnsw":
        index.index.hnsw.efSearch = ef_search
        index.params["ef_search"] = ef_search
