"""Content-addressed cache of frozen-tower features, shared across runs.

A frozen tower (a CLIP image encoder, a timm backbone with ``freeze: all``) computes the same features for
the same image every time, so ofgr computes them once. The cache is keyed by everything that changes a
feature (``feature_cache_key``):

- the tower's ``feature_key()``: family, architecture, a hash of its weights, its preprocessing (input size,
  mean, std, interpolation, crop), and what the family adds (CLIP: the activation, QuickGELU or GELU);
- a hash of the tower's module structure (activations, layer types and shapes: two towers with equal weights
  but another activation compute other features);
- ``EXTRACTION_VERSION``, ofgr's version of the extraction code (the autocast dtype, ``fp32``, ``fp16`` or
  ``bf16`` from ``model.precision``, is part of ``feature_key()``);
- each image's **content hash** (never its file name: Stanford Cars reuses names between train and test).

Layout (``ofgr cache ls`` lists it)::

    <cache root>/<key digest>/
        key.json        the feature key, readable
        features.f32    float32 rows, appended; memory-mapped for reading
        rows.crc        one CRC-32 per row (of its content hash and its feature bytes)
        hashes.txt      one content hash per line, row i of features.f32 <-> line i
        hashes.txt.header.json  format version, dtype, row width, row count, checksum of hashes.txt
        .lock           taken while appending (one writer at a time; readers never block)

Filling is incremental and resumable: features are appended chunk by chunk (features and their CRCs first,
then their hashes, then the header, each flushed), so an interrupted fill keeps every finished chunk; rows past
the header's count (a crash between the writes) are cut back. A change of any key part lands in another folder,
so stale features are never read.

The cache verifies itself (``ofgr_core/common/integrity.py``): opening it checks the header (version, dtype,
width) and the checksum of the hash list, and that ``features.f32`` holds every counted row; any mismatch (an
older format, a reordered or damaged hash list, a truncated features file) rebuilds the folder with one warning
line (``FeatureStore.notes``). Every row read is checked against its CRC; rows that fail are computed again
(:func:`extract_features`), never returned.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.common.integrity import (
    CacheCorrupt,
    CacheHeader,
    checksum,
    crc32,
    header_path,
    read_header,
    rebuild_note,
    verify_header,
    write_header,
)
from ofgr_core.common.threads import map_slices

if TYPE_CHECKING:  # torch is imported when features are extracted, not by `ofgr cache`
    import torch

    from ofgr_core.data.loader import ImageTransform
    from ofgr_core.models.base import Encoder

CACHE_VERSION = 1  # part of the key digest (the folder name)
# Bytes of image files the hash pass of an in-process extraction keeps for the decode (each file read once)
PREFETCH_BYTES = 256 * 2**20
STORE_KIND, STORE_VERSION = "feature-cache", 2  # the folder's file format
# Bump when ofgr's extraction computes other numbers for the same tower (normalisation, dtype handling, memory
# layout, batching that changes results): features cached by an older extraction then land in another folder.
# 1: images in channels-last layout (1.5x faster convolutions on CPU; results differ from NCHW by float rounding).
EXTRACTION_VERSION = 1
Progress = Callable[[int, int], None]


def default_cache_root() -> Path:
    """``$OFGR_CACHE/features`` or ``~/.cache/ofgr/features``."""
    base = os.environ.get("OFGR_CACHE")
    return Path(base).expanduser() / "features" if base else Path.home() / ".cache" / "ofgr" / "features"


def structure_digest(module: Any) -> str:
    """SHA-256 of a module's printed structure: layer types, shapes and activations (not its weights)."""
    return hashlib.sha256(repr(module).encode()).hexdigest()[:24]


def feature_cache_key(encoder: Encoder) -> dict[str, Any]:
    """Everything that changes the tower's features: the encoder's ``feature_key()`` (architecture, weights hash,
    preprocessing, the autocast dtype it runs in, family extras such as the activation), its module structure
    and ``EXTRACTION_VERSION``."""
    return {**encoder.feature_key(), "structure": structure_digest(encoder.tower), "extraction": EXTRACTION_VERSION}


