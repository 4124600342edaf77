"""Decoded-and-resized image cache: uint8 pixels in one memory-mapped file, filled lazily by loader workers.

Decoding a JPEG and resizing it costs far more than the augmentations that follow, and it is the same work
every epoch and every run. The cache stores each image once, resized so its short side is ``side`` pixels
(aspect kept, never upscaled), packed back to back in ``<cache_dir>/<key>_<side>.u8``. ``key`` hashes the
image paths and their content hashes, so a changed dataset gets a new cache instead of stale pixels. A sidecar
``.idx.npy`` holds each image's offset and shape, ``.crc`` the CRC-32 of each image's pixels and ``.ok`` one
byte per image, set once its pixels and their CRC are written; a worker that finds the byte unset decodes the
file and fills the slot. Because the layout is fixed when the cache is created (image sizes are known from the
load-time check), workers in other processes write to disjoint byte ranges without coordination.

The cache verifies itself (``ofgr_core/common/integrity.py``): ``.idx.npy.header.json`` records the format
version, the index's dtype, shape and checksum and the image count, written last when the cache is created.
Opening checks the header, the checksum and that the index is the layout these images need; any mismatch (an
older format, a damaged or replaced index) rebuilds the cache with one warning line (``ImageCache.rebuilt``).
A sample of filled slots is checked against their CRC on open (all of them when one fails: the failed slots
are emptied and decoded again, with a warning), and every read checks its slot, so damaged pixels are decoded
again rather than trained on.

The side is ``ceil(image_size / 0.875)``: the evaluation transform's resize to ``image_size / crop_pct`` is
then (nearly) a no-op, and training crops come from a slightly larger image, as with the originals.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ofgr_core.common.atomic import atomic_save_npy, atomic_writer
from ofgr_core.common.diskspace import ensure_free, preallocate
from ofgr_core.common.integrity import (
    CacheCorrupt,
    CacheHeader,
    checksum,
    crc32,
    header_path,
    load_array,
    rebuild_note,
    verify_header,
    write_header,
)
from ofgr_core.common.threads import usable_cpus

CROP_PCT = 0.875
CACHE_KIND, CACHE_VERSION = "pixel-cache", 2
_SPOT_CHECKS = 64  # filled slots whose CRC is checked when the cache is opened
MAX_ASPECT = 4.0  # a longer side is clamped: panoramas would otherwise blow up the cache


def _layout(sizes: list[tuple[int, int]], side: int) -> np.ndarray:
    """(N, 3) int64 index of the images: byte offset, stored height, stored width."""
    shapes = np.array([stored_shape(w, h, side) for w, h in sizes], dtype=np.int64).reshape(-1, 2)
    nbytes = shapes[:, 0] * shapes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(nbytes)[:-1]]) if len(nbytes) else np.zeros(0, np.int64)
    return np.column_stack([offsets, shapes]).astype(np.int64).reshape(-1, 3)


def cache_side(image_size: int) -> int:
    """Short side stored for a training/evaluation resolution of ``image_size``."""
    return math.ceil(image_size / CROP_PCT)


def stored_shape(width: int, height: int, side: int) -> tuple[int, int]:
    """(height, width) of an image as stored: short side ``side`` (never upscaled), aspect at most 4:1."""
    scale = min(1.0, side / min(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    cap = int(MAX_ASPECT * min(side, min(width, height)))
    return min(h, cap), min(w, cap)


def dataset_key(paths: list[str], hashes: list[str]) -> str:
    """Hex key of a dataset: changes when any path, its order, or any file's content changes."""
    digest = hashlib.sha1()
    for p, h in zip(paths, hashes, strict=True):
        digest.update(f"{p}\t{h}\n".encode())
    return digest.hexdigest()[:16]


def decode_resized(path: str, height: int, width: int) -> Image.Image:
    """Decode ``path`` to an RGB image of the given size (JPEG: DCT-domain downscaling when possible)."""
    with Image.open(path) as im:
        im.draft("RGB", (width, height))  # JPEG: decode at 1/2, 1/4 or 1/8 scale if still large enough
        img: Image.Image = im.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return img


