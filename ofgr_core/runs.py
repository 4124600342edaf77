"""Run folders: creation, atomic writes, the append-only event log, and reading runs back.

This module is both sides of the contract in docs/run-folder.md: ``ofgr run`` writes through it and the
CLI listing and the TUI read through it. It imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ofgr_core.errors import ConfigError, NotFoundError
from ofgr_core.events import TERMINAL_TYPES, Event

CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.json"
SPLIT_FILE = "split.json"
DATA_REPORT_FILE = "data_report.json"
STOP_FILE = "stop"

STATUSES = ("running", "finished", "failed", "interrupted")
SPLIT_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class RunFolder:
    """Every path inside one run folder (docs/run-folder.md): the only place that joins them.

    Writers (the pipeline, ``ofgr run``) and readers (CLI, TUI, compare, query, t-SNE, tests) all go through
    this class, so the layout can change in one place. Split names are checked before they become part of a
    path: a ``--split ../x`` never reaches outside the folder.

    Args:
        path: the run folder (``RUNS_DIR/<run_id>``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def run_id(self) -> str:
        return self.path.name

    # files at the top level
    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def env(self) -> Path:
        return self.path / ENV_FILE

    @property
    def events(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def split(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def data_report(self) -> Path:
        return self.path / DATA_REPORT_FILE

    @property
    def stop_file(self) -> Path:
        return self.path / STOP_FILE

    # folders
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def embeddings_dir(self) -> Path:
        return self.path / "embeddings"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def cache_dir(self) -> Path:
        """Per-run derived data that can be recomputed (t-SNE projections)."""
        return self.path / "cache"

    def checkpoint(self, which: str) -> Path:
        """``best`` (selected on seen validation classes) or ``last`` (everything needed to resume)."""
        if which not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")
        return self.checkpoints / f"{which}.pt"

    def embeddings_npy(self, split: str) -> Path:
        return self.embeddings_dir / f"{check_split_name(split)}.npy"

    def embeddings_csv(self, split: str) -> Path:
        return self.embeddings_dir / f"{check_split_name(split)}.csv"

    def embedded_splits(self) -> list[str]:
        """Splits with stored embeddings, sorted."""
        return sorted(p.stem for p in self.embeddings_dir.glob("*.npy"))

    def per_query(self, split: str) -> Path:
        return self.eval_dir / f"per_query_{check_split_name(split)}.npz"

    def index_dir(self, split: str) -> Path:
        return self.path / "index" / check_split_name(split)

    def is_run(self) -> bool:
        return self.events.exists() or self.config.exists()


def check_split_name(split: str) -> str:
    """A split name as used in file names: letters, digits, ``_`` and ``-`` only."""
    if not split or not set(split) <= SPLIT_NAME_CHARS:
        raise ConfigError(f"split name {split!r}: use letters, digits, '_' or '-' (e.g. unseen, seen)")
    return split


# ------------------------------------------------------------------------------------------- writing
def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temp file in the same folder and ``os.replace``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy scalars/arrays
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def new_run_id(runs_dir: Path, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "run"
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    run_id, n = base, 1
    while (runs_dir / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def create_run_dir(runs_dir: str | os.PathLike[str], name: str) -> Path:
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        run_dir = runs_dir / new_run_id(runs_dir, name)
        try:
            run_dir.mkdir()
        except FileExistsError:  # another process took the id in the same second
            continue
        folder = RunFolder(run_dir)
        folder.checkpoints.mkdir()
        folder.embeddings_dir.mkdir()
        return run_dir
    raise RuntimeError(f"could not create a run folder in {runs_dir}")


class EventWriter:
    """Appends one JSON line per event and flushes it, so tails see each event as soon as it happens."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f = open(self.path, "a", buffering=1)  # noqa: SIM115  (closed in close())

    def write(self, event: Event | dict[str, Any]) -> None:
        obj = event.to_dict() if isinstance(event, Event) else event
        self._f.write(json.dumps(obj, default=_json_default) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- reading
class EventTail:
    """Incrementally reads ``events.jsonl``; a partially written last line is kept until it completes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when data ended with a newline
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a corrupt line (e.g. a crash mid-write followed by more writes) is skipped
            if isinstance(obj, dict) and "type" in obj:
                events.append(obj)
        return events


def read_events(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return EventTail(RunFolder(run_dir).events).read_new()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def status_from_events(events: list[dict[str, Any]], now: float | None = None) -> str:
    """Derive a run's status from its events alone (see docs/run-folder.md)."""
    for ev in reversed(events):
        t = ev.get("type")
        if t in TERMINAL_TYPES:
            return {"run_finished": "finished", "run_failed": "failed"}.get(t, "interrupted")
    started = next((e for e in events if e.get("type") == "run_started"), None)
    if started is None:
        return "interrupted" if events else "running"
    if started.get("host") == socket.gethostname():
        return "running" if _pid_alive(int(started.get("pid", -1))) else "interrupted"
    # another host: trust recent activity
    now = time.time() if now is None else now
    return "running" if now - float(events[-1].get("time", 0)) < 600 else "interrupted"


@dataclass
class RunInfo:
    """A summary of one run folder, cheap to compute (reads config, events, metrics)."""

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
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "path": str(self.path),
            "status": self.status,
            "name": self.name,
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "started": self.started,
            "duration": self.duration,
            "recall@1_unseen_fine": self.recall_at_1_unseen,
            "error": self.error,
        }


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if not folder.is_run():
        raise NotFoundError(f"{run_dir}: not a run folder (no {EVENTS_FILE} or {CONFIG_FILE})")
    try:
        config = yaml.safe_load(folder.config.read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        config = {}
    events = read_events(run_dir)
    metrics = read_json(folder.metrics)
    info = RunInfo(run_id=run_dir.name, path=run_dir, status=status_from_events(events), config=config)
    info.name = str(config.get("name", ""))
    model = config.get("model", {}) or {}
    info.model = f"{model.get('kind', '')}:{model.get('name', '')}".strip(":")
    sources = (config.get("data", {}) or {}).get("sources", []) or []
    info.dataset = "+".join(str(s.get("name") or s.get("type")) for s in sources if isinstance(s, dict))
    split = config.get("split", {}) or {}
    info.split = str(split.get("protocol", ""))
    if events:
        info.started = float(events[0].get("time", 0)) or None
        last = events[-1]
        if last.get("type") in TERMINAL_TYPES:
            info.ended = float(last.get("time", 0))
        if last.get("type") == "run_failed":
            info.error = last.get("error")
    if isinstance(metrics, dict):
        info.metrics = metrics
        with contextlib.suppress(KeyError, TypeError, ValueError):
            info.recall_at_1_unseen = float(metrics["unseen"]["fine"]["recall@1"])
    return info


def iter_runs(runs_dir: str | os.PathLike[str]) -> Iterator[RunInfo]:
    """Every run folder under ``runs_dir``, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return
    for d in sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        if RunFolder(d).is_run():
            yield load_run(d)


def resolve_run(ref: str, runs_dir: str | os.PathLike[str] = "runs") -> Path:
    """A run folder from a path, an exact run id, a unique id prefix/suffix, or ``latest``."""
    p = Path(ref)
    if p.is_dir() and RunFolder(p).is_run():
        return p
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise NotFoundError(f"run {ref!r} not found: {runs_dir} does not exist (use --runs-dir)")
    names = sorted(d.name for d in runs_dir.iterdir() if d.is_dir())
    if ref == "latest" and names:
        return runs_dir / names[-1]
    if ref in names:
        return runs_dir / ref
    matches = [n for n in names if n.startswith(ref) or n.endswith(ref)]
    if len(matches) == 1:
        return runs_dir / matches[0]
    if len(matches) > 1:
        raise NotFoundError(f"run {ref!r} is ambiguous in {runs_dir}: {', '.join(matches[:5])}")
    raise NotFoundError(f"run {ref!r} not found in {runs_dir} (`ofgr runs` lists them)")


def request_stop(run_dir: str | os.PathLike[str]) -> None:
    """Ask a running run to stop cleanly after the current step (it checkpoints and can be resumed)."""
    RunFolder(run_dir).stop_file.touch()
