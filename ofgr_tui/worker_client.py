"""The TUI's side of a worker process (``ofgr_tui.worker``). No Textual here.

A client starts its child on the first request and stops it when the app exits; requests are serialised (one
at a time) and, if the child dies, the next request starts a new one. The child's stderr is kept in memory
(its last lines name the cause when it dies): no log file is left behind.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import IO, Any

from ofgr_core.common.errors import OfgrError

STDERR_LINES = 20


class WorkerFailed(OfgrError):
    """The worker answered with an error (its one-line message), or died."""


def to_namespace(d: dict[str, Any]) -> SimpleNamespace:
    """A query reply as attributes (``r.results[0].path``), whatever fields the engine adds."""
    ns = SimpleNamespace(**{k: v for k, v in d.items() if k != "results"})
    ns.results = [SimpleNamespace(**h) for h in d.get("results", [])]
    return ns


class WorkerClient:
    def __init__(self, python: str = sys.executable, name: str = "worker") -> None:
        self.python = python
        self.name = name
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stderr.clear()
        self._proc = subprocess.Popen(
            [self.python, "-m", "ofgr_tui.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # never our terminal: Textual owns it
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C in the TUI is the TUI's, not the worker's
        )
        assert self._proc.stderr is not None
        threading.Thread(target=self._drain, args=(self._proc.stderr,), daemon=True).start()
        return self._proc

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            if line.strip():
                self._stderr.append(line.rstrip())

    def stderr_tail(self) -> str:
        return next((ln for ln in reversed(self._stderr) if ln.strip()), "")

    def query(self, **request: Any) -> SimpleNamespace:
        """Run one query; raises :class:`WorkerFailed` with the engine's one-line error."""
        return to_namespace(self.ask({"op": "query", **request}))

    def supports_text(self, run_dir: str) -> bool:
        """``ofgr_core.retrieval.query.run_supports_text`` asked in the worker (it inspects the model family)."""
        return bool(self.ask({"op": "supports_text", "run_dir": run_dir}))

    def ask(self, request: dict[str, Any], on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Send one request; progress lines go to ``on_progress``; returns the ``ok`` value."""
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
                while True:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    reply = json.loads(line)
                    if "progress" not in reply:
                        break
                    if on_progress is not None:
                        on_progress(reply["progress"])
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                self._proc = None
                proc.wait()
                why = self.stderr_tail()
                raise WorkerFailed(f"the {self.name} process exited (code {proc.returncode})"
                                   + (f": {why}" if why else ""))  # fmt: skip
        if "error" in reply:
            raise WorkerFailed(reply["error"])
        return reply["ok"]

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # the worker ends at end of input
            proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
