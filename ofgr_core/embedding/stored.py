"""Stored embeddings read back: ``embeddings/<split>.npy`` and its ``.csv`` (one row per vector), or any N x D
``.npy`` a user hands to ``ofgr eval-embeddings``.

Every reader of these files (query, suspects, compare, t-SNE, index build, eval-embeddings) goes through here,
so a file that is not what it should be is one ``DataError`` naming it, never a traceback: an ``.npz`` archive,
a pickled object array, an array of another rank or a non-float dtype, a CSV that is not UTF-8 text, a CSV
with another number of rows or without the ``id`` column.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ofgr_core.common.errors import DataError, NotFoundError
from ofgr_core.common.textio import read_text


def load_embeddings(path: str | os.PathLike[str], *, mmap: bool = True) -> np.ndarray:
    """An N x D float ``.npy`` (a read-only memmap unless ``mmap=False``; nothing is read until used).

    Raises:
        NotFoundError: no such file.
        DataError: not a plain ``.npy`` array (an ``.npz``, pickled objects, damaged), or not N x D float.
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: embeddings file not found")
    try:
        emb = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{p}: not a readable .npy array ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(emb, np.ndarray):  # an .npz archive opens as NpzFile
        if hasattr(emb, "close"):
            emb.close()
        raise DataError(f"{p}: an .npz archive, expected one N x D .npy array (np.save, not np.savez)")
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise DataError(f"{p}: expected an N x D float array, got shape {emb.shape} dtype {emb.dtype}")
    return emb


def load_embedding_rows(path: str | os.PathLike[str], n_rows: int, *, required: tuple[str, ...] = ("id",)
                        ) -> list[dict[str, str]]:
    """The rows of an embeddings ``.csv`` (one per vector), as dicts of strings.

    Raises:
        NotFoundError: no such file.
        DataError: not UTF-8 text, malformed CSV, a required column missing, or not ``n_rows`` rows.
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: embeddings CSV not found")
    text = read_text(p, what="embeddings CSV")  # one line for a binary, Latin-1 or NUL-holding file
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{p}: missing column {missing[0]!r} (found: {', '.join(header) or 'none'})")
        rows = [{k: v if isinstance(v, str) else "" for k, v in r.items() if isinstance(k, str)} for r in reader]
    except csv.Error as e:
        raise DataError(f"{p}: malformed CSV ({e})") from None
    if len(rows) != n_rows:
        raise DataError(f"{p}: {len(rows)} rows but the embeddings have {n_rows} (one row per vector)")
    return rows
