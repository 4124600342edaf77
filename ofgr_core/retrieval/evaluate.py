"""The one evaluation entry point: embeddings + hierarchical labels -> the metrics.json split block.

One kNN pass per split answers every metric at every label level: the search returns, per query, the top
``k = max(max(ks), min(max R, eval.max_r))`` gallery rows after removing the query itself (by item id) and,
optionally, its group-mates. Queries are processed in chunks, per-query metric values are kept (a few floats
per query) and neighbour lists are discarded, so memory stays at the gallery plus one chunk of results;
no N x N matrix is ever formed. Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

from ofgr_core.common.errors import DataError
from ofgr_core.config import EvalConfig
from ofgr_core.retrieval.index import (
    GPU_MAX_K,
    SearchIndex,
    as_searchable,
    build_index,
    exact_searcher,
    symmetric_knn,
)
from ofgr_core.retrieval.ivf_lists import by_list_index, ivf_knn_by_list
from ofgr_core.retrieval.metrics import (
    bootstrap_ci,
    exact_group_means,
    exact_mean,
    metrics_from_hits,
    paired_bootstrap_test,
)
from ofgr_core.retrieval.shard import QueryShard
from ofgr_core.retrieval.ties import TIE_MARGIN, id_hash_keys, search_tiebroken

Progress = Callable[[int, int], None]
# label columns of equal length: fine (required), coarse, id, split, domain, group
LabelTable = Mapping[str, "Sequence[object] | np.ndarray"]

HEADLINE = ("map@r", "r_precision", "map")  # reported after recall@K, in this order
RCWF = "right_coarse_wrong_fine@1"
# Upper bound on the elements of one (queries x k) result chunk; bounds per-chunk temporaries.
_CHUNK_ELEMENTS = 1 << 23
# Rows per block of the symmetric all-vs-all (``index.symmetric_knn``): its similarity block is 64 MB at 4096.
# A gallery of at most one block is searched the plain way (symmetry saves nothing there).
SYMMETRIC_BLOCK = 4096
# The symmetric search saves half the GEMM but selects in both directions; below this dimension the GEMM is
# too cheap for that to pay (measured at 32k items: 1.2x the plain search's CPU time at D=64, 1.0x at 128,
# 0.88x at 256, 0.78x at 512; the share saved grows with N).
SYMMETRIC_MIN_DIM = 256
# An IVF-Flat all-vs-all of at least this many rows is searched list by list (``ivf_lists``): each list's
# vectors meet the queries that probe it in one matrix product (measured in docs/benchmarks.md).
BY_LIST_MIN_ROWS = 20000


@dataclass
class SplitResult:
    """Everything one evaluation produced.

    Attributes:
        block: The metrics.json split block (see ``docs/run-folder.md``).
        query_ids: Item ids of the evaluated (non-skipped) queries, in the order of ``per_query`` arrays.
        per_query: ``{level: {metric: float64 array}}`` plus ``{"right_coarse_wrong_fine@1": array}`` under
            the key ``"_"``, for bootstrap and for ``compare_per_query`` between runs.
    """

    block: dict[str, Any]
    query_ids: np.ndarray
    per_query: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(uniques, codes)`` with ``uniques[codes] == values``."""
    uniques, codes = np.unique(values, return_inverse=True)
    return uniques, codes.astype(np.int64).reshape(-1)