def open_feature_store(encoder: Encoder, root: str | os.PathLike[str]) -> FeatureStore:
    """The cache of ``encoder``'s tower features (keyed by ``feature_cache_key``) under ``root``."""
    return FeatureStore(root, feature_cache_key(encoder), int(encoder.feature_dim))


def cached_tower_features(
    root: str | os.PathLike[str] | None = None,
) -> Callable[[Encoder, list[str], ImageTransform, Any], tuple[np.ndarray, str]]:
    """Features of a frozen tower through the cache under ``root`` (default ``default_cache_root()``): what a
    LiT pretraining (``models/clip/pretrain.py``, ``tower_features``) reads its locked image tower from."""

    def features(tower: Encoder, paths: list[str], transform: ImageTransform, device: Any) -> tuple[np.ndarray, str]:
        store = open_feature_store(tower, Path(root).expanduser() if root else default_cache_root())
        feats, stats = extract_features(tower, paths, transform, device, store=store)
        line = f"{stats['hits']} from the cache, {stats['computed']} computed ({store.folder})"
        return feats, "; ".join([line, *store.notes])  # a rebuilt or repaired cache says so too

    return features


def key_digest(key: dict[str, Any]) -> str:
    blob = json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def file_digest(path: str) -> str:
    """The content hash ofgr's data layer uses (blake2b-128 of the file's bytes)."""
    with open(path, "rb", buffering=0) as f:  # unbuffered: one read of the whole file, no buffer object
        return bytes_digest(f.readall())


def bytes_digest(data: bytes | bytearray) -> str:
    """:func:`file_digest` of a file's bytes already read."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digests(paths: Sequence[str], threads: int | None = None) -> list[str]:
    """``file_digest`` of every path, in order, on a few threads.

    Reading a file and hashing more than 2 KB with hashlib release the GIL, so threads overlap the I/O and
    the hashing; each thread walks one contiguous slice (no per-file task), which keeps the per-file Python
    cost to the open, read and hash calls.
    """
    return map_slices(file_digest, paths, _hash_threads(len(paths), threads))


def _hash_threads(files: int, threads: int | None = None) -> int:
    # at least 256 files a thread: below that, starting threads costs more than it overlaps
    return max(1, min(threads or min(8, os.cpu_count() or 1), files // 256))


def _digests_keeping(paths: Sequence[str], budget: int) -> tuple[list[str], dict[str, bytearray]]:
    """``file_digests(paths)``, keeping the bytes of files read while at most ``budget`` bytes are kept, by path:
    the decode that follows takes them instead of reading those files a second time. A file ``read_bytes``
    cannot read is hashed by ``file_digest``, whose error names it."""
    import threading

    from ofgr_core.data.decode import read_bytes

    kept: dict[str, bytearray] = {}
    held = [0]
    lock = threading.Lock()

    def digest(path: str) -> str:
        try:
            data = read_bytes(path)
        except OSError:
            return file_digest(path)
        with lock:
            if 0 < len(data) <= budget - held[0]:
                kept[path] = data
                held[0] += len(data)
        return bytes_digest(data)

    return map_slices(digest, paths, _hash_threads(len(paths))), kept


@dataclass
class CacheEntry:
    """One key's folder, as ``ofgr cache ls`` shows it."""

    path: Path
    key: dict[str, Any]
    rows: int
    dim: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "digest": self.path.name, "key": self.key, "rows": self.rows,
                "dim": self.dim, "bytes": self.bytes}


