"""Messages that cross screens: screens post them up, the app acts and hands attributes down.

Widget-local messages live in their widget. Frequent ones define ``can_replace`` so a busy queue keeps only
the newest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message

from ofgr_core.common.gpu import GpuSnapshot
from ofgr_core.runs.state import RunInfo

VIEWS = ("live", "results", "embeddings", "query")


@dataclass
class RunsScanned(Message):
    """A fresh listing of the runs folder (newest first). Posted every couple of seconds."""

    runs: list[RunInfo]
    error: str | None = None  # the runs folder itself cannot be listed (missing, not a folder, no access)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsScanned)


@dataclass
class GpuSampled(Message):
    """A new GPU snapshot (possibly empty, with a reason)."""

    snapshot: GpuSnapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSampled)


@dataclass
class OpenRun(Message):
    """Open one run in a view: ``live``, ``results``, ``embeddings`` or ``query``."""

    run_dir: Path
    view: str = "live"


@dataclass
class CompareRuns(Message):
    """Open the comparison of 2-4 runs (the first is the baseline)."""

    run_dirs: list[Path]


@dataclass
class LaunchRun(Message):
    """Start ``ofgr run CONFIG --set ...`` as a detached process."""

    config: Path
    overrides: list[str]


@dataclass
class RunLaunched(Message):
    """A launched process has created its run folder (or died first, with ``error``). For a resume: it has
    taken the run (its lock), or it ended (``exit_code``; non-zero: it failed, ``error`` says why)."""

    pid: int
    run_dir: Path | None
    error: str | None = None
    resumed: bool = False
    exit_code: int | None = None


@dataclass
class StopRun(Message):
    """Ask a run to stop cleanly (it checkpoints; ``ofgr resume`` continues it)."""

    run_dir: Path


@dataclass
class DeleteRun(Message):
    """Delete a run folder (after the user confirmed)."""

    run_dir: Path


@dataclass
class ResumeRun(Message):
    """Resume an interrupted run (``ofgr resume``) as a detached process."""

    run_dir: Path


@dataclass
class ComputeTsne(Message):
    """Project a run's stored embeddings (in the job worker; the app keeps the job if the screen is left)."""

    run_dir: Path
    max_points: int = 2000
    use_cache: bool = True


@dataclass
class WriteReport(Message):
    """Write the report of ``run_dirs`` into ``out`` (in the job worker)."""

    run_dirs: list[Path]
    out: Path


@dataclass
class JobUpdated(Message):
    """A job of the app (``OfgrApp.jobs[(kind, key)]``) has progressed or ended."""

    kind: str
    key: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobUpdated) and (message.kind, message.key) == (self.kind, self.key)
