"""Checks on embeddings and label sets before they are scored.

A NaN, infinite or all-zero embedding has no direction, so its neighbours are arbitrary and any metric computed
with it is meaningless: such rows are refused (or dropped and counted, when the caller asks). Label sets on
which retrieval metrics are trivially 0 or 1 (a single class, only singleton classes) get a warning that says
why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ofgr_core.common.errors import DataError

_CHUNK = 65536


@dataclass(frozen=True)
class InvalidRows:
    """Rows of an embedding matrix that cannot be scored."""

    nonfinite: np.ndarray  # row indices with a NaN or an infinity
    zero: np.ndarray  # row indices whose vector is all zeros (finite)

    @property
    def count(self) -> int:
        return len(self.nonfinite) + len(self.zero)

    def mask(self, n: int) -> np.ndarray:
        """Boolean keep-mask of length ``n``."""
        keep = np.ones(n, dtype=bool)
        keep[self.nonfinite] = False
        keep[self.zero] = False
        return keep

    def describe(self) -> str:
        parts = []
        if len(self.nonfinite):
            parts.append(f"{len(self.nonfinite)} with NaN/Inf (first row {int(self.nonfinite[0])})")
        if len(self.zero):
            parts.append(f"{len(self.zero)} all-zero (first row {int(self.zero[0])})")
        return ", ".join(parts)


def find_invalid_rows(emb: np.ndarray) -> InvalidRows:
    """Scan ``emb`` (N x D, may be a memmap) chunk by chunk for non-finite and all-zero rows."""
    bad_nf: list[np.ndarray] = []
    bad_zero: list[np.ndarray] = []
    for a in range(0, len(emb), _CHUNK):
        x = np.asarray(emb[a : a + _CHUNK])
        finite = np.isfinite(x).all(axis=1)
        bad_nf.append(np.flatnonzero(~finite) + a)
        zero = finite & ~np.any(x != 0, axis=1)
        bad_zero.append(np.flatnonzero(zero) + a)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    return InvalidRows(cat(bad_nf), cat(bad_zero))


def check_embeddings(emb: np.ndarray, origin: str, *, drop_invalid: bool = False) -> tuple[np.ndarray | None, str]:
    """Refuse unusable embeddings, or return which rows to keep.

    Returns:
        ``(keep, note)``: ``keep`` is None when every row is usable, else a boolean mask (only with
        ``drop_invalid``); ``note`` says what was dropped ("" when nothing).

    Raises:
        DataError: zero columns, no rows, or invalid rows without ``drop_invalid`` (one line naming the file).
    """
    if emb.ndim != 2 or emb.shape[1] == 0 or emb.shape[0] == 0:
        raise DataError(f"{origin}: expected an N x D array with N, D >= 1, got shape {tuple(emb.shape)}")
    bad = find_invalid_rows(emb)
    if bad.count == 0:
        return None, ""
    if not drop_invalid:
        raise DataError(
            f"{origin}: {bad.count} of {len(emb)} embeddings cannot be scored: {bad.describe()}; "
            "fix the model that wrote them, or pass --drop-invalid to leave them out (counted in the output)"
        )
    if bad.count == len(emb):
        raise DataError(f"{origin}: every embedding is invalid ({bad.describe()})")
    return bad.mask(len(emb)), f"dropped {bad.count} of {len(emb)} embeddings: {bad.describe()}"


def degenerate_labels(fine: np.ndarray, where: str) -> list[str]:
    """Warnings for label sets on which retrieval metrics say nothing about the embeddings."""
    fine = np.asarray(fine)
    if len(fine) == 0:
        return [f"{where}: no items"]
    _, counts = np.unique(fine, return_counts=True)
    out = []
    if len(counts) == 1:
        out.append(f"{where}: a single fine class: every neighbour is relevant, so Recall@K is 1 whatever the "
                   "embeddings are")
    n_single = int((counts == 1).sum())
    if n_single == len(counts) and len(counts) > 1:
        out.append(f"{where}: every fine class has a single item: no query has a relevant neighbour, nothing "
                   "can be scored")
    elif n_single:
        out.append(f"{where}: {n_single} of {len(counts)} fine classes have a single item; those items are "
                   "gallery-only (not used as queries)")
    return out


# ------------------------------------------------------------------------------------ degenerate embeddings
NEAR_DUPLICATE_COSINE = 0.999  # two query embeddings closer than this are near-identical
NEAR_DUPLICATE_SHARE = 0.01  # flagged when more than this share of query pairs is near-identical
MIN_EFFECTIVE_RANK = 2.0  # flagged when the embeddings span fewer effective directions than this
HEALTH_SAMPLE = 4000  # rows compared pairwise (a seeded sample of larger sets): 8M pairs, chunked
_PAIR_CHUNK = 512


def effective_rank(x: np.ndarray) -> float:
    """Roy & Vetterli's effective rank: ``exp`` of the entropy of the singular values normalised to sum 1.

    1 when every row points the same way (or ``x`` has one column), up to ``min(N, D)`` when the rows spread
    evenly over every direction.
    """
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    s = s[s > s.max(initial=0.0) * 1e-12] if len(s) else s
    if not len(s):
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def embedding_health(emb: np.ndarray, where: str, *, seed: int = 0) -> tuple[dict[str, float | int], list[str]]:
    """How degenerate a set of (query) embeddings is, and a warning for each check it fails.

    A model can collapse (every image mapped to nearly one vector: ``model.embed_dim: 1``, a random frozen tower
    under a head, a diverged run) and still "finish" with metrics that look like numbers. Two measures catch it:
    the share of pairs of rows at cosine > ``NEAR_DUPLICATE_COSINE`` (over a seeded sample of at most
    ``HEALTH_SAMPLE`` rows), and the effective rank of the (normalised) rows.

    Returns:
        ``({"near_duplicate_pairs", "pairs", "near_duplicate_share", "effective_rank", "rows", "dim"},
        warnings)``.
    """
    x = np.asarray(emb, dtype=np.float64)
    n = len(x)
    if n > HEALTH_SAMPLE:
        x = x[np.sort(np.random.default_rng(seed).choice(n, HEALTH_SAMPLE, replace=False))]
    scale = np.abs(x).max(axis=1, keepdims=True) if x.size else np.ones((len(x), 1))
    x = x / np.where(scale > 0, scale, 1.0)  # scale first: no overflow or underflow in the norm
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    m = len(x)
    close = 0
    for a in range(0, m, _PAIR_CHUNK):
        sims = x[a : a + _PAIR_CHUNK] @ x[a:].T  # rows a.. against every later row (and themselves)
        upper = np.triu(np.ones(sims.shape, dtype=bool), k=1)
        close += int(np.count_nonzero((sims > NEAR_DUPLICATE_COSINE) & upper))
    pairs = m * (m - 1) // 2
    share = close / pairs if pairs else 0.0
    rank = effective_rank(x) if m else 0.0
    stats: dict[str, float | int] = {"rows": n, "dim": int(emb.shape[1]) if emb.ndim == 2 else 0,
                                     "pairs": pairs, "near_duplicate_pairs": close,
                                     "near_duplicate_share": share, "effective_rank": rank}
    warnings = []
    sampled = f" (of a {m}-row sample)" if m < n else ""
    if pairs and share > NEAR_DUPLICATE_SHARE:
        warnings.append(f"{where}: degenerate embeddings: {100 * share:.1f}% of query pairs{sampled} "
                        f"({close:,} of {pairs:,}) are at cosine > {NEAR_DUPLICATE_COSINE}; the metrics rank "
                        "near-identical vectors")
    if m >= 2 and rank < MIN_EFFECTIVE_RANK:
        warnings.append(f"{where}: degenerate embeddings: effective rank {rank:.2f} (of {stats['dim']} dimensions); "
                        "the model maps images onto about one direction")
    return stats, warnings
