"""A frozen copy of ``evaluate_retrieval`` from before it was split at its seams (issue 17).

It guards that refactor: ``test_evaluate_split_is_bit_identical`` asserts that the split function returns
exactly (bit for bit) what this one does on random inputs. It calls the module's unchanged helpers, so it pins
the orchestration that moved: id and group coding, the relevant sets, the search depth, the chunked search,
the exact-check audit and the block. The one edit: ``_CHUNK_ELEMENTS`` is read from the module, so a test
can shrink the chunks of both. Delete it (and that test) when evaluation is meant to change.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ofgr_core.common.errors import DataError
from ofgr_core.config import EvalConfig
from ofgr_core.retrieval import evaluate as _ev
from ofgr_core.retrieval.evaluate import (
    RCWF,
    Progress,
    SplitResult,
    _as_label_matrix,
    _assemble,
    _codes,
    _count_lookup,
    _gather_shards,
    _Neighbours,
    _overlap,
    approximation_error,
)
from ofgr_core.retrieval.index import as_searchable, build_index, exact_searcher
from ofgr_core.retrieval.metrics import metrics_from_hits
from ofgr_core.retrieval.shard import QueryShard
from ofgr_core.retrieval.ties import id_hash_keys


def evaluate_retrieval_before_split(
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
    class_names: Mapping[Any, str] | Sequence[str] | None = None,
    cfg: EvalConfig | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    shard: QueryShard | None = None,
    note: Callable[[str], None] | None = None,
) -> SplitResult:
    """``evaluate_retrieval`` as it was before the split (commit cf853e7), verbatim below this line."""
    cfg = cfg or EvalConfig()
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

    # ids: one integer code space for both sides, so a query is excluded from its own gallery entry
    g_raw = np.arange(n_gallery, dtype=np.int64) if gallery_ids is None else np.asarray(gallery_ids).reshape(-1)
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

    exclude_groups = cfg.exclude_same_group
    if exclude_groups and (query_groups is None or gallery_groups is None):
        raise DataError("exclude_same_group is set but no group of each item was given")
    gg_codes = qg_codes = None
    if exclude_groups:
        qg, gg = np.asarray(query_groups).reshape(-1), np.asarray(gallery_groups).reshape(-1)
        if len(gg) != n_gallery or len(qg) != nq_all:
            raise DataError(f"groups have {len(qg)}/{len(gg)} entries for {nq_all}/{n_gallery} embeddings")
        _, gcodes = _codes(np.concatenate([gg.astype(str), qg.astype(str)]))
        gg_codes, qg_codes = gcodes[:n_gallery], gcodes[n_gallery:]

    # --- R per query and level: relevant gallery items minus the query itself and excluded group-mates
    level_q, level_g, n_classes = [], [], []
    for lv in range(n_levels):
        _, codes = _codes(np.concatenate([g_lab[:, lv], q_lab[:, lv]]))
        level_g.append(codes[:n_gallery])
        level_q.append(codes[n_gallery:])
        n_classes.append(int(codes.max()) + 1 if len(codes) else 0)
    in_gallery = _count_lookup(g_ids, q_ids_all)  # 1 when the query is itself a gallery item
    relevant = []
    for lg, lq, nc in zip(level_g, level_q, n_classes, strict=True):
        per_class = _count_lookup(lg, lq)
        if gg_codes is not None:
            # (group, label) keys; they include the query itself when it is in the gallery
            per_class = per_class - _count_lookup(gg_codes * nc + lg, qg_codes * nc + lq)
        else:
            per_class = per_class - in_gallery
        relevant.append(per_class)
    # gallery slots each query must discard: itself, plus its whole group when excluding groups
    n_excl = _count_lookup(gg_codes, qg_codes) if gg_codes is not None else in_gallery

    active = relevant[0] > 0
    n_skipped = int((~active).sum())
    q_rows = np.flatnonzero(active)
    n_excl = n_excl[active]
    relevant = [r[active] for r in relevant]
    nq = len(q_rows)

    ks = list(cfg.ks)
    kmax_req = max(ks)
    r_max = max((int(r.max()) for r in relevant), default=0) if nq else 0
    k = min(max(kmax_req, min(r_max, cfg.max_r)), n_gallery)
    avail = n_gallery - (int(n_excl.max()) if nq else 0)
    if nq and kmax_req > avail:
        warnings.warn(
            f"K={kmax_req} exceeds the {avail} gallery items some queries can retrieve; their Recall@K "
            f"counts all {avail}",
            stacklevel=2,
        )

    # --- search structures; the gallery is the caller's array itself when it is unit-norm float32
    gallery = as_searchable(gallery_emb)  # unit-norm float16 stays float16 (searched in float32 blocks)
    queries = gallery if query_emb is gallery_emb else as_searchable(query_emb)
    if cfg.index.type == "flat":
        searcher = exact_searcher(gallery, ids=g_ids, device=cfg.index.device, multi_gpu=cfg.index.multi_gpu,
                                  note=note)
    else:
        searcher = build_index(gallery, cfg.index, ids=g_ids, seed=seed, note=note)
    tie_keys = id_hash_keys(g_raw)  # ties broken by a hash of the item id, never by row order
    neighbours = _Neighbours(searcher, g_ids, gg_codes, tie_keys)
    query_level = [c[q_rows] for c in level_q]
    q_ids = q_ids_all[q_rows]
    q_groups = qg_codes[q_rows] if qg_codes is not None else None

    k_check = min(kmax_req, k)
    check_pos = np.empty(0, dtype=np.int64)
    if cfg.index.type != "flat" and cfg.index.exact_check > 0 and nq:
        rng = np.random.default_rng(seed)
        check_pos = np.sort(rng.choice(nq, size=min(nq, cfg.index.exact_check), replace=False))
    approx_top = np.full((len(check_pos), k_check), -1, dtype=np.int64)

    per_query: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
    rcwf = np.zeros(nq)
    capped = {name: int((r > k).sum()) for name, r in zip(names, relevant, strict=True)}
    e_max = int(n_excl.max()) if nq else 0
    bs = max(64, min(cfg.batch_size, _ev._CHUNK_ELEMENTS // max(k + e_max, 1)))
    contiguous = nq > 0 and q_rows[-1] - q_rows[0] == nq - 1
    owned: list[tuple[int, int]] = []
    for chunk_no, a in enumerate(range(0, nq, bs)):
        if shard is not None and not shard.owns(chunk_no):
            continue
        b = min(a + bs, nq)
        owned.append((a, b))
        # a contiguous run of rows is read as a slice, which keeps memmap reads sequential
        x = queries[q_rows[a] : q_rows[b - 1] + 1] if contiguous else queries[q_rows[a:b]]
        x = np.ascontiguousarray(x, dtype=np.float32)
        groups_ab = q_groups[a:b] if q_groups is not None else None
        rows = neighbours(x, k, int(n_excl[a:b].max()), q_ids[a:b], groups_ab)
        valid = rows >= 0
        safe = np.maximum(rows, 0)
        top_hits = []
        for lv, name in enumerate(names):
            hits = (level_g[lv][safe] == query_level[lv][a:b, None]) & valid
            top_hits.append(hits[:, 0])
            # recall@1 always: per_class reports it even when --k leaves 1 out
            for key, vals in metrics_from_hits(hits, relevant[lv][a:b], sorted({1, *ks})).items():
                if key not in per_query[name]:
                    per_query[name][key] = np.empty(nq)
                per_query[name][key][a:b] = vals
        if n_levels > 1:
            rcwf[a:b] = top_hits[1] & ~top_hits[0]
        if len(check_pos):
            sel = check_pos[(check_pos >= a) & (check_pos < b)]
            approx_top[np.searchsorted(check_pos, sel)] = rows[sel - a, :k_check]
        if progress is not None:
            progress(b, nq)
    if shard is not None:
        _gather_shards(shard, owned, per_query, rcwf, check_pos, approx_top, nq)

    index_info: dict[str, Any] = {**searcher.info(), "k": int(k)}
    exact_sample: dict[str, dict[str, np.ndarray]] = {}
    if len(check_pos):
        # the sampled queries searched again exactly, at the full k: their exact metric values, beside the
        # approximate ones, measure what the approximate index changed (reported in block["approximation"])
        exact = _Neighbours(exact_searcher(gallery, ids=g_ids, device=cfg.index.device), g_ids, gg_codes,
                            tie_keys)
        exact_top = np.full_like(approx_top, -1)
        exact_sample = {name: {} for name in names}
        for a in range(0, len(check_pos), bs):
            pos = check_pos[a : a + bs]
            x = np.ascontiguousarray(queries[q_rows[pos]], dtype=np.float32)
            gr = q_groups[pos] if q_groups is not None else None
            rows = exact(x, k, int(n_excl[pos].max()), q_ids[pos], gr)
            exact_top[a : a + len(pos)] = rows[:, :k_check]
            valid, safe = rows >= 0, np.maximum(rows, 0)
            for lv, name in enumerate(names):
                hits = (level_g[lv][safe] == query_level[lv][pos, None]) & valid
                for key, vals in metrics_from_hits(hits, relevant[lv][pos], sorted({1, *ks})).items():
                    exact_sample[name].setdefault(key, np.empty(len(check_pos)))[a : a + len(pos)] = vals
        index_info[f"recall_vs_exact@{k_check}"] = _overlap(approx_top, exact_top)
        index_info["exact_check_queries"] = len(check_pos)

    block = _assemble(
        names,
        per_query,
        rcwf if n_levels > 1 else None,
        ks,
        cfg,
        seed,
        nq=nq,
        n_gallery=n_gallery,
        n_skipped=n_skipped,
        fine_labels=q_lab[q_rows, 0],
        class_names=class_names,
        domains=None if query_domains is None else np.asarray(query_domains).reshape(-1)[q_rows],
    )
    block["index"] = index_info
    block["index"]["exact"] = cfg.index.type == "flat"
    if exact_sample:
        block["approximation"] = approximation_error(
            {name: {key: vals[check_pos] for key, vals in per_query[name].items()} for name in names},
            exact_sample, block, nq, cfg.confidence)
    block["r_cap"] = {"max_r": cfg.max_r, "k": int(k), "n_capped": capped}
    pq = dict(per_query)
    if n_levels > 1:
        pq["_"] = {RCWF: rcwf}
    out_ids = (np.arange(n_gallery, n_gallery + nq_all) if q_raw is None else q_raw)[q_rows]
    return SplitResult(block, out_ids, pq)
