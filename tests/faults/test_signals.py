"""SIGTERM is handled like SIGINT: the step finishes, is checkpointed, and `run_interrupted` names the signal;
a second signal exits at once. Real `ofgr run` processes, signalled while they train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ofgr_core.common.errors import ExitCode
from ofgr_core.runs.checkpoint import load_checkpoint
from ofgr_core.runs.eventlog import read_events
from ofgr_core.runs.folder import EVENTS_FILE
from ofgr_core.runs.state import load_run
from ofgr_testing import REPO, tiny_overrides


def _start(tmp_path: Path, data_root: Path) -> tuple[subprocess.Popen, Path]:
    runs_dir = tmp_path / "runs"
    args = [sys.executable, "-m", "ofgr_core.cli", "run", str(REPO / "configs" / "demo.yaml"),
            "--runs-dir", str(runs_dir), "-q"]
    for o in tiny_overrides(data_root) + ["train.epochs=50", "device=cpu"]:
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, runs_dir


def _wait_for_training(proc: subprocess.Popen, runs_dir: Path, timeout: float = 240) -> Path:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        for d in runs_dir.glob("*"):
            events = read_events(d)
            if sum(e["type"] == "train_step" for e in events) >= 2:
                return d
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the run never started training")


def test_sigterm_finishes_the_step_checkpoints_and_records_the_signal(tmp_path: Path, tiny_data_root: Path) -> None:
    proc, runs_dir = _start(tmp_path, tiny_data_root)
    run_dir = _wait_for_training(proc, runs_dir)
    proc.send_signal(signal.SIGTERM)
    out, errs = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.TERMINATED, errs.decode()
    assert b"Traceback" not in errs
    events = read_events(run_dir)
    last = events[-1]
    assert last["type"] == "run_interrupted" and "SIGTERM" in last["reason"], last
    assert load_run(run_dir).status == "interrupted"
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    steps = [e for e in events if e["type"] == "train_step"]
    # the checkpoint is at the step the signal let finish, not only at the last finished epoch
    assert (state["epoch"] + 1, state["step"]) >= (steps[-1]["epoch"], steps[-1]["step"])
    for line in (run_dir / EVENTS_FILE).read_text().splitlines():
        json.loads(line)


def test_second_signal_exits_at_once(tmp_path: Path, tiny_data_root: Path) -> None:
    proc, runs_dir = _start(tmp_path, tiny_data_root)
    run_dir = _wait_for_training(proc, runs_dir)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode in (ExitCode.TERMINATED, ExitCode.INTERRUPTED)
    reasons = [e["reason"] for e in read_events(run_dir) if e["type"] == "run_interrupted"]
    # both signals are pending together: the second handler exits without waiting for the step
    assert reasons and "exited at once" in reasons[-1], reasons
