"""The one-writer lock and the run state derived from events + the lock (issues 10 and 11)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ofgr_core.runs import lock as runlock
from ofgr_core.runs.events import RunFinished, RunInterrupted, RunStarted
from ofgr_core.runs.state import load_run, run_state

DEAD_PID = 2**22 + 12345
HOST = socket.gethostname()


def ev(e, t: float) -> dict:  # noqa: ANN001
    return e.to_dict() | {"time": t}


def started(pid: int, t: float, host: str = HOST) -> dict:
    return ev(RunStarted(run_id="r", name="demo", pid=pid, host=host), t)


def lock_of(pid: int, t: float, host: str = HOST) -> runlock.LockInfo:
    return runlock.LockInfo(pid=pid, host=host, started=t)


# ------------------------------------------------------------------------------------------- run_state
def test_resumed_run_is_running_not_interrupted():
    """The newest run_started opens a new attempt: an end event before it no longer decides."""
    events = [started(DEAD_PID, 1), ev(RunInterrupted(reason="stop"), 2), started(os.getpid(), 3)]
    assert run_state(events)[0] == "running"
    # ... and once the resumed attempt ends, its own end event decides
    events.append(ev(RunFinished(seconds=1, metrics_path="m"), 4))
    assert run_state(events)[0] == "finished"


def test_resumed_and_killed_run_is_stale_even_if_first_pid_lives():
    # the first attempt's pid is alive (it is us) but the newest attempt's writer is gone
    events = [started(os.getpid(), 1), ev(RunInterrupted(reason="stop"), 2), started(DEAD_PID, 3)]
    assert run_state(events)[0] == "stale"


def test_live_lock_taken_after_the_end_event_means_running():
    """A resume holds the lock before it writes run_started: the run is running from that moment."""
    events = [started(DEAD_PID, 1), ev(RunInterrupted(reason="stop"), 2)]
    assert run_state(events, lock_of(os.getpid(), 5))[0] == "running"
    # an older lock (the process wrote its end and is about to release) does not override the end event
    assert run_state(events, lock_of(os.getpid(), 1.5))[0] == "interrupted"


def test_dead_lock_holder_is_stale_and_says_why():
    status, reason = run_state([started(DEAD_PID, 1)], lock_of(DEAD_PID, 1))
    assert status == "stale" and str(DEAD_PID) in reason


def test_empty_event_log_is_stale_unless_a_live_process_holds_it():
    assert run_state([])[0] == "stale"
    assert run_state([], lock_of(os.getpid(), time.time()))[0] == "running"


def test_lock_on_another_host_uses_recency():
    now = time.time()
    lk = lock_of(1, now - 5, host="elsewhere")
    assert run_state([started(1, now - 5, "elsewhere")], lk, now=now)[0] == "running"
    assert run_state([started(1, now - 5, "elsewhere")], lk, now=now + 3600)[0] == "stale"


# ---------------------------------------------------------------------------------------- broken folders
def _folder(tmp_path: Path, events: list[dict], metrics: str | None = None, config: str = "name: demo\n"):
    d = tmp_path / "20260101-000000-demo"
    d.mkdir()
    (d / "config.yaml").write_text(config)
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if metrics is not None:
        (d / "metrics.json").write_text(metrics)
    return d


def test_truncated_metrics_is_broken_not_finished(tmp_path):
    d = _folder(tmp_path, [started(DEAD_PID, 1), ev(RunFinished(seconds=1, metrics_path="m"), 2)],
                metrics='{"unseen": {"fine": {"recall@1"')
    info = load_run(d)
    assert info.status == "broken" and "metrics.json" in info.reason and "truncated" in info.reason


def test_finished_without_metrics_is_broken(tmp_path):
    d = _folder(tmp_path, [started(DEAD_PID, 1), ev(RunFinished(seconds=1, metrics_path="m"), 2)])
    info = load_run(d)
    assert info.status == "broken" and "metrics.json is missing" in info.reason


def test_unreadable_config_and_garbage_events_are_broken(tmp_path):
    d = _folder(tmp_path, [], config="name: [unclosed\n")
    (d / "events.jsonl").write_bytes(b"\x00\xff\xfe garbage\n")
    info = load_run(d)
    assert info.status == "broken"
    assert "config.yaml" in info.reason and "invalid YAML" in info.reason and "no readable event" in info.reason


def test_corrupt_lock_is_broken_not_running(tmp_path):
    d = _folder(tmp_path, [started(DEAD_PID, 1)])
    (d / runlock.LOCK_FILE).write_text("{not json")
    info = load_run(d)
    assert info.status == "broken" and runlock.LOCK_FILE in info.reason


# ----------------------------------------------------------------------------------------------- lock
def test_lock_is_exclusive_and_released(tmp_path):
    with runlock.RunLock(tmp_path, "run") as held:
        assert runlock.read_lock(tmp_path) == held.info
        assert runlock.lock_alive(held.info) is True
        with pytest.raises(runlock.RunLockedError, match="already running"):
            runlock.RunLock(tmp_path, "resume").acquire()
    assert runlock.read_lock(tmp_path) is None


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / runlock.LOCK_FILE).write_text(json.dumps({"pid": DEAD_PID, "host": HOST, "started": 1.0}))
    lock = runlock.RunLock(tmp_path, "resume")
    lock.acquire()
    assert lock.took_over is not None and lock.took_over.pid == DEAD_PID
    assert runlock.read_lock(tmp_path).pid == os.getpid()
    lock.release()


def test_recycled_pid_is_not_taken_for_the_writer(tmp_path):
    # our own pid, but recorded with another process start time: the writer is gone
    info = runlock.current_lock_info()
    if info.proc_start is None:
        pytest.skip("no /proc")
    recycled = runlock.LockInfo(pid=info.pid, host=HOST, started=1.0, proc_start=info.proc_start + 1)
    assert runlock.lock_alive(recycled) is False


def test_lock_of_another_host_is_refused_not_taken(tmp_path):
    (tmp_path / runlock.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 1.0}))
    with pytest.raises(runlock.RunLockedError, match="another host"):
        runlock.RunLock(tmp_path).acquire()


def _take(run_dir: str, q) -> None:  # noqa: ANN001
    try:
        lock = runlock.RunLock(run_dir, "resume")
        lock.acquire()
        q.put("took")
        time.sleep(1.0)  # hold it while the others try
        lock.release()
    except runlock.RunLockedError:
        q.put("refused")


def test_racing_takers_of_a_stale_lock_only_one_wins(tmp_path):
    (tmp_path / runlock.LOCK_FILE).write_text(json.dumps({"pid": DEAD_PID, "host": HOST, "started": 1.0}))
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_take, args=(str(tmp_path), q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    outcomes = sorted(q.get(timeout=5) for _ in procs)
    assert outcomes == ["refused", "refused", "refused", "took"]


def test_lock_of_a_killed_process_is_stale(tmp_path):
    """A writer killed with SIGKILL leaves its lock; the status says stale and the next taker takes it."""
    code = (
        "import sys, time; from ofgr_core.runs.lock import RunLock\n"
        f"RunLock({str(tmp_path)!r}, 'run').acquire(); print('held', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        assert p.stdout.readline().strip() == "held"
        lk = runlock.read_lock(tmp_path)
        assert lk.pid == p.pid and runlock.lock_alive(lk)
        assert run_state([started(p.pid, 1)], lk)[0] == "running"
    finally:
        p.kill()
        p.wait()
    assert runlock.lock_alive(lk) is False
    assert run_state([started(p.pid, 1)], lk)[0] == "stale"
    with runlock.RunLock(tmp_path) as mine:
        assert mine.took_over == lk


def test_duration_of_a_vanished_run_ends_at_its_last_event(tmp_path):
    d = _folder(tmp_path, [started(DEAD_PID, 100.0), ev(RunInterrupted(reason="x"), 110.0) | {"type": "log"}])
    info = load_run(d)
    assert info.status == "stale" and info.duration == 10.0  # not "until now"
