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
