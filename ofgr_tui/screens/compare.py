"""2-4 runs side by side: metric table with deltas and paired significance, overlaid recall@K curves,
training time and compute per run. The comparison is computed in a worker (bootstrap tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Header, Static
from textual.worker import Worker

from ofgr_core.reports.compare import Comparison, MetricRow, Significance
from ofgr_tui.format import fmt_count, fmt_seconds
from ofgr_tui.rundiff import differing, overrides, read_config, resolved_device
from ofgr_tui.screens.base import OfgrScreen
from ofgr_tui.widgets.keybar import KeyBar
from ofgr_tui.widgets.plots import PALETTE, CurvePlot

LETTERS = "ABCD"
VIEWS = (("unseen", "fine"), ("unseen", "coarse"), ("seen", "fine"), ("seen", "coarse"))


def stars(test: Significance | None) -> str:
    if test is None:
        return ""
    p = test.p_value
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def delta_cell(row: MetricRow, i: int) -> Text:
    v, d, test = row.values[i], row.deltas[i], row.tests[i]
    if v is None:
        return Text("-", style="dim", justify="right")
    out = Text(f"{100 * v:5.1f}", justify="right")
    if d is None:
        return out
    style = "green" if d > 0 else "red" if d < 0 else "dim"
    if test is not None and stars(test) == "":
        style = "dim"  # not significant: don't shout
    out.append(f" {100 * d:+5.1f}", style=style)
    out.append(f"{stars(test):<3}" if test is not None else " ? ", style="bold" if stars(test) else "dim")
    return out


class CompareScreen(OfgrScreen[None]):
    HELP_TITLE = "Compare"
    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("v", "cycle_view", "Curves split/level"),
        Binding("b", "next_baseline", "Baseline"),
        Binding("w", "write_report", "Write report"),
    ]

    @dataclass
    class Computed(Message):
        comparison: Comparison

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = [Path(d) for d in run_dirs]
        self.baseline = 0
        self.view = 0
        self.comparison: Comparison | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="compare-body"):
            yield Static("comparing…", id="compare-legend")
            yield Static(id="compare-diff")
            yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
            yield CurvePlot("recall@K", xlabel="K", empty_text="no recall@K", id="compare-plot")
            yield DataTable(id="cost-table", cursor_type="none")
            yield Static(id="compare-notes")
        yield KeyBar()

    def on_mount(self) -> None:
        self.title = "compare"
        self.sub_title = f"{len(self.run_dirs)} runs"
        self.compute()

    def compute(self) -> None:
        self.query_one("#compare-legend", Static).update("comparing… (paired bootstrap tests)")
        self._compute(self.run_dirs, self.baseline)

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False, name="compare")
    def _compute(self, run_dirs: list[Path], baseline: int) -> None:
        from ofgr_core.reports.compare import compare_runs

        self.post_message(self.Computed(compare_runs(run_dirs, baseline=baseline)))

    def worker_failed(self, worker: Worker[None], text: str) -> None:
        self.query_one("#compare-legend", Static).update(Text(f"cannot compare: {text}", style="bold red"))

    def on_compare_screen_computed(self, message: Computed) -> None:
        self.comparison = c = message.comparison
        legend = Text()
        for i, (run_id, cost) in enumerate(zip(c.run_ids, c.costs, strict=True)):
            legend.append(f"{LETTERS[i]} ", style=f"bold {PALETTE[i]}")
            legend.append(f"{run_id}  {cost.model}")
            legend.append("  (baseline)\n" if i == 0 else "\n", style="dim")
        legend.append("Δ vs A; * p<0.05 ** p<0.01 *** p<0.001 (paired bootstrap); ? no test", style="dim")
        self.query_one("#compare-legend", Static).update(legend)
        self._show_diff(c)
        self._show_table(c)
        self._show_plot()
        self._show_costs(c)
        notes = self.query_one("#compare-notes", Static)
        notes.update(Text("\n".join(c.notes), style="yellow") if c.notes else "")

    def _dirs(self, c: Comparison) -> list[Path]:
        by_id = {d.name: d for d in self.run_dirs}
        return [by_id.get(run_id, Path(run_id)) for run_id in c.run_ids]

    def _show_diff(self, c: Comparison, limit: int = 8) -> None:
        """What differs between the runs' configs (model, epochs, overrides...): same-named runs told apart."""
        from rich.table import Table

        dirs = self._dirs(c)
        diffs = differing([read_config(d) for d in dirs])
        box = self.query_one("#compare-diff", Static)
        table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1), title_justify="left",
                      title=Text("what differs" if diffs else "same resolved config",
                                 style="bold"))  # fmt: skip
        if not diffs:
            box.update(table)
            return
        table.add_column("config key", style="dim", no_wrap=True, overflow="ellipsis", max_width=28)
        for i in range(len(dirs)):
            table.add_column(LETTERS[i], style=PALETTE[i], no_wrap=True, overflow="ellipsis", max_width=22)
        for key, values in diffs[:limit]:
            table.add_row(key, *values)
        if len(diffs) > limit:
            table.add_row(f"… {len(diffs) - limit} more", *[""] * len(dirs))
        from rich.console import Group

        sets = Text()
        for i, d in enumerate(dirs):
            if overrides(d):
                sets.append(f"{LETTERS[i]} ", style=f"bold {PALETTE[i]}")
                sets.append("--set " + " ".join(overrides(d)) + "\n", style="dim")
        box.update(Group(table, sets) if sets.plain else table)

    def _show_table(self, c: Comparison) -> None:
        t = self.query_one("#compare-table", DataTable)
        t.clear(columns=True)
        t.add_column("metric %", key="metric")
        for i in range(len(c.run_ids)):
            t.add_column(LETTERS[i], key=LETTERS[i])
        for row in c.rows:
            name = f"{row.split[:2]}/{row.level[:1]} {row.metric}"
            if row.mode != "image":  # text->image and coarse-first rows (ofgr_core.reports.compare.MODES)
                name = f"{row.mode[:4]} {name}"
            t.add_row(name, *(delta_cell(row, i) for i in range(len(c.run_ids))))
        t.styles.height = min(t.row_count + 1, 30)

    def _show_plot(self) -> None:
        c = self.comparison
        if c is None:
            return
        split, level = VIEWS[self.view]
        curves = c.curves.get((split, level))
        series = {}
        if curves:
            for i, pts in enumerate(curves):
                if pts:
                    series[f"{LETTERS[i]}"] = ([float(k) for k, _ in pts], [100 * v for _, v in pts])
        self.query_one("#compare-plot", CurvePlot).set_series(
            series, title=f"recall@K % — {split} {level} (v: next)"
        )

    def _show_costs(self, c: Comparison) -> None:
        t = self.query_one("#cost-table", DataTable)
        t.clear(columns=True)
        for col in ("run", "params", "epochs", "images", "train", "total", "img/s", "device"):
            t.add_column(col, key=col)
        dirs = self._dirs(c)
        for i, cost in enumerate(c.costs):
            device = resolved_device(dirs[i]) or cost.device  # what it ran on, not the config's "auto"
            t.add_row(
                Text(LETTERS[i], style=f"bold {PALETTE[i]}"),
                fmt_count(cost.params),
                str(cost.epochs if cost.epochs is not None else "-"),
                fmt_count(cost.images_seen),
                fmt_seconds(cost.train_seconds),
                fmt_seconds(cost.total_seconds),
                fmt_count(cost.images_per_s),
                device or "-",
            )
        t.styles.height = t.row_count + 1

    def action_cycle_view(self) -> None:
        self.view = (self.view + 1) % len(VIEWS)
        self._show_plot()

    def action_write_report(self) -> None:
        # same folder layout as `ofgr report RUN... -o DIR`, beside the runs folder
        import time

        out = self.run_dirs[0].parent.parent / "reports" / f"{time.strftime('%Y%m%d-%H%M%S')}-compare"
        self.notify(f"writing report to {out}…")
        self._write_report(list(self.run_dirs), out)

    @work(thread=True, exclusive=True, group="report", exit_on_error=False, name="report")
    def _write_report(self, run_dirs: list[Path], out: Path) -> None:
        from ofgr_core.reports.report import write_report

        path = write_report(run_dirs, out)
        self.app.call_from_thread(self.notify, f"report written: {path}")

    def action_next_baseline(self) -> None:
        # rotate which run is A; the worker re-runs the paired tests against it
        self.run_dirs = self.run_dirs[1:] + self.run_dirs[:1]
        self.compute()
