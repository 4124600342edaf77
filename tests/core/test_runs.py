import json
import os
import socket
import time
from pathlib import Path

import pytest

from ofgr_core.common.atomic import atomic_write_json
from ofgr_core.common.errors import ConfigError, NotFoundError
from ofgr_core.runs.eventlog import EventTail, EventWriter
from ofgr_core.runs.events import Log, RunFailed, RunFinished, RunStarted, StageStarted
from ofgr_core.runs.folder import RunFolder, create_run_dir
from ofgr_core.runs.state import iter_runs, resolve_run, run_state, status_from_events


def started(pid: int, host: str | None = None) -> RunStarted:
    return RunStarted(run_id="r", name="demo", pid=pid, host=host or socket.gethostname())


def test_atomic_write_never_leaves_temp(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_create_run_dir_unique(tmp_path):
    a = create_run_dir(tmp_path, "demo")
    b = create_run_dir(tmp_path, "demo")
    assert a != b and (a / "checkpoints").is_dir() and (b / "embeddings").is_dir()
    assert a.name.endswith("demo")


def test_event_tail_tolerates_partial_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []  # file not there yet
    with open(path, "w") as f:
        f.write(json.dumps(Log("one").to_dict()) + "\n")
        f.write('{"type": "log", "message": "tw')  # a writer mid-line
    assert [e["message"] for e in tail.read_new()] == ["one"]
    with open(path, "a") as f:
        f.write('o", "level": "info", "time": 1}\n')
    assert [e["message"] for e in tail.read_new()] == ["two"]
    assert tail.read_new() == []


def test_event_tail_skips_garbage_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('not json\n{"type": "log", "message": "ok", "time": 1}\n')
    assert [e["message"] for e in EventTail(path).read_new()] == ["ok"]


@pytest.mark.parametrize(
    ("tail_events", "expected"),
    [
        ([RunFinished(seconds=1, metrics_path="m")], "finished"),
        ([RunFailed(error="boom")], "failed"),
    ],
)
def test_status_terminal(tail_events, expected):
    events = [started(os.getpid()).to_dict()] + [e.to_dict() for e in tail_events]
    assert status_from_events(events) == expected


def test_status_running_vs_stale_by_pid():
    alive = [started(os.getpid()).to_dict(), StageStarted(stage="train").to_dict()]
    assert status_from_events(alive) == "running"
    dead = [started(2**22 + 12345).to_dict()]
    status, reason = run_state(dead)
    assert status == "stale" and "gone" in reason


def test_status_other_host_uses_recency():
    now = time.time()
    ev = [started(1, host="elsewhere").to_dict() | {"time": now - 5}]
    assert status_from_events(ev, now=now) == "running"
    assert status_from_events(ev, now=now + 3600) == "stale"


def write_run(root, name, events, metrics=None):
    d = root / name
    d.mkdir()
    (d / "config.yaml").write_text("name: demo\nmodel: {kind: timm, name: resnet18}\n"
                                   "data: {sources: [{type: synthetic}]}\nsplit: {protocol: random}\n")
    with EventWriter(d / "events.jsonl") as w:
        for e in events:
            w.write(e)
    if metrics is not None:
        atomic_write_json(d / "metrics.json", metrics)
    return d


def test_load_and_iter_runs(tmp_path):
    metrics = {"unseen": {"fine": {"recall@1": 0.42}}}
    write_run(tmp_path, "20260101-000000-a", [started(os.getpid()), RunFinished(seconds=2, metrics_path="m")],
              metrics)
    write_run(tmp_path, "20260102-000000-b", [started(os.getpid()), RunFailed(error="bad data")])
    infos = list(iter_runs(tmp_path))
    assert [i.run_id for i in infos] == ["20260102-000000-b", "20260101-000000-a"]  # newest first
    b, a = infos
    assert a.status == "finished" and a.recall_at_1_unseen == pytest.approx(0.42)
    assert a.model == "timm:resnet18" and a.dataset == "synthetic" and a.split == "random"
    assert b.status == "failed" and b.error == "bad data"


def test_resolve_run(tmp_path):
    write_run(tmp_path, "20260101-000000-a", [started(1)])
    write_run(tmp_path, "20260102-000000-b", [started(1)])
    assert resolve_run("latest", tmp_path).name == "20260102-000000-b"
    assert resolve_run("20260101", tmp_path).name == "20260101-000000-a"
    assert resolve_run("-b", tmp_path).name == "20260102-000000-b"
    with pytest.raises(NotFoundError, match="ambiguous"):
        resolve_run("2026", tmp_path)
    with pytest.raises(NotFoundError, match="not found"):
        resolve_run("nope", tmp_path)


def test_run_folder_owns_the_layout_and_refuses_escaping_split_names(tmp_path: Path) -> None:
    d = create_run_dir(tmp_path, "x")
    folder = RunFolder(d)
    assert folder.checkpoints.is_dir() and folder.embeddings_dir.is_dir()
    assert folder.embeddings_npy("unseen") == d / "embeddings" / "unseen.npy"
    assert folder.per_query("seen") == d / "eval" / "per_query_seen.npz"
    assert folder.checkpoint("best") == d / "checkpoints" / "best.pt"
    assert folder.index_dir("unseen") == d / "index" / "unseen"
    for bad in ("../x", "a/b", "", "..", "x y"):
        with pytest.raises(ConfigError, match="split name"):
            folder.embeddings_npy(bad)
    with pytest.raises(ValueError):
        folder.checkpoint("../best")


def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
