"""Reading runs back: a run's state (running, finished, ...), its files, listing and resolving runs, stop requests."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofgr_core.common.errors import ConfigError, NotFoundError
from ofgr_core.common.textio import load_yaml
from ofgr_core.config import default_model_kind
from ofgr_core.runs.eventlog import EventTail
from ofgr_core.runs.events import TERMINAL_TYPES
from ofgr_core.runs.folder import CONFIG_FILE, EVENTS_FILE, METRICS_FILE, RunFolder
from ofgr_core.runs.lock import (
    LOCK_FILE,
    LockInfo,
    LockUnreadableError,
    lock_alive,
    lock_dict,
    pid_alive,
    read_lock,
)
from ofgr_core.runs.metrics import unseen_fine_recall_at_1

# running: a live process writes it; finished/failed/interrupted: its last attempt ended so; stale: no end
# event and no live writer (killed, power loss); broken: a file in it cannot be read (RunInfo.reason says which)
STATUSES = ("running", "finished", "failed", "interrupted", "stale", "broken")


STALE_AFTER = 600.0  # seconds without an event before a run held on another host is called stale


def run_state(
    events: list[dict[str, Any]],
    lock: LockInfo | None = None,
    *,
    now: float | None = None,
    host: str | None = None,
) -> tuple[str, str | None]:
    """A run's status and why, from its events and its current lock (the one rule every front end uses).

    The newest ``run_started`` opens the current attempt: an end event before it belongs to an earlier
    attempt (the run was resumed). Within the attempt, an end event decides (``finished``, ``failed``,
    ``interrupted``) unless a live lock was taken after it (a resume that has not written its start yet).
    Without an end event the run is ``running`` while its writer lives and ``stale`` once it is gone. The
    writer is the lock's holder, or for runs written before locks the ``run_started`` pid. On another host
    liveness cannot be checked: recent activity counts as running.

    Returns:
        ``(status, reason)``; ``reason`` says what the status rests on (``None`` when the end event says it).
    """
    host = socket.gethostname() if host is None else host
    now = time.time() if now is None else now
    last_start = max((i for i, e in enumerate(events) if e.get("type") == "run_started"), default=-1)
    attempt = events[last_start + 1 :] if last_start >= 0 else events
    end = next((e for e in reversed(attempt) if e.get("type") in TERMINAL_TYPES), None)
    last_time = _num(events[-1].get("time")) if events else None

    alive: bool | None = None
    if lock is not None:
        alive = lock_alive(lock) if lock.host == host else None
        if alive is None:  # another host: trust recent activity
            since = max(lock.started, last_time or 0.0)
            alive = now - since < STALE_AFTER
        if alive and (end is None or lock.started > (_num(end.get("time")) or 0.0)):
            return "running", f"written by {lock.describe()}"
    if end is not None:
        return _END_STATUS.get(str(end.get("type")), "interrupted"), None
    if lock is not None:
        return "stale", f"no end event and its writer is gone ({lock.describe()}); resumable"
    started = events[last_start] if last_start >= 0 else None
    if started is None:
        if not events:
            return "stale", "no events yet and no process holds the run"
        return "stale", "no run_started event and no process holds the run"
    pid = started.get("pid")
    pid_ok = isinstance(pid, int) and not isinstance(pid, bool)
    who = f"pid {pid} on {started.get('host')}"
    if started.get("host") == host:
        if pid_ok and isinstance(pid, int) and pid_alive(pid):
            return "running", f"written by {who}"
        return "stale", f"no end event and its writer is gone ({who}); resumable"
    if now - (last_time or 0.0) < STALE_AFTER:
        return "running", f"written by {who} (another host; last event {_ago(now - (last_time or 0.0))} ago)"
    return "stale", f"no end event, last event {_ago(now - (last_time or 0.0))} ago ({who}, another host)"


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


_END_STATUS = {"run_finished": "finished", "run_failed": "failed", "run_interrupted": "interrupted"}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def status_from_events(
    events: list[dict[str, Any]], lock: LockInfo | None = None, now: float | None = None
) -> str:
    """The status part of :func:`run_state`."""
    return run_state(events, lock, now=now)[0]


@dataclass
class RunInfo:
    """A summary of one run folder, cheap to compute (reads config, events, metrics, the lock).

    ``status`` is one of :data:`STATUSES`; ``reason`` says what it rests on (why a run is stale or broken,
    who writes a running one).
    """

    run_id: str
    path: Path
    status: str
    name: str = ""
    model: str = ""
    dataset: str = ""
    split: str = ""
    started: float | None = None
    ended: float | None = None
    recall_at_1_unseen: float | None = None
    error: str | None = None
    reason: str | None = None
    lock: LockInfo | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None

    last_event: float | None = None

    @property
    def duration(self) -> float | None:
        """Up to now while running; else to the end event, or to the last event of a run that vanished."""
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else (None if self.live else self.last_event)
        return (end if end is not None else time.time()) - self.started

    @property
    def live(self) -> bool:
        """A process writes this run now: it must not be resumed or deleted."""
        return self.status == "running"

    @property
    def model_label(self) -> str:
        """``model.name`` alone for the default family (the common case, ``model.kind`` may be left out),
        ``kind:name`` for the others; ``-`` when the config names no model."""
        kind, _, name = self.model.partition(":")
        if not name:
            return kind or "-"
        return name if kind == default_model_kind() else self.model

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "path": str(self.path),
            "status": self.status,
            "reason": self.reason,
            "name": self.name,
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "started": self.started,
            "duration": self.duration,
            "recall@1_unseen_fine": self.recall_at_1_unseen,
            "error": self.error,
            "lock": lock_dict(self.lock),
        }


def read_json(path: Path) -> Any | None:
    """A JSON file of a run folder, or None when it is missing or unreadable (readers tolerate both)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return None