class ImageCache:
    """A lazily filled pixel cache over a fixed list of image paths.

    Args:
        paths: the images, in row order.
        sizes: (width, height) of each image on disk.
        hashes: content hash of each image (keys the cache file).
        cache_dir: folder for the cache files (created).
        image_size: the training/evaluation resolution; the stored short side is ``cache_side(image_size)``.
    """

    def __init__(self, paths: list[str], sizes: list[tuple[int, int]], hashes: list[str],
                 cache_dir: str | os.PathLike[str], image_size: int) -> None:
        self.side = cache_side(image_size)
        self.image_size = image_size
        self.key = dataset_key(paths, hashes)
        folder = Path(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{self.key}_{self.side}"
        self.data_path, self.index_path, self.ok_path, self.crc_path = (
            Path(f"{stem}.u8"), Path(f"{stem}.idx.npy"), Path(f"{stem}.ok"), Path(f"{stem}.crc"))
        self.row = {p: i for i, p in enumerate(paths)}
        self.paths = list(paths)
        self.rebuilt: str | None = None  # why an existing cache was rebuilt (one line), for the data report
        self.healed = 0  # slots emptied on open because their pixels failed the CRC
        self._data: np.memmap | None = None
        self._ok: np.memmap | None = None
        self._crc: np.memmap | None = None
        expected = _layout(sizes, self.side)
        if self.index_path.is_file() or header_path(self.index_path).is_file():
            try:
                self._verify(expected)
            except CacheCorrupt as e:
                self.rebuilt = rebuild_note(self.index_path, str(e))
                self._remove()
        if not self._complete():
            self._create(expected)
        self._index: np.ndarray = expected
        self._spot_check()

    def _files(self) -> tuple[Path, ...]:
        return (header_path(self.index_path), self.index_path, self.data_path, self.ok_path, self.crc_path)

    def _complete(self) -> bool:
        return all(p.is_file() for p in self._files())

    def _remove(self) -> None:
        for p in self._files():  # the header first: a half-removed cache is never taken for a whole one
            p.unlink(missing_ok=True)

    def _verify(self, expected: np.ndarray) -> None:
        """Check the header, the index's checksum and that it is this dataset's layout; file sizes too."""
        n = len(expected)
        index = load_array(self.index_path, dtype="int64", ndim=2)
        verify_header(self.index_path, kind=CACHE_KIND, version=CACHE_VERSION, dtype="int64", shape=(n, 3),
                      count=n, index=index)
        if index.shape != expected.shape or not np.array_equal(index, expected):
            raise CacheCorrupt(f"{self.index_path}: the index is not the layout of these {n} images")
        total = int((expected[:, 1] * expected[:, 2] * 3).sum()) or 1
        for path, size in ((self.data_path, total), (self.ok_path, max(1, n)), (self.crc_path, 4 * max(1, n))):
            try:
                got = path.stat().st_size
            except OSError:
                raise CacheCorrupt(f"{path}: missing") from None
            if got != size:
                raise CacheCorrupt(f"{path}: {got} bytes, the index needs {size}")

    def _create(self, index: np.ndarray) -> None:
        n = len(index)
        nbytes = index[:, 1] * index[:, 2] * 3
        total = int(nbytes.sum()) or 1
        header_path(self.index_path).unlink(missing_ok=True)  # written last: the cache exists once it does
        # preallocated, not sparse: a memory-mapped write into a hole on a full disk is a SIGBUS
        ensure_free(self.data_path, total + 5 * n, "image cache")
        for path, size in ((self.data_path, total), (self.ok_path, max(1, n)), (self.crc_path, 4 * max(1, n))):
            with atomic_writer(path) as f:
                preallocate(f, size, path, "image cache")
        atomic_save_npy(self.index_path, index)
        write_header(self.index_path, CacheHeader(CACHE_KIND, CACHE_VERSION, "int64", (n, 3), n, checksum(index)))

    def _open(self) -> None:
        for path in (self.data_path, self.ok_path):  # caches written sparse by older versions
            st = path.stat()
            if st.st_blocks * 512 < st.st_size:
                with open(path, "r+b") as f:
                    preallocate(f, st.st_size, path, "image cache")
        self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r+")
        self._ok = np.memmap(self.ok_path, dtype=np.uint8, mode="r+")
        self._crc = np.memmap(self.crc_path, dtype="<u4", mode="r+")

    def _slot_ok(self, i: int) -> bool:
        """Whether slot ``i`` is filled and its pixels match their CRC."""
        assert self._data is not None and self._ok is not None and self._crc is not None
        if not self._ok[i]:
            return False
        off, h, w = (int(v) for v in self._index[i])
        return crc32(self._data[off : off + h * w * 3]) == int(self._crc[i])

    def _spot_check(self) -> None:
        """CRC of a sample of filled slots; when one fails, every filled slot is checked and bad ones emptied."""
        if not len(self.paths):
            return
        self._open()
        assert self._ok is not None
        filled = np.flatnonzero(self._ok[: len(self.paths)])
        if not len(filled):
            return
        sample = filled[np.linspace(0, len(filled) - 1, min(_SPOT_CHECKS, len(filled))).astype(np.int64)]
        if all(self._slot_ok(int(i)) for i in sample):
            return
        bad = [int(i) for i in filled if not self._slot_ok(int(i))]
        self._ok[bad] = 0
        self._ok.flush()
        self.healed = len(bad)
        note = (f"{self.data_path}: {len(bad)} of {len(filled)} cached images failed their checksum; they are "
                "decoded again")
        self.rebuilt = rebuild_note(self.data_path, note) if self.rebuilt is None else self.rebuilt

    # DataLoader workers receive a pickled copy: memory maps are reopened there, not pickled
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_data"] = state["_ok"] = state["_crc"] = None
        return state

    def __contains__(self, path: object) -> bool:
        return path in self.row

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def filled(self) -> int:
        """How many images are cached."""
        if self._ok is None:
            self._open()
        assert self._ok is not None
        return int(np.count_nonzero(self._ok[: len(self.paths)]))

    def get(self, path: str) -> Image.Image:
        """The cached, resized RGB image of ``path``, decoding and storing it on first use.

        Raises:
            KeyError: ``path`` is not in this cache.
            OSError: the file cannot be decoded (callers treat this like any unreadable image).
        """
        i = self.row[path]
        if self._data is None:
            self._open()
        assert self._data is not None and self._ok is not None and self._crc is not None
        off, h, w = (int(v) for v in self._index[i])
        n = h * w * 3
        if self._ok[i]:
            pixels = np.array(self._data[off : off + n])
            if crc32(pixels) == int(self._crc[i]):
                return Image.fromarray(pixels.reshape(h, w, 3), "RGB")
            # damaged since it was written: decode the file again, never train on garbage
        img = decode_resized(path, h, w)
        pixels = np.asarray(img, dtype=np.uint8).reshape(-1)
        self._data[off : off + n] = pixels
        self._crc[i] = crc32(pixels)
        self._ok[i] = 1  # after the pixels and their CRC: a reader never sees a flagged slot with missing data
        return img

    def warm(self, progress: Callable[[int, int], None] | None = None, workers: int | None = None) -> None:
        """Fill every empty slot now, in worker processes (decoding small images is GIL-bound in threads).

        Slots already filled are skipped, so an interrupted warm-up resumes where it stopped.

        Args:
            progress: called with (slots filled, total) as chunks finish.
            workers: processes (default: every core available); 1 fills in this process.
        """
        if self._ok is None:
            self._open()
        assert self._ok is not None
        todo = np.flatnonzero(self._ok[: len(self.paths)] == 0)
        total = len(self.paths)
        done = total - len(todo)
        chunks = [todo[k : k + _WARM_CHUNK] for k in range(0, len(todo), _WARM_CHUNK)]
        workers = workers or usable_cpus()
        if workers <= 1 or len(todo) < _WARM_CHUNK:
            for chunk in chunks:
                _fill(self, chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from ofgr_core.data.common import worker_start_method

        method = worker_start_method()
        # the cache is sent once per worker (initializer), not with every chunk
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method),
                                 initializer=_warm_init, initargs=(self,)) as pool:
            for n in pool.map(_warm_chunk, chunks):
                done += n
                if progress is not None:
                    progress(done, total)

    def _try_get(self, path: str) -> None:
        # unreadable files were reported at load time; leave their slot empty
        with contextlib.suppress(Exception):
            self.get(path)