def _mask(mask: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise DataError(f"{name} must be a boolean array of length {n}, got {m.dtype} {m.shape}")
    return m


def _count_lookup(keys_gallery: np.ndarray, keys_query: np.ndarray) -> np.ndarray:
    """For each query key, how many gallery items carry the same key."""
    uniq, counts = np.unique(keys_gallery, return_counts=True)
    if len(uniq) == 0:
        return np.zeros(len(keys_query), dtype=np.int64)
    pos = np.clip(np.searchsorted(uniq, keys_query), 0, len(uniq) - 1)
    return np.where(uniq[pos] == keys_query, counts[pos], 0).astype(np.int64)


def _finite(x: float) -> float | None:
    return None if x != x else float(x)  # NaN (no queries) -> JSON null


def _compact(rows: np.ndarray, drop: np.ndarray, k: int) -> np.ndarray:
    """Keep the first ``k`` non-dropped entries of each row in rank order; ``-1`` pads rows left short."""
    keep = (rows >= 0) & ~drop
    kept = keep.sum(axis=1)
    if len(rows) and kept.min() == kept.max() >= k:
        # every row keeps as many (leave-one-out: all but its own id): the kept entries, row after row, in order
        compact: np.ndarray = rows[keep].reshape(len(rows), int(kept[0]))[:, :k].astype(np.int64)
        return compact
    pos = np.cumsum(keep, axis=1) - 1
    keep &= pos < k
    out = np.full((rows.shape[0], k), -1, dtype=np.int64)
    r, c = np.nonzero(keep)
    out[r, pos[r, c]] = rows[r, c]
    return out


class _Neighbours:
    """Searches one chunk of queries and removes self-matches (by id) and excluded group-mates."""

    def __init__(
        self,
        searcher: SearchIndex,
        gallery_ids: np.ndarray,
        gallery_groups: np.ndarray | None,
        tie_keys: np.ndarray | None = None,
    ) -> None:
        self.searcher = searcher
        self.gallery_ids = gallery_ids
        self.gallery_groups = gallery_groups
        # ties broken by a hash of the item id, never by row order (ofgr_core/retrieval/ties.py)
        self.tie_keys = id_hash_keys(gallery_ids) if tie_keys is None else tie_keys

    def __call__(
        self, x: np.ndarray, k: int, n_excluded: int, query_ids: np.ndarray, query_groups: np.ndarray | None,
        first: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """The top ``k`` rows of each query in ``x`` (``-1`` pads); ``first``: its search, already done."""
        n_gallery = len(self.gallery_ids)
        # Every excluded item can occupy one slot of the raw result, so n_excluded extra slots guarantee k
        # survivors whatever their ranks (ties with duplicates included).
        kk = min(k + n_excluded, n_gallery)
        max_k = GPU_MAX_K if self.searcher.device == "gpu" else None
        rows = search_tiebroken(self.searcher.search_chunk, x, kk, self.tie_keys, n_gallery, max_k, first)
        if n_excluded == 0:
            if kk == k:
                return rows
            return np.pad(rows, ((0, 0), (0, k - kk)), constant_values=-1)
        safe = np.maximum(rows, 0)
        drop = self.gallery_ids[safe] == query_ids[:, None]
        if query_groups is not None and self.gallery_groups is not None:
            drop |= self.gallery_groups[safe] == query_groups[:, None]
        return _compact(rows, drop, k)


def evaluate_retrieval(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    query_domains: np.ndarray | None = None,
    level_names: Sequence[str] = ("fine", "coarse"),
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    cfg: EvalConfig | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    shard: QueryShard | None = None,
    note: Callable[[str], None] | None = None,
) -> SplitResult:
    """Retrieval metrics of queries against a gallery, which may come from different encoders.

    Image -> image (the same embeddings on both sides, see ``run_split``) and text -> image (class-name
    prompts as queries, images as gallery) both go through here, so every number is computed the same way.

    Args:
        query_emb: Q x D query embeddings (rows that are not unit-norm are normalised).
        gallery_emb: G x D gallery embeddings (a ``np.memmap`` is searched without a full copy when it is
            already unit-norm float32).
        query_labels: Q x L int labels, column 0 the finest level; a 1-D array is one level. The same code
            means the same class on both sides.
        gallery_labels: G x L int labels.
        query_ids: Q ids; a query never retrieves the gallery item with its own id. Default: no query
            shares an id with the gallery.
        gallery_ids: G unique ids (default ``arange(G)``).
        query_groups: Q group keys; with ``cfg.exclude_same_group`` a query's group-mates are removed from
            its gallery and from its relevant set.
        gallery_groups: G group keys.
        query_domains: Q domain names for the ``per_domain`` breakdown (fine level).
        level_names: Names of the label columns in the block (``fine``, ``coarse``).
        class_names: Fine label -> name for ``per_class`` (a mapping or a sequence indexed by label).
        cfg: Cut-offs, index, bootstrap and exclusion settings.
        seed: Seed of the bootstrap and of approximate index training.
        progress: ``progress(done, total)`` after each chunk of queries.
        shard: Under ``torchrun``, this rank's share of the query chunks (see ``ofgr_core.retrieval.shard``); the
            per-query values are gathered, so every rank returns the single-process result.
        note: Receives one line before the index is built (GPU memory plan, or a multi-GPU setting that
            runs on CPU here).

    Returns:
        The split block (counts, metrics per level, ``ci95``, ``right_coarse_wrong_fine@1``, ``per_class``,
        ``per_domain``, ``index``, ``r_cap``) with the per-query values behind it.

    Raises:
        DataError: Inconsistent shapes, duplicate gallery ids, an empty gallery, or group exclusion without
            groups.
    """
    cfg = cfg or EvalConfig()
    q_lab, g_lab, names = _check_inputs(query_emb, gallery_emb, query_labels, gallery_labels, level_names)
    nq_all, n_gallery = len(query_emb), len(gallery_emb)
    g_raw, q_raw, g_ids, q_ids_all = _encode_ids(query_ids, gallery_ids, nq_all, n_gallery)
    groups = _encode_groups(cfg.exclude_same_group, query_groups, gallery_groups, nq_all, n_gallery)
    p = _problem(names, cfg, q_lab, g_lab, g_ids, q_ids_all, groups)
    g_keys = id_hash_keys(g_raw)  # ties broken by a hash of the item id, never by row order
    found = _search(p, query_emb, gallery_emb, g_keys, cfg, seed, note, shard, progress)
    if q_raw is None:
        q_keys = None
    elif query_ids is not None and query_ids is gallery_ids:  # leave-one-out: the same ids, hashed once
        q_keys = g_keys[p.rows]
    else:
        q_keys = id_hash_keys(q_raw[p.rows])
    domains = None if query_domains is None else np.asarray(query_domains).reshape(-1)[p.rows]
    block = _assemble(names, found.per_query, found.rcwf if len(names) > 1 else None, p.ks, cfg, seed, nq=p.nq,
                      n_gallery=n_gallery, n_skipped=nq_all - p.nq, fine_labels=q_lab[p.rows, 0],
                      class_names=class_names, domains=domains,
                      query_keys=q_keys)
    block["index"] = {**found.index, "exact": cfg.index.type == "flat"}
    if found.exact_sample:
        approx = {name: {key: vals[found.check_pos] for key, vals in found.per_query[name].items()} for name in names}
        block["approximation"] = approximation_error(approx, found.exact_sample, block, p.nq, cfg.confidence)
    block["r_cap"] = {"max_r": cfg.max_r, "k": int(p.k),
                      "n_capped": {name: int((r > p.k).sum()) for name, r in zip(names, p.relevant, strict=True)}}
    pq = dict(found.per_query)
    if len(names) > 1:
        pq["_"] = {RCWF: found.rcwf}
    out_ids = (np.arange(n_gallery, n_gallery + nq_all) if q_raw is None else q_raw)[p.rows]
    return SplitResult(block, out_ids, pq)


@dataclass
class _Problem:
    """One evaluation in integer codes, restricted to the queries that have a relevant item (R > 0).

    Ids, groups and the class labels of each level are coded in one space for both sides, so equal codes
    mean the same item, group or class.
    """

    names: list[str]  # the label levels, finest first
    ks: list[int]
    k: int  # neighbours kept per query (see _search_depth)
    gallery_ids: np.ndarray
    gallery_groups: np.ndarray | None  # only when excluding group-mates
    gallery_labels: list[np.ndarray]  # per level
    rows: np.ndarray  # the evaluated queries' rows in the query embeddings
    query_ids: np.ndarray
    query_groups: np.ndarray | None
    query_labels: list[np.ndarray]  # per level
    relevant: list[np.ndarray]  # per level, R of each query
    n_excluded: np.ndarray  # gallery slots each query must discard: itself, its group-mates

    @property
    def nq(self) -> int:
        return len(self.rows)


def _problem(names: list[str], cfg: EvalConfig, q_lab: np.ndarray, g_lab: np.ndarray, g_ids: np.ndarray,
             q_ids: np.ndarray, groups: tuple[np.ndarray, np.ndarray] | None) -> _Problem:
    """The evaluation in codes: relevant sets, the queries kept (R > 0 at the finest level) and the depth k."""
    gg_codes, qg_codes = groups if groups is not None else (None, None)
    level_g, level_q, relevant, n_excl = _relevant_sets(q_lab, g_lab, g_ids, q_ids, groups)
    active = relevant[0] > 0
    rows = np.flatnonzero(active)
    relevant, n_excl = [r[active] for r in relevant], n_excl[active]
    ks = list(cfg.ks)
    return _Problem(
        names=names, ks=ks, k=_search_depth(ks, relevant, n_excl, cfg.max_r, len(g_ids)), gallery_ids=g_ids,
        gallery_groups=gg_codes, gallery_labels=level_g, rows=rows, query_ids=q_ids[rows],
        query_groups=qg_codes[rows] if qg_codes is not None else None,
        query_labels=[c[rows] for c in level_q], relevant=relevant, n_excluded=n_excl,
    )


def _check_inputs(query_emb: np.ndarray, gallery_emb: np.ndarray, query_labels: np.ndarray,
                  gallery_labels: np.ndarray, level_names: Sequence[str]
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(query labels, gallery labels, level names)`` as Q x L / G x L matrices, after the shape checks."""
    if query_emb.ndim != 2 or gallery_emb.ndim != 2:
        raise DataError(
            f"embeddings must be N x D, got query {tuple(query_emb.shape)} and gallery {tuple(gallery_emb.shape)}"
        )
    if query_emb.shape[1] != gallery_emb.shape[1]:
        raise DataError(f"query embeddings have {query_emb.shape[1]} dimensions but the gallery has "
                        f"{gallery_emb.shape[1]}")
    nq_all, n_gallery = len(query_emb), len(gallery_emb)
    if n_gallery == 0:
        raise DataError("the gallery is empty")
    q_lab = _as_label_matrix(query_labels, nq_all, "query_labels")
    g_lab = _as_label_matrix(gallery_labels, n_gallery, "gallery_labels")
    if q_lab.shape[1] != g_lab.shape[1]:
        raise DataError(f"query labels have {q_lab.shape[1]} levels but gallery labels {g_lab.shape[1]}")
    n_levels = q_lab.shape[1]
    names = [level_names[i] if i < len(level_names) else f"level{i}" for i in range(n_levels)]
    return q_lab, g_lab, names


def _encode_ids(query_ids: np.ndarray | None, gallery_ids: np.ndarray | None, nq_all: int, n_gallery: int
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """``(gallery ids as given, query ids as given or None, gallery id codes, query id codes)``.

    One integer code space for both sides, so a query is excluded from its own gallery entry.

    Raises:
        DataError: A length differs from the embeddings', or ids repeat on one side.
    """
    g_raw = np.arange(n_gallery, dtype=np.int64) if gallery_ids is None else np.asarray(gallery_ids).reshape(-1)
    q_raw: np.ndarray | None
    if query_ids is None:
        q_raw = np.arange(n_gallery, n_gallery + nq_all, dtype=np.int64) if gallery_ids is None else None
    else:
        q_raw = np.asarray(query_ids).reshape(-1)
    if len(g_raw) != n_gallery:
        raise DataError(f"gallery_ids has {len(g_raw)} entries for {n_gallery} embeddings")
    if q_raw is not None and len(q_raw) != nq_all:
        raise DataError(f"query_ids has {len(q_raw)} entries for {nq_all} embeddings")
    if q_raw is None:  # gallery ids given, query ids not: codes past every gallery code never collide
        _, g_ids = _codes(g_raw)
        q_ids_all = np.arange(n_gallery, n_gallery + nq_all, dtype=np.int64)
    else:
        both = np.concatenate([g_raw.astype(str), q_raw.astype(str)]) if g_raw.dtype != q_raw.dtype else \
            np.concatenate([g_raw, q_raw])
        _, codes = _codes(both)
        g_ids, q_ids_all = codes[:n_gallery], codes[n_gallery:]
        if len(np.unique(q_ids_all)) != nq_all:
            raise DataError("query ids must be unique (self-match exclusion works by id)")
    if len(np.unique(g_ids)) != n_gallery:
        raise DataError("item ids must be unique (self-match exclusion works by id)")
    return g_raw, q_raw, g_ids, q_ids_all


def _encode_groups(exclude_groups: bool, query_groups: np.ndarray | None, gallery_groups: np.ndarray | None,
                   nq_all: int, n_gallery: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(gallery group codes, query group codes)`` in one code space when excluding group-mates, else None.

    Raises:
        DataError: Exclusion is on but groups are missing or of the wrong length.
    """
    if not exclude_groups:
        return None
    if query_groups is None or gallery_groups is None:
        raise DataError("exclude_same_group is set but no group of each item was given")
    qg, gg = np.asarray(query_groups).reshape(-1), np.asarray(gallery_groups).reshape(-1)
    if len(gg) != n_gallery or len(qg) != nq_all:
        raise DataError(f"groups have {len(qg)}/{len(gg)} entries for {nq_all}/{n_gallery} embeddings")
    _, gcodes = _codes(np.concatenate([gg.astype(str), qg.astype(str)]))
    return gcodes[:n_gallery], gcodes[n_gallery:]


def _relevant_sets(q_lab: np.ndarray, g_lab: np.ndarray, g_ids: np.ndarray, q_ids: np.ndarray,
                   groups: tuple[np.ndarray, np.ndarray] | None
                   ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray]:
    """R per query and level: the gallery items of its class, minus itself and any excluded group-mates.

    Returns:
        ``(gallery class codes, query class codes, R, n_excluded)``: codes per level in one space for both
        sides, R per level, and the gallery slots each query must discard (itself when it is a gallery
        item, plus its whole group when excluding groups).
    """
    n_gallery = len(g_ids)
    level_q: list[np.ndarray] = []
    level_g: list[np.ndarray] = []
    n_classes: list[int] = []
    for lv in range(q_lab.shape[1]):
        _, codes = _codes(np.concatenate([g_lab[:, lv], q_lab[:, lv]]))
        level_g.append(codes[:n_gallery])
        level_q.append(codes[n_gallery:])
        n_classes.append(int(codes.max()) + 1 if len(codes) else 0)
    in_gallery = _count_lookup(g_ids, q_ids)  # 1 when the query is itself a gallery item
    relevant: list[np.ndarray] = []
    for lg, lq, nc in zip(level_g, level_q, n_classes, strict=True):
        per_class = _count_lookup(lg, lq)
        if groups is not None:
            # (group, label) keys; they include the query itself when it is in the gallery
            gg, qg = groups
            per_class = per_class - _count_lookup(gg * nc + lg, qg * nc + lq)
        else:
            per_class = per_class - in_gallery
        relevant.append(per_class)
    n_excl = _count_lookup(*groups) if groups is not None else in_gallery
    return level_g, level_q, relevant, n_excl


def _search_depth(ks: list[int], relevant: list[np.ndarray], n_excluded: np.ndarray, max_r: int,
                  n_gallery: int) -> int:
    """Neighbours to keep per query: ``max(max(ks), min(max R, max_r))``, at most the gallery.

    Warns when the largest K exceeds what some query can retrieve (the gallery minus its exclusions).
    """
    nq = len(n_excluded)
    kmax_req = max(ks)
    r_max = max((int(r.max()) for r in relevant), default=0) if nq else 0
    k = min(max(kmax_req, min(r_max, max_r)), n_gallery)
    avail = n_gallery - (int(n_excluded.max()) if nq else 0)
    if nq and kmax_req > avail:
        warnings.warn(
            f"K={kmax_req} exceeds the {avail} gallery items some queries can retrieve; their Recall@K "
            f"counts all {avail}",
            stacklevel=4,  # evaluate_retrieval -> _problem -> here: point at the caller of evaluate_retrieval
        )
    return k


def _audit_sample(cfg: EvalConfig, nq: int, seed: int) -> np.ndarray:
    """Sorted positions of the queries an approximate index is checked on (none for an exact index)."""
    if cfg.index.type != "flat" and cfg.index.exact_check > 0 and nq:
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(nq, size=min(nq, cfg.index.exact_check), replace=False))
    return np.empty(0, dtype=np.int64)


def _score(p: _Problem, rows: np.ndarray, sel: slice | np.ndarray
           ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per level, whether each query's first neighbour is relevant, and its metric values.

    Args:
        rows: The neighbour rows (``-1`` for empty slots) of the queries ``sel`` selects.
    """
    valid = rows >= 0
    safe = np.maximum(rows, 0)
    out = []
    for lv in range(len(p.names)):
        hits = (p.gallery_labels[lv][safe] == p.query_labels[lv][sel, None]) & valid
        # recall@1 always: per_class reports it even when --k leaves 1 out
        out.append((hits[:, 0], metrics_from_hits(hits, p.relevant[lv][sel], sorted({1, *p.ks}))))
    return out


@dataclass
class _Found:
    """What the search of every query produced (see ``_search``)."""

    per_query: dict[str, dict[str, np.ndarray]]  # per level and metric, one value per query
    rcwf: np.ndarray  # right coarse, wrong fine at rank 1, per query
    index: dict[str, Any]  # the searcher's description, k, and the audit's recall against exact search
    check_pos: np.ndarray  # the audited queries (positions among the evaluated ones)
    exact_sample: dict[str, dict[str, np.ndarray]]  # their exact metric values (empty without an audit)


def _search(p: _Problem, query_emb: np.ndarray, gallery_emb: np.ndarray, tie_keys: np.ndarray, cfg: EvalConfig,
            seed: int, note: Callable[[str], None] | None, shard: QueryShard | None, progress: Progress | None
            ) -> _Found:
    """Builds the index, searches every query in chunks and, for an approximate index, audits a sample."""
    # the gallery is the caller's array itself when it is unit-norm float32
    gallery = as_searchable(gallery_emb)  # unit-norm float16 stays float16 (searched in float32 blocks)
    queries = gallery if query_emb is gallery_emb else as_searchable(query_emb)
    if cfg.index.type == "flat":
        searcher = exact_searcher(gallery, ids=p.gallery_ids, device=cfg.index.device,
                                  multi_gpu=cfg.index.multi_gpu, note=note)
    else:
        searcher = build_index(gallery, cfg.index, ids=p.gallery_ids, seed=seed, note=note)
    check_pos = _audit_sample(cfg, p.nq, seed)
    e_max = int(p.n_excluded.max()) if p.nq else 0
    bs = max(64, min(cfg.batch_size, _CHUNK_ELEMENTS // max(p.k + e_max, 1)))
    neighbours = _Neighbours(searcher, p.gallery_ids, p.gallery_groups, tie_keys)
    first = _first_search(p, query_emb is gallery_emb, searcher, shard, gallery, progress)
    if first is not None:
        progress = None  # the scoring below is quick; the search has reported every query done
    per_query, rcwf, approx_top = _search_all(p, queries, neighbours, check_pos, bs, shard, progress, first)
    index_info: dict[str, Any] = {**searcher.info(), "k": int(p.k)}
    exact_sample: dict[str, dict[str, np.ndarray]] = {}
    if len(check_pos):
        exact = _Neighbours(exact_searcher(gallery, ids=p.gallery_ids, device=cfg.index.device), p.gallery_ids,
                            p.gallery_groups, tie_keys)
        exact_sample, exact_top = _exact_audit(p, queries, exact, check_pos, approx_top.shape[1], bs)
        index_info[f"recall_vs_exact@{approx_top.shape[1]}"] = _overlap(approx_top, exact_top)
        index_info["exact_check_queries"] = len(check_pos)
    return _Found(per_query, rcwf, index_info, check_pos, exact_sample)


def _first_search(p: _Problem, same: bool, searcher: SearchIndex, shard: QueryShard | None, gallery: np.ndarray,
                  progress: Progress | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Every gallery row's first search at once, when this all-vs-all has a faster way to it than a search per
    query chunk: ``index.symmetric_knn`` for an exact search (each similarity block computed once for both
    directions), ``ivf_lists.ivf_knn_by_list`` for an IVF-Flat index (each list meets its queries in one matrix
    product; faiss's own search to float rounding). None: search chunk by chunk.

    Either applies when the queries are the gallery's own rows (the same array), the search runs on the CPU in
    one process, at least half of the rows are evaluated queries (the pass finds neighbours for every row), and
    its heaps (N x depth x 12 bytes) hold at most twice the float32 embeddings, or 256 MiB. The depth is the
    widest first search any query chunk makes: ``k + max(n_excluded) + 1 + ties.TIE_MARGIN``. The symmetric
    search also needs the gallery to span more than one block and a dimension of at least
    ``SYMMETRIC_MIN_DIM``; the list-wise one at least ``BY_LIST_MIN_ROWS`` rows.
    """
    n, d = gallery.shape
    if not same or shard is not None or searcher.device != "cpu" or 2 * p.nq < n:
        return None
    depth = min(p.k + int(p.n_excluded.max()) + 1 + TIE_MARGIN, n)
    if n * depth * 12 > max(2 * n * d * 4, 1 << 28):
        return None
    if searcher.index is None:
        if n <= SYMMETRIC_BLOCK or d < SYMMETRIC_MIN_DIM:
            return None
        return symmetric_knn(gallery, depth, block=SYMMETRIC_BLOCK, progress=_as_share(progress, p.nq))
    if n < BY_LIST_MIN_ROWS or by_list_index(searcher.index) is None:
        return None
    return ivf_knn_by_list(searcher.index, gallery, depth, progress=_as_share(progress, p.nq))


def _as_share(progress: Progress | None, nq: int) -> Progress | None:
    """``progress`` told ``(blocks done, blocks)`` as the same share of the ``nq`` queries."""
    if progress is None:
        return None
    report = progress
    return lambda done, total: report(done * nq // total, nq)


def _search_all(p: _Problem, queries: np.ndarray, neighbours: _Neighbours, check_pos: np.ndarray, bs: int,
                shard: QueryShard | None, progress: Progress | None,
                first: tuple[np.ndarray, np.ndarray] | None = None,
                ) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """Searches every query chunk (this rank's, then gathered) and keeps per-query values only.

    ``first``, from ``symmetric_knn``, holds every gallery row's search already: the chunks then only break
    ties, drop excluded items and score.

    Returns:
        ``(per_query, right_coarse_wrong_fine@1, approx_top)``: metric values per level, the
        right-coarse-wrong-fine indicator, and the top ``min(max(ks), k)`` rows of the audited queries.
    """
    nq = p.nq
    approx_top = np.full((len(check_pos), min(max(p.ks), p.k)), -1, dtype=np.int64)
    per_query: dict[str, dict[str, np.ndarray]] = {name: {} for name in p.names}
    rcwf = np.zeros(nq)
    contiguous = nq > 0 and p.rows[-1] - p.rows[0] == nq - 1
    owned: list[tuple[int, int]] = []
    for chunk_no, a in enumerate(range(0, nq, bs)):
        if shard is not None and not shard.owns(chunk_no):
            continue
        b = min(a + bs, nq)
        owned.append((a, b))
        # a contiguous run of rows is read as a slice, which keeps memmap reads sequential
        x = queries[p.rows[a] : p.rows[b - 1] + 1] if contiguous else queries[p.rows[a:b]]
        x = np.ascontiguousarray(x, dtype=np.float32)
        groups_ab = p.query_groups[a:b] if p.query_groups is not None else None
        pre = None
        if first is not None:
            at = slice(p.rows[a], p.rows[b - 1] + 1) if contiguous else p.rows[a:b]
            pre = first[0][at], first[1][at]
        rows = neighbours(x, p.k, int(p.n_excluded[a:b].max()), p.query_ids[a:b], groups_ab, pre)
        top_hits = []
        for name, (top, metrics) in zip(p.names, _score(p, rows, slice(a, b)), strict=True):
            top_hits.append(top)
            for key, vals in metrics.items():
                if key not in per_query[name]:
                    per_query[name][key] = np.empty(nq)
                per_query[name][key][a:b] = vals
        if len(p.names) > 1:
            rcwf[a:b] = top_hits[1] & ~top_hits[0]
        if len(check_pos):
            sel = check_pos[(check_pos >= a) & (check_pos < b)]
            approx_top[np.searchsorted(check_pos, sel)] = rows[sel - a, : approx_top.shape[1]]
        if progress is not None:
            progress(b, nq)
    if shard is not None:
        _gather_shards(shard, owned, per_query, rcwf, check_pos, approx_top, nq)
    return per_query, rcwf, approx_top


def _exact_audit(p: _Problem, queries: np.ndarray, exact: _Neighbours, check_pos: np.ndarray, k_check: int,
                 bs: int) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """The audited queries searched again exactly, at the full k.

    Their exact metric values, beside the approximate ones, measure what the approximate index changed
    (reported in ``block["approximation"]``).

    Returns:
        ``(exact values per level and metric, exact top-k_check rows)``, both in ``check_pos`` order.
    """
    exact_top = np.full((len(check_pos), k_check), -1, dtype=np.int64)
    exact_sample: dict[str, dict[str, np.ndarray]] = {name: {} for name in p.names}
    for a in range(0, len(check_pos), bs):
        pos = check_pos[a : a + bs]
        x = np.ascontiguousarray(queries[p.rows[pos]], dtype=np.float32)
        gr = p.query_groups[pos] if p.query_groups is not None else None
        rows = exact(x, p.k, int(p.n_excluded[pos].max()), p.query_ids[pos], gr)
        exact_top[a : a + len(pos)] = rows[:, :k_check]
        for name, (_, metrics) in zip(p.names, _score(p, rows, pos), strict=True):
            for key, vals in metrics.items():
                exact_sample[name].setdefault(key, np.empty(len(check_pos)))[a : a + len(pos)] = vals
    return exact_sample, exact_top


def approximation_error(
    approx: dict[str, dict[str, np.ndarray]],
    exact: dict[str, dict[str, np.ndarray]],
    block: dict[str, Any],
    n_queries: int,
    confidence: float,
) -> dict[str, Any]:
    """How far the approximate search moved each metric, measured on a uniform sample of the queries.

    For every sampled query both the approximate and the exact metric values are known; the mean paired
    difference estimates (approximate - exact) over all queries without bias, with a normal interval whose
    width includes the finite-population correction (sampling every query gives the exact difference).

    Returns:
        ``{"sample_queries", "confidence", "difference": {level: {metric: {"mean", "ci"}}},
        "exact_estimate": {level: {metric: value}}, "max_abs_error": bound}``: ``max_abs_error`` is the
        largest |end| of any headline interval, a bound on the error of every reported mean at that
        confidence (per metric).
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    diff: dict[str, dict[str, Any]] = {}
    estimate: dict[str, dict[str, float | None]] = {}
    bound: float | None = 0.0
    n = 0
    for name, metrics in exact.items():
        diff[name], estimate[name] = {}, {}
        for key, ex in metrics.items():
            if key not in block.get(name, {}):
                continue
            d = approx[name][key] - ex
            n = len(d)
            mean = float(d.mean())
            fpc = math.sqrt(max(0.0, (n_queries - n) / max(n_queries - 1, 1)))
            if n > 1 or n >= n_queries:
                half = z * float(d.std(ddof=1)) / math.sqrt(n) * fpc if fpc > 0 else 0.0
                lo, hi = mean - half, mean + half
                diff[name][key] = {"mean": mean, "ci": [lo, hi]}
                if bound is not None:
                    bound = max(bound, abs(lo), abs(hi))
            else:  # one sampled query out of many: no interval
                diff[name][key] = {"mean": mean, "ci": None}
                bound = None
            full = block[name][key]
            estimate[name][key] = None if full is None else float(full - mean)
    return {"sample_queries": n, "confidence": confidence, "difference": diff, "exact_estimate": estimate,
            "max_abs_error": bound}


class _ShardPart(TypedDict):
    """What one rank contributes to the gather: its query ranges and their values."""

    ranges: list[tuple[int, int]]
    per_query: dict[str, dict[str, list[np.ndarray]]]  # per level and metric, one array per range
    rcwf: list[np.ndarray]
    approx: dict[int, np.ndarray]  # audited query (position in check_pos) -> its approximate top rows


def _gather_shards(shard: QueryShard, owned: list[tuple[int, int]], per_query: dict[str, dict[str, np.ndarray]],
                   rcwf: np.ndarray, check_pos: np.ndarray, approx_top: np.ndarray, nq: int) -> None:
    """Fill in, in place, the query chunks the other ranks searched (every rank ends with all of them)."""
    mine: _ShardPart = {
        "ranges": owned,
        "per_query": {name: {key: [vals[a:b] for a, b in owned] for key, vals in m.items()}
                      for name, m in per_query.items()},
        "rcwf": [rcwf[a:b] for a, b in owned],
        "approx": {int(i): approx_top[i] for i, p in enumerate(check_pos)
                   if any(a <= p < b for a, b in owned)},
    }
    for part in shard.all_gather(mine):
        for name, metrics in part["per_query"].items():
            for key, chunks in metrics.items():
                if key not in per_query[name]:
                    per_query[name][key] = np.empty(nq)
                for (a, b), vals in zip(part["ranges"], chunks, strict=True):
                    per_query[name][key][a:b] = vals
        for (a, b), vals in zip(part["ranges"], part["rcwf"], strict=True):
            rcwf[a:b] = vals
        for i, row in part["approx"].items():
            approx_top[i] = row


def _as_label_matrix(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or len(labels) != n:
        raise DataError(f"{name} must have {n} rows (one per embedding), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name} must be integers (encode class names first), got {labels.dtype}")
    return labels


def run_split(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    ids: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    domains: np.ndarray | None = None,
    level_names: Sequence[str] = ("fine", "coarse"),
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    query_mask: np.ndarray | None = None,
    gallery_mask: np.ndarray | None = None,
    cfg: EvalConfig | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    shard: QueryShard | None = None,
    note: Callable[[str], None] | None = None,
) -> SplitResult:
    """Evaluate one split of a single embedding table: queries and gallery are rows of ``embeddings``.

    A thin wrapper over ``evaluate_retrieval`` (leave-one-out by default: every item is a query against all
    the others).

    Args:
        embeddings: N x D float32 embeddings (a ``np.memmap`` is read chunk by chunk). Rows that are not
            unit-norm are normalised (into a float32 copy).
        labels: N x L int labels, column 0 the finest level; a 1-D array is one level.
        ids: N unique item ids, integers or strings (default ``arange(N)``). A query never retrieves the
            gallery item with its own id; a duplicate row with another id is a legitimate neighbour.
        groups: N group keys (e.g. the source video or product); with ``cfg.exclude_same_group`` a query's
            group-mates are removed from its gallery and from its relevant set.
        domains: N domain names for the ``per_domain`` breakdown (fine level).
        level_names: Names of the label columns in the block (``fine``, ``coarse``).
        class_names: Fine label -> name for ``per_class`` (a mapping or a sequence indexed by label).
        query_mask: Which items are queries (default all).
        gallery_mask: Which items form the gallery (default all: leave-one-out).
        cfg: Cut-offs, index, bootstrap and exclusion settings.
        seed: Seed of the bootstrap and of approximate index training.
        progress: ``progress(done, total)`` after each chunk of queries.
        shard: This rank's share of the queries under ``torchrun`` (see ``evaluate_retrieval``).
        note: Receives the index memory plan before building (see ``evaluate_retrieval``).

    Returns:
        A ``SplitResult`` whose ``block`` is the metrics.json split block (see ``evaluate_retrieval``).

    Raises:
        DataError: Inconsistent shapes, duplicate ids, an empty gallery, or group exclusion without groups.
    """
    cfg = cfg or EvalConfig()
    labels, item_ids, grp, dom, qmask, gmask = _check_table(embeddings, labels, ids, groups, domains, query_mask,
                                                            gallery_mask, cfg.exclude_same_group)

    def part(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # a full mask passes the caller's array itself: no copy of a large (memory-mapped) table
        return x if mask.all() else x[mask]

    def maybe(x: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
        return None if x is None else part(x, mask)

    if not gmask.any():
        raise DataError("the gallery is empty")
    gallery = part(embeddings, gmask)
    # leave-one-out passes one array for both sides, which lets the exact search use the symmetry
    queries = gallery if np.array_equal(qmask, gmask) else part(embeddings, qmask)
    return evaluate_retrieval(
        queries, gallery, part(labels, qmask), part(labels, gmask),
        query_ids=part(item_ids, qmask), gallery_ids=part(item_ids, gmask),
        query_groups=maybe(grp, qmask), gallery_groups=maybe(grp, gmask), query_domains=maybe(dom, qmask),
        level_names=level_names, class_names=class_names, cfg=cfg, seed=seed, progress=progress, shard=shard,
        note=note,
    )


def _check_table(embeddings: np.ndarray, labels: np.ndarray, ids: np.ndarray | None, groups: np.ndarray | None,
                 domains: np.ndarray | None, query_mask: np.ndarray | None, gallery_mask: np.ndarray | None,
                 exclude_groups: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None,
                                                np.ndarray, np.ndarray]:
    """``(labels, ids, groups, domains, query mask, gallery mask)`` of one embedding table, after the checks."""
    if embeddings.ndim != 2:
        raise DataError(f"embeddings must be N x D, got shape {tuple(embeddings.shape)}")
    n = len(embeddings)
    labels = _as_label_matrix(labels, n, "labels")
    item_ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids).reshape(-1)
    if len(item_ids) != n:
        raise DataError(f"ids has {len(item_ids)} entries for {n} embeddings")
    if len(np.unique(item_ids)) != n:
        raise DataError("item ids must be unique (self-match exclusion works by id)")
    if exclude_groups and groups is None:
        raise DataError("exclude_same_group is set but no group of each item was given")
    qmask = _mask(query_mask, n, "query_mask")
    gmask = _mask(gallery_mask, n, "gallery_mask")
    grp = None if groups is None else np.asarray(groups).reshape(-1)
    if grp is not None and len(grp) != n:
        raise DataError(f"groups has {len(grp)} entries for {n} embeddings")
    dom = None if domains is None else np.asarray(domains).reshape(-1)
    return labels, item_ids, grp, dom, qmask, gmask


def _overlap(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-K rows that the approximate search also returned."""
    valid = exact >= 0
    found = (exact[:, :, None] == approx[:, None, :]).any(axis=2) & valid
    per_query = found.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return float(per_query.mean()) if len(per_query) else float("nan")


def _assemble(
    names: list[str],
    per_query: dict[str, dict[str, np.ndarray]],
    rcwf: np.ndarray | None,
    ks: list[int],
    cfg: EvalConfig,
    seed: int,
    *,
    nq: int,
    n_gallery: int,
    n_skipped: int,
    fine_labels: np.ndarray,
    class_names: Mapping[int, str] | Sequence[str] | None,
    domains: np.ndarray | None,
    query_keys: np.ndarray | None = None,
) -> dict[str, Any]:
    """The split's block of metrics.json. Means are summed exactly and the bootstrap resamples queries in the
    order of their id hashes (``query_keys``), so permuting the rows changes no bit of it."""
    keys = [f"recall@{k}" for k in ks] + list(HEADLINE)
    block: dict[str, Any] = {"n_queries": nq, "n_gallery": n_gallery, "n_skipped_queries": n_skipped}
    for name in names:
        block[name] = {
            key: _finite(exact_mean(per_query[name][key])) if nq else None for key in keys
        }
    # one resampling for every headline number, so their intervals are mutually consistent
    # no queries (e.g. only singleton classes): no per-query arrays exist
    canon = np.argsort(query_keys, kind="stable") if query_keys is not None else slice(None)
    flat = {f"{name}/{key}": per_query[name][key][canon] for name in names for key in keys} if nq else {}
    if rcwf is not None:
        flat[RCWF] = rcwf[canon]
    ci = bootstrap_ci(flat, n_resamples=cfg.bootstrap, confidence=cfg.confidence, seed=seed) if nq else {}
    block["ci95"] = {name: {key: ci[f"{name}/{key}"] for key in keys} for name in names} if ci else {}
    if rcwf is not None:
        block[RCWF] = _finite(exact_mean(rcwf)) if nq else None
        if ci:
            block[RCWF + "_ci95"] = ci[RCWF]

    fine = per_query[names[0]]
    if nq:
        uniq, code = _codes(fine_labels)
        n_per = np.bincount(code, minlength=len(uniq))
        r1 = exact_group_means(code, fine["recall@1"], len(uniq))
        mr = exact_group_means(code, fine["map@r"], len(uniq))
        block["per_class"] = {
            _class_name(class_names, lab): {
                "n": int(n_per[j]), "recall@1": float(r1[j]), "map@r": float(mr[j])
            }
            for j, lab in enumerate(uniq.tolist())
        }
    else:
        block["per_class"] = {}
    if domains is not None:
        block["per_domain"] = {}
        if nq:
            uniq, code = _codes(domains.astype(str))
            n_per = np.bincount(code, minlength=len(uniq))
            means = {key: exact_group_means(code, fine[key], len(uniq)) for key in keys}
            for j, dom in enumerate(uniq.tolist()):
                block["per_domain"][str(dom)] = {
                    "n": int(n_per[j]),
                    **{key: float(means[key][j]) for key in keys},
                }
    return block


def _class_name(class_names: Mapping[int, str] | Sequence[str] | None, label: int) -> str:
    if class_names is None:
        return str(label)
    try:
        return str(class_names[label])
    except (KeyError, IndexError, TypeError):
        return str(label)


def compare_per_query(
    a: SplitResult,
    b: SplitResult,
    *,
    level: str = "fine",
    metrics: Sequence[str] = ("recall@1", "map@r"),
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap test of two evaluations of the same split, matching queries by item id.

    Returns:
        ``{metric: {"delta", "ci", "p_value", "n_queries", "n_resamples"}}`` with ``delta = a - b``.

    Raises:
        DataError: The two results share no query.
    """
    common, ia, ib = np.intersect1d(a.query_ids, b.query_ids, assume_unique=True, return_indices=True)
    if len(common) == 0:
        raise DataError("the two evaluations share no query id")
    return {
        m: paired_bootstrap_test(
            a.per_query[level][m][ia],
            b.per_query[level][m][ib],
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        ).as_dict()
        for m in metrics
    }


def encode_labels(table: LabelTable, columns: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
    """Integer-code label columns (class names -> codes) for ``run_split``.

    Returns:
        ``(labels, names)``: N x L int64 codes and, per column, the class name of each code.
    """
    out: list[np.ndarray] = []
    names: list[list[str]] = []
    for col in columns:
        uniq, codes = _codes(np.asarray(table[col]).astype(str))
        out.append(codes)
        names.append(uniq.tolist())
    return np.stack(out, axis=1), names


def evaluate_embeddings(
    embeddings: np.ndarray,
    table: LabelTable,
    cfg: EvalConfig | None = None,
    *,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    shard: QueryShard | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate every split of a labelled embedding table, leave-one-out within each split.

    Args:
        embeddings: N x D embeddings, row ``i`` described by row ``i`` of ``table``.
        table: Columns of equal length: ``fine`` (required), optional ``coarse``, ``id``, ``split``,
            ``domain``, ``group``. Class names may be strings.
        cfg: Evaluation settings.
        seed: Bootstrap / index seed.
        progress: ``progress(split, done, total)``.
        shard: This rank's share of the queries under ``torchrun``.

    Returns:
        ``{split: block}`` for each split value present (``cfg.splits`` order first, then any other values
        sorted), or ``{"all": block}`` when there is no ``split`` column.

    Raises:
        DataError: Missing ``fine`` column or lengths that disagree with the embeddings.
    """
    cfg = cfg or EvalConfig()
    n = len(embeddings)
    if "fine" not in table:
        raise DataError("the label table has no 'fine' column")
    for col, values in table.items():
        if len(values) != n:
            raise DataError(f"column {col!r} has {len(values)} rows but there are {n} embeddings")
    levels = ["fine"] + (["coarse"] if "coarse" in table else [])
    labels, names = encode_labels(table, levels)
    ids = np.asarray(table["id"]) if "id" in table else None
    groups = np.asarray(table["group"]).astype(str) if "group" in table else None
    domains = np.asarray(table["domain"]).astype(str) if "domain" in table else None
    if "split" in table:
        split_col = np.asarray(table["split"]).astype(str)
        found = set(split_col.tolist())
        order = [s for s in cfg.splits if s in found] + sorted(found - set(cfg.splits))
        masks = {s: split_col == s for s in order}
    else:
        masks = {"all": None}
    result: dict[str, dict[str, Any]] = {}
    for split, mask in masks.items():
        cb = (lambda d, t, s=split: progress(s, d, t)) if progress is not None else None
        result[split] = run_split(
            embeddings,
            labels,
            ids=ids,
            groups=groups,
            domains=domains,
            level_names=levels,
            class_names=names[0],
            query_mask=mask,
            gallery_mask=mask,
            cfg=cfg,
            seed=seed,
            progress=cb,
            shard=shard,
            note=note,
        ).block
    return result
