"""Image files to RGB pixels: the one place a training, extraction or query path decodes a file.

The reference is PIL: ``Image.open(path).convert("RGB")``. JPEG and PNG files are first tried with
``torchvision.io`` (libjpeg-turbo and libpng, called from C++ on the file's bytes), which on small files decodes
about twice as fast as PIL (64 px JPEGs: ~95 vs ~180 us; ``benchmarks/bench_extract.py``). Its result is used
only where it is exactly PIL's: an 8-bit image with three channels as stored (baseline and progressive JPEG in
any chroma subsampling, RGB PNG). Everything else (grayscale, CMYK, palette, alpha, 16-bit, other formats, a
file torchvision cannot read) goes to PIL, so the pixels are PIL's in every case
(``tests/core/test_decode.py`` checks the two agree byte for byte on each kind of file).
Neither applies EXIF orientation or ICC profiles: the same pixels either way.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG


@functools.cache
def _fast_decoder() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's C++ decoder (bytes -> CHW uint8, channels as stored), or None where this torchvision has none.

    torchvision marks its image decoding deprecated since 0.29 (TorchCodec supersedes it) and warns on every
    call of the Python wrapper; the operator itself is called here. Once a torchvision ships without it, PIL
    decodes everything, as it did before.
    """
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io.image import _has_image_ops

        if not _has_image_ops():
            return None
        op = torch.ops.image.decode_image
        unchanged = int(ImageReadMode.UNCHANGED.value)
    except (ImportError, AttributeError, RuntimeError):
        return None

    def decode(data: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = op(data, unchanged, False)  # False: no EXIF orientation, as PIL's open
        return out

    return decode


def read_bytes(path: str | os.PathLike[str]) -> bytearray:
    """The file's bytes, in the writable buffer ``torch.frombuffer`` takes without a copy or a warning.

    Read with ``os.readv`` into a buffer of the file's size, without Python's file objects: ~10 us an image less
    than ``open(path, "rb").read()`` on 64 px JPEGs (``benchmarks/bench_extract.py``'s files), where the decode
    itself takes ~60 us. Where ``os.readv`` is missing (not POSIX), an unbuffered ``readall``.
    """
    if not hasattr(os, "readv"):
        with open(path, "rb", buffering=0) as f:
            return bytearray(f.readall())
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        buf = bytearray(size)
        got = 0
        with memoryview(buf) as view:
            while got < size:
                n = os.readv(fd, [view[got:]])
                if n == 0:
                    break
                got += n
        if got < size:  # the file shrank after the fstat
            del buf[got:]
        return buf
    finally:
        os.close(fd)


def decode_chw(path: str | os.PathLike[str]) -> torch.Tensor | None:
    """The ``(3, H, W)`` uint8 pixels of a JPEG/PNG file when the fast decoder gives exactly PIL's RGB, else None
    (then decode with :func:`open_rgb`, which falls back to PIL; a file that cannot be read raises there)."""
    if _fast_decoder() is None:
        return None
    try:
        raw = read_bytes(path)
    except OSError:
        return None
    return decode_chw_bytes(raw)


def decode_chw_bytes(raw: bytearray | None) -> torch.Tensor | None:
    """:func:`decode_chw` of a file's bytes (from :func:`read_bytes`; None: a file that could not be read)."""
    decode = _fast_decoder()
    if decode is None or raw is None or not raw.startswith(_MAGIC):
        return None
    try:
        pixels = decode(torch.frombuffer(raw, dtype=torch.uint8))
    except Exception:  # corrupt or unusual file: PIL decides (and names the error)
        return None
    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[0] != 3:
        return None  # grayscale, CMYK, alpha, palette indices, 16-bit: PIL's conversion
    return pixels


def chw_to_pil(pixels: torch.Tensor) -> Image.Image:
    """A ``(3, H, W)`` uint8 tensor as a PIL RGB image (the same pixels)."""
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))


def open_rgb(path: str | os.PathLike[str], *, fast: bool = True) -> Image.Image:
    """The file as a PIL RGB image: PIL's ``convert("RGB")`` pixels, decoded the fast way when that is exact
    (``fast=False``: by PIL, for a file :func:`decode_chw` has already declined)."""
    pixels = decode_chw(path) if fast else None
    if pixels is not None:
        return chw_to_pil(pixels)
    with Image.open(path) as im:
        rgb: Image.Image = im.convert("RGB")
        return rgb


__all__ = ["chw_to_pil", "decode_chw", "decode_chw_bytes", "open_rgb", "read_bytes"]
