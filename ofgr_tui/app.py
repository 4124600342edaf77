"""``ofgr-tui``: the Textual workbench over a runs folder.

The app owns the runs-folder scan, launching/stopping/deleting runs, the jobs that outlive a screen (t-SNE
projections, reports) and routing between screens; screens post messages (``ofgr_tui.messages``) up to it and
it hands data down as attributes. Nothing here imports torch, faiss, scikit-learn or matplotlib: queries, t-SNE
and reports run in worker processes (``ofgr_tui.worker``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.worker import Worker, WorkerState

from ofgr_core.common.errors import OfgrError
from ofgr_core.common.gpu import GpuSnapshot
from ofgr_core.runs.folder import RunFolder
from ofgr_core.runs.lock import LOCK_FILE
from ofgr_core.runs.state import RunInfo, load_run, request_stop
from ofgr_tui import launcher
from ofgr_tui.livestate import stop_note
from ofgr_tui.messages import (
    CompareRuns,
    ComputeTsne,
    DeleteRun,
    JobUpdated,
    LaunchRun,
    OpenRun,
    ResumeRun,
    RunLaunched,
    RunsScanned,
    StopRun,
    WriteReport,
)
from ofgr_tui.screens.help import HelpScreen
from ofgr_tui.screens.runs import RunsScreen
from ofgr_tui.worker_client import WorkerClient, WorkerFailed


@dataclass
class Job:
    """A t-SNE or a report computed in the job worker for a screen that may be left and opened again.

    ``progress`` is the worker's latest progress line (``done``/``total`` iterations, or ``stage``).
    """

    kind: str  # "tsne" | "report"
    key: str  # the run folder (t-SNE) or the output folder (report)
    started: float = field(default_factory=time.monotonic)
    progress: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class RunCache:
    """``load_run`` results reused while a run's files are unchanged (a long run's log can be large)."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[float, ...], float, RunInfo]] = {}

    @staticmethod
    def _signature(run_dir: Path) -> tuple[float, ...]:
        sig: list[float] = []
        folder = RunFolder(run_dir)
        for path in (folder.events, folder.metrics, folder.config, folder.path / LOCK_FILE):
            try:
                st = path.stat()
                sig += [st.st_mtime_ns, st.st_size]
            except OSError:
                sig += [0, -1]
        return tuple(sig)

    def scan(self, runs_dir: Path, now: float) -> tuple[list[RunInfo], str | None]:
        """Every run folder, newest first, and why the folder itself cannot be listed (else ``None``)."""
        try:
            dirs = sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
        except FileNotFoundError:
            self._seen.clear()
            return [], (
                f"The runs folder {runs_dir} does not exist. Start a run (n, or `ofgr run CONFIG "
                f"--runs-dir {runs_dir}`) to create it, or restart with the right --runs-dir."
            )
        except NotADirectoryError:
            return [], f"{runs_dir} is a file, not a runs folder: restart with the right --runs-dir."
        except OSError as e:
            return [], f"The runs folder {runs_dir} cannot be read ({e.strerror or e})."
        out: list[RunInfo] = []
        for d in dirs:
            if not RunFolder(d).is_run():
                continue
            sig = self._signature(d)
            cached = self._seen.get(d)
            # a running run's status also depends on its pid: re-check it every 5 s even when unchanged
            if cached is not None and cached[0] == sig and (cached[2].status != "running" or now - cached[1] < 5):
                info = cached[2]
            else:
                try:
                    info = load_run(d, now=now)
                except (OfgrError, OSError):
                    continue  # deleted between listing and reading
                self._seen[d] = (sig, now, info)
            out.append(info)
        for gone in set(self._seen) - set(dirs):
            del self._seen[gone]
        return out, None


