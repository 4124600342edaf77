"""Torch datasets over a :class:`DatasetTable`: decoding and resizing run in DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ofgr_core.data.cache import ImageCache, find_cache

# A model's preprocessing: a PIL image to the tensor the model takes.
ImageTransform = Callable[[Image.Image], torch.Tensor]


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

    def load(self, i: int) -> Image.Image:
        """The RGB image of row ``i`` (from the cache when there is one)."""
        path = self.paths[i]
        if self.cache is not None and path in self.cache:
            return self.cache.get(path)
        with Image.open(path) as im:
            rgb: Image.Image = im.convert("RGB")
            return rgb

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        try:
            img = self.load(i)
        except Exception:
            self.failures.append(self.paths[i])
            img = Image.new("RGB", (64, 64))
        return self.transform(img), self.labels[i], i
