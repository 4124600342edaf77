"""Fixtures for TUI tests: hand-written run folders (docs/run-folder.md), a fixed clock, a fake GPU."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rundirs
from ofgr_core.gpu import GpuSnapshot, GpuStats
from ofgr_tui.app import OfgrApp

FIXED_NOW = rundirs.T0 + 4 * 3600


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Times on screen are local; pin the zone so snapshots and assertions are stable."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    rundirs.finished_run(runs, "20251127-101500-demo", r1=0.5, embeddings=True, per_query=True)
    rundirs.finished_run(
        runs, "20251127-111500-wide", r1=0.62, t0=rundirs.T0 + 3600, model="resnet50",
        embeddings=True, per_query=True, seed=1,
    )  # fmt: skip
    rundirs.failed_run(runs, "20251127-121500-cars", t0=rundirs.T0 + 7200)
    rundirs.interrupted_run(runs, "20251127-131500-long", t0=rundirs.T0 + 10800, partial_last_line=True)
    return runs


@pytest.fixture
def configs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "configs"
    d.mkdir()
    (d / "demo.yaml").write_text("name: demo\ntrain:\n  epochs: 1\n")
    (d / "bad.yaml").write_text("name: bad\ntrain:\n  epochz: 1\n")
    return d


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


async def wait_for(pilot, predicate, timeout: float = 10.0, step: float = 0.05) -> None:  # noqa: ANN001
    """Let the app run until ``predicate()`` holds (workers and timers need real time)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(predicate, '__name__', predicate)}")
        await pilot.pause(step)
