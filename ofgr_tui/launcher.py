"""Start ``ofgr run`` / ``ofgr resume`` as detached processes and find the run folder they create.

Runs must outlive the TUI and must never die because of it: each gets its own session (no SIGHUP or Ctrl-C
from our terminal), stdin from /dev/null and its output in a log file (never a pipe to us, so our exit cannot
SIGPIPE it). No Textual here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ofgr_core.runs.eventlog import read_events
from ofgr_core.runs.folder import RunFolder
from ofgr_core.runs.state import read_json

LOG_DIR = ".launch"  # inside the runs folder; not a run folder (no events.jsonl/config.yaml)


@dataclass
class Launch:
    """A process this TUI started."""

    pid: int
    process: subprocess.Popen[bytes]
    log_path: Path
    label: str
    started: float = field(default_factory=time.time)
    run_dir: Path | None = None
    reported: bool = False
    resumed: bool = False  # an ``ofgr resume`` of an existing run folder

    def exit_code(self) -> int | None:
        """Also reaps the child, so a finished run is not left as a zombie while the TUI is open."""
        return self.process.poll()

    def log_tail(self, n: int = 1) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])


def _spawn(args: list[str], runs_dir: Path, label: str, cwd: Path | None) -> Launch:
    log_dir = runs_dir / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)[:60]
    log_path = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return Launch(pid=proc.pid, process=proc, log_path=log_path, label=label)


def launch_run(
    config: str | os.PathLike[str],
    runs_dir: str | os.PathLike[str],
    overrides: list[str] | None = None,
    *,
    python: str = sys.executable,
    cwd: str | os.PathLike[str] | None = None,
) -> Launch:
    """``python -m ofgr_core.cli run CONFIG --runs-dir DIR --set k=v ...``, detached."""
    runs_dir = Path(runs_dir).absolute()
    args = [python, "-m", "ofgr_core.cli", "run", str(config), "--runs-dir", str(runs_dir), "--quiet"]
    for o in overrides or []:
        args += ["--set", o]
    return _spawn(args, runs_dir, Path(config).stem, Path(cwd) if cwd else None)


def resume_run(
    run_dir: str | os.PathLike[str],
    *,
    python: str = sys.executable,
    cwd: str | os.PathLike[str] | None = None,
) -> Launch:
    """``python -m ofgr_core.cli resume RUN``, detached; the run keeps its folder."""
    run_dir = Path(run_dir).absolute()
    args = [
        python,
        "-m",
        "ofgr_core.cli",
        "resume",
        str(run_dir),
        "--runs-dir",
        str(run_dir.parent),
        "--quiet",
    ]
    launch = _spawn(args, run_dir.parent, f"resume-{run_dir.name}", Path(cwd) if cwd else None)
    launch.run_dir = run_dir
    return launch


def run_pid(run_dir: Path) -> int | None:
    """The pid that owns a run folder: ``env.json`` (written first) or the ``run_started`` event."""
    env = read_json(RunFolder(run_dir).env)
    if isinstance(env, dict) and isinstance(env.get("pid"), int):
        return int(env["pid"])
    for ev in read_events(run_dir)[:3]:
        if ev.get("type") == "run_started" and isinstance(ev.get("pid"), int):
            return int(ev["pid"])
    return None


def parse_overrides(text: str) -> list[str]:
    """``a.b=1 c=x`` or one per line -> ["a.b=1", "c=x"]; shell-style quoting allowed."""
    import shlex

    try:
        parts = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"overrides: {e}") from None
    bad = [p for p in parts if "=" not in p]
    if bad:
        raise ValueError(f"overrides: expected KEY=VALUE, got {bad[0]!r}")
    return parts
