"""Torch datasets over a :class:`DatasetTable`: decoding and resizing run in DataLoader workers."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ofgr_core.common.threads import map_slices
from ofgr_core.data.cache import ImageCache, find_cache
from ofgr_core.data.decode import chw_to_pil, decode_chw_bytes, open_rgb, read_bytes

# A model's preprocessing: a PIL image to the tensor the model takes.
ImageTransform = Callable[[Image.Image], torch.Tensor]
# The part of it before the tensor conversion: a PIL image to a PIL image.
ImageTransformPIL = Callable[[Image.Image], Image.Image]
# Bytes of float pixels a batch converts and normalises at a time (``SplitTransform.batch_chw``): 16 images of
# 64 x 64, one of 224 x 224; a group that stays in the cache between its passes
CONVERT_BYTES = 768 * 1024


class ImageDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """Images by row; returns ``(image_tensor, labels_row, index)``.

    With a cache (``cache="auto"`` picks the one ``load_dataset`` opened for these paths, if any) the image is
    the cached, resized copy and the transform runs on it; otherwise the file is decoded here. Unreadable
    files are filtered out before training (``load_dataset``); if one still fails here (it changed on disk
    mid-run), a black image is returned and the failure recorded in ``self.failures`` rather than killing the
    run.

    Args:
        paths: image files.
        labels: (N, L) integer labels (or (N,)).
        transform: PIL image -> model input.
        cache: an :class:`ImageCache`, ``"auto"``, or None to always decode the files.
    """

    def __init__(self, paths: list[str], labels: np.ndarray, transform: ImageTransform,
                 cache: ImageCache | Literal["auto"] | None = "auto") -> None:
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform
        self.failures: list[str] = []
        self.cache = find_cache(paths) if cache == "auto" else cache

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int, *, fast: bool = True) -> Image.Image:
        """The RGB image of row ``i`` (from the cache when there is one); ``fast=False``: the file goes straight to
        PIL (the caller tried the fast decoder on ``file_bytes`` already)."""
        path = self.paths[i]
        if self.cache is not None and path in self.cache:
            return self.cache.get(path)
        return open_rgb(path, fast=fast)

    def file_bytes(self, i: int, prefetched: dict[str, bytearray] | None = None) -> bytearray | None:
        """Row ``i``'s file, for the fast decoder (``decode_chw_bytes``); None where a cached copy stands in for it
        or it cannot be read (then ``load_or_black``). ``prefetched``: files' bytes already read, by path; the
        row's is taken out of it rather than read again."""
        path = self.paths[i]
        if self.cache is not None and path in self.cache:
            return None
        if prefetched:
            data = prefetched.pop(path, None)
            if data is not None:
                return data
        try:
            return read_bytes(path)
        except OSError:
            return None

    def load_or_black(self, i: int, *, fast: bool = True) -> Image.Image:
        """Row ``i``'s image, or a black one (the failure recorded) if it cannot be read."""
        try:
            return self.load(i, fast=fast)
        except Exception:
            self.failures.append(self.paths[i])
            return Image.new("RGB", (64, 64))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.transform(self.load_or_black(i)), self.labels[i], i


