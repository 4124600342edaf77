"""Corrupted run files: one bad run never breaks a listing; each reader gives one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ConfigError, ExitCode, NotFoundError
from ofgr_core.runs.folder import check_split_name
from ofgr_core.runs.state import resolve_run

runner = CliRunner()


def _copy(finished_run: Path, runs_dir: Path, name: str) -> Path:
    d = runs_dir / name
    shutil.copytree(finished_run, d)
    return d


CORRUPTIONS = {
    "nul_bytes": lambda d: (d / "events.jsonl").write_bytes(b'{"type": "run_started", "time": 1, "pid":\x00\x00}\n'
                                                            + (d / "events.jsonl").read_bytes()),
    "latin1_events": lambda d: (d / "events.jsonl").write_bytes(b'{"type": "log", "message": "\xe9"}\n'),
    "pid_text": lambda d: (d / "events.jsonl").write_text(
        json.dumps({"type": "run_started", "time": 5.0, "run_id": "x", "name": "x", "pid": "abc", "host": "h"}) + "\n"),
    "time_text": lambda d: (d / "events.jsonl").write_text('{"type": "run_started", "time": "yesterday"}\n'),
    "metrics_list": lambda d: (d / "metrics.json").write_text("[1, 2, 3]"),
    "metrics_wrong_leaf": lambda d: (d / "metrics.json").write_text('{"unseen": {"fine": "high"}, "timings": 3}'),
    "metrics_binary": lambda d: (d / "metrics.json").write_bytes(b"\xff\xfe\x00garbage"),
    "config_bomb": lambda d: (d / "config.yaml").write_text(
        "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))),
    "config_list": lambda d: (d / "config.yaml").write_text("- 1\n- 2\n"),
    "config_dir": lambda d: ((d / "config.yaml").unlink(), (d / "config.yaml").mkdir()),
    "events_dir": lambda d: ((d / "events.jsonl").unlink(), (d / "events.jsonl").mkdir()),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_one_corrupt_run_never_breaks_the_listing(finished_run: Path, tmp_path: Path, kind: str) -> None:
    runs_dir = tmp_path / "runs"
    good = _copy(finished_run, runs_dir, "good")
    bad = _copy(finished_run, runs_dir, "bad")
    CORRUPTIONS[kind](bad)
    r = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir), "--json"])
    assert r.exit_code == 0, r.output
    listed = {x["run_id"]: x for x in json.loads(r.stdout)}
    assert set(listed) == {"good", "bad"} and listed["good"]["status"] == "finished"
    r = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir)], env={"COLUMNS": "300"})
    assert r.exit_code == 0 and "good" in r.output and "bad" in r.output
    r = runner.invoke(app, ["show", str(bad)])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output and r.exit_code in (0, ExitCode.DATA, ExitCode.NOT_FOUND), r.output
    assert runner.invoke(app, ["show", str(good)]).exit_code == 0
    del good


def test_latest_is_newest_by_start_time_not_name(finished_run: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    old = _copy(finished_run, runs_dir, "zz-old-but-last-by-name")
    new = _copy(finished_run, runs_dir, "aa-newest")
    for d, t in ((old, 1000.0), (new, time.time())):
        lines = (d / "events.jsonl").read_text().splitlines()
        first = json.loads(lines[0]) | {"time": t}
        (d / "events.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    os.symlink(old, runs_dir / "zzz-symlink")
    assert resolve_run("latest", runs_dir).name == "aa-newest"


@pytest.mark.parametrize("ref", ["", "   ", "\x00"])
def test_empty_run_reference_is_refused(finished_run: Path, ref: str) -> None:
    with pytest.raises(NotFoundError):
        resolve_run(ref, finished_run.parent)


@pytest.mark.parametrize("split", ["../../../x", "../embeddings/unseen", "/etc", "a/b", "", "unseen\x00"])
def test_split_names_are_not_paths(finished_run: Path, split: str) -> None:
    with pytest.raises(ConfigError):
        check_split_name(split)
    r = runner.invoke(app, ["query", str(finished_run), "--split", split, "--id", "x"])
    assert r.exit_code == ExitCode.CONFIG
    r = runner.invoke(app, ["index", "build", str(finished_run), "--split", split])
    assert r.exit_code == ExitCode.CONFIG
    assert not (finished_run / "embeddings" / "index").exists()
