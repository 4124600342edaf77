"""Torch datasets over a :class:`DatasetTable`: decoding and resizing run in DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image


class ImageDataset(torch.utils.data.Dataset):
    """Images by row; returns ``(image_tensor, labels_row, index)``.

    Unreadable files are filtered out before training (``load_dataset``); if one still fails here (it changed
    on disk mid-run), a black image is returned and the failure recorded in ``self.failures`` rather than
    killing the run.
    """

    def __init__(self, paths: list[str], labels: np.ndarray, transform: Callable[[Image.Image], Any]) -> None:
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform
        self.failures: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor, int]:
        try:
            with Image.open(self.paths[i]) as im:
                img = im.convert("RGB")
        except Exception:
            self.failures.append(self.paths[i])
            img = Image.new("RGB", (64, 64))
        return self.transform(img), self.labels[i], i