@dataclass(frozen=True)
class SplitTransform:
    """A model's preprocessing cut where the image becomes a tensor, so that part runs on whole batches.

    ``pil`` is the per-image part (resize, crop: a PIL image in, a PIL image out); ``to_tensor`` and
    ``normalize`` then run once per batch of equal-sized images, with the same elementwise operations
    torchvision applies to one image (``to_tensor``: uint8 HWC -> CHW, ``float / 255``; ``Normalize``:
    ``(x - mean) / std``), so every value is bit for bit what the per-image transform gives.
    """

    pil: ImageTransformPIL
    mean: torch.Tensor | None  # (C,) float32, or None without a Normalize step
    std: torch.Tensor | None

    def batch(self, pixels: np.ndarray, *, channels_last: bool = False) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 pixels -> the ``(B, 3, H, W)`` float tensor the model takes (``batch_chw``)."""
        return self.batch_chw(torch.from_numpy(pixels).permute(0, 3, 1, 2), channels_last=channels_last)

    def batch_chw(self, pixels: torch.Tensor | Sequence[torch.Tensor], *, channels_last: bool = False) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 pixels (one tensor, or B ``(3, H, W)`` tensors of one size; any strides) -> the
        float tensor the model takes: contiguous, or in the channels-last layout (same values).

        One pass in numpy on this thread: a group of images (``CONVERT_BYTES`` of floats) at a time is converted
        to float into the batch and then put through the steps in place while it is in the cache, each step with
        its per-channel constant laid along the rows' contiguous axis (tiled over the width in the channels-last
        layout: a broadcast over a length-3 axis costs ~15x more). It replaces ``torch.stack``, three whole-batch
        torch passes and the copy into channels-last: 0.77 of their time at 64 px, 0.66 at 96, 0.77 at 224
        (``benchmarks/bench_extract.py --parts``); two threads were slower than one (its per-image calls hold the
        GIL). Every element goes through torchvision's IEEE operations in its order (``float(x) / 255``,
        ``- mean``, ``/ std``), so the values are bit for bit those of the per-image transform
        (``tests/core/test_extract_pipeline.py``).
        """
        n = len(pixels)
        c, h, w = (int(d) for d in pixels[0].shape) if n else (3, 0, 0)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty((n, c, h, w), dtype=torch.get_default_dtype(), memory_format=layout)
        if n == 0:
            return out
        dtype = out.numpy().dtype
        steps: list[tuple[np.ufunc, np.ndarray]] = [(np.divide, np.asarray(255, dtype))]
        if self.mean is not None and self.std is not None:
            steps += [(op, np.broadcast_to(k.numpy(), (c,)).astype(dtype))  # (a 1-value Normalize: every channel)
                      for op, k in ((np.subtract, self.mean), (np.divide, self.std))]
        if channels_last:  # rows of W * C values, the constants tiled to match
            rows = out.permute(0, 2, 3, 1).numpy().reshape(n, h, w * c)
            steps = [(op, np.tile(k, w) if k.ndim else k) for op, k in steps]
        else:  # planes of H * W values, one constant each
            rows = out.numpy().reshape(n, c, h * w)
            steps = [(op, k[:, None] if k.ndim else k) for op, k in steps]
        chw = out.numpy()
        group = max(1, CONVERT_BYTES // (c * h * w * out.element_size()))
        for first in range(0, n, group):
            last = min(n, first + group)
            for i in range(first, last):
                np.copyto(chw[i], pixels[i].numpy(), casting="unsafe")
            part = rows[first:last]
            for op, k in steps:
                op(part, k, out=part)
        return out

    def keeps(self, height: int, width: int) -> bool:
        """Whether ``pil`` returns an RGB image of this size unchanged (a resize and a crop to the size it has);
        then decoded pixels go into the batch as they are. Answered once per size by running ``pil`` on a probe
        image, and only for the deterministic steps ``Resize`` and ``CenterCrop``."""
        return _keeps(self.pil, height, width)


@functools.lru_cache(maxsize=64)
def _keeps(pil: ImageTransformPIL, height: int, width: int) -> bool:
    from torchvision import transforms as T

    steps = getattr(pil, "transforms", None)
    if steps is None or not all(type(s) in (T.Resize, T.CenterCrop) for s in steps):
        return False
    probe = np.random.default_rng(height * 100_003 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = pil(Image.fromarray(probe))
    return out.mode == "RGB" and out.size == (width, height) and np.array_equal(np.asarray(out), probe)


def split_transform(transform: ImageTransform) -> SplitTransform | None:
    """The batched form of a torchvision/timm ``Compose`` ending in ``ToTensor`` (+ ``Normalize``), else None.

    Anything else (a custom callable, random steps after the tensor conversion, an in-place Normalize) is
    left to run per image.
    """
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", ()))
    at = next((i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)), None)
    if not steps or not isinstance(transform, T.Compose) or at is None:
        return None
    tail = steps[at + 1 :]
    if len(tail) > 1 or (tail and (type(tail[0]) is not T.Normalize or tail[0].inplace)):
        return None
    mean = std = None
    if tail:
        norm = tail[0]
        mean = torch.as_tensor(norm.mean, dtype=torch.get_default_dtype())
        std = torch.as_tensor(norm.std, dtype=torch.get_default_dtype())
    return SplitTransform(T.Compose(steps[:at]), mean, std)


class ImageBatchDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Whole batches per item: ``dataset[[i, j, ...]] -> (images, labels, rows)`` (use it with a batch sampler).

    A DataLoader worker decodes the batch's images (from the pixel cache when there is one, as
    ``ImageDataset`` does), runs the per-image part of the preprocessing and writes the pixels into one uint8
    array; the tensor conversion and normalisation then run once on the whole batch (``split_transform``).
    Per image that leaves the decode and the resize/crop, not a Python pass through every transform step.
    A transform that cannot be split, or a batch whose images come out in different sizes, runs image by
    image, as ``ImageDataset`` would. An unreadable file becomes a black image, recorded in ``failures``.

    ``decode_threads``: threads that read and decode a batch's files (the fast decoder runs outside the GIL,
    ``ofgr_core.common.threads.map_slices``); more than one where the batch is built in the process that runs
    the model, between its forward passes, when the cores are free. ``channels_last``: the batch comes in the
    channels-last layout the tower runs in (``iter_embed``), converted into it directly rather than copied
    into it after. ``prefetched``: files' bytes already read, by path (``ImageDataset.file_bytes``). Same values
    either way.
    """

    def __init__(self, paths: list[str], labels: np.ndarray, transform: ImageTransform,
                 cache: ImageCache | Literal["auto"] | None = "auto", *, decode_threads: int = 1,
                 channels_last: bool = False, prefetched: dict[str, bytearray] | None = None) -> None:
        self.images = ImageDataset(paths, labels, transform, cache)
        self.split = split_transform(transform)
        self.decode_threads = decode_threads
        self.channels_last = channels_last
        self.prefetched = prefetched

    @property
    def failures(self) -> list[str]:
        return self.images.failures

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(rows, dtype=torch.long)
        labels = self.images.labels[index]
        # (below 32 images a thread, starting threads costs more than they overlap)
        threads = min(self.decode_threads, len(rows) // 32)
        fast: list[torch.Tensor | None] = [None] * len(rows)
        if self.split is not None:
            # the files read one after another here (small reads on several threads queue for the GIL: 0.85-0.87
            # of the time of reading and decoding on each thread, 64 px JPEGs), then decoded on the threads
            fast = map_slices(decode_chw_bytes, [self.images.file_bytes(i, self.prefetched) for i in rows], threads)
        chw = [c for c in fast if c is not None]
        if self.split is not None and len(chw) == len(rows) and len({c.shape for c in chw}) == 1 \
                and self.split.keeps(*chw[0].shape[1:]):
            # decoded straight into the batch: the per-image steps would leave these pixels as they are
            return self.split.batch_chw(chw, channels_last=self.channels_last), labels, index
        # a file the fast decoder left to PIL is not tried with it a second time
        raw = [self.images.load_or_black(i, fast=self.split is None) if c is None else chw_to_pil(c)
               for i, c in zip(rows, fast, strict=True)]
        if self.split is not None:
            images = [self.split.pil(im) for im in raw]
            sizes = {im.size for im in images}
            if len(sizes) == 1 and all(im.mode == "RGB" for im in images):
                w, h = sizes.pop()
                pixels = np.empty((len(rows), h, w, 3), dtype=np.uint8)
                for k, im in enumerate(images):
                    pixels[k] = np.asarray(im)
                return self.split.batch(pixels, channels_last=self.channels_last), labels, index
        return torch.stack([self.images.transform(im) for im in raw]), labels, index
