"""Live view of one run: loss/LR/validation curves, throughput, ETA, stage progress, GPUs, latest events.

Attaches to any run folder by tailing ``events.jsonl`` (a partially written last line waits until complete),
so it works the same for runs launched here, by hand in another shell, or already finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Header, Static

from ofgr_core.common.errors import OfgrError
from ofgr_core.runs.eventlog import EventTail
from ofgr_core.runs.folder import RunFolder
from ofgr_core.runs.state import load_run
from ofgr_tui.format import fmt_count, fmt_seconds, status_text
from ofgr_tui.livestate import LiveState, downsample
from ofgr_tui.messages import GpuSampled, OpenRun, StopRun
from ofgr_tui.screens.base import OfgrScreen
from ofgr_tui.widgets.event_log import EventLog
from ofgr_tui.widgets.gpu_panel import GpuPanel
from ofgr_tui.widgets.keybar import KeyBar
from ofgr_tui.widgets.plots import CurvePlot
from ofgr_tui.widgets.stages import StageProgress

PLOTS = ("loss", "val", "lr")
TALL = 34  # rows from which the LR plot gets its own panel


def _config_epochs(run_dir: Path) -> int | None:
    """Planned epochs from the run's resolved config, so progress and ETA work before the first epoch ends."""
    from ofgr_tui.rundiff import read_config

    try:  # bounded YAML (read_config): a hostile config.yaml is no config, not a frozen screen
        return int(read_config(run_dir)["train"]["epochs"])
    except (KeyError, TypeError, ValueError):
        return None


class LiveScreen(OfgrScreen[None]):
    HELP_TITLE = "Live"
    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("p", "cycle_plot", "Plot"),
        Binding("r", "view('results')", "Results"),
        Binding("e", "view('embeddings')", "t-SNE"),
        Binding("f", "view('query')", "Query"),
        Binding("s", "stop", "Stop"),
    ]

    @dataclass
    class EventsRead(Message):
        """New complete lines from ``events.jsonl`` (never replaced: each batch matters)."""

        events: list[dict[str, Any]]

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.tail = EventTail(RunFolder(self.run_dir).events)
        self.state = LiveState(run_id=self.run_dir.name)
        self.plot_kind = "loss"
        self._reading = False
        self._plotted = (-1, -1)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="live-main"):
            with Vertical(id="live-plots"):
                yield CurvePlot("loss", xlabel="epoch", empty_text="no training steps yet", id="main-plot")
                yield Static(id="main-legend")
                yield CurvePlot("learning rate", xlabel="epoch", empty_text="no steps yet", id="lr-plot")
            with Vertical(id="live-side"):
                yield Static(id="live-stats")
                yield StageProgress(id="stages")
                yield GpuPanel(id="gpu")
        yield EventLog(id="live-log")
        yield KeyBar()

    def on_mount(self) -> None:
        self.state.epochs = _config_epochs(self.run_dir)
        self.title = self.run_dir.name
        self.sub_title = "live"
        self._tick()
        self.set_interval(self.ofgr.tail_interval, self._tick, name="tail")
        self._sample_gpu()
        self.set_interval(self.ofgr.gpu_interval, self._sample_gpu, name="gpu")
        self._update_stats()

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.height < TALL, "compact")

    # ----------------------------------------------------------------------------------- tailing
    def _tick(self) -> None:
        if not self._reading:
            self._reading = True
            self._read()
        else:
            self._update_stats()

    @work(thread=True, group="tail", exit_on_error=False)
    def _read(self) -> None:
        try:
            new = self.tail.read_new()
        except OSError:  # events.jsonl is a folder or unreadable: the run's status says it is broken
            new = []
        finally:
            self._reading = False
        self.post_message(self.EventsRead(new))

    def on_live_screen_events_read(self, message: EventsRead) -> None:
        if message.events:
            lines = self.state.feed(message.events)
            self.query_one(EventLog).add_lines(lines)
            self.query_one(StageProgress).state = self.state
            self._replot()
        self._update_stats()

    @work(thread=True, exclusive=True, group="gpu", exit_on_error=False)
    def _sample_gpu(self) -> None:
        self.post_message(GpuSampled(self.ofgr.gpu_probe()))

    def on_gpu_sampled(self, message: GpuSampled) -> None:
        message.stop()
        self.query_one(GpuPanel).snapshot = message.snapshot

    # ---------------------------------------------------------------------------------- display
    @property
    def status(self) -> str:
        """The end event of the current attempt as soon as the tail sees it; else the shared run state."""
        if self.state.terminal is not None:
            t = self.state.terminal.get("type")
            return {"run_finished": "finished", "run_failed": "failed"}.get(str(t), "interrupted")
        info = self.ofgr.run_info(self.run_dir)
        if info is not None:
            return info.status
        return self._fallback_status()

    def _fallback_status(self) -> str:
        # not listed yet (the scan runs every couple of seconds): ask the folder directly
        try:
            return load_run(self.run_dir).status
        except (OfgrError, OSError):
            return "broken"

    def _update_stats(self) -> None:
        st = self.state
        now = self.ofgr.clock()
        status = self.status
        stages = self.query_one(StageProgress)
        stages.failed = status in ("failed", "broken")
        stages.halted = status != "running"
        out = Text()
        out.append_text(status_text(status))
        if st.current_stage and status == "running":
            out.append(f"  {st.current_stage}", style="bold")
        out.append("\n")
        if st.epoch is not None:
            total = f"/{st.epochs}" if st.epochs else ""
            out.append(f"epoch {st.epoch}{total}")
            if st.step is not None and st.steps_per_epoch:
                out.append(f"  step {st.step}/{st.steps_per_epoch}")
            out.append("\n")
        speed = f"{fmt_count(st.images_per_s)} img/s" if st.images_per_s else "- img/s"
        eta = st.eta_seconds(now) if status == "running" else None
        out.append(f"{speed}   ETA {fmt_seconds(eta) if eta is not None else '-'}\n")
        out.append(f"elapsed {fmt_seconds(st.elapsed(now, running=status == 'running'))}")
        if st.gpu_mem_mb:
            out.append(f"  mem {st.gpu_mem_mb / 1024:.1f} GiB")
        out.append("\n")
        if st.loss:
            out.append(f"loss {st.loss[-1]:.4f}")
        if st.val:
            key = "recall@1" if "recall@1" in st.val else next(iter(st.val))
            vals = [v for v in st.val[key] if v is not None]
            if vals:
                out.append(f"  val {key} {vals[-1]:.3f}")
        if st.best_epoch is not None:
            out.append(f"  best ep {st.best_epoch}")
        if status == "failed" and st.terminal:
            out.append(f"\n{st.terminal.get('error', '')}", style="bold red")
        self.query_one("#live-stats", Static).update(out)

    def _replot(self, force: bool = False) -> None:
        st = self.state
        key = (len(st.loss), len(st.epoch_loss))
        if key == self._plotted and not force:
            return
        self._plotted = key
        main = self.query_one("#main-plot", CurvePlot)
        series: dict[str, tuple[Sequence[float], Sequence[float | None]]]
        if self.plot_kind == "loss":
            series = {"loss": downsample(st.steps_x, list(st.loss))}
            for name, ys in st.components.items():
                series[name] = downsample(st.steps_x, ys)
            if not st.loss and st.epoch_loss:
                series = {"epoch loss": (st.epoch_x, st.epoch_loss)}
            main.set_series(series, title="loss (p: next plot)")
        elif self.plot_kind == "val":
            series = {f"val {k}": (st.epoch_x, ys) for k, ys in st.val.items()}
            main.set_series(series, title="validation per epoch (p: next plot)")
        else:
            main.set_series({"lr": downsample(st.steps_x, list(st.lr))}, title="learning rate (p: next plot)")
        self.query_one("#main-legend", Static).update(main.legend())
        self.query_one("#lr-plot", CurvePlot).set_series(
            {"lr": downsample(st.steps_x, list(st.lr))}, title="learning rate"
        )

    # ----------------------------------------------------------------------------------- actions
    def action_cycle_plot(self) -> None:
        self.plot_kind = PLOTS[(PLOTS.index(self.plot_kind) + 1) % len(PLOTS)]
        self._replot(force=True)

    def action_view(self, view: str) -> None:
        self.post_message(OpenRun(self.run_dir, view))

    def action_stop(self) -> None:
        from ofgr_tui.livestate import stop_note
        from ofgr_tui.screens.confirm import ConfirmDialog

        if self.status != "running":
            self.notify(f"{self.run_dir.name} is not running", severity="warning")
            return

        def done(ok: bool | None) -> None:
            if ok:
                self.post_message(StopRun(self.run_dir))

        self.app.push_screen(
            ConfirmDialog(f"Stop {self.run_dir.name}?", f"{stop_note(self.run_dir)}.", confirm="Stop"), done
        )