_WARM_CHUNK = 512
_WARM_CACHE: ImageCache | None = None


def _fill(cache: ImageCache, rows: np.ndarray) -> int:
    for i in rows:
        cache._try_get(cache.paths[int(i)])
    return len(rows)


def _warm_init(cache: ImageCache) -> None:
    global _WARM_CACHE
    _WARM_CACHE = cache


def _warm_chunk(rows: np.ndarray) -> int:
    assert _WARM_CACHE is not None
    return _fill(_WARM_CACHE, rows)


# Caches opened by load_dataset in this process. ImageDataset(cache="auto") picks the one holding its paths,
# so the training and embedding code need not thread a cache object through.
_ACTIVE: list[ImageCache] = []


def register(cache: ImageCache) -> None:
    _ACTIVE[:] = [c for c in _ACTIVE if c.key != cache.key or c.side != cache.side]
    _ACTIVE.append(cache)


def find_cache(paths: list[str]) -> ImageCache | None:
    """The most recently registered cache that holds every path, if any."""
    for cache in reversed(_ACTIVE):
        if all(p in cache for p in paths):
            return cache
    return None


def default_cache_dir(roots: list[str | None]) -> Path:
    """``<first source root>/.ofgr_cache`` when writable, else ``~/.cache/ofgr``."""
    for root in roots:
        if not root:
            continue
        base = Path(root).expanduser()
        base = base if base.is_dir() else base.parent
        folder = base / ".ofgr_cache"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
        break
    return Path.home() / ".cache" / "ofgr"