class FeatureStore:
    """The features of one tower (one key): lookup by content hash, append, memory-mapped reads."""

    def __init__(self, root: str | os.PathLike[str], key: dict[str, Any], dim: int) -> None:
        self.key, self.dim = key, int(dim)
        self.folder = Path(root).expanduser() / key_digest(key)
        self.features_path = self.folder / "features.f32"
        self.crc_path = self.folder / "rows.crc"
        self.hashes_path = self.folder / "hashes.txt"
        self.notes: list[str] = []  # one line per rebuild or repair, for the run's log
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            key_file = self.folder / "key.json"
            if not key_file.is_file():
                key_file.write_text(json.dumps({"dim": self.dim, **key}, indent=2, default=str) + "\n")
        except OSError as e:
            raise ConfigError(f"feature cache {self.folder}: cannot write ({e.strerror}); set data.feature_cache "
                              "(--feature-cache for `ofgr clip`) or OFGR_CACHE to a writable folder") from None
        self._rows: dict[str, int] = {}
        self._failed: set[str] = set()  # hashes whose rows failed their CRC: treated as missing until re-added
        self._crcs = np.zeros(0, np.uint32)
        self._n = 0
        self._index_bytes = 0  # bytes of hashes.txt the header vouches for
        try:
            self._load()
        except CacheCorrupt:
            with self._locked(load=False):
                try:  # another process may have rebuilt it meanwhile
                    self._load()
                except CacheCorrupt as e:
                    self.notes.append(rebuild_note(self.folder, str(e)))
                    self._reset()

    # ----------------------------------------------------------------------------------------- reading
    def _load(self) -> None:
        """Read and verify the index; ``CacheCorrupt`` says what does not match."""
        has_header = header_path(self.hashes_path).exists()
        if not has_header:
            if any(p.exists() and p.stat().st_size for p in (self.hashes_path, self.features_path)):
                raise CacheCorrupt(f"{self.hashes_path}: no header (written by an older version, or damaged)")
            self._rows, self._crcs, self._n, self._index_bytes = {}, np.zeros(0, np.uint32), 0, 0
            return
        h = verify_header(self.hashes_path, kind=STORE_KIND, version=STORE_VERSION, dtype="float32",
                          shape=(self.dim,))
        try:
            raw = self.hashes_path.read_bytes()
        except OSError as e:
            raise CacheCorrupt(f"{self.hashes_path}: unreadable ({e.strerror or e})") from None
        lines = raw.split(b"\n")
        if len(lines) <= h.count:  # fewer complete lines than counted
            raise CacheCorrupt(f"{self.hashes_path}: {len(lines) - 1} hashes, its header counts {h.count}")
        index_bytes = sum(len(x) + 1 for x in lines[: h.count])
        if checksum(raw[:index_bytes]) != h.index_checksum:
            raise CacheCorrupt(f"{self.hashes_path}: the hash list does not match its checksum (reordered, "
                               "damaged or overwritten)")
        try:
            digests = [x.decode("ascii") for x in lines[: h.count]]
        except UnicodeDecodeError:
            raise CacheCorrupt(f"{self.hashes_path}: not a list of content hashes") from None
        row_bytes = 4 * self.dim
        for path, need in ((self.features_path, h.count * row_bytes), (self.crc_path, h.count * 4)):
            size = path.stat().st_size if path.exists() else 0
            if size < need:
                raise CacheCorrupt(f"{path}: {size} bytes, {h.count} rows need {need}")
        self._crcs = np.fromfile(self.crc_path, dtype="<u4", count=h.count) if h.count else np.zeros(0, np.uint32)
        # a re-computed row is appended again: the last occurrence of a hash wins
        self._rows = {d: i for i, d in enumerate(digests)}
        for d in self._failed:
            self._rows.pop(d, None)
        self._n, self._index_bytes = h.count, index_bytes

    def _reset(self) -> None:
        """Empty the folder's data (the caller holds the lock): the header first, so no reader trusts the rest."""
        for p in (header_path(self.hashes_path), self.hashes_path, self.crc_path, self.features_path):
            p.unlink(missing_ok=True)
        self._rows, self._crcs, self._n, self._index_bytes = {}, np.zeros(0, np.uint32), 0, 0

    def refresh(self) -> None:
        """Re-read the index (other processes may have appended: torchrun ranks filling one cache)."""
        self._load()

    def __len__(self) -> int:
        return self._n

    def __contains__(self, digest: object) -> bool:
        return digest in self._rows

    def missing(self, digests: Sequence[str]) -> list[int]:
        """Positions in ``digests`` whose features are not cached (each distinct hash once)."""
        seen: set[str] = set()
        out: list[int] = []
        for i, d in enumerate(digests):
            if d not in self._rows and d not in seen:
                seen.add(d)
                out.append(i)
        return out

    def _bad_rows(self, digests: Sequence[str], rows: np.ndarray, feats: np.ndarray) -> list[int]:
        """Positions whose features fail their CRC."""
        return [j for j, (d, r) in enumerate(zip(digests, rows, strict=True))
                if crc32(feats[j], crc32(d.encode("ascii", "replace"))) != int(self._crcs[r])]

    def verify(self, digests: Sequence[str]) -> int:
        """Check the cached rows of ``digests`` against their CRCs; failed ones are forgotten (so they are
        computed again) and counted in ``notes``. Returns how many failed."""
        cached = [d for d in dict.fromkeys(digests) if d in self._rows]
        if not cached:
            return 0
        rows = np.fromiter((self._rows[d] for d in cached), dtype=np.int64, count=len(cached))
        mm = np.memmap(self.features_path, dtype=np.float32, mode="r", shape=(self._n, self.dim))
        bad = self._bad_rows(cached, rows, np.asarray(mm[rows]))
        for j in bad:
            del self._rows[cached[j]]
            self._failed.add(cached[j])
        if bad:
            self.notes.append(rebuild_note(self.features_path, f"{len(bad)} of {len(cached)} cached rows failed "
                                           "their checksum; they are computed again"))
        return len(bad)

    def read(self, digests: Sequence[str]) -> np.ndarray:
        """Features of ``digests`` in order, ``(N, dim)`` float32 (all must be cached and intact).

        Raises:
            DataError: a hash is not cached, or a row fails its CRC (``CacheCorrupt``).
        """
        if not self._n:
            if digests:
                raise DataError(f"feature cache {self.folder}: empty, {len(digests)} rows requested")
            return np.empty((0, self.dim), np.float32)
        mm = np.memmap(self.features_path, dtype=np.float32, mode="r", shape=(self._n, self.dim))
        try:
            rows = np.fromiter((self._rows[d] for d in digests), dtype=np.int64, count=len(digests))
        except KeyError as e:
            raise DataError(f"feature cache {self.folder}: no features for content hash {e.args[0]}") from None
        out = np.asarray(mm[rows])
        bad = self._bad_rows(digests, rows, out)
        if bad:
            raise CacheCorrupt(f"{self.features_path}: {len(bad)} rows fail their checksum (changed while in "
                               "use?); run again to recompute them")
        return out

    # ----------------------------------------------------------------------------------------- writing
    @contextmanager
    def _locked(self, load: bool = True) -> Iterator[None]:
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if load:
                    try:
                        self._load()  # another process may have appended meanwhile
                    except CacheCorrupt as e:
                        self.notes.append(rebuild_note(self.folder, str(e)))
                        self._reset()
                    self._repair()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _repair(self) -> None:
        """Cut what lies past the header's count (a crash between the writes of one append)."""
        for path, size in ((self.features_path, self._n * 4 * self.dim), (self.crc_path, self._n * 4),
                           (self.hashes_path, self._index_bytes)):
            if path.exists() and path.stat().st_size != size:
                with open(path, "r+b") as f:
                    f.truncate(size)

    def append(self, digests: Sequence[str], features: np.ndarray) -> None:
        """Add rows: features and their CRCs, then hashes, then the header (each flushed), so a crash never
        maps a hash to a wrong row; rows are only counted once the header says so."""
        feats = np.ascontiguousarray(features, dtype=np.float32)
        if feats.shape != (len(digests), self.dim):
            raise DataError(f"feature cache: got features {feats.shape} for {len(digests)} images x {self.dim}")
        if not np.isfinite(feats).all():
            raise DataError("feature cache: the encoder produced non-finite features; nothing was cached")
        with self._locked():
            new = [(i, d) for i, d in enumerate(digests) if d not in self._rows]  # failed rows count as missing
            new = list({d: (i, d) for i, d in new}.values())  # each hash once
            if not new:
                return
            idx = [i for i, _ in new]
            crcs = np.array([crc32(feats[i], crc32(d.encode("ascii", "replace"))) for i, d in new], "<u4")
            lines = "".join(d + "\n" for _, d in new).encode("ascii", "replace")
            for path, data in ((self.features_path, feats[idx].tobytes()), (self.crc_path, crcs.tobytes()),
                               (self.hashes_path, lines)):
                with open(path, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            prev = read_header(self.hashes_path).index_checksum if self._n else None
            write_header(self.hashes_path, CacheHeader(STORE_KIND, STORE_VERSION, "float32", (self.dim,),
                                                       self._n + len(new), checksum(lines, prev)))
            self._crcs = np.concatenate([self._crcs, crcs])
            for _, d in new:
                self._rows[d] = self._n
                self._failed.discard(d)
                self._n += 1
            self._index_bytes += len(lines)


def list_entries(root: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Every key folder under the cache root, largest first."""
    root = Path(root).expanduser() if root else default_cache_root()
    out: list[CacheEntry] = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        key_file = d / "key.json"
        if not key_file.is_file():
            continue
        try:
            key = json.loads(key_file.read_text())
        except (OSError, ValueError, RecursionError):
            key = None
        if not isinstance(key, dict):
            key = {"error": "unreadable key.json"}
        try:
            h: CacheHeader | None = read_header(d / "hashes.txt")
        except CacheCorrupt:
            h = None
        dim = h.shape[0] if h is not None and h.shape else 0
        rows = h.count if h is not None else 0  # without a header the folder is rebuilt on next use
        if not dim:
            key_dim = key.get("dim")
            dim = key_dim if isinstance(key_dim, int) else 0
        total = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        out.append(CacheEntry(d, key, rows, dim, total))
    return sorted(out, key=lambda e: -e.bytes)


def clear(root: str | os.PathLike[str] | None = None, digest: str | None = None) -> int:
    """Delete every key folder (or the one whose digest starts with ``digest``); returns bytes freed."""
    entries = list_entries(root)
    if digest is not None:
        entries = [e for e in entries if e.path.name.startswith(digest)]
        if not entries:
            raise ConfigError(f"no feature cache entry {digest!r} (`ofgr cache ls` lists them)")
    freed = 0
    for e in entries:
        freed += e.bytes
        shutil.rmtree(e.path, ignore_errors=True)
    return freed


def extract_features(
    encoder: Encoder,
    paths: Sequence[str],
    transform: ImageTransform,
    device: str | torch.device,
    *,
    digests: Sequence[str] | None = None,
    store: FeatureStore | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    chunk: int = 4096,
    progress: Progress | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Tower features of ``paths`` (``encoder.tower_features``), through the cache when one is given.

    Only images whose content hash is missing from the cache run through the tower (content hashes of all
    the files are computed as ``file_digests`` does unless given). One loader streams every missing image (decoded
    and preprocessed in its workers, or in this process when the tower runs on the CPU cores they would take:
    ``ofgr_core.embedding.embed.loader_workers``; then the hash pass keeps the bytes it read, up to
    ``PREFETCH_BYTES``, and those files are decoded from them, not read again); each finished chunk of
    ``chunk`` images is appended to the cache on a writer thread while the tower computes the next, so an
    interrupted fill keeps every appended chunk and resumes after it. The tower runs under the encoder's own
    ``autocast_dtype``, the dtype its ``feature_key()`` names.

    Returns:
        ``(features, stats)``: ``(N, feature_dim)`` float32 in the order of ``paths``, and
        ``{"hits", "computed"}`` counts.
    """
    import torch

    from ofgr_core.embedding.embed import iter_embed, loader_workers
    from ofgr_core.models.base import TowerOnly

    n = len(paths)
    dim = int(encoder.feature_dim)

    def computed(todo: list[str], prefetched: dict[str, bytearray] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        return iter_embed(TowerOnly(encoder), todo, transform, torch.device(device), batch_size=batch_size,
                          num_workers=num_workers, autocast_dtype=encoder.autocast_dtype, channels_last=True,
                          normalize=False, prefetched=prefetched)

    if store is None:
        out = np.empty((n, dim), np.float32)
        for start, feats in computed(list(paths)):
            out[start : start + len(feats)] = feats
            if progress is not None:
                progress(start + len(feats), n)
        return out, {"hits": 0, "computed": n}
    from ofgr_core.models.precision import precision_name

    runs_as = precision_name(getattr(encoder, "autocast_dtype", None))
    cached_as = store.key.get("autocast")
    if cached_as is not None and cached_as != runs_as:
        raise ConfigError(f"feature cache {store.folder} holds {cached_as} features, but this extraction runs in "
                          f"{runs_as}; open the store with the encoder it extracts with (open_feature_store)")
    prefetched: dict[str, bytearray] = {}
    if digests is None:  # decoded in this process: the files the hash pass reads are decoded from its bytes
        in_process = loader_workers(num_workers, torch.device(device)) == 0
        digests, prefetched = _digests_keeping(paths, PREFETCH_BYTES if in_process else 0)
    digests = list(digests)
    if len(digests) != n:
        raise DataError(f"{len(digests)} content hashes for {n} images")
    store.verify(digests)  # rows that fail their CRC are forgotten: computed again below
    todo = store.missing(digests)
    prefetched = {paths[i]: prefetched[paths[i]] for i in todo if paths[i] in prefetched}  # hits' bytes go
    missing = {digests[i] for i in todo}
    hits = sum(d not in missing for d in digests)
    if progress is not None:
        progress(hits, n)
    # the data loader draws a seed from torch's global generator: computing features must not move it, or a
    # run's head would train differently depending on whether the cache was warm
    with torch.random.fork_rng(devices=[]):
        _fill(store, computed([paths[i] for i in todo], prefetched), [digests[i] for i in todo], dim, chunk,
              None if progress is None else (lambda done: progress(hits + done, n)))
    return store.read(digests), {"hits": hits, "computed": len(todo)}


def _fill(store: FeatureStore, batches: Iterator[tuple[int, np.ndarray]], digests: list[str], dim: int,
          chunk: int, progress: Callable[[int], None] | None) -> None:
    """Appends the features ``batches`` yields (rows of ``digests``, in order) to ``store``, ``chunk`` rows at a
    time, on a writer thread: the next chunk computes while the last one is written and synced. At most one
    write is pending, so memory holds two chunks."""
    from concurrent.futures import Future, ThreadPoolExecutor

    n = len(digests)
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future[None] | None = None
        buf = np.empty((min(chunk, n), dim), np.float32)
        first, fill = 0, 0  # the chunk in buf starts at row `first` and holds `fill` rows
        for start, feats in batches:
            at = 0
            while at < len(feats):  # a batch may straddle two chunks
                take = min(len(feats) - at, len(buf) - fill)
                buf[fill : fill + take] = feats[at : at + take]
                fill, at = fill + take, at + take
                if fill == len(buf) or first + fill == n:
                    if pending is not None:
                        pending.result()  # raises what the last write raised
                    pending = writer.submit(store.append, digests[first : first + fill], buf[:fill])
                    first, fill, buf = first + fill, 0, np.empty_like(buf)
            if progress is not None:
                progress(start + len(feats))
        if pending is not None:
            pending.result()
