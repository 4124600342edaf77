"""``ofgr bench``: a tiny suite runs in order, resumes after an interruption without rerunning finished runs,
then writes the comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ConfigError, NotFoundError
from ofgr_core.runs.folder import RunFolder
from ofgr_core.runs.state import load_run
from ofgr_core.workflows.bench import load_suite, run_suite
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


def _suite(tmp_path: Path, data_root: Path) -> Path:
    tiny = [o for o in tiny_overrides(data_root) if not o.startswith("data.sources.0.root")]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny",
        "description": "two tiny runs",
        "data": {0: data_root.name},
        "set": tiny,
        "runs": [
            {"name": "first", "config": str(REPO / "configs" / "demo.yaml")},
            {"name": "second", "config": str(REPO / "configs" / "demo.yaml"), "set": ["train.epochs=2"]},
        ],
    }))
    return path


def test_suite_resumes_after_interruption_without_rerunning_finished_runs(tmp_path: Path,
                                                                           tiny_data_root: Path) -> None:
    suite = load_suite(_suite(tmp_path, tiny_data_root))
    runs_dir = tmp_path / "bench"
    seen_runs: list[str] = []

    def interrupt_second(ev: object) -> None:
        if getattr(ev, "type", "") == "run_started":
            seen_runs.append(ev.name)  # type: ignore[attr-defined]
        if getattr(ev, "type", "") == "train_epoch" and seen_runs[-1] == "second":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, runs_dir, data_root=tiny_data_root.parent, emit=interrupt_second)
    state = json.loads((runs_dir / "bench.json").read_text())
    first_dir = runs_dir / state["runs"]["first"]
    second_dir = runs_dir / state["runs"]["second"]
    assert load_run(first_dir).status == "finished"
    assert load_run(second_dir).status == "interrupted"
    first_events = RunFolder(first_dir).events.read_bytes()
    assert seen_runs == ["first", "second"]

    # second invocation, through the CLI: first is skipped, second completes, the report is written
    r = runner.invoke(app, ["bench", str(suite.path), "--runs-dir", str(runs_dir), "--data-root",
                            str(tiny_data_root.parent), "-q"])
    assert r.exit_code == 0, r.output
    assert "skipped 1" in r.stderr and ("resumed 1" in r.stderr or "ran 1" in r.stderr)
    assert RunFolder(first_dir).events.read_bytes() == first_events  # not rerun
    state = json.loads((runs_dir / "bench.json").read_text())
    assert state["runs"]["first"] == first_dir.name
    finished = [d for d in runs_dir.iterdir() if d.is_dir() and RunFolder(d).metrics.is_file()]
    assert len(finished) == 2
    assert RunFolder(runs_dir / state["runs"]["second"]).metrics.is_file()
    md = (runs_dir / "report" / "report.md").read_text()
    assert first_dir.name in md and state["runs"]["second"] in md and "## Comparison" in md
    # the data root of the suite was applied
    cfg = yaml.safe_load(RunFolder(first_dir).config.read_text())
    assert cfg["data"]["sources"][0]["root"] == str(tiny_data_root)

    # a third invocation runs nothing
    r = runner.invoke(app, ["bench", str(suite.path), "--runs-dir", str(runs_dir), "--data-root",
                            str(tiny_data_root.parent), "-q", "--no-report"])
    assert r.exit_code == 0 and "skipped 2" in r.stderr


def test_shipped_suites_load_and_name_their_configs() -> None:
    for name in ("demo", "study", "merged"):
        suite = load_suite(name)
        assert suite.runs and suite.path.parent.name == "benchmarks"
    study = load_suite("study")
    assert [r.config.name for r in study.runs] == ["resnet50_arcface_htriplet.yaml",
                                                   "efficientnet_b0_arcface_htriplet.yaml", "clip_vitb32_head.yaml"]
    assert not load_suite("demo").missing_configs()


def test_bad_suites_get_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="known: .*demo"):
        load_suite("no-such-suite")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nruns: [{name: a, config: c.yaml, sets: []}]\n")
    with pytest.raises(ConfigError, match="unknown key 'sets'"):
        load_suite(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\nruns: [{name: a, config: nowhere.yaml}]\n")
    with pytest.raises(ConfigError, match="nowhere.yaml of run 'a' not found"):
        run_suite(load_suite(missing), tmp_path / "r")
    r = runner.invoke(app, ["bench", str(missing), "--runs-dir", str(tmp_path / "r")])
    assert r.exit_code == 3 and "not found" in r.stderr