class OfgrApp(App[None]):
    """The workbench. ``clock`` and ``gpu_probe`` are injectable so tests and snapshots are deterministic."""

    CSS_PATH = "ofgr.tcss"
    TITLE = "ofgr"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        runs_dir: str | os.PathLike[str] = "runs",
        configs_dir: str | os.PathLike[str] = "configs",
        *,
        clock: Callable[[], float] = time.time,
        gpu_probe: Callable[[], GpuSnapshot] | None = None,
        scan_interval: float = 2.0,
        tail_interval: float = 1.0,
        gpu_interval: float = 2.0,
        images: str = "auto",
        python: str = sys.executable,
    ) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.configs_dir = Path(configs_dir)
        self.clock = clock
        if gpu_probe is None:
            from ofgr_core.common.gpu import snapshot

            gpu_probe = snapshot
        self.gpu_probe: Callable[[], GpuSnapshot] = gpu_probe
        self.scan_interval = scan_interval
        self.tail_interval = tail_interval
        self.gpu_interval = gpu_interval
        self.images = images
        self.python = python
        self.runs: list[RunInfo] = []
        self.scanned = False
        self.scan_error: str | None = None
        self.launches: list[launcher.Launch] = []
        self._cache = RunCache()
        # worker processes, each started on its first request: queries keep a model loaded; t-SNE and reports
        # (scikit-learn, matplotlib) get their own, so a long projection never holds up a query
        self.query_client = WorkerClient(python, "query worker")
        self.job_client = WorkerClient(python, "t-SNE/report worker")
        self.jobs: dict[tuple[str, str], Job] = {}

    # --------------------------------------------------------------------------------- lifecycle
    def get_default_screen(self) -> RunsScreen:
        return RunsScreen()

    def on_mount(self) -> None:
        self.sub_title = str(self.runs_dir)
        self.rescan()
        self.set_interval(self.scan_interval, self.rescan, name="scan")

    def on_unmount(self) -> None:
        self.query_client.close()
        self.job_client.close()

    def rescan(self) -> None:
        self._scan()

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def _scan(self) -> None:
        runs, error = self._cache.scan(self.runs_dir, self.clock())
        self.post_message(RunsScanned(runs, error))

    def on_runs_scanned(self, message: RunsScanned) -> None:
        self.runs = message.runs
        self.scan_error = message.error
        self.scanned = True
        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen):
                screen.set_runs(message.runs, message.error)
        self._check_launches()

    def run_info(self, run_dir: Path) -> RunInfo | None:
        for info in self.runs:
            if info.path == run_dir:
                return info
        return None

    # ----------------------------------------------------------------------------------- routing
    def on_open_run(self, message: OpenRun) -> None:
        from ofgr_tui.screens.embeddings import EmbeddingsScreen
        from ofgr_tui.screens.live import LiveScreen
        from ofgr_tui.screens.query import QueryScreen
        from ofgr_tui.screens.results import ResultsScreen

        screens = {
            "live": LiveScreen,
            "results": ResultsScreen,
            "embeddings": EmbeddingsScreen,
            "query": QueryScreen,
        }
        cls = screens.get(message.view)
        if cls is None:
            return
        # switching views of the same run replaces the view instead of stacking them up
        if (
            not isinstance(self.screen, RunsScreen)
            and getattr(self.screen, "run_dir", None) == message.run_dir
        ):
            self.switch_screen(cls(message.run_dir))
        else:
            self.push_screen(cls(message.run_dir))

    def on_compare_runs(self, message: CompareRuns) -> None:
        from ofgr_tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(message.run_dirs))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    # ------------------------------------------------------------------------------ run control
    def on_launch_run(self, message: LaunchRun) -> None:
        try:
            launch = launcher.launch_run(message.config, self.runs_dir, message.overrides, python=self.python)
        except OSError as e:
            self.notify(f"could not start ofgr run: {e}", severity="error", timeout=10)
            return
        self.launches.append(launch)
        self.notify(f"started {message.config} (pid {launch.pid}); waiting for its run folder", timeout=4)
        self.rescan()

    def on_resume_run(self, message: ResumeRun) -> None:
        try:
            info = load_run(message.run_dir)
        except (OfgrError, OSError) as e:
            self.notify(str(e), severity="error")
            return
        if info.live:  # checked again on fresh files: the listing may be a scan old
            self.notify(f"{info.run_id} is running ({info.reason}): not resumed", severity="warning")
            return
        try:
            launch = launcher.resume_run(message.run_dir, python=self.python)
        except OSError as e:
            self.notify(f"could not start ofgr resume: {e}", severity="error", timeout=10)
            return
        launch.resumed = True
        self.launches.append(launch)
        self.notify(f"resuming {message.run_dir.name} (pid {launch.pid})", timeout=4)

    def _check_launches(self) -> None:
        for launch in self.launches:
            code = launch.exit_code()
            if launch.reported:
                continue
            if launch.run_dir is None:
                for info in self.runs:
                    recent = info.started is None or info.started >= launch.started - 5
                    if recent and launcher.run_pid(info.path) == launch.pid:
                        launch.run_dir = info.path
                        break
            if launch.run_dir is not None and (not launch.resumed or code is not None or self._writing(launch)):
                launch.reported = True
                self.post_message(RunLaunched(launch.pid, launch.run_dir, resumed=launch.resumed,
                                              exit_code=code, error=launch.log_tail() if code else None))
            elif code is not None:
                launch.reported = True
                why = launch.log_tail() or f"exit code {code}"
                self.post_message(RunLaunched(launch.pid, None, error=why))
        self.launches = [la for la in self.launches if la.exit_code() is None or not la.reported]

    def _writing(self, launch: launcher.Launch) -> bool:
        """A resume has taken its run: the run's lock names the resume's pid."""
        info = self.run_info(launch.run_dir) if launch.run_dir is not None else None
        return info is not None and info.lock is not None and info.lock.pid == launch.pid and info.live

    def on_run_launched(self, message: RunLaunched) -> None:
        if message.run_dir is None:
            self.notify(
                f"run (pid {message.pid}) failed to start: {message.error}", severity="error", timeout=15
            )
            return
        name = message.run_dir.name
        if message.resumed and message.exit_code:  # the resume ended before (or without) taking the run
            why = message.error or f"exit code {message.exit_code}"
            self.notify(f"resume of {name} failed: {why}", severity="error", timeout=15)
            return
        if message.resumed:
            self.notify(f"{name} resumed (pid {message.pid})", timeout=4)
        else:
            self.notify(f"run {name} started", timeout=4)
        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen):
                screen.select_run(message.run_dir)

    def on_stop_run(self, message: StopRun) -> None:
        try:
            request_stop(message.run_dir)
        except OSError as e:
            self.notify(f"could not ask {message.run_dir.name} to stop: {e}", severity="error")
            return
        self.notify(f"stop requested: {stop_note(message.run_dir)}", timeout=8)

    def on_delete_run(self, message: DeleteRun) -> None:
        self._delete(message.run_dir)

    @work(thread=True, group="delete", exit_on_error=False)
    def _delete(self, run_dir: Path) -> None:
        info = load_run(run_dir)
        if info.live:  # checked again on fresh files: a resume may have started since the listing
            raise OfgrError(f"{info.run_id} is running ({info.reason}): not deleted")
        shutil.rmtree(run_dir)
        self.call_from_thread(self.notify, f"deleted {run_dir.name}")
        self.call_from_thread(self.rescan)

    # ----------------------------------------------------------------------------------- jobs
    def job(self, kind: str, key: str | Path) -> Job | None:
        return self.jobs.get((kind, str(key)))

    def on_compute_tsne(self, message: ComputeTsne) -> None:
        current = self.job("tsne", message.run_dir)
        if current is not None and not current.done:
            return  # already computing: the screen shows its progress
        job = self.jobs[("tsne", str(message.run_dir))] = Job("tsne", str(message.run_dir))
        self._announce(job)
        request = {"op": "tsne", "run_dir": str(Path(message.run_dir).absolute()),
                   "max_points": message.max_points, "use_cache": message.use_cache}  # fmt: skip
        self._run_job(job, request)

    def on_write_report(self, message: WriteReport) -> None:
        job = self.jobs[("report", str(message.out))] = Job("report", str(message.out))
        self._announce(job)
        request = {"op": "report", "run_dirs": [str(Path(d).absolute()) for d in message.run_dirs],
                   "out": str(Path(message.out).absolute())}  # fmt: skip
        self._run_job(job, request)

    @work(thread=True, group="jobs", exit_on_error=False, name="job")
    def _run_job(self, job: Job, request: dict[str, Any]) -> None:
        def progress(p: dict[str, Any]) -> None:
            job.progress = p
            self.post_message(JobUpdated(job.kind, job.key))

        try:
            job.result = self.job_client.ask(request, on_progress=progress)
        except WorkerFailed as e:
            job.error = str(e) or "the job failed"
        self.post_message(JobUpdated(job.kind, job.key))

    def _announce(self, job: Job) -> None:
        self.post_message(JobUpdated(job.kind, job.key))

    def on_job_updated(self, message: JobUpdated) -> None:
        """Hand the job down to every screen showing it (a screen opened later reads ``jobs`` itself)."""
        job = self.job(message.kind, message.key)
        if job is None:
            return
        for screen in self.screen_stack:
            handler = getattr(screen, "job_updated", None)
            if callable(handler):
                handler(job)
        if job.kind == "report" and job.done:
            if job.error:
                self.notify(f"report failed: {job.error}", severity="error", timeout=15)
            else:
                caches = job.result.get("caches") or []
                where = sorted({str(Path(c).parent) for c in caches})
                extra = f"; caches written to {', '.join(where)}" if where else ""
                self.notify(f"report written: {job.result['path']}{extra}", timeout=15)

    # --------------------------------------------------------------------------------- errors
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        self.report_worker(event)

    def report_worker(self, event: Worker.StateChanged) -> None:
        """The one place worker failures are reported (screens forward theirs): one line, never a crash."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not isinstance(error, (OfgrError, OSError, ValueError)):
            text = f"{type(error).__name__}: {text}"
        self.notify(text, title=event.worker.name or "error", severity="error", timeout=10)
        handler = getattr(event.worker.node, "worker_failed", None)
        if callable(handler):
            handler(event.worker, text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ofgr-tui", description="Terminal workbench for ofgr runs.")
    parser.add_argument("--runs-dir", default="runs", help="folder of run folders (default: ./runs)")
    parser.add_argument(
        "--configs-dir", default="configs", help="folder of YAML configs (default: ./configs)"
    )
    parser.add_argument(
        "--images",
        choices=("auto", "halfcell", "off"),
        default="auto",
        help="query thumbnails: best protocol the terminal supports, coloured half cells, or none",
    )
    args = parser.parse_args(argv)
    images = args.images
    if images != "off":
        try:
            # must run before Textual takes over the terminal: it asks the terminal for its cell size and
            # graphics support, and an answer arriving later is read as typed keys (into the focused box)
            import textual_image.widget  # noqa: F401
        except Exception:
            images = "halfcell" if images == "auto" else "off"
    OfgrApp(args.runs_dir, args.configs_dir, images=images).run()


if __name__ == "__main__":
    main()
