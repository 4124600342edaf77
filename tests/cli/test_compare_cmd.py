"""``ofgr compare`` on real run folders from the tiny synthetic world."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.reports.compare import compare_runs
from ofgr_core.retrieval.metrics import paired_bootstrap_test
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


def tiny_run(runs_dir: Path, data_root: Path, name: str, *extra: str) -> Path:
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(runs_dir), "--name", name, "-q"]
    for o in [*tiny_overrides(data_root), *extra]:
        args += ["--set", o]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return next(p for p in runs_dir.iterdir() if p.name.endswith(name))


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory, tiny_data_root: Path) -> tuple[Path, Path, Path]:
    runs_dir = tmp_path_factory.mktemp("cmp_runs")
    a = tiny_run(runs_dir, tiny_data_root, "base")
    b = tiny_run(runs_dir, tiny_data_root, "wide", "model.embed_dim=16", "train.epochs=2")
    c = tiny_run(runs_dir, tiny_data_root, "othersplit", "seed=1")
    return a, b, c


def test_table_fits_80_columns_and_names_every_run(three_runs: tuple[Path, Path, Path]) -> None:
    a, b, _ = three_runs
    result = runner.invoke(app, ["compare", str(a), str(b), "--resamples", "500"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(a.name in line for line in lines) and any(b.name in line for line in lines)
    for section in ("image→image · unseen", "image→image · seen", "coarse-first · unseen"):
        assert section in result.stdout
    assert "fine R@1" in result.stdout and "coarse MAP@R" in result.stdout
    assert "Holm-Bonferroni" in result.stdout
    # the baseline's unseen fine R@1 with its CI, as metrics.json has it
    m = json.loads((a / "metrics.json").read_text())["unseen"]
    lo, hi = m["ci95"]["fine"]["recall@1"]
    assert f"{100 * m['fine']['recall@1']:.1f}±{100 * (hi - lo) / 2:.1f}" in result.stdout
    wide = runner.invoke(app, ["compare", str(a), str(b), "--resamples", "500"], env={"COLUMNS": "160"})
    header = next(line for line in wide.stdout.splitlines() if "fit time" in line)
    assert "peak RSS" in header or "device" in header  # wider terminals show more cost columns
    assert max(len(line) for line in wide.stdout.splitlines()) <= 160


def test_json_paired_test_matches_per_query_files(three_runs: tuple[Path, Path, Path]) -> None:
    a, b, _ = three_runs
    result = runner.invoke(app, ["compare", str(a), str(b), "--json", "--resamples", "800"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [r["run_id"] for r in doc["runs"]] == [a.name, b.name]
    row = next(r for r in doc["rows"] if (r["mode"], r["split"], r["level"], r["metric"])
               == ("image", "unseen", "fine", "recall@1"))
    test = row["runs"][1]["test"]
    # naive reference: the paired test straight from the per-query files, matched by query id
    za, zb = np.load(a / "eval" / "per_query_unseen.npz"), np.load(b / "eval" / "per_query_unseen.npz")
    assert np.array_equal(za["ids"], zb["ids"])  # same split, same query order: paired row by row
    oa = ob = np.arange(len(za["ids"]))
    ref = paired_bootstrap_test(zb["fine_recall@1"][ob], za["fine_recall@1"][oa], n_resamples=800, seed=0)
    assert test["delta"] == pytest.approx(ref.delta) and test["p_value"] == pytest.approx(ref.p_value)
    assert row["runs"][1]["delta"] == pytest.approx(row["runs"][1]["value"] - row["runs"][0]["value"])
    assert test["p_adjusted"] >= test["p_value"] and isinstance(test["survives"], bool)
    assert doc["significance"]["correction"].startswith("holm")
    assert doc["split_mismatch"] == []


def test_same_run_twice_has_zero_delta_and_p_one(three_runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    a = three_runs[0]
    copy = shutil.copytree(a, tmp_path / (a.name + "-copy"))
    c = compare_runs([a, copy], n_resamples=300)
    row = c.row("unseen", "fine", "map@r")
    assert row is not None and row.tests[1] is not None
    assert row.tests[1].delta == 0.0 and row.tests[1].p_value == 1.0 and not row.tests[1].survives


def test_mismatched_split_warns_loudly_and_skips_paired_tests(three_runs: tuple[Path, Path, Path]) -> None:
    a, _, c = three_runs
    result = runner.invoke(app, ["compare", str(a), str(c), "--resamples", "200"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.stderr and "different split" in result.stderr
    doc = json.loads(runner.invoke(app, ["compare", str(a), str(c), "--json", "--resamples", "200"]).stdout)
    assert doc["split_mismatch"] == [c.name]
    assert all(r["runs"][1]["test"] is None for r in doc["rows"])


def test_csv_and_markdown_carry_the_same_numbers(three_runs: tuple[Path, Path, Path]) -> None:
    a, b, _ = three_runs
    args = ["compare", str(a), str(b), "--resamples", "300", "--runs-dir", str(a.parent)]
    doc = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, [*args, "--csv"]).stdout)))
    assert len(rows) == 2 * len(doc["rows"])
    first = rows[0]
    assert first["run_id"] == a.name and float(first["value"]) == pytest.approx(doc["rows"][0]["runs"][0]["value"])
    md = runner.invoke(app, [*args, "--markdown"]).stdout
    assert f"`{a.name}`" in md and "| fine R@1 |" in md and "**Cost per run**" in md
    # ids and 'latest' resolve through --runs-dir too
    assert runner.invoke(app, ["compare", a.name, "latest", "--json", "--runs-dir", str(a.parent),
                               "--resamples", "100"]).exit_code == 0


def test_bad_input_is_one_line(three_runs: tuple[Path, Path, Path]) -> None:
    a = three_runs[0]
    r = runner.invoke(app, ["compare", str(a), "no-such-run", "--runs-dir", str(a.parent)])
    assert r.exit_code == 5 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["compare", str(a), str(a)])
    assert r.exit_code != 0 and "twice" in r.stderr
