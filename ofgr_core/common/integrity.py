"""Caches that verify themselves: one header format and one checksum for every cache ofgr keeps on disk.

The pixel cache (``ofgr_core/data/cache.py``), the image-check memo (``ofgr_core/data/dataset.py``) and the
feature cache of frozen towers (``ofgr_core/embedding/features.py``) each carry a header that says what they
hold (kind, format version, dtype, shape, item count) and a checksum of their index, and each item (a cached
image's pixels, a memo record, a feature row) carries its own CRC-32. Opening a cache verifies the header
against what the caller expects and the index against its checksum; reading an item verifies the item.

A mismatch is never read as data. The caller either rebuilds (the cache is derived data: recomputing it is
always correct) and reports one warning line saying which file and why (:func:`rebuild_note`), or fails with
one line (:class:`CacheCorrupt`). CRC-32 guards against damage (a torn write, a disk error, a file overwritten
by a tool), not against an adversary who can also rewrite the checksums: caches are not a trust boundary.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofgr_core.common.errors import DataError

HEADER_SUFFIX = ".header.json"


class CacheCorrupt(DataError):
    """A cache file that fails its own checks; the message names the file and what does not match."""


@dataclass(frozen=True)
class CacheHeader:
    """What a cache holds, written next to it (``<file>.header.json``) when it is created or grows.

    Attributes:
        kind: which cache (``pixel-cache``, ``image-check-memo``, ``feature-cache``).
        version: its format version; another version is rebuilt, never read.
        dtype: numpy dtype string of the items.
        shape: shape of the index (or of one item row).
        count: number of items.
        index_checksum: :func:`checksum` of the index bytes.
    """

    kind: str
    version: int
    dtype: str
    shape: tuple[int, ...]
    count: int
    index_checksum: str

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "shape": list(self.shape)}, sort_keys=True) + "\n"


def crc32(data: bytes | bytearray | memoryview | np.ndarray, prev: int = 0) -> int:
    """CRC-32 of ``data`` (an array's raw bytes), continuing from ``prev``: ``crc32(b, crc32(a)) == crc32(a + b)``."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).view(np.uint8).reshape(-1).data  # a buffer, no copy
    return zlib.crc32(data if isinstance(data, bytes) else memoryview(data).cast("B"), prev) & 0xFFFFFFFF


def checksum(data: bytes | bytearray | memoryview | np.ndarray, prev: str | None = None) -> str:
    """``"crc32:xxxxxxxx"`` of ``data``; with ``prev`` (a checksum of earlier bytes) the checksum of both."""
    start = int(prev.split(":", 1)[1], 16) if prev else 0
    return f"crc32:{crc32(data, start):08x}"


def header_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name + HEADER_SUFFIX)


def write_header(path: str | os.PathLike[str], header: CacheHeader) -> None:
    """Write ``<path>.header.json`` atomically (a temporary file renamed over it)."""
    target = header_path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(header.to_json())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_header(path: str | os.PathLike[str]) -> CacheHeader:
    """The header of the cache file ``path``.

    Raises:
        CacheCorrupt: missing, unreadable, or not a header (one line naming the header file).
    """
    target = header_path(path)
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        raise CacheCorrupt(f"{target}: no header (written by an older version, or the cache was interrupted "
                           "while it was created)") from None
    except OSError as e:
        raise CacheCorrupt(f"{target}: unreadable header ({e.strerror or e})") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict):
            raise TypeError("not a JSON object")
        return CacheHeader(kind=str(obj["kind"]), version=int(obj["version"]), dtype=str(obj["dtype"]),
                           shape=tuple(int(x) for x in obj["shape"]), count=int(obj["count"]),
                           index_checksum=str(obj["index_checksum"]))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise CacheCorrupt(f"{target}: not a cache header ({type(e).__name__})") from None


def verify_header(path: str | os.PathLike[str], *, kind: str, version: int, dtype: str | None = None,
                  shape: tuple[int, ...] | None = None, count: int | None = None,
                  index: bytes | np.ndarray | None = None) -> CacheHeader:
    """Read the header of ``path`` and check each given field; ``index`` is checked against its checksum.

    Raises:
        CacheCorrupt: the first field that does not match, with the expected and found values.
    """
    h = read_header(path)
    expected: dict[str, Any] = {"kind": kind, "version": version, "dtype": dtype, "shape": shape, "count": count}
    for name, want in expected.items():
        got = getattr(h, name)
        if want is not None and got != want:
            raise CacheCorrupt(f"{path}: {name} {got!r} in its header, expected {want!r}")
    if index is not None and checksum(index) != h.index_checksum:
        raise CacheCorrupt(f"{path}: the index does not match its checksum (damaged or overwritten)")
    return h


def load_array(path: str | os.PathLike[str], *, dtype: str, ndim: int) -> np.ndarray:
    """A ``.npy`` index read without pickles, of the given dtype and rank.

    Raises:
        CacheCorrupt: unreadable, an object array, or another dtype/rank.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CacheCorrupt(f"{path}: not a readable .npy index ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype) or arr.ndim != ndim:
        what = f"shape {getattr(arr, 'shape', '?')} dtype {getattr(arr, 'dtype', type(arr).__name__)}"
        raise CacheCorrupt(f"{path}: {what}, expected a {ndim}-D {dtype} index")
    return arr


def rebuild_note(path: str | os.PathLike[str], reason: str) -> str:
    """The one warning line a rebuilt cache reports."""
    why = reason if str(path) in reason else f"{path}: {reason}"
    return f"cache rebuilt: {why}"
