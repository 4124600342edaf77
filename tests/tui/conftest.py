"""Fixtures for TUI tests: hand-written run folders (docs/run-folder.md), a fixed clock, a fake GPU."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rundirs


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
