"""Coarse-first (hierarchical) retrieval, evaluated beside flat retrieval on the same queries and gallery.

A query's coarse class is decided first, then the gallery items of that coarse class are ranked first (by
similarity) and the rest after them (by similarity). The coarse decision comes from

* ``knn``: the similarity-weighted coarse votes of the query's ``k_vote`` nearest gallery neighbours, or
* ``centroid``: the nearest coarse centroid of the gallery (the query's own embedding left out).

Both use only the gallery's coarse labels, which a retrieval database has; nothing about the query's label.
With a single coarse class the partition is the whole gallery, so the ranking is exactly the flat one.

Flat and coarse-first are computed by the same code (exact inner-product search over the stored, L2
normalised embeddings; the query itself and, with ``eval.exclude_same_group``, its group-mates are never
retrieved), so their difference is the re-ranking alone. Metrics follow ``ofgr_core.retrieval.metrics``
(docs/metrics.md).

For a run, ``coarse_first_for_run`` reads ``embeddings/<split>.npy`` + ``.csv``, takes the queries of
``eval/per_query_<split>.npz`` (the evaluated ones) and the gallery of the split's query protocol
(``split.json``), and caches per-query results in ``eval/coarse_first_<split>_<method>.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofgr_core.common.errors import DataError
from ofgr_core.retrieval.index import unit_rows
from ofgr_core.retrieval.metrics import bootstrap_ci, metrics_from_hits, paired_bootstrap_tests
from ofgr_core.runs.folder import RunFolder

METHODS = ("knn", "centroid")
RCWF = "right_coarse_wrong_fine@1"
CACHE_VERSION = 1
_BLOCK_ELEMENTS = 1 << 24  # query block x gallery similarities held at once


@dataclass
class Retrieval:
    """Per-query results of one retrieval mode over the active queries."""

    per_query: dict[str, np.ndarray]  # "<level>_<metric>" and RCWF

    def mean(self, key: str) -> float:
        v = self.per_query[key]
        return float(v.mean()) if len(v) else float("nan")


@dataclass
class CoarseFirstResult:
    """Coarse-first and flat retrieval of one split, query by query.

    Attributes:
        query_ids: ids of the evaluated queries (the order of every per-query array).
        flat, coarse_first: per-query metrics of each mode.
        predicted_coarse, true_coarse: the coarse decision and the truth, per query (coarse class names).
        block: the coarse-first metrics in the metrics.json split-block layout (+ ``coarse_accuracy``).
        flat_block: the flat metrics computed by the same code, same layout.
        vs_flat: paired bootstrap tests coarse-first minus flat, ``{key: {delta, ci, p_value}}``.
    """

    split: str
    method: str
    k_vote: int
    query_ids: np.ndarray
    flat: Retrieval
    coarse_first: Retrieval
    predicted_coarse: np.ndarray
    true_coarse: np.ndarray
    ks: list[int]
    block: dict[str, Any] = field(default_factory=dict)
    flat_block: dict[str, Any] = field(default_factory=dict)
    vs_flat: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def coarse_accuracy(self) -> float:
        return float(np.mean(self.predicted_coarse == self.true_coarse)) if len(self.true_coarse) else float("nan")

    def per_query_arrays(self) -> dict[str, np.ndarray]:
        """Coarse-first per-query arrays in the ``eval/per_query_<split>.npz`` layout (``ids`` + metrics)."""
        return {"ids": self.query_ids.astype(str), **self.coarse_first.per_query}


def _topk(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of the ``k`` largest entries per row in descending order, and whether each is finite."""
    n = sims.shape[1]
    k = min(k, n)
    full = np.broadcast_to(np.arange(n), sims.shape)
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else full.copy()
    vals = np.take_along_axis(sims, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)  # by similarity, then by gallery position (deterministic)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.isfinite(np.take_along_axis(sims, idx, axis=1))


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, codes = np.unique(np.asarray(values), return_inverse=True)
    return uniq, codes.reshape(-1).astype(np.int64)


