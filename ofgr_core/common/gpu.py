"""A snapshot of every NVIDIA GPU (utilisation, memory, temperature, power) read with nvidia-ml-py.

Front ends poll ``snapshot()`` every second or two. Without a GPU or driver it returns an empty snapshot
with a one-line ``reason`` instead of raising, so a monitoring panel can show a clean "no GPU" state.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

_lock = threading.Lock()
_initialised = False
_init_error: str | None = None
T = TypeVar("T")


@dataclass(frozen=True)
class GpuStats:
    """One GPU at one moment. Fields the driver cannot report are ``None``."""

    index: int
    name: str
    util_pct: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None

    @property
    def mem_fraction(self) -> float | None:
        if self.mem_used_mb is None or not self.mem_total_mb:
            return None
        return self.mem_used_mb / self.mem_total_mb


@dataclass(frozen=True)
class GpuSnapshot:
    """All GPUs at one moment; ``gpus`` is empty and ``reason`` says why when none can be read."""

    gpus: tuple[GpuStats, ...] = ()
    reason: str | None = None
    time: float = field(default_factory=time.time)


def _nvml() -> Any:  # the pynvml module (untyped)
    import pynvml  # nvidia-ml-py; imported lazily so that importing this module never touches the driver

    return pynvml


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    if "LibraryNotFound" in name:
        return "no GPU: NVIDIA driver library (NVML) not found"
    if "DriverNotLoaded" in name:
        return "no GPU: NVIDIA driver not loaded"
    if "NoPermission" in name:
        return "GPU not readable: no permission to query NVML"
    return f"GPU not readable: {str(error).strip() or name}"


def _ensure_init(nvml: Any) -> str | None:
    global _initialised, _init_error
    if _initialised:
        return None
    if _init_error is not None:
        return _init_error  # a missing driver does not appear while we run; don't retry every poll
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError subclasses, or OSError from a broken install
        _init_error = _describe(e)
        return _init_error
    _initialised = True
    return None


def _read(fn: Callable[..., T], *args: object) -> T | None:
    try:
        return fn(*args)
    except Exception:  # a field this GPU/driver does not support
        return None


def _read_gpu(nvml: Any, index: int) -> GpuStats:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _read(nvml.nvmlDeviceGetName, handle) or f"GPU {index}"
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    util = _read(nvml.nvmlDeviceGetUtilizationRates, handle)
    mem = _read(nvml.nvmlDeviceGetMemoryInfo, handle)
    temp = _read(nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
    power = _read(nvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
    limit = _read(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)  # milliwatts
    mib = 1024 * 1024
    return GpuStats(
        index=index,
        name=str(name),
        util_pct=float(util.gpu) if util is not None else None,
        mem_used_mb=mem.used / mib if mem is not None else None,
        mem_total_mb=mem.total / mib if mem is not None else None,
        temperature_c=float(temp) if temp is not None else None,
        power_w=power / 1000.0 if power is not None else None,
        power_limit_w=limit / 1000.0 if limit is not None else None,
    )


def snapshot() -> GpuSnapshot:
    """Read every visible GPU now. Never raises: failures become ``GpuSnapshot(reason=...)``."""
    try:
        nvml = _nvml()
    except ImportError:
        return GpuSnapshot(reason="no GPU monitoring: nvidia-ml-py is not installed")
    with _lock:
        reason = _ensure_init(nvml)
        if reason is not None:
            return GpuSnapshot(reason=reason)
        try:
            count = int(nvml.nvmlDeviceGetCount())
            gpus = tuple(_read_gpu(nvml, i) for i in range(count))
        except Exception as e:
            return GpuSnapshot(reason=_describe(e))
    if not gpus:
        return GpuSnapshot(reason="no GPU: the driver reports no devices")
    return GpuSnapshot(gpus=gpus)


def reset() -> None:
    """Forget the cached NVML state (tests; or to retry after a driver was installed)."""
    global _initialised, _init_error
    with _lock:
        if _initialised:
            with contextlib.suppress(Exception):
                _nvml().nvmlShutdown()
        _initialised = False
        _init_error = None
