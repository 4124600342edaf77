"""Suspected label errors: images whose fine label disagrees with their neighbourhood in an embedding space.

For every labelled image ``i`` with fine label ``y``, take its ``k`` nearest labelled neighbours by cosine
similarity (itself excluded) and let each vote for its own fine label with weight ``max(similarity, 0)``.
With ``v(c)`` the share of the vote that class ``c`` receives (the shares sum to 1):

    score(i) = max_{c != y} v(c) - v(y)          in [-1, 1]

A positive score means some other class outvotes the image's own label among its neighbours; the suggested
label is that class. Images are ranked by score, highest first (ties: lower own share first, then id).
Coarse-only images (no fine label) neither vote nor get a score. Scores are comparable within one embedding
space, not across runs.

The neighbourhood has to be searched in an embedding space the labels did not shape too much: a model trained
with a noisy label learns to place the image near that label's class. Evaluation-side embeddings of a run (the
``seen`` and ``unseen`` parts: ``ofgr data suspects RUN``) are the clean case for the unseen classes;
training images memorised with their noisy labels are harder to catch (``docs/hierarchy.md``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ofgr_core.common.errors import DataError

__all__ = ["Suspect", "find_suspects", "load_run_embeddings", "precision_recall_at"]


@dataclass(frozen=True)
class Suspect:
    """One image whose label its neighbours dispute.

    Attributes:
        id: item id.
        path: image path ("" when unknown).
        label: its fine label.
        suggested: the fine label that wins its neighbourhood vote.
        score: ``v(suggested) - v(label)``; higher = more suspect.
        agreement: ``v(label)``, the share of the neighbours' vote for its own label.
        split: the run part the embedding came from ("" when unknown).
    """

    id: str
    path: str
    label: str
    suggested: str
    score: float
    agreement: float
    split: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _neighbours(emb: np.ndarray, k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``(similarities, indices)`` of each row's ``k`` nearest other rows by cosine (exact, blocked)."""
    from ofgr_core.retrieval.index import unit_rows

    x = unit_rows(emb, np.float32)
    n = len(x)
    k = min(k, n - 1)
    sims = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    for a in range(0, n, chunk):
        s = x[a : a + chunk] @ x.T
        s[np.arange(len(s)), np.arange(a, a + len(s))] = -np.inf  # never its own neighbour
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx[a : a + chunk] = np.take_along_axis(part, order, axis=1)
        sims[a : a + chunk] = np.take_along_axis(ps, order, axis=1)
    return sims, idx


def find_suspects(
    embeddings: np.ndarray,
    labels: Sequence[str],
    ids: Sequence[str] | None = None,
    *,
    paths: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    k: int = 10,
    top: int | None = None,
    min_score: float | None = None,
) -> list[Suspect]:
    """Labelled images ranked by how strongly their neighbours dispute their fine label.

    Args:
        embeddings: ``(N, D)`` embeddings (normalised here).
        labels: fine label per row; ``""`` marks a coarse-only row (it is ignored).
        ids: item id per row (default: the row number).
        paths: image path per row, for display.
        splits: run part per row, for display.
        k: neighbours that vote.
        top: keep the ``top`` highest scores (``None``: all labelled rows).
        min_score: keep rows scoring at least this (e.g. ``0.0``: only rows their own label does not win).

    Raises:
        DataError: shapes disagree, or fewer than two labelled rows.
    """
    emb = np.asarray(embeddings)
    n = len(labels)
    if emb.ndim != 2 or len(emb) != n:
        raise DataError(f"embeddings must be (N, D) with N = {n} labels, got shape {emb.shape}")
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}")
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    labelled = np.flatnonzero(np.asarray([bool(lab) for lab in labels], dtype=bool))
    if len(labelled) < 2:
        raise DataError(f"{len(labelled)} labelled images: suspects need at least 2")
    # object dtype: a fixed-width str array would strip trailing NULs off a hostile label
    label_arr: np.ndarray = np.asarray([labels[int(i)] for i in labelled], dtype=np.object_)
    names, codes = np.unique(label_arr, return_inverse=True)
    codes = codes.astype(np.int64).reshape(-1)
    sims, nb = _neighbours(emb[labelled], k)
    w = np.maximum(sims, 0.0).astype(np.float64)
    w_sum = w.sum(axis=1, keepdims=True)
    # all neighbours at similarity <= 0: fall back to an unweighted vote
    w = np.where(w_sum > 0, w / np.where(w_sum > 0, w_sum, 1.0), 1.0 / nb.shape[1])
    nb_codes = codes[nb]
    own = (w * (nb_codes == codes[:, None])).sum(axis=1)
    # best other class: sum the vote per (row, class) pair, then the largest per row (ties: smaller code)
    other_w = np.where(nb_codes == codes[:, None], 0.0, w).reshape(-1)
    n_cls = len(names)
    pair = np.repeat(np.arange(len(labelled), dtype=np.int64), nb.shape[1]) * n_cls + nb_codes.reshape(-1)
    keys, inv = np.unique(pair, return_inverse=True)
    totals = np.bincount(inv.reshape(-1), weights=other_w, minlength=len(keys))
    key_row, key_cls = keys // n_cls, keys % n_cls
    pick = np.lexsort((key_cls, -totals, key_row))  # per row: largest total first, then smaller class code
    first = pick[np.r_[True, key_row[pick][1:] != key_row[pick][:-1]]]
    best = np.zeros(len(labelled))
    best_code = codes.copy()
    best[key_row[first]] = totals[first]
    has_other = totals[first] > 0
    best_code[key_row[first][has_other]] = key_cls[first][has_other]
    score = best - own
    order = np.lexsort((np.asarray([ids[i] for i in labelled], dtype=object).astype(str), own, -score))
    out: list[Suspect] = []
    for j in order:
        if min_score is not None and score[j] < min_score:
            continue
        i = int(labelled[j])
        out.append(Suspect(
            id=ids[i],
            path=paths[i] if paths is not None else "",
            label=str(names[codes[j]]),
            suggested=str(names[best_code[j]]),
            score=float(score[j]),
            agreement=float(own[j]),
            split=splits[i] if splits is not None else "",
        ))
        if top is not None and len(out) >= top:
            break
    return out


def load_run_embeddings(run_dir: str | os.PathLike[str], parts: Sequence[str] | None = None
                        ) -> tuple[np.ndarray, list[dict[str, str]]]:
    """A run's stored embeddings of every part (``embeddings/<part>.npy`` + ``.csv``), stacked.

    Args:
        run_dir: the run folder.
        parts: which parts to load (default: every part with stored embeddings).

    Returns:
        ``(embeddings, rows)``; each row is the embeddings CSV row with ``split`` set to its part.

    Raises:
        DataError: the run has no stored embeddings (it did not finish), or a part's files disagree.
    """
    from ofgr_core.embedding.stored import load_embedding_rows, load_embeddings
    from ofgr_core.runs.folder import RunFolder

    run = RunFolder(run_dir)
    found = run.embedded_splits()
    wanted = list(parts) if parts else found
    missing = [p for p in wanted if p not in found]
    if not found or missing:
        raise DataError(f"{run_dir}: no stored embeddings for {', '.join(missing) or 'any part'} in "
                        f"{run.embeddings_dir} (finish the run first, or `ofgr resume` it)")
    embs, rows = [], []
    for part in wanted:
        emb = load_embeddings(run.embeddings_npy(part))
        part_rows = load_embedding_rows(run.embeddings_csv(part), len(emb), required=("id", "fine"))
        embs.append(np.asarray(emb, dtype=np.float32))
        rows += [{**r, "split": r.get("split") or part} for r in part_rows]
    return np.concatenate(embs), rows


def precision_recall_at(suspects: Sequence[Suspect], truly_wrong: set[str], top: int) -> dict[str, float]:
    """Precision and recall of the first ``top`` suspects against the ids whose label is known to be wrong."""
    picked = [s.id for s in suspects[:top]]
    hits = sum(i in truly_wrong for i in picked)
    return {
        "top": top,
        "precision": hits / len(picked) if picked else float("nan"),
        "recall": hits / len(truly_wrong) if truly_wrong else float("nan"),
        "hits": hits,
        "n_wrong": len(truly_wrong),
    }