def evaluate_coarse_first(
    embeddings: np.ndarray,
    fine: Sequence[Hashable] | np.ndarray,
    coarse: Sequence[Hashable] | np.ndarray,
    *,
    ids: Sequence[Hashable] | np.ndarray | None = None,
    query_mask: np.ndarray | None = None,
    gallery_mask: np.ndarray | None = None,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    ks: Sequence[int] = (1, 2, 4, 5, 8, 10),
    max_r: int = 1000,
    method: str = "knn",
    k_vote: int = 10,
) -> tuple[np.ndarray, Retrieval, Retrieval, np.ndarray, np.ndarray]:
    """Flat and coarse-first retrieval of the same queries against the same gallery.

    Args:
        embeddings: N x D embeddings (normalised here).
        fine, coarse: N labels each (any hashable values).
        ids: N unique item ids (default row numbers).
        query_mask, gallery_mask: which rows are queries / the gallery (default: all, leave-one-out).
        groups: N group keys; when given, a query never retrieves its group-mates (``exclude_same_group``).
        ks: Recall@K cut-offs.
        max_r: Cap on R (as ``eval.max_r``).
        method: ``knn`` or ``centroid`` (module docstring).
        k_vote: Neighbours that vote under ``knn``.

    Returns:
        ``(query_ids, flat, coarse_first, predicted_coarse, true_coarse)`` over the queries with at least one
        relevant fine item in the gallery.

    Raises:
        DataError: bad shapes, an unknown method, or an empty gallery.
    """
    if method not in METHODS:
        raise DataError(f"coarse-first method must be one of {', '.join(METHODS)}, got {method!r}")
    if k_vote < 1:
        raise DataError(f"coarse-first k_vote must be >= 1, got {k_vote}")
    t = _encode(embeddings, fine, coarse, ids, query_mask, gallery_mask, groups)
    r_fine = _relevant(t, t.q_rows, t.gf, t.f, len(t.fine_names))
    active = r_fine > 0
    q_rows, r_fine = t.q_rows[active], r_fine[active]
    r_coarse = _relevant(t, q_rows, t.gc, t.c, len(t.coarse_names))
    nq = len(q_rows)
    r_top = int(max(r_fine.max(initial=0), r_coarse.max(initial=0)))
    k = min(max(max(ks), min(r_top, max_r)), len(t.g_rows))
    gc = t.gc
    # coarse centroids (sums, so a query's own contribution can be taken out)
    centroid_sums = np.zeros((len(t.coarse_names), t.x.shape[1]), np.float64)
    np.add.at(centroid_sums, gc, t.gallery)

    flat_pq: dict[str, list[np.ndarray]] = {}
    cf_pq: dict[str, list[np.ndarray]] = {}
    predicted = np.empty(nq, np.int64)
    bs = max(1, min(1024, _BLOCK_ELEMENTS // max(len(t.g_rows), 1)))
    for a in range(0, nq, bs):
        q = q_rows[a : a + bs]
        sims = _similarities(t, q)
        pred = _knn_vote(sims, gc, len(t.coarse_names), k_vote) if method == "knn" else \
            _centroid_vote(t, q, centroid_sums)
        predicted[a : a + len(q)] = pred
        relevant = (r_fine[a : a + len(q)], r_coarse[a : a + len(q)])
        _score(flat_pq, t, q, *_topk(sims, k), relevant, ks)
        _score(cf_pq, t, q, *_partition_first(sims, gc[None, :] == pred[:, None], k), relevant, ks)

    def cat(d: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.concatenate(v) if v else np.empty(0) for key, v in d.items()}

    flat = Retrieval(cat(flat_pq))
    cf = Retrieval(cat(cf_pq))
    if nq == 0:
        flat = Retrieval({})
        cf = Retrieval({})
    return t.item_ids[q_rows], flat, cf, t.coarse_names[predicted], t.coarse_names[t.c[q_rows]]


@dataclass
class _Table:
    """The inputs of ``evaluate_coarse_first`` coded: unit rows, label codes, ids, query and gallery rows."""

    x: np.ndarray  # N x D float32, unit rows
    f: np.ndarray  # fine codes
    c: np.ndarray  # coarse codes
    fine_names: np.ndarray
    coarse_names: np.ndarray
    item_ids: np.ndarray
    q_rows: np.ndarray
    g_rows: np.ndarray
    gmask: np.ndarray
    grp: np.ndarray | None  # group codes when excluding group-mates
    gallery_pos: np.ndarray  # row -> position in the gallery, -1 outside it
    gallery: np.ndarray  # x of the gallery rows
    gf: np.ndarray  # fine codes of the gallery rows
    gc: np.ndarray  # coarse codes of the gallery rows


def _encode(embeddings: np.ndarray, fine: Sequence[Hashable] | np.ndarray, coarse: Sequence[Hashable] | np.ndarray,
            ids: Sequence[Hashable] | np.ndarray | None, query_mask: np.ndarray | None,
            gallery_mask: np.ndarray | None, groups: Sequence[Hashable] | np.ndarray | None) -> _Table:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"embeddings must be N x D, got shape {x.shape}")
    n = len(x)
    x = unit_rows(x, np.float32)
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
    gallery_pos = np.full(n, -1, np.int64)
    gallery_pos[g_rows] = np.arange(len(g_rows))
    return _Table(x, f, c, fine_names, coarse_names, item_ids, q_rows, g_rows, gmask, grp, gallery_pos,
                  x[g_rows], f[g_rows], c[g_rows])


def _relevant(t: _Table, q: np.ndarray, labels_g: np.ndarray, labels: np.ndarray, n_cls: int) -> np.ndarray:
    """R of queries ``q`` at one level: gallery items of their class, minus themselves or their group-mates."""
    r = np.bincount(labels_g, minlength=n_cls)[labels[q]].astype(np.int64)
    out: np.ndarray
    if t.grp is None:
        out = r - t.gmask[q].astype(np.int64)  # the query itself, when it is a gallery item
        return out
    same = np.zeros(len(q), np.int64)
    key_g = t.grp[t.g_rows] * n_cls + labels_g
    uniq, cnt = np.unique(key_g, return_counts=True)
    key_q = t.grp[q] * n_cls + labels[q]
    pos = np.clip(np.searchsorted(uniq, key_q), 0, max(len(uniq) - 1, 0))
    same = np.where(uniq[pos] == key_q, cnt[pos], 0) if len(uniq) else same
    out = r - same
    return out


def _similarities(t: _Table, q: np.ndarray) -> np.ndarray:
    """Query block x gallery similarities; the query itself (by id) and its group-mates at -inf."""
    sims = t.x[q] @ t.gallery.T
    excl = t.item_ids[t.g_rows][None, :] == t.item_ids[q][:, None]
    if t.grp is not None:
        excl |= t.grp[t.g_rows][None, :] == t.grp[q][:, None]
    return np.where(excl, -np.inf, sims)


def _knn_vote(sims: np.ndarray, gc: np.ndarray, n_coarse: int, k_vote: int) -> np.ndarray:
    """The coarse class with the most similarity-weighted votes among each query's ``k_vote`` neighbours."""
    idx, ok = _topk(sims, k_vote)
    w = np.where(ok, np.take_along_axis(sims, idx, axis=1) + 1.0, 0.0)  # cosine + 1 >= 0
    votes = np.zeros((len(sims), n_coarse))
    np.add.at(votes, (np.repeat(np.arange(len(sims)), idx.shape[1]), gc[idx].ravel()), w.ravel())
    pred: np.ndarray = votes.argmax(axis=1)
    return pred


def _centroid_vote(t: _Table, q: np.ndarray, centroid_sums: np.ndarray) -> np.ndarray:
    """The nearest coarse centroid of each query, its own embedding taken out of its class's centroid."""
    sums = np.broadcast_to(centroid_sums, (len(q), *centroid_sums.shape)).copy()
    self_pos = t.gallery_pos[q]
    inside = self_pos >= 0
    sums[np.flatnonzero(inside), t.c[q][inside]] -= t.x[q][inside]
    cen = sums / np.maximum(np.linalg.norm(sums, axis=2, keepdims=True), 1e-12)
    pred: np.ndarray = np.einsum("qd,qcd->qc", t.x[q].astype(np.float64), cen).argmax(axis=1)
    return pred


def _partition_first(sims: np.ndarray, in_part: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery columns: the predicted partition's finite entries first, then the rest."""
    first_idx, first_ok = _topk(np.where(in_part, sims, -np.inf), k)
    rest_idx, rest_ok = _topk(np.where(in_part, -np.inf, sims), k)
    cat_idx = np.concatenate([first_idx, rest_idx], axis=1)
    cat_ok = np.concatenate([first_ok, rest_ok], axis=1)
    order = np.argsort(~cat_ok, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cat_idx, order, axis=1), np.take_along_axis(cat_ok, order, axis=1)


def _score(store: dict[str, list[np.ndarray]], t: _Table, q: np.ndarray, idx: np.ndarray, ok: np.ndarray,
           relevant: tuple[np.ndarray, np.ndarray], ks: Sequence[int]) -> None:
    """Appends the per-query metrics of one ranking (gallery columns ``idx``) of queries ``q`` to ``store``."""
    hits_f = (t.gf[idx] == t.f[q][:, None]) & ok
    hits_c = (t.gc[idx] == t.c[q][:, None]) & ok
    for level, hits, r in (("fine", hits_f, relevant[0]), ("coarse", hits_c, relevant[1])):
        for key, vals in metrics_from_hits(hits, r, ks).items():
            store.setdefault(f"{level}_{key}", []).append(vals)
    store.setdefault(RCWF, []).append((hits_c[:, 0] & ~hits_f[:, 0]).astype(np.float64))


def split_block(ret: Retrieval, ks: Sequence[int], *, bootstrap: int, seed: int, n_gallery: int) -> dict[str, Any]:
    """A metrics.json-style split block (fine/coarse metrics, ci95, right-coarse-wrong-fine) from per-query
    arrays."""
    keys = [f"recall@{k}" for k in ks] + ["map@r", "r_precision", "map"]
    nq = len(next(iter(ret.per_query.values()))) if ret.per_query else 0
    block: dict[str, Any] = {"n_queries": nq, "n_gallery": n_gallery}
    for level in ("fine", "coarse"):
        block[level] = {key: ret.mean(f"{level}_{key}") if nq else None for key in keys}
    if nq:
        flat = {f"{lv}/{key}": ret.per_query[f"{lv}_{key}"] for lv in ("fine", "coarse") for key in keys}
        flat[RCWF] = ret.per_query[RCWF]
        ci = bootstrap_ci(flat, n_resamples=bootstrap, seed=seed)
        if ci:
            block["ci95"] = {lv: {key: ci[f"{lv}/{key}"] for key in keys} for lv in ("fine", "coarse")}
            block[RCWF + "_ci95"] = ci[RCWF]
        block[RCWF] = ret.mean(RCWF)
    return block


# ------------------------------------------------------------------------------------------- run folders
def _read_csv(path: Path, n: int) -> dict[str, np.ndarray]:
    from ofgr_core.embedding.stored import load_embedding_rows

    rows = load_embedding_rows(path, n)
    cols = rows[0].keys() if rows else []
    return {k: np.asarray([r.get(k) or "" for r in rows]) for k in cols}


def _run_eval_settings(run_dir: Path) -> dict[str, Any]:
    from ofgr_core.common.errors import OfgrError
    from ofgr_core.common.textio import read_yaml_file
    from ofgr_core.config import EvalConfig

    try:
        loaded = read_yaml_file(RunFolder(run_dir).config)
    except OfgrError:
        loaded = None
    cfg: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    ev: dict[str, Any] = cfg["eval"] if isinstance(cfg.get("eval"), dict) else {}
    d = EvalConfig.model_validate({})
    return {
        "ks": sorted({int(k) for k in ev.get("ks", d.ks)}),
        "max_r": int(ev.get("max_r", d.max_r)),
        "bootstrap": int(ev.get("bootstrap", d.bootstrap)),
        "exclude_same_group": bool(ev.get("exclude_same_group", d.exclude_same_group)),
        "seed": int(cfg.get("seed", 0) or 0),
    }


def _signature(paths: list[Path]) -> str:
    parts = []
    for p in paths:
        try:
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{p.name}:-")
    return ";".join(parts)


def coarse_first_for_run(
    run_dir: str | os.PathLike[str],
    split: str = "unseen",
    *,
    method: str = "knn",
    k_vote: int = 10,
    use_cache: bool = True,
) -> CoarseFirstResult | None:
    """Coarse-first beside flat retrieval on a run's stored embeddings; None when the run has none for
    ``split`` or has no coarse level.

    Raises:
        DataError: the stored embeddings and their CSV disagree.
    """

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    npy, csv_path = folder.embeddings_npy(split), folder.embeddings_csv(split)
    if not npy.is_file() or not csv_path.is_file():
        return None
    settings = _run_eval_settings(run_dir)
    pq_path = folder.per_query(split)
    cache = folder.eval_dir / f"coarse_first_{split}_{method}.npz"
    sig = _signature([npy, csv_path, pq_path]) + f";k_vote={k_vote};v={CACHE_VERSION};{sorted(settings.items())}"
    cached = _load_cache(cache, sig) if use_cache else None
    if cached is None:
        from ofgr_core.embedding.stored import load_embeddings

        emb = load_embeddings(npy)
        table = _read_csv(csv_path, len(emb))
        if len(table.get("id", [])) != len(emb):
            raise DataError(f"{csv_path}: {len(table.get('id', []))} rows but {npy.name} has {len(emb)}")
        if "coarse" not in table or "fine" not in table:
            return None
        ids = table["id"]
        qmask = np.ones(len(ids), bool)
        gmask = np.ones(len(ids), bool)
        from ofgr_core.runs.validate import read_run_json

        sp = read_run_json(folder.split, {"query": (str, type(None)), "gallery_ids": list})[0]
        sp = sp if isinstance(sp, dict) else {}
        if sp.get("query") == "cross_domain" and "domain" in table:
            qmask = table["domain"] == str(sp.get("query_domain"))
            gmask = ~qmask
        elif sp.get("gallery_ids"):
            gmask = np.isin(ids, np.asarray(sp["gallery_ids"], dtype=str))
        try:
            with np.load(pq_path, allow_pickle=False) as z:
                qmask &= np.isin(ids, z["ids"].astype(str))
        except (OSError, ValueError, KeyError):
            pass
        groups = table.get("group") if settings["exclude_same_group"] else None
        qids, flat, cf, pred, true = evaluate_coarse_first(
            np.asarray(emb), table["fine"], table["coarse"], ids=ids, query_mask=qmask, gallery_mask=gmask,
            groups=groups, ks=settings["ks"], max_r=settings["max_r"], method=method, k_vote=k_vote)
        n_gallery = int(gmask.sum())
        if use_cache:
            _save_cache(cache, sig, qids, flat, cf, pred, true, n_gallery)
    else:
        qids, flat, cf, pred, true, n_gallery = cached
    if len(np.unique(true)) == 0:
        return None
    res = CoarseFirstResult(split, method, k_vote, np.asarray(qids).astype(str), flat, cf, pred, true,
                            settings["ks"])
    bs, seed = settings["bootstrap"], settings["seed"]
    res.block = split_block(cf, settings["ks"], bootstrap=bs, seed=seed, n_gallery=n_gallery)
    res.block["coarse_accuracy"] = res.coarse_accuracy
    res.block["method"] = method
    res.flat_block = split_block(flat, settings["ks"], bootstrap=bs, seed=seed, n_gallery=n_gallery)
    if len(res.query_ids):
        keys = ["fine_recall@1", "fine_map@r", "coarse_recall@1", "coarse_map@r", RCWF]
        tests = paired_bootstrap_tests({k: cf.per_query[k] for k in keys}, {k: flat.per_query[k] for k in keys},
                                       n_resamples=max(bs, 1000), seed=seed)
        res.vs_flat = {k: t.as_dict() for k, t in tests.items()}
    return res


def _save_cache(path: Path, sig: str, qids: np.ndarray, flat: Retrieval, cf: Retrieval, pred: np.ndarray,
                true: np.ndarray, n_gallery: int) -> None:
    from ofgr_core.common.atomic import atomic_writer

    arrays = {"sig": np.array(sig), "ids": np.asarray(qids).astype(str), "pred": pred.astype(str),
              "true": true.astype(str), "n_gallery": np.array(n_gallery)}
    arrays.update({f"flat/{k}": v for k, v in flat.per_query.items()})
    arrays.update({f"cf/{k}": v for k, v in cf.per_query.items()})
    try:
        with atomic_writer(path) as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # mypy: **arrays may fill allow_pickle
    except OSError:
        pass  # a read-only run folder still gets its numbers, just not cached


def _load_cache(path: Path, sig: str
                ) -> tuple[np.ndarray, Retrieval, Retrieval, np.ndarray, np.ndarray, int] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["sig"]) != sig:
                return None
            flat = Retrieval({k[5:]: np.asarray(z[k]) for k in z.files if k.startswith("flat/")})
            cf = Retrieval({k[3:]: np.asarray(z[k]) for k in z.files if k.startswith("cf/")})
            return (np.asarray(z["ids"]), flat, cf, np.asarray(z["pred"]), np.asarray(z["true"]),
                    int(z["n_gallery"]))
    except (OSError, ValueError, KeyError):
        return None
