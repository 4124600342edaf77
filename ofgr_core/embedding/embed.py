"""Embedding images with a trained model (batched, no grad, under the encoder's autocast dtype)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict

import numpy as np
import numpy.typing as npt
import torch

from ofgr_core.common.atomic import atomic_path, atomic_save_npy
from ofgr_core.common.threads import usable_cpus
from ofgr_core.data.loader import ImageBatchDataset, ImageTransform
from ofgr_core.models.precision import autocast

if TYPE_CHECKING:
    from typing_extensions import Unpack


class EmbedOptions(TypedDict, total=False):
    """The keyword options of :func:`iter_embed` that :func:`embed_paths` and :func:`embed_to_file` pass on."""

    batch_size: int
    num_workers: int
    autocast_dtype: torch.dtype | None
    channels_last: bool
    normalize: bool


class Embedder(Protocol):
    """What :func:`iter_embed` runs: a ``torch.nn.Module`` or anything that maps a batch of images to rows the
    same way and has its train/eval switch."""

    training: bool

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def eval(self) -> object: ...

    def train(self, mode: bool = True) -> object: ...


def loader_workers(requested: int, device: torch.device) -> int:
    """DataLoader processes for embedding on ``device``: ``requested``, except where they would take cores from
    the model itself. On a CPU device the forward pass runs on ``torch.get_num_threads()`` OpenMP threads; a
    loader process on one of those cores makes the others wait at every operation. So when requested workers
    plus those threads exceed the cores, images are decoded in this process between batches instead.
    Measured with ``benchmarks/bench_extract.py`` (tiny CLIP, 64 px JPEGs, 2-core box, idle; pipeline / encoder,
    medians of 3 alternated pairs): 0.84 decoding in-process (2,000 images) against 0.55 with one loader process
    and 0.62 with two (6,000 images); docs/benchmarks.md has the later runs (in-process with the decode
    threads of ``iter_embed``: medians 0.67-0.72 over three runs of 7-9 alternations; 0.71 and 0.83 after the
    numpy batch conversion and read-then-decode, depending on the box's speed).
    """
    if device.type != "cpu" or requested <= 0:
        return max(0, requested)
    return requested if requested + torch.get_num_threads() <= usable_cpus() else 0


@torch.no_grad()
def iter_embed(
    model: Embedder,
    paths: list[str],
    transform: ImageTransform,
    device: torch.device,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    normalize: bool = True,
    prefetched: dict[str, bytearray] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_row, embeddings)`` chunks in order; float32, L2-normalised unless ``normalize=False``.

    ``autocast_dtype``: the forward pass's autocast dtype (an encoder's ``autocast_dtype``; None: float32).
    ``prefetched``: bytes of files already read, by path (``features.extract_features``' hash pass), decoded
    instead of reading those files again and dropped as they are; only without loader processes.
    """
    labels = np.zeros((len(paths), 1), dtype=np.int64)
    # workers build whole batches (ImageBatchDataset): one uint8 array per batch, normalised in one pass
    batches = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(paths), batch_size, drop_last=False)
    workers = loader_workers(num_workers, device)
    # no loader processes: this process decodes each batch between forward passes, on the tower's threads
    decode_threads = 1 if workers else torch.get_num_threads()
    loader = torch.utils.data.DataLoader(
        ImageBatchDataset(paths, labels, transform, decode_threads=decode_threads, channels_last=channels_last,
                          prefetched=None if workers else prefetched),
        batch_size=None,
        sampler=batches,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    was_training = model.training
    model.eval()
    start = 0
    try:
        for images, _, _ in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:  # already so from the dataset's fast path; not from its per-image fallback
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, autocast_dtype):
                emb = model(images)
            emb = emb.float()
            rows: np.ndarray = (torch.nn.functional.normalize(emb, dim=1) if normalize else emb).cpu().numpy()
            yield start, rows
            start += len(rows)
    finally:
        model.train(was_training)


def embed_paths(
    model: Embedder,
    paths: list[str],
    transform: ImageTransform,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    dtype: npt.DTypeLike = np.float32,
    **kwargs: Unpack[EmbedOptions],
) -> np.ndarray:
    """All embeddings of ``paths`` as one (N, D) float32 array.

    With ``out`` the rows stream into that ``.npy`` file instead (see :func:`embed_to_file`) and a read-only
    memory map of it is returned.
    """
    if out is not None:
        return embed_to_file(model, paths, transform, device, out, dtype=dtype, progress=progress, **kwargs)
    result: np.ndarray | None = None
    for start, emb in iter_embed(model, paths, transform, device, **kwargs):
        if result is None:
            result = np.empty((len(paths), emb.shape[1]), dtype=np.float32)
        result[start : start + len(emb)] = emb
        if progress is not None:
            progress(start + len(emb), len(paths))
    if result is None:
        dim = int(getattr(model, "embed_dim", 0))
        result = np.empty((0, dim), dtype=np.float32)
    return result


def embed_to_file(
    model: Embedder,
    paths: list[str],
    transform: ImageTransform,
    device: torch.device,
    out: str | os.PathLike[str],
    *,
    dtype: npt.DTypeLike = np.float32,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: Unpack[EmbedOptions],
) -> np.ndarray:
    """Stream the embeddings of ``paths`` into the ``.npy`` file ``out``, one batch at a time.

    The file is written through a memory map next to ``out`` and renamed over it when complete, so memory
    holds one batch whatever N is (10M x 512 float16 is a 10 GB file, not 10 GB of RAM) and a reader never
    sees half a file. ``np.load(out, mmap_mode="r")`` reads it back.

    Args:
        dtype: ``float32`` (default) or ``float16`` (half the disk; rows are unit-norm to ~1e-3).

    Returns:
        A read-only memory map of the finished file (for zero paths, the empty array read from it).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"embedding files are float32 or float16, not {dtype}")
    out = Path(out)
    n = len(paths)
    if n == 0:  # a zero-length file cannot be memory-mapped
        atomic_save_npy(out, np.empty((0, int(getattr(model, "embed_dim", 0))), dtype=dtype))
        empty: np.ndarray = np.load(out)
        return empty
    with atomic_path(out) as tmp:
        mm: np.memmap | None = None
        for start, emb in iter_embed(model, paths, transform, device, **kwargs):
            if mm is None:
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, emb.shape[1]))
            mm[start : start + len(emb)] = emb
            if progress is not None:
                progress(start + len(emb), n)
        if mm is None:
            raise RuntimeError(f"embedding {n} images produced no batch")
        mm.flush()
        del mm
    finished: np.ndarray = np.load(out, mmap_mode="r")
    return finished