def _read_config(path: Path) -> tuple[dict[str, Any], str | None]:
    """The run's config as a dict, or ``({}, why)`` when it is missing or unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, f"{CONFIG_FILE} is missing"
    except OSError as e:
        return {}, f"{CONFIG_FILE}: unreadable ({e.strerror or e})"
    try:
        obj = load_yaml(raw.decode("utf-8"), CONFIG_FILE)  # bounded: a YAML bomb is refused, not expanded
    except UnicodeDecodeError:
        return {}, f"{CONFIG_FILE}: not UTF-8 text"
    except ConfigError as e:
        return {}, str(e)
    if obj is None:
        return {}, f"{CONFIG_FILE} is empty"
    if not isinstance(obj, dict):
        return {}, f"{CONFIG_FILE}: expected a mapping, got {type(obj).__name__}"
    return obj, None


def _read_metrics(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """metrics.json checked against what readers use (``ofgr_core/runs/validate.py``): strict JSON (a NaN
    literal is damage), bounded depth, the expected types; anything else is a ``broken`` reason."""
    from ofgr_core.runs.validate import METRICS, read_run_json

    obj, why = read_run_json(path, METRICS)
    return (obj if isinstance(obj, dict) else None), why


def load_run(
    run_dir: str | os.PathLike[str], *, now: float | None = None, ours: LockInfo | None = None
) -> RunInfo:
    """Summarise one run folder. Never raises for a damaged folder: it is listed as ``broken`` with why.

    Args:
        run_dir: The run folder.
        now: The clock (tests).
        ours: The caller's own lock (``ofgr resume`` after taking it): not counted as another writer.

    Raises:
        NotFoundError: ``run_dir`` is not a run folder at all.
    """
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if not folder.is_run():
        raise NotFoundError(f"{run_dir}: not a run folder (no {EVENTS_FILE} or {CONFIG_FILE})")
    problems: list[str] = []
    config, why = _read_config(folder.config)
    tail = EventTail(folder.events)
    try:
        events = tail.read_new()
    except OSError as e:
        events = []
        problems.append(f"{EVENTS_FILE}: unreadable ({e.strerror or e})")
    if tail.offset and not events:
        problems.append(f"{EVENTS_FILE}: no readable event in {tail.offset} bytes")
    try:
        lock = read_lock(run_dir)
    except LockUnreadableError as e:
        lock = None
        problems.append(str(e).replace(str(run_dir / LOCK_FILE), LOCK_FILE))
    if lock is not None and lock == ours:
        lock = None
    metrics, metrics_problem = _read_metrics(folder.metrics)
    status, reason = run_state(events, lock, now=now)
    if why is not None and not (status == "running" and why.endswith("is missing")):
        problems.append(why)  # (a run that has just started may not have written its config yet)
    if status == "finished" and metrics is None and metrics_problem is None:
        metrics_problem = f"run_finished recorded but {METRICS_FILE} is missing"
    if metrics_problem is not None and status != "running":
        problems.append(metrics_problem)
    if problems and status != "running":
        status, reason = "broken", "; ".join(problems)
    info = RunInfo(run_id=run_dir.name, path=run_dir, status=status, reason=reason, lock=lock, config=config)
    info.name = str(config.get("name", ""))
    model = config.get("model", {})
    model = model if isinstance(model, dict) else {}
    info.model = f"{model.get('kind', '')}:{model.get('name', '')}".strip(":")
    data = config.get("data", {})
    sources = data.get("sources", []) if isinstance(data, dict) else []
    sources = sources if isinstance(sources, list) else []
    info.dataset = "+".join(str(s.get("name") or s.get("type")) for s in sources if isinstance(s, dict))
    split = config.get("split", {})
    info.split = str(split.get("protocol", "")) if isinstance(split, dict) else ""
    if events:
        info.started = _num(events[0].get("time")) or None
        last = events[-1]
        info.last_event = _num(last.get("time"))
        if last.get("type") in TERMINAL_TYPES:
            info.ended = _num(last.get("time"))
        if last.get("type") == "run_failed":
            info.error = str(last.get("error"))
    if metrics is not None:
        info.metrics = metrics
        info.recall_at_1_unseen = unseen_fine_recall_at_1(metrics)
    return info


def iter_runs(runs_dir: str | os.PathLike[str]) -> Iterator[RunInfo]:
    """Every run folder under ``runs_dir``, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return
    for d in sorted(_run_folders(runs_dir), key=_start_time, reverse=True):
        try:
            yield load_run(d)
        except Exception as e:  # noqa: BLE001  one unreadable run must never break the listing of the others
            yield RunInfo(run_id=d.name, path=d, status="broken",
                          reason=f"unreadable run folder ({type(e).__name__}: {str(e)[:200]})")


