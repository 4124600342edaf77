"""Corrupt, truncated and non-image files: loading completes, a run completes, and both list them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datafix import corrupt, make_manifest_world
from typer.testing import CliRunner

from ofgr_core.config import DataConfig
from ofgr_core.data.dataset import load_dataset


def _world(root: Path) -> list[str]:
    """4x4 classes x 8 images; about 1.5% of them damaged in different ways."""
    coarse = {f"c{i}": [f"c{i}f{j}" for j in range(4)] for i in range(4)}
    make_manifest_world(root, coarse, per_class=8, ext="jpg")
    bad = ["images/c1/c1f2/5.jpg", "images/c3/c3f0/2.jpg"]
    corrupt(root / bad[0], "truncate")
    corrupt(root / bad[1], "text")
    return bad


def test_load_completes_and_lists_corrupt(tmp_path: Path) -> None:
    bad = _world(tmp_path / "m")
    p = load_dataset(DataConfig(sources=[{"type": "manifest", "root": str(tmp_path / "m")}], cache=False))
    assert len(p.table) == 126
    listed = sorted(Path(u["path"]).relative_to(tmp_path / "m").as_posix() for u in p.report["unreadable"])
    assert listed == bad


@pytest.mark.slow
def test_run_over_manifest_with_corrupt_images(tmp_path: Path) -> None:
    from ofgr_core.cli import app
    from ofgr_testing import REPO, tiny_overrides

    bad = _world(tmp_path / "m")
    overrides = [o for o in tiny_overrides(tmp_path / "unused") if not o.startswith("data.sources")]
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / "runs"),
            "--name", "corrupt", "-q", "--set", f"data.sources=[{{type: manifest, root: {tmp_path / 'm'}}}]"]
    for o in [*overrides, "eval.bootstrap=0", "eval.splits=[unseen]"]:  # the data path is under test here
        args += ["--set", o]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    report = json.loads((run_dir / "data_report.json").read_text())
    assert sorted(Path(u["path"]).name for u in report["unreadable"]) == sorted(Path(b).name for b in bad)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["n_unreadable"] == 2
