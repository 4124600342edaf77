"""The append-only event log of a run (``events.jsonl``): writing, tailing and reading it back."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ofgr_core.common.diskspace import preallocate
from ofgr_core.common.errors import DiskError, OfgrError
from ofgr_core.common.textio import dumps_strict
from ofgr_core.runs.events import TERMINAL_TYPES, Event
from ofgr_core.runs.folder import RunFolder


class EventWriter:
    """Appends one JSON line per event with one ``write`` call, so tails see each event as it happens.

    A full disk must not lose how a run ended: the writer keeps a small preallocated reserve file next to the
    log, released to make room for the terminal event (``run_failed``/``run_interrupted``/``run_finished``) when
    a write fails with ENOSPC; if even that fails, the event goes to stderr as a last resort. Any other event
    that cannot be written raises :class:`~ofgr_core.common.errors.DiskError` (the run then fails, and says so).
    """

    RESERVE_BYTES = 256 << 10

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._reserve: Path | None = self.path.with_name(f".{self.path.name}.reserve")
        try:
            with open(self._reserve, "wb") as f:
                preallocate(f, self.RESERVE_BYTES, self._reserve, "event log reserve")
        except (OSError, OfgrError):
            self._release()

    def _raw_write(self, data: bytes) -> None:
        assert self._fd is not None, "EventWriter is closed"
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _release(self) -> bool:
        if self._reserve is None:
            return False
        with contextlib.suppress(OSError):
            self._reserve.unlink()
        self._reserve = None
        return True

    def write(self, event: Event | dict[str, Any]) -> None:
        obj = event.to_dict() if isinstance(event, Event) else event
        line = (dumps_strict(obj) + "\n").encode("utf-8")
        try:
            self._raw_write(line)
            return
        except OSError as e:
            failure = e
        if obj.get("type") in TERMINAL_TYPES:
            while True:  # free the reserve, then retry; a leading newline ends any partially written line
                released = self._release()
                try:
                    self._raw_write(b"\n" + line)
                    return
                except OSError as e:
                    failure = e
                if not released:
                    break
            sys.stderr.write(f"ofgr: cannot write {self.path} ({failure.strerror or failure}); "
                             f"this run's last event: {line.decode('utf-8')}")
            sys.stderr.flush()
            return
        raise DiskError(f"{self.path}: cannot append an event ({failure.strerror or failure}); "
                        "free some space, then `ofgr resume` the run") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._release()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        except FileNotFoundError:  # other OSErrors reach load_run, which lists the run as broken
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
            except (ValueError, RecursionError):  # JSON or UTF-8 errors, NUL bytes
                continue  # a corrupt line (e.g. a crash mid-write followed by more writes) is skipped
            event = _clean_event(obj)
            if event is not None:
                events.append(event)
        return events


def _clean_event(obj: Any) -> dict[str, Any] | None:
    """An event whose fields readers rely on have the right types, or None for a line that is not one.

    ``type`` must be a string and ``time`` a finite number; a ``pid`` that is not an integer becomes -1
    (unknown), so that one hand-edited or corrupted file never breaks a listing of the others.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None
    t = obj.get("time", 0.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t != t or t in (float("inf"), float("-inf")):
        return None
    if "pid" in obj and (isinstance(obj["pid"], bool) or not isinstance(obj["pid"], int)):
        obj["pid"] = -1
    for key in ("host", "error", "reason", "message"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], str):
            obj[key] = str(obj[key])
    from ofgr_core.runs.validate import event_problem

    if event_problem(obj) is not None:  # a train_epoch whose loss is "y": readers would fail on it
        return None
    return obj


def read_events(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every readable event of a run; an unreadable ``events.jsonl`` (a folder, no permission) reads as none
    (``load_run`` reports it as the reason the run is broken)."""
    try:
        return EventTail(RunFolder(run_dir).events).read_new()
    except OSError:
        return []
