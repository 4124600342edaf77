"""GPU snapshots through a fake NVML: values, units, missing fields, and the clean no-GPU state."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest

from ofgr_core.common import gpu


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801  (pynvml's own name)
    pass


def fake_nvml(*, init_error: Exception | None = None, power_error: bool = False) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]

    def init() -> None:
        if init_error:
            raise init_error

    def power(h: int) -> int:
        if power_error:
            raise NVMLError("Not Supported")
        return 250_000 + h * 1000

    m.nvmlInit = init  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: b"NVIDIA A100-SXM4-40GB"  # type: ignore[attr-defined]
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=40 + h, memory=10)  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=10 * 2**30, total=40 * 2**30)  # type: ignore[attr-defined]
    m.nvmlDeviceGetTemperature = lambda h, kind: 55  # type: ignore[attr-defined]
    m.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 400_000  # type: ignore[attr-defined]
    return m


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    gpu.reset()
    yield
    gpu.reset()


def test_snapshot_reads_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    snap = gpu.snapshot()
    assert snap.reason is None and len(snap.gpus) == 2
    g = snap.gpus[1]
    assert g.name == "NVIDIA A100-SXM4-40GB"  # bytes decoded
    assert g.util_pct == 41.0
    assert g.mem_used_mb == 10 * 1024 and g.mem_total_mb == 40 * 1024 and g.mem_fraction == 0.25
    assert g.temperature_c == 55.0
    assert g.power_w == 251.0 and g.power_limit_w == 400.0  # milliwatts -> watts


def test_unsupported_field_is_none_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(power_error=True))
    snap = gpu.snapshot()
    assert len(snap.gpus) == 2 and snap.gpus[0].power_w is None and snap.gpus[0].util_pct == 40.0


def test_no_driver_gives_an_empty_snapshot_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(init_error=NVMLError_LibraryNotFound("not found")))
    snap = gpu.snapshot()
    assert snap.gpus == () and snap.reason == "no GPU: NVIDIA driver library (NVML) not found"
    assert gpu.snapshot().reason == snap.reason  # cached: not retried every poll


def test_real_nvml_on_this_machine_never_raises() -> None:
    snap = gpu.snapshot()
    assert snap.gpus or snap.reason
