"""Decoded-and-resized image cache: uint8 pixels in one memory-mapped file, filled lazily by loader workers.

Decoding a JPEG and resizing it costs far more than the augmentations that follow, and it is the same work
every epoch and every run. The cache stores each image once, resized so its short side is ``side`` pixels
(aspect kept, never upscaled), packed back to back in ``<cache_dir>/<key>_<side>.u8``. ``key`` hashes the
image paths and their content hashes, so a changed dataset gets a new cache instead of stale pixels. A sidecar
``.idx.npy`` holds each image's offset and shape, and ``.ok`` one byte per image, set once its pixels are
written; a worker that finds the byte unset decodes the file and fills the slot. Because the layout is fixed
when the cache is created (image sizes are known from the load-time check), workers in other processes write
to disjoint byte ranges without coordination.

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

CROP_PCT = 0.875
MAX_ASPECT = 4.0  # a longer side is clamped: panoramas would otherwise blow up the cache


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
        self.data_path, self.index_path, self.ok_path = (
            Path(f"{stem}.u8"), Path(f"{stem}.idx.npy"), Path(f"{stem}.ok"))
        self.row = {p: i for i, p in enumerate(paths)}
        self.paths = list(paths)
        if not (self.data_path.is_file() and self.index_path.is_file() and self.ok_path.is_file()):
            self._create(sizes)
        self._data: np.memmap | None = None
        self._ok: np.memmap | None = None
        self._index: np.ndarray = np.load(self.index_path)

    def _create(self, sizes: list[tuple[int, int]]) -> None:
        shapes = np.array([stored_shape(w, h, self.side) for w, h in sizes], dtype=np.int64).reshape(-1, 2)
        nbytes = shapes[:, 0] * shapes[:, 1] * 3
        offsets = np.concatenate([[0], np.cumsum(nbytes)[:-1]]) if len(nbytes) else np.zeros(0, np.int64)
        index = np.column_stack([offsets, shapes]).astype(np.int64)
        total = int(nbytes.sum()) or 1
        # preallocated, not sparse: a memory-mapped write into a hole on a full disk is a SIGBUS
        ensure_free(self.data_path, total + len(sizes), "image cache")
        for path, size in ((self.data_path, total), (self.ok_path, max(1, len(sizes)))):
            with atomic_writer(path) as f:
                preallocate(f, size, path, "image cache")
        atomic_save_npy(self.index_path, index)

    def _open(self) -> None:
        for path in (self.data_path, self.ok_path):  # caches written sparse by older versions
            st = path.stat()
            if st.st_blocks * 512 < st.st_size:
                with open(path, "r+b") as f:
                    preallocate(f, st.st_size, path, "image cache")
        self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r+")
        self._ok = np.memmap(self.ok_path, dtype=np.uint8, mode="r+")

    # DataLoader workers receive a pickled copy: memory maps are reopened there, not pickled
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_data"] = state["_ok"] = None
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
        assert self._data is not None and self._ok is not None
        off, h, w = (int(v) for v in self._index[i])
        n = h * w * 3
        if self._ok[i]:
            return Image.fromarray(np.array(self._data[off : off + n]).reshape(h, w, 3), "RGB")
        img = decode_resized(path, h, w)
        self._data[off : off + n] = np.asarray(img, dtype=np.uint8).reshape(-1)
        self._ok[i] = 1  # after the pixels: a reader never sees a flagged slot with missing data
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
        workers = workers or _cores()
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


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


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
