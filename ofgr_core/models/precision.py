"""``model.precision``: the dtype of an encoder's forward passes, resolved once for the device it runs on.

One rule for training, feature extraction and embedding (``resolve_autocast``), one context manager that
applies it (``autocast``). ``auto`` follows ``train.amp`` (auto: on for CUDA): on CUDA bf16 where the GPU
supports it, else fp16; on CPU float32 unless ``train.amp: on`` (then bf16). ``fp16``/``bf16`` are used as
given where the device supports them (an error otherwise); ``fp32`` never autocasts.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch

from ofgr_core.common.errors import ConfigError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32`` (no autocast), ``fp16`` or ``bf16``."""
    if dtype is None or dtype == torch.float32:
        return "fp32"
    return next((k for k, v in _DTYPES.items() if v == dtype), str(dtype))


def resolve_autocast(precision: str, amp: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``model.precision`` and ``train.amp`` on ``device`` (``None``: float32).

    Raises:
        ConfigError: a precision the device cannot run, or ``train.amp: off`` with fp16/bf16.
    """
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "auto":
        on = amp == "on" or (amp == "auto" and device.type == "cuda")
        if not on:
            return None
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if _supported(device.type, torch.bfloat16) else None
    if precision not in _DTYPES:
        raise ConfigError(f"model.precision: {precision!r} is not one of auto, fp32, fp16, bf16")
    if amp == "off":
        raise ConfigError(f"model.precision={precision} needs autocast but train.amp=off; set train.amp to auto "
                          "or on, or model.precision to fp32")
    dtype = _DTYPES[precision]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError("model.precision=bf16: this GPU has no bfloat16; use fp16 or auto")
    if device.type != "cuda" and not _supported(device.type, dtype):
        raise ConfigError(f"model.precision={precision}: torch cannot autocast to it on {device.type}; "
                          "use fp32 (or bf16)")
    return dtype


@functools.lru_cache(maxsize=8)
def _supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch autocasts ``device_type`` to ``dtype`` (it warns and disables itself otherwise)."""
    if device_type == "cuda":
        return torch.cuda.is_available()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with torch.autocast(device_type=device_type, dtype=dtype):
                x = torch.ones(2, 2)
                return bool((x @ x).dtype == dtype)
    except (RuntimeError, UserWarning):
        return False


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """Run the block under ``dtype`` autocast on ``device`` (nothing for ``None``)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield
