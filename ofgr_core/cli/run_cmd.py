"""``ofgr run``, ``ofgr resume``, ``ofgr runs``, ``ofgr show``: the headless front end over the run folder."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ofgr_core.cli.app import app, err, handle_errors, out, print_json
from ofgr_core.common.atomic import atomic_write_json, atomic_write_text
from ofgr_core.common.errors import ConfigError, ConflictError, DataError, ExitCode, NotFoundError
from ofgr_core.config import Config, dump_config, load_config, set_run_name
from ofgr_core.runs.eventlog import EventWriter
from ofgr_core.runs.events import (
    Event,
    Log,
    RunInterrupted,
    SignalInterrupt,
    StageFinished,
    StageProgress,
    StageStarted,
    TrainEpoch,
    TrainStep,
)
from ofgr_core.runs.folder import METRICS_FILE, RunFolder, create_run_dir
from ofgr_core.runs.lock import RunLock
from ofgr_core.runs.state import iter_runs, load_run, request_stop, resolve_run

DEFAULT_CONFIG = "configs/demo.yaml"
# what signal.signal returns: the previous handler, to put back
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class EventPrinter:
    """Renders pipeline events as rich progress on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
            disable=quiet,
        )
        self.tasks: dict[str, TaskID] = {}
        self.timings: dict[str, float] = {}

    def __enter__(self) -> EventPrinter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:  # passed on to rich's Progress as received
        self.progress.__exit__(*exc)

    def _task(self, stage: str, total: int | None = None) -> TaskID:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(escape(stage), total=total, info="")
        elif total is not None:
            self.progress.update(self.tasks[stage], total=total)
        return self.tasks[stage]

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, StageStarted):
            self._task(ev.stage, ev.total)
        elif isinstance(ev, StageProgress):
            info = "" if ev.rate is None else f"{ev.rate:,.0f}/s" + (
                "" if ev.eta_s is None else f" · {_duration(ev.eta_s)} left")
            self.progress.update(self._task(ev.stage, ev.total), completed=ev.done, info=info)
        elif isinstance(ev, StageFinished):
            task = self._task(ev.stage)
            total = self.progress.tasks[task].total
            if total is None or self.progress.tasks[task].completed < total:
                self.progress.update(task, total=total or 1, completed=total or 1)
            self.timings[ev.stage] = self.timings.get(ev.stage, 0.0) + ev.seconds
        elif isinstance(ev, TrainStep):
            task = self._task("train")
            losses = " ".join(f"{k}={v:.3f}" for k, v in ev.losses.items())
            self.progress.update(
                task, info=escape(f"epoch {ev.epoch} step {ev.step}/{ev.steps_per_epoch} loss={ev.loss:.3f} {losses} "
                                  f"{ev.images_per_s:.0f} img/s")
            )
        elif isinstance(ev, TrainEpoch):
            task = self._task("train", ev.epochs)
            self.progress.update(task, completed=ev.epoch)
            val = " ".join(f"val {k}={v:.3f}" for k, v in ev.val.items())
            mark = " [green]*best[/]" if ev.best else ""
            self.progress.console.print(
                f"  epoch {ev.epoch}/{ev.epochs} loss={ev.loss:.4f} {escape(val)} ({ev.seconds:.1f}s){mark}",
                highlight=False,
            )
        elif isinstance(ev, Log):
            color = {"warning": "yellow", "error": "red"}.get(ev.level, "dim")
            self.progress.console.print(f"[{color}]{escape(str(ev.message))}[/]", highlight=False)
        elif isinstance(ev, RunInterrupted):
            self.progress.console.print(f"[yellow]interrupted:[/] {escape(str(ev.reason))}", highlight=False)


def results_table(metrics: dict[str, Any], title: str | None = None) -> Table:
    """Recall@K / MAP@R per split and level, with 95% CIs when present."""
    splits = [s for s in ("unseen", "seen") if isinstance(metrics.get(s), dict)]
    ks = sorted(
        {int(k.split("@")[1]) for s in splits for lv in ("fine", "coarse")
         for k in metrics[s].get(lv, {}) if k.startswith("recall@")}
    )
    table = Table(title=escape(title) if title else None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="±: 95% bootstrap CI half-width (every CI is in metrics.json)", caption_justify="left")
    table.add_column("split")
    table.add_column("level")
    for k in ks:
        table.add_column(f"R@{k}", justify="right", no_wrap=True)
    table.add_column("MAP@R", justify="right", no_wrap=True)
    table.add_column("n", justify="right")
    for s in splits:
        block = metrics[s]
        for lv in ("fine", "coarse"):
            if lv not in block:
                continue
            ci = block.get("ci95", {}).get(lv, {})

            def cell(key: str, with_ci: bool, block: dict[str, Any] = block, lv: str = lv,
                     ci: dict[str, Any] = ci) -> str:
                v = block[lv].get(key)
                if v is None:
                    return "-"
                if with_ci and ci.get(key) is not None:
                    lo, hi = ci[key]
                    return f"{100 * v:.1f}[dim]±{100 * (hi - lo) / 2:.1f}[/]"
                return f"{100 * v:.1f}"

            table.add_row(escape(str(s)), escape(str(lv)), *[cell(f"recall@{k}", k == ks[0]) for k in ks],
                          cell("map@r", False), escape(str(block.get("n_queries", ""))))
    return table


def timings_table(timings: dict[str, float]) -> Table:
    table = Table(title="stage timings", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for k, v in timings.items():
        table.add_row(escape(str(k)), f"{v:.1f}")
    table.add_row("[bold]total[/]", f"[bold]{sum(timings.values()):.1f}[/]")
    return table


class SignalStop:
    """SIGINT and SIGTERM handled alike while a run executes.

    During training the first signal asks the loop to stop after the current step (through the run's stop
    file, whose text names the signal, so the ``run_interrupted`` event says which one); in other stages it
    interrupts at once (those stages are redone on resume). A second signal exits immediately, after a
    best-effort ``run_interrupted`` line.
    """

    def __init__(self, run_dir: Path, writer: EventWriter | None) -> None:
        self.run_dir, self.writer = run_dir, writer
        self.stage: str | None = None
        self.received: str | None = None
        self._previous: dict[int, Handler] = {}

    def on_event(self, ev: Event) -> None:
        if isinstance(ev, StageStarted):
            self.stage = ev.stage
        elif isinstance(ev, StageFinished) and ev.stage == self.stage:
            self.stage = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if self.writer is not None:
                with contextlib.suppress(Exception):
                    self.writer.write(RunInterrupted(reason=f"{self.received} then {name}: exited at once"))
            os._exit(128 + signum)
        self.received = name
        if self.stage == "train":
            request_stop(self.run_dir, reason=f"{name} received")
            return
        raise SignalInterrupt(f"{name} received")

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.TERMINATED if self.received == "SIGTERM" else ExitCode.INTERRUPTED


def _launch(
    cfg: Config, run_dir: Path, *, resume: bool, config_path: str | None, quiet: bool,
    lock: RunLock | None = None,
) -> None:
    from ofgr_core.workflows.pipeline import execute_run

    main = int(os.environ.get("RANK", "0")) == 0
    if main and lock is None:
        lock = RunLock(run_dir, "resume" if resume else "run")
        lock.acquire()  # one writer per run folder, held until this process ends the run
    signals = SignalStop(run_dir, None)
    try:
        writer = EventWriter(RunFolder(run_dir).events) if main else None
        signals.writer = writer
        if main:
            err.print(f"run folder: [bold]{escape(str(run_dir))}[/]", highlight=False)
            if lock is not None and lock.took_over is not None:
                err.print(f"took over the stale lock of {escape(lock.took_over.describe())} (process gone)",
                          highlight=False)
        try:
            with EventPrinter(quiet=quiet or not main) as printer, signals:
                def on_event(ev: Event) -> None:
                    signals.on_event(ev)
                    printer(ev)

                status, metrics = execute_run(cfg, run_dir, writer, on_event, resume=resume,
                                              config_path=config_path)
        except SignalInterrupt:
            raise typer.Exit(int(signals.exit_code)) from None
        finally:
            if writer is not None:
                writer.close()
    finally:
        if lock is not None:
            lock.release()
    if not main:
        return
    if status == "interrupted":
        raise typer.Exit(int(signals.exit_code))
    if metrics:
        metrics_path = RunFolder(run_dir).metrics
        out.print(*_metrics_tables(metrics, metrics_path, f"{run_dir.name}: Recall@K and MAP@R (%)"))
        out.print(f"metrics: {metrics_path}", highlight=False, markup=False)
        print_result_warnings(metrics)


@app.command()
@handle_errors
def run(
    config: str = typer.Argument(DEFAULT_CONFIG, help="YAML experiment config (default: the built-in demo)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where run folders are created."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set train.epochs=3"),
    name: str = typer.Option(None, "--name", help="Run name (default: the config's name)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Run an experiment end to end: data, split, train, embed, index, evaluate."""
    from ofgr_core.common.envinfo import collect_env
    from ofgr_core.train.ddp import broadcast_object, cleanup, init_distributed

    config_path: str | None = config
    if config == DEFAULT_CONFIG and not Path(config).is_file():
        config_path = None  # outside a checkout: the built-in defaults are the demo
    cfg = load_config(config_path, overrides)
    if name:
        set_run_name(cfg, name)
    dist_info = init_distributed(cfg.device)
    try:
        run_dir = create_run_dir(runs_dir, cfg.name) if dist_info.is_main else None
        run_dir = Path(broadcast_object(str(run_dir) if run_dir else None, dist_info))
        if dist_info.is_main:
            atomic_write_text(RunFolder(run_dir).config, dump_config(cfg))
            device = cfg.device
            atomic_write_json(
                RunFolder(run_dir).env,
                collect_env(cfg.seed, device, {"config_path": config_path, "overrides": overrides,
                                               "world_size": dist_info.world_size, "pid": os.getpid(),
                                               "command_line": shlex.join(sys.argv)}),
            )
        _launch(cfg, run_dir, resume=False, config_path=config_path, quiet=quiet)
    finally:
        # under torchrun (execute_run has left the group already unless the run failed before it): a process
        # group left to interpreter shutdown can abort the rank (ddp.join_process_group says how)
        cleanup(dist_info)


@app.command()
@handle_errors
def resume(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run folder, id, unique prefix, or 'latest'."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Continue a stopped or interrupted run from its last checkpoint, in the same run folder."""
    from ofgr_core.train.ddp import DistInfo, cleanup, init_distributed

    run_dir = resolve_run(run_ref, runs_dir)
    dist_info = DistInfo()
    lock: RunLock | None = None
    if int(os.environ.get("RANK", "0")) == 0:  # the other ranks of a DDP resume follow rank 0
        # the lock first, then the status: between a check and a start another resume could slip in
        lock = RunLock(run_dir, "resume")
        lock.acquire()
    try:
        info = load_run(run_dir, ours=lock.info if lock is not None else None)
        if info.status == "running":  # a writer from before run locks existed, still alive
            raise ConflictError(f"run {run_dir.name} is already running ({info.reason}); stop it first")
        if info.status == "finished":
            raise ConfigError(f"run {run_dir.name} already finished; nothing to resume")
        problems = (info.reason or "").split("; ")
        if info.status == "broken" and not all(METRICS_FILE in p for p in problems):
            # (a lost or truncated metrics.json is what a resume rewrites; other damage is not)
            raise ConfigError(f"run {run_dir.name} cannot be resumed: {info.reason}")
        folder = RunFolder(run_dir)
        for path in (folder.metrics, folder.stop_file, folder.events):  # found now, not after hours of training
            if path.exists() and not path.is_file():
                raise DataError(f"{path}: a folder where the run writes a file; remove it, then resume")
        cfg = load_config(folder.config)
        dist_info = init_distributed(cfg.device)
    except BaseException:
        if lock is not None:
            lock.release()
        cleanup(dist_info)
        raise
    try:
        _launch(cfg, run_dir, resume=True, config_path=str(folder.config), quiet=quiet, lock=lock)
    finally:
        cleanup(dist_info)  # as in `run`


def _fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@app.command("runs")
@handle_errors
def list_runs(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    as_json: bool = typer.Option(False, "--json", help="One JSON list on stdout."),
) -> None:
    """List runs: status, model, dataset, split, R@1 on unseen classes, duration."""
    if not runs_dir.is_dir():
        raise NotFoundError(f"{runs_dir}: no such runs folder (create runs with `ofgr run`, or pass --runs-dir)")
    infos = list(iter_runs(runs_dir))
    if as_json:
        print_json([i.to_dict() for i in infos])
        return
    if not infos:
        err.print(f"no runs in {runs_dir} (start one with `ofgr run`)", markup=False, highlight=False)
        return
    from ofgr_core.cli.tables import Column, print_fitted

    colors = {"running": "cyan", "finished": "green", "failed": "red", "interrupted": "yellow",
              "stale": "magenta", "broken": "bold red"}
    cols = [  # every user-controlled cell escaped: one run named "[/x]" must not break the listing
        Column("run", [escape(i.run_id) for i in infos]),  # never cut or wrapped: it is what a user copies
        Column("status", [f"[{colors.get(i.status, 'white')}]{escape(i.status)}[/]" for i in infos], priority=1),
        Column("R@1 unseen", [f"{100 * i.recall_at_1_unseen:.1f}" if i.recall_at_1_unseen is not None else "-"
                              for i in infos], priority=2, justify="right"),
        Column("model", [escape(i.model) for i in infos], priority=3, max_width=28),
        Column("duration", [_fmt_duration(i.duration) for i in infos], priority=4, justify="right"),
        Column("dataset", [escape(i.dataset) for i in infos], priority=5, max_width=28),
        Column("split", [escape(i.split) for i in infos], priority=6),
        Column("started", [time.strftime("%Y-%m-%d %H:%M", time.localtime(i.started)) if i.started else "-"
                           for i in infos], priority=7),
    ]
    print_fitted(out, cols, title=escape(f"runs in {runs_dir}"))


@app.command()
@handle_errors
def show(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run folder, id, unique prefix, or 'latest'."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json on stdout, nothing else."),
) -> None:
    """Show a run's results."""
    run_dir = resolve_run(run_ref, runs_dir)
    info = load_run(run_dir)
    if as_json:
        if info.metrics is None:
            if info.status == "broken":
                raise DataError(f"{run_dir}: no readable {METRICS_FILE} ({info.reason})")
            raise NotFoundError(f"{run_dir}: no {METRICS_FILE} yet (status: {info.status})")
        print_json(info.metrics)
        return
    err.print(f"[bold]{escape(info.run_id)}[/]  "
              + escape(f"status={info.status}  model={info.model}  dataset={info.dataset}"),
              highlight=False)
    if info.error:
        err.print(f"[red]error:[/] {escape(str(info.error))}", highlight=False)
    if info.reason:
        err.print(f"[dim]{info.status}:[/] " + escape(info.reason), highlight=False)
    if info.metrics is None:
        err.print(f"no readable {METRICS_FILE}" if info.status == "broken" else f"no {METRICS_FILE} yet",
                  markup=False)
        return
    out.print(*_metrics_tables(info.metrics, run_dir / METRICS_FILE, "Recall@K and MAP@R (%)"))
    print_result_warnings(info.metrics)


def print_result_warnings(metrics: dict[str, Any]) -> None:
    """``metrics["warnings"]`` (degenerate embeddings, a lowered batch) as loud lines after the results, also
    with ``-q``: a result that finished is not a result that can be trusted."""
    warnings = metrics.get("warnings")
    for w in warnings if isinstance(warnings, list) else []:
        err.print(f"[bold yellow]warning:[/] {escape(str(w))}", highlight=False, soft_wrap=True)


def _metrics_tables(metrics: dict[str, Any], path: Path, title: str) -> tuple[Table, ...]:
    """The results (and, for CLIP runs, text->image) and timings tables; a metrics.json of another shape is a
    one-line error naming it."""
    try:
        tables = [results_table(metrics, title=title)]
        t2i = text_to_image_table(metrics)
        if t2i is not None:
            tables.append(t2i)
        return (*tables, timings_table(metrics.get("timings") or {}))
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
        raise DataError(f"{path}: unexpected content ({type(e).__name__}: {e}); `--json` prints it as is") from None


def text_to_image_table(metrics: dict[str, Any]) -> Table | None:
    """Zero-shot text->image (class-name prompts against the split's images) per image space, or None when
    the run has none (not a CLIP run)."""
    from ofgr_core.reports.compare import text_spaces

    rows = [(s, *sp) for s in ("unseen", "seen") for sp in text_spaces(metrics.get(s))]
    if not rows:
        return None
    table = Table(title="text→image (%): class-name prompts, zero-shot", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, caption="*: the space free-text queries search",
                  caption_justify="left")  # fmt: skip
    for col in ("split", "space", "level"):
        table.add_column(col)
    for col in ("R@1", "R@5", "MAP@R"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("n", justify="right")
    for split, space, block, free in rows:
        for lv in ("fine", "coarse"):
            m = block.get(lv)
            if not isinstance(m, dict):
                continue
            n = block.get("n_queries")
            n = n.get(lv) if isinstance(n, dict) else n
            cells = [f"{100 * m[k]:.1f}" if isinstance(m.get(k), (int, float)) else "-"
                     for k in ("recall@1", "recall@5", "map@r")]  # fmt: skip
            table.add_row(escape(split), escape(space) + ("*" if free else ""), escape(lv), *cells,
                          escape(str(n if n is not None else "")))
    return table


@app.command()
@handle_errors
def tui(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
) -> None:
    """Open the workbench (same as `ofgr-tui`)."""
    import shutil

    from ofgr_core.common.errors import DependencyError

    exe = shutil.which("ofgr-tui") or str(Path(sys.executable).with_name("ofgr-tui"))
    if not os.access(exe, os.X_OK):
        raise DependencyError(f"{exe}: the ofgr-tui program is not installed (pip install -e . installs it)")
    # exec, not import: the CLI never imports the UI package
    os.execv(exe, [exe, "--runs-dir", str(runs_dir)])
