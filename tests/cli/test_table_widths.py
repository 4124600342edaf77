"""CLI tables fit 80 columns without breaking a run id; wider terminals show more columns."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.cli.tables import Column, fit_columns

runner = CliRunner()


def _lines(out: str) -> list[str]:
    return [line.rstrip() for line in out.splitlines()]


def test_runs_list_keeps_ids_whole(finished_run: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    long_id = "20261130-120000-resnet50_arcface_htriplet_stanford_cars"
    shutil.copytree(finished_run, runs_dir / long_id)
    shutil.copytree(finished_run, runs_dir / finished_run.name)
    for width in (60, 80):
        r = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir)], env={"COLUMNS": str(width)})
        assert r.exit_code == 0, r.output
        lines = _lines(r.stdout)
        assert max(len(line) for line in lines) <= max(width, len(long_id))
        assert any(long_id in line for line in lines), "the run id was broken across lines"
        assert any(finished_run.name in line for line in lines)
        assert sum(1 for line in lines if long_id in line or finished_run.name in line) == 2  # a line per run
    narrow = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir)], env={"COLUMNS": "80"}).stdout
    wide = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir)], env={"COLUMNS": "200"}).stdout
    assert "started" not in narrow and "started" in wide and "dataset" in wide
    assert sum(1 for line in _lines(narrow) if "finished" in line) == 2


def test_show_fits_80_columns(finished_run: Path) -> None:
    r = runner.invoke(app, ["show", str(finished_run)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert max(len(line) for line in _lines(r.stdout)) <= 80


def test_fit_columns_drops_least_important_first() -> None:
    cols = [Column("id", ["x" * 30]), Column("a", ["y" * 20], priority=1), Column("b", ["z" * 20], priority=2)]
    assert [c.header for c in fit_columns(cols, 200)] == ["id", "a", "b"]
    assert [c.header for c in fit_columns(cols, 60)] == ["id", "a"]
    assert [c.header for c in fit_columns(cols, 10)] == ["id"]  # priority 0 always stays


def test_models_table_fits_80_columns_with_whole_names() -> None:
    narrow = runner.invoke(app, ["models", "ViT-B-32"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    lines = _lines(narrow.stdout)
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("ViT-B-32") and "openai" in line for line in lines)  # arch and tag, whole
    wide = runner.invoke(app, ["models", "ViT-B-32"], env={"COLUMNS": "160"})
    assert "dim" in wide.stdout and "dim" not in narrow.stdout.split("\n", 2)[1]


def test_query_table_fits_80_columns(finished_run: Path) -> None:
    import csv

    with open(finished_run / "embeddings" / "unseen.csv", newline="") as f:
        first = next(csv.DictReader(f))
    args = ["query", str(finished_run), "--id", first["id"], "--k", "5"]
    narrow = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    lines = _lines(narrow.stdout)
    assert max(len(line) for line in lines) <= 80
    assert sum(1 for line in lines if line.lstrip()[:1].isdigit()) == 5  # one line per result
    wide = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert "path" in wide.stdout and "fine" in narrow.stdout and "path" not in narrow.stdout.splitlines()[1]
