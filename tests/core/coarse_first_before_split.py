"""A frozen copy of ``evaluate_coarse_first`` from before it was split at its seams (issue 17).

It guards that refactor: ``test_coarse_first_split_is_bit_identical`` asserts that the split function returns
exactly (bit for bit) what this one does on random inputs. It calls the module's unchanged helpers
(``_topk``, ``_codes``, ``metrics_from_hits``), so it pins what moved: input coding, relevant counts, the
coarse vote, the partition-first re-ranking and the per-query metrics. The one edit: ``_BLOCK_ELEMENTS`` is
read from the module, so a test can shrink the blocks of both. Delete it (and that test) when coarse-first
evaluation is meant to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ofgr_core.common.errors import DataError
from ofgr_core.retrieval import coarse_first as _cf
from ofgr_core.retrieval.coarse_first import METHODS, RCWF, Retrieval, _codes, _topk
from ofgr_core.retrieval.metrics import metrics_from_hits


def evaluate_coarse_first_before_split(
    embeddings: np.ndarray,
    fine: Sequence[Any] | np.ndarray,
    coarse: Sequence[Any] | np.ndarray,
    *,
    ids: Sequence[Any] | np.ndarray | None = None,
    query_mask: np.ndarray | None = None,
    gallery_mask: np.ndarray | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    ks: Sequence[int] = (1, 2, 4, 5, 8, 10),
    max_r: int = 1000,
    method: str = "knn",
    k_vote: int = 10,
) -> tuple[np.ndarray, Retrieval, Retrieval, np.ndarray, np.ndarray]:
    """``evaluate_coarse_first`` as it was before the split (commit cf853e7), verbatim below this line."""
    if method not in METHODS:
        raise DataError(f"coarse-first method must be one of {', '.join(METHODS)}, got {method!r}")
    if k_vote < 1:
        raise DataError(f"coarse-first k_vote must be >= 1, got {k_vote}")
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"embeddings must be N x D, got shape {x.shape}")
    n = len(x)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    fine_names, f = _codes(np.asarray(fine).astype(str))
    coarse_names, c = _codes(np.asarray(coarse).astype(str))
    if len(f) != n or len(c) != n:
        raise DataError(f"labels must have {n} entries (one per embedding), got {len(f)} fine / {len(c)} coarse")
    item_ids = np.arange(n) if ids is None else np.asarray(ids)
    qmask = np.ones(n, bool) if query_mask is None else np.asarray(query_mask, bool)
    gmask = np.ones(n, bool) if gallery_mask is None else np.asarray(gallery_mask, bool)
    g_rows, q_rows = np.flatnonzero(gmask), np.flatnonzero(qmask)
    if len(g_rows) == 0:
        raise DataError("the gallery is empty")
    grp = None if groups is None else _codes(np.asarray(groups).astype(str))[1]

    gal = x[g_rows]
    gf, gc = f[g_rows], c[g_rows]
    n_fine, n_coarse = len(fine_names), len(coarse_names)

    def relevant(q: np.ndarray, labels_g: np.ndarray, labels: np.ndarray, n_cls: int) -> np.ndarray:
        r = np.bincount(labels_g, minlength=n_cls)[labels[q]].astype(np.int64)
        if grp is None:
            return r - gmask[q].astype(np.int64)
        same = np.zeros(len(q), np.int64)
        key_g = grp[g_rows] * n_cls + labels_g
        uniq, cnt = np.unique(key_g, return_counts=True)
        key_q = grp[q] * n_cls + labels[q]
        pos = np.clip(np.searchsorted(uniq, key_q), 0, max(len(uniq) - 1, 0))
        same = np.where(uniq[pos] == key_q, cnt[pos], 0) if len(uniq) else same
        return r - same

    r_fine = relevant(q_rows, gf, f, n_fine)
    active = r_fine > 0
    q_rows, r_fine = q_rows[active], r_fine[active]
    r_coarse = relevant(q_rows, gc, c, n_coarse)
    nq = len(q_rows)
    kmax = max(ks)
    r_top = int(max(r_fine.max(initial=0), r_coarse.max(initial=0)))
    k = min(max(kmax, min(r_top, max_r)), len(g_rows))

    # coarse centroids (sums, so a query's own contribution can be taken out)
    centroid_sums = np.zeros((n_coarse, x.shape[1]), np.float64)
    np.add.at(centroid_sums, gc, gal)

    gallery_pos = np.full(n, -1, np.int64)
    gallery_pos[g_rows] = np.arange(len(g_rows))
    flat_pq: dict[str, list[np.ndarray]] = {}
    cf_pq: dict[str, list[np.ndarray]] = {}
    predicted = np.empty(nq, np.int64)
    bs = max(1, min(1024, _cf._BLOCK_ELEMENTS // max(len(g_rows), 1)))
    for a in range(0, nq, bs):
        q = q_rows[a : a + bs]
        sims = x[q] @ gal.T
        # never retrieve the query itself (by id) or, with groups, its group-mates
        excl = item_ids[g_rows][None, :] == item_ids[q][:, None]
        if grp is not None:
            excl |= grp[g_rows][None, :] == grp[q][:, None]
        sims = np.where(excl, -np.inf, sims)
        if method == "knn":
            idx, ok = _topk(sims, k_vote)
            w = np.where(ok, np.take_along_axis(sims, idx, axis=1) + 1.0, 0.0)  # cosine + 1 >= 0
            votes = np.zeros((len(q), n_coarse))
            np.add.at(votes, (np.repeat(np.arange(len(q)), idx.shape[1]), gc[idx].ravel()), w.ravel())
            pred = votes.argmax(axis=1)
        else:
            sums = np.broadcast_to(centroid_sums, (len(q), *centroid_sums.shape)).copy()
            self_pos = gallery_pos[q]
            inside = self_pos >= 0
            sums[np.flatnonzero(inside), c[q][inside]] -= x[q][inside]
            cen = sums / np.maximum(np.linalg.norm(sums, axis=2, keepdims=True), 1e-12)
            pred = np.einsum("qd,qcd->qc", x[q].astype(np.float64), cen).argmax(axis=1)
        predicted[a : a + len(q)] = pred

        flat_idx, flat_ok = _topk(sims, k)
        in_part = gc[None, :] == pred[:, None]
        first_idx, first_ok = _topk(np.where(in_part, sims, -np.inf), k)
        rest_idx, rest_ok = _topk(np.where(in_part, -np.inf, sims), k)
        # the partition first (its finite entries), then the rest, truncated to k
        cat_idx = np.concatenate([first_idx, rest_idx], axis=1)
        cat_ok = np.concatenate([first_ok, rest_ok], axis=1)
        order = np.argsort(~cat_ok, axis=1, kind="stable")[:, :k]
        cf_idx = np.take_along_axis(cat_idx, order, axis=1)
        cf_ok = np.take_along_axis(cat_ok, order, axis=1)
        for store, idx, ok in ((flat_pq, flat_idx, flat_ok), (cf_pq, cf_idx, cf_ok)):
            hits_f = (gf[idx] == f[q][:, None]) & ok
            hits_c = (gc[idx] == c[q][:, None]) & ok
            for level, hits, r in (("fine", hits_f, r_fine[a : a + len(q)]), ("coarse", hits_c,
                                                                                 r_coarse[a : a + len(q)])):
                for key, vals in metrics_from_hits(hits, r, ks).items():
                    store.setdefault(f"{level}_{key}", []).append(vals)
            store.setdefault(RCWF, []).append((hits_c[:, 0] & ~hits_f[:, 0]).astype(np.float64))

    def cat(d: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.concatenate(v) if v else np.empty(0) for key, v in d.items()}

    flat = Retrieval(cat(flat_pq))
    cf = Retrieval(cat(cf_pq))
    if nq == 0:
        flat = Retrieval({})
        cf = Retrieval({})
    return item_ids[q_rows], flat, cf, coarse_names[predicted], coarse_names[c[q_rows]]