def _run_folders(runs_dir: Path) -> list[Path]:
    try:
        entries = list(runs_dir.iterdir())
    except OSError as e:
        raise NotFoundError(f"{runs_dir}: cannot list runs ({e.strerror or type(e).__name__})") from None
    out = []
    for d in entries:
        with contextlib.suppress(OSError):
            if d.is_dir() and RunFolder(d).is_run():
                out.append(d)
    return out


def _start_time(run_dir: Path) -> tuple[float, str]:
    """When a run started: its first event's time, else its config's modification time (then its name)."""
    try:
        with open(RunFolder(run_dir).events, "rb") as f:
            first = f.readline(65536)
        t = json.loads(first).get("time")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and t == t:
            return float(t), run_dir.name
    except (OSError, ValueError, AttributeError, RecursionError):
        pass
    try:
        return RunFolder(run_dir).config.stat().st_mtime, run_dir.name
    except OSError:
        return 0.0, run_dir.name


def resolve_run(ref: str, runs_dir: str | os.PathLike[str] = "runs") -> Path:
    """A run folder from a path, an exact run id, a unique id prefix/suffix, or ``latest``."""
    if not ref.strip() or "\x00" in ref:
        raise NotFoundError(f"run {ref!r}: give a run folder, id, unique prefix, or 'latest'")
    p = Path(ref)
    if p.is_dir() and RunFolder(p).is_run():
        return p
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise NotFoundError(f"run {ref!r} not found: {runs_dir} does not exist (use --runs-dir)")
    folders = _run_folders(runs_dir)
    names = sorted(d.name for d in folders)
    if ref == "latest" and folders:
        return max(folders, key=_start_time)  # newest by start time, not by name
    if ref in names:
        return runs_dir / ref
    matches = [n for n in names if n.startswith(ref) or n.endswith(ref)]
    if len(matches) == 1:
        return runs_dir / matches[0]
    if len(matches) > 1:
        raise NotFoundError(f"run {ref!r} is ambiguous in {runs_dir}: {', '.join(matches[:5])}")
    raise NotFoundError(f"run {ref!r} not found in {runs_dir} (`ofgr runs` lists them)")


def request_stop(run_dir: str | os.PathLike[str], reason: str = "") -> None:
    """Ask a running run to stop cleanly after the current step (it checkpoints and can be resumed).

    ``reason`` (e.g. ``SIGTERM received``) is written into the stop file and ends up in ``run_interrupted``.
    """
    RunFolder(run_dir).stop_file.write_text(reason)


def stop_reason(run_dir: str | os.PathLike[str]) -> str:
    """The reason written by :func:`request_stop` ("" when none or unreadable)."""
    try:
        return RunFolder(run_dir).stop_file.read_bytes()[:200].decode("utf-8", "replace").strip()
    except OSError:
        return ""
