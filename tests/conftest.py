"""Shared fixtures: one tiny end-to-end run written by the real CLI, reused by CLI and TUI tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# never reach a model hub from tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OFGR_DEBUG", "0")

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(data_root: Path) -> list[str]:
    """A whole run in seconds: 4x4 synthetic classes x 8 images at 32 px, timm's test_resnet, 1 epoch."""
    return [
        f"data.sources.0.root={data_root}",
        "data.sources.0.options={seed: 0, num_coarse: 4, fine_per_coarse: 4, images_per_class: 8, image_size: 32}",
        "data.image_size=32",
        "model.name=test_resnet",
        "model.embed_dim=32",
        "sampler.coarse_per_batch=2",
        "sampler.fine_per_coarse=2",
        "sampler.k=2",
        "train.epochs=1",
        "train.log_every=1",
        "eval.bootstrap=50",
    ]


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
