"""The TUI's side of the query worker process (``ofgr_tui.query_worker``). No Textual here.

One long-lived child per app, started on the first query and stopped when the app exits. Requests are
serialised (one at a time); if the child dies, the next query starts a new one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ofgr_core.common.errors import OfgrError


class QueryFailed(OfgrError):
    """The query engine answered with an error (its one-line message)."""


def to_namespace(d: dict[str, Any]) -> SimpleNamespace:
    """A reply's result as attributes (``r.results[0].path``), whatever fields the engine adds."""
    ns = SimpleNamespace(**{k: v for k, v in d.items() if k != "results"})
    ns.results = [SimpleNamespace(**h) for h in d.get("results", [])]
    return ns


class QueryClient:
    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._log = Path(tempfile.gettempdir()) / f"ofgr-tui-query-{os.getpid()}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                [self.python, "-m", "ofgr_tui.query_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,  # never our terminal: Textual owns it
                text=True,
                bufsize=1,
                start_new_session=True,  # Ctrl-C in the TUI is the TUI's, not the worker's
            )
        return self._proc

    def query(self, **request: Any) -> SimpleNamespace:
        """Run one query in the worker; raises :class:`QueryFailed` with the engine's one-line error."""
        return to_namespace(self._ask(request))

    def supports_text(self, run_dir: str) -> bool:
        """``ofgr_core.retrieval.query.run_supports_text`` asked in the worker (it inspects the model family)."""
        return bool(self._ask({"op": "supports_text", "run_dir": run_dir}))

    def _ask(self, request: dict[str, Any]) -> Any:
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                self._proc = None
                raise QueryFailed(f"the query worker exited (log: {self._log})")
        reply = json.loads(line)
        if "error" in reply:
            raise QueryFailed(reply["error"])
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
