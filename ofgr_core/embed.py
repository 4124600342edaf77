"""Embedding images with a trained model (batched, no grad, AMP on GPU)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from ofgr_core.data.loader import ImageDataset


def autocast_for(device: torch.device, enabled: bool) -> Any:
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@torch.no_grad()
def iter_embed(
    model: torch.nn.Module,
    paths: list[str],
    transform: Callable[..., Any],
    device: torch.device,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    amp: bool = False,
    channels_last: bool = False,
    normalize: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_row, embeddings)`` chunks in order; float32, L2-normalised unless ``normalize=False``."""
    labels = np.zeros((len(paths), 1), dtype=np.int64)
    loader = torch.utils.data.DataLoader(
        ImageDataset(paths, labels, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    was_training = model.training
    model.eval()
    start = 0
    try:
        for images, _, _ in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, amp):
                emb = model(images)
            emb = emb.float()
            emb = (torch.nn.functional.normalize(emb, dim=1) if normalize else emb).cpu().numpy()
            yield start, emb
            start += len(emb)
    finally:
        model.train(was_training)


def embed_paths(
    model: torch.nn.Module,
    paths: list[str],
    transform: Callable[..., Any],
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """All embeddings of ``paths`` as one (N, D) float32 array."""
    out: np.ndarray | None = None
    for start, emb in iter_embed(model, paths, transform, device, **kwargs):
        if out is None:
            out = np.empty((len(paths), emb.shape[1]), dtype=np.float32)
        out[start : start + len(emb)] = emb
        if progress is not None:
            progress(start + len(emb), len(paths))
    if out is None:
        dim = int(getattr(model, "embed_dim", 0))
        out = np.empty((0, dim), dtype=np.float32)
    return out
