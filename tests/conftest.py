"""Shared fixtures: one tiny end-to-end run written by the real CLI, reused by CLI and TUI tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# never reach a model hub from tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OFGR_DEBUG", "0")
# the shared feature cache of frozen towers goes to a throwaway folder, never the user's ~/.cache
os.environ.setdefault("OFGR_CACHE", tempfile.mkdtemp(prefix="ofgr-test-cache-"))

from ofgr_testing import REPO, tiny_overrides  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data") / "synth"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_data_root: Path) -> Path:
    """A finished run folder written by ``ofgr run`` on tiny synthetic data."""
    from typer.testing import CliRunner

    from ofgr_core.cli import app

    runs_dir = tmp_path_factory.mktemp("runs")
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(runs_dir), "--name", "tiny", "-q"]
    for o in tiny_overrides(tiny_data_root):
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run_dir
