"""One writer per run folder through the real CLI: a live run cannot be resumed a second time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ExitCode
from ofgr_core.runs import lock as runlock
from ofgr_core.runs.eventlog import read_events
from ofgr_core.runs.folder import EVENTS_FILE, METRICS_FILE
from ofgr_core.runs.state import load_run

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def _interrupted_copy(finished_run: Path, tmp_path: Path) -> Path:
    """The finished tiny run, turned back into one that was stopped after training (a resumable run)."""
    d = tmp_path / "runs" / finished_run.name
    shutil.copytree(finished_run, d)
    events = [e for e in read_events(d) if e["type"] != "run_finished"]
    events.append({"type": "run_interrupted", "time": events[-1]["time"] + 0.001, "reason": "stop"})
    (d / EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    (d / METRICS_FILE).unlink()
    return d


def test_a_finished_run_leaves_no_lock(finished_run):
    assert not (finished_run / runlock.LOCK_FILE).exists()
    assert load_run(finished_run).status == "finished"


def test_second_resume_of_a_live_run_is_refused(finished_run, tmp_path):
    run_dir = _interrupted_copy(finished_run, tmp_path)
    assert load_run(run_dir).status == "interrupted"
    # a resume in progress: another process holds the run's lock
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time; from ofgr_core.runs.lock import RunLock\n"
         f"RunLock({str(run_dir)!r}, 'resume').acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        info = load_run(run_dir)
        assert info.status == "running" and f"pid {holder.pid}" in info.reason
        events_before = (run_dir / EVENTS_FILE).read_bytes()
        r = runner.invoke(app, ["resume", str(run_dir), "-q"])
        assert r.exit_code != 0
        line = " ".join(r.output.split())
        assert "already running" in line and f"pid {holder.pid}" in line
        assert "Traceback" not in r.output
        # nothing was written into the run by the refused resume
        assert (run_dir / EVENTS_FILE).read_bytes() == events_before
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the run reads stale, and a resume takes the lock over and finishes
    assert load_run(run_dir).status == "interrupted"  # its last end event still decides
    r = runner.invoke(app, ["resume", str(run_dir), "-q"])
    assert r.exit_code == 0, r.output
    info = load_run(run_dir)
    assert info.status == "finished" and not (run_dir / runlock.LOCK_FILE).exists()
    starts = [e for e in read_events(run_dir) if e["type"] == "run_started"]
    assert len(starts) == 2  # the original and exactly one resume


def test_runs_of_a_missing_folder_is_an_error(tmp_path):
    r = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "nope")])
    assert r.exit_code == ExitCode.NOT_FOUND and "no such runs folder" in r.output
