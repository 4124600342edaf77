"""Helpers for TUI tests (importable; conftest.py only defines fixtures)."""

from __future__ import annotations

import time
from pathlib import Path

import rundirs
from ofgr_core.common.gpu import GpuSnapshot, GpuStats
from ofgr_tui.app import OfgrApp

FIXED_NOW = rundirs.T0 + 4 * 3600


def fake_gpus() -> GpuSnapshot:
    return GpuSnapshot(
        gpus=(
            GpuStats(0, "NVIDIA H100 80GB HBM3", 87.0, 61_000.0, 81_559.0, 64.0, 512.0, 700.0),
            GpuStats(1, "NVIDIA H100 80GB HBM3", 12.0, 3_000.0, 81_559.0, 41.0, 95.0, 700.0),
        ),
        time=FIXED_NOW,
    )


def no_gpus() -> GpuSnapshot:
    return GpuSnapshot(reason="no GPU: NVIDIA driver library (NVML) not found", time=FIXED_NOW)


def make_app(runs: Path, configs: Path | None = None, **kw: object) -> OfgrApp:
    kw.setdefault("clock", lambda: FIXED_NOW)
    kw.setdefault("gpu_probe", no_gpus)
    kw.setdefault("images", "off")
    kw.setdefault("scan_interval", 0.2)
    kw.setdefault("tail_interval", 0.1)
    kw.setdefault("gpu_interval", 0.5)
    return OfgrApp(runs, configs or runs.parent / "configs", **kw)  # type: ignore[arg-type]


async def wait_for(pilot, predicate, timeout: float = 30.0, step: float = 0.05) -> None:  # noqa: ANN001
    """Let the app run until ``predicate()`` holds (workers and timers need real time; the generous default
    timeout is for a loaded shared machine: a wrong behaviour still fails, only later)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(predicate, '__name__', predicate)}")
        await pilot.pause(step)
