"""``ofgr report``: the folder is complete, its figures are real images, its links resolve."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


@pytest.fixture(scope="module")
def second_run(tmp_path_factory: pytest.TempPathFactory, tiny_data_root: Path, finished_run: Path) -> Path:
    runs_dir = tmp_path_factory.mktemp("report_runs")
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(runs_dir), "--name", "other", "-q"]
    for o in [*tiny_overrides(tiny_data_root), "model.embed_dim=16", "train.epochs=2"]:
        args += ["--set", o]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return next(runs_dir.iterdir())


def _links(md: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", md)


def _assert_nontrivial_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape[0] > 100 and a.shape[1] > 100, path
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 8, f"{path.name} is nearly blank"
    assert (a < 200).any(axis=2).mean() > 0.005, f"{path.name} has almost no ink"


def test_report_folder_for_two_runs(finished_run: Path, second_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    r = runner.invoke(app, ["report", str(finished_run), str(second_run), "-o", str(out), "--tsne-points", "200",
                            "--resamples", "500"])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    for f in ("metrics.csv", "per_class.csv", "compute.csv", "training.csv", "coarse_first.csv", "comparison.csv"):
        assert (out / f).is_file(), f
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {"recall_at_k.png", "comparison.png", "A_tsne.png", "B_tsne.png", "A_per_class.png",
            "A_training.png", "B_training.png"} <= figs
    for p in (out / "figures").iterdir():
        _assert_nontrivial_png(p)
    links = _links(md)
    assert len(links) >= 10
    for link in links:
        assert not link.startswith(("/", "http")), f"{link}: links must be relative"
        assert (out / link).is_file(), f"report.md links to missing {link}"
    assert {f"figures/{f}" for f in figs} <= set(links)  # every figure is shown
    # what was run, results, comparison
    for text in (finished_run.name, second_run.name, "Resolved config", "**Environment**", "**Split**",
                 "Coarse-first vs flat", "image→image · unseen", "Holm-Bonferroni", "Cost per run"):
        assert text in md, text
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    m = json.loads((finished_run / "metrics.json").read_text())
    r1 = next(x for x in rows if x["run_id"] == finished_run.name and x["split"] == "unseen"
              and x["level"] == "fine" and x["metric"] == "recall@1")
    assert float(r1["value"]) == pytest.approx(m["unseen"]["fine"]["recall@1"])


def test_report_for_one_run_and_bad_output(finished_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    r = runner.invoke(app, ["report", str(finished_run), "-o", str(out), "--no-tsne"])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    assert "## Comparison" not in md and not (out / "comparison.csv").exists()
    assert all((out / link).is_file() for link in _links(md))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    r = runner.invoke(app, ["report", str(finished_run), "-o", str(blocker)])
    assert r.exit_code != 0 and "not a folder" in r.stderr
    r = runner.invoke(app, ["report", str(finished_run), "-o", str(finished_run)])
    assert r.exit_code != 0 and "run folder" in r.stderr
