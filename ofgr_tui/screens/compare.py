"""2-4 runs side by side: metric table with deltas and paired significance, overlaid recall@K curves,
training time and compute per run. The comparison (paired bootstrap tests) is computed in the app's query
worker process.

At 80x24: the run legend, one line of "what differs" (``d`` expands it: every differing config key, most
telling first, and each run's ``--set`` overrides), then the metric table in the remaining height, in
sections (image->image, text->image, coarse-first: ``]``/``[`` jump between them). ``p`` swaps the table for
the recall@K plot (with its A/B colour legend) and the cost table. ``w`` writes the report in the job worker
and shows its stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.timer import Timer
from textual.widgets import ContentSwitcher, DataTable, Header, Static
from textual.worker import Worker

from ofgr_core.reports.compare import MODE_LABELS, MODES, Comparison, MetricRow, Significance
from ofgr_tui.format import fmt_count, fmt_seconds
from ofgr_tui.messages import WriteReport
from ofgr_tui.rundiff import differing, overrides, ranked, read_config, resolved_device
from ofgr_tui.screens.base import OfgrScreen
from ofgr_tui.widgets.keybar import KeyBar
from ofgr_tui.widgets.navtable import NavTable
from ofgr_tui.widgets.plots import PALETTE, CurvePlot

LETTERS = "ABCD"
VIEWS = (("unseen", "fine"), ("unseen", "coarse"), ("seen", "fine"), ("seen", "coarse"))
EXPANDED_LIMIT = 24  # differing keys listed when the block is expanded
CELL = 14  # a compared cell: value (5) + delta (6) + stars (3), so values and deltas line up in every row


def stars(test: Significance | None) -> str:
    if test is None:
        return ""
    p = test.p_value
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def delta_cell(row: MetricRow, i: int) -> Text:
    """``value delta stars`` in fixed columns (also when a part is missing), so every row lines up."""
    v, d, test = row.values[i], row.deltas[i], row.tests[i]
    if v is None:
        return Text(f"{'-':>5}".ljust(CELL if i else 5), style="dim")
    out = Text(f"{100 * v:5.1f}")
    if i == 0:
        return out
    if d is None:
        return out + Text(" " * (CELL - 5))
    style = "green" if d > 0 else "red" if d < 0 else "dim"
    if test is not None and stars(test) == "":
        style = "dim"  # not significant: don't shout
    out.append(f" {100 * d:+5.1f}", style=style)
    out.append(f"{stars(test):<3}" if test is not None else " ? ", style="bold" if stars(test) else "dim")
    return out


def diff_summary(diffs: list[tuple[str, list[str]]], width: int) -> Text:
    """One line: ``what differs (N keys, d: all):`` then the most telling differences that fit whole."""
    out = Text("what differs ", style="bold")
    if not diffs:
        out.append("nothing: same resolved config", style="dim")
        return out
    out.append(f"({len(diffs)} key{'s' if len(diffs) != 1 else ''}; d shows all): ", style="dim")
    for n, (key, values) in enumerate(diffs):
        piece = f"{key} {' | '.join(v if len(v) <= 16 else v[:15] + '…' for v in values)}"
        rest = len(diffs) - n - 1
        tail = f" · +{rest} more" if rest else ""
        sep = " · " if n else ""
        if out.cell_len + len(sep) + len(piece) + len(tail) > width:
            out.append(f"{sep}+{len(diffs) - n} more" if n else f"+{len(diffs)} more", style="dim")
            break
        out.append(sep, style="dim")
        out.append(piece)
    return out


class CompareScreen(OfgrScreen[None]):
    HELP_TITLE = "Compare"
    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("d", "toggle_diff", "What differs"),
        Binding("p", "toggle_page", "Plot/table"),
        Binding("right_square_bracket", "section(1)", "Next section", key_display="]"),
        Binding("left_square_bracket", "section(-1)", "Prev section", key_display="[", show=False),
        Binding("v", "cycle_view", "Curves"),
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
        self.diff_expanded = False
        self.sections: list[tuple[str, int]] = []  # (mode, row index of its header row)
        self.report_out: Path | None = None
        self._report_clock: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("comparing…", id="compare-legend")
        yield Static(id="compare-diff")
        yield Static(id="compare-status")
        with ContentSwitcher(initial="compare-table", id="compare-pages"):
            yield NavTable(id="compare-table", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="compare-plot-page"):
                yield CurvePlot("recall@K", xlabel="K", empty_text="no recall@K", id="compare-plot")
                yield Static(id="plot-legend")
                yield DataTable(id="cost-table", cursor_type="none")
                yield Static(id="compare-notes")
        yield KeyBar()

    def on_mount(self) -> None:
        self.title = "compare"
        self.sub_title = f"{len(self.run_dirs)} runs"
        self.query_one("#compare-status").display = False
        self.compute()

    def compute(self) -> None:
        self.query_one("#compare-legend", Static).update("comparing… (paired bootstrap tests)")
        self._compute(self.run_dirs, self.baseline)

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False, name="compare")
    def _compute(self, run_dirs: list[Path], baseline: int) -> None:
        """The paired bootstrap runs in the query worker process (its arrays never grow the TUI)."""
        from ofgr_tui.worker import decode_comparison

        reply = self.ofgr.query_client.ask(
            {"op": "compare", "run_dirs": [str(d.absolute()) for d in run_dirs], "baseline": baseline}
        )
        comparison = decode_comparison(reply)
        if not isinstance(comparison, Comparison):
            raise TypeError(f"the worker answered a {type(comparison).__name__}, not a Comparison")
        self.post_message(self.Computed(comparison))

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
        self._show_diff()
        self._show_table(c)
        self._show_plot()
        self._show_costs(c)
        notes = self.query_one("#compare-notes", Static)
        notes.update(Text("\n".join(c.notes), style="yellow") if c.notes else "")

    def _dirs(self) -> list[Path]:
        by_id = {d.name: d for d in self.run_dirs}
        ids = self.comparison.run_ids if self.comparison is not None else [d.name for d in self.run_dirs]
        return [by_id.get(run_id, Path(run_id)) for run_id in ids]

    def on_resize(self) -> None:
        if self.comparison is not None:
            self._show_diff()

    def _show_diff(self) -> None:
        """What differs between the runs' configs (model, epochs, overrides...), most telling first: one line,
        or (``d``) every key and the ``--set`` overrides."""
        dirs = self._dirs()
        diffs = ranked(differing([read_config(d) for d in dirs]))
        box = self.query_one("#compare-diff", Static)
        width = max(40, (self.size.width or 80) - 2)
        if not self.diff_expanded:
            box.update(diff_summary(diffs, width))
            return
        table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1), title_justify="left",
                      title=Text("what differs (most telling first; d folds)" if diffs else "same resolved config",
                                 style="bold"))  # fmt: skip
        table.add_column("config key", style="dim", no_wrap=True, overflow="ellipsis", max_width=28)
        for i in range(len(dirs)):
            table.add_column(LETTERS[i], style=PALETTE[i], no_wrap=True, overflow="ellipsis", max_width=22)
        for key, values in diffs[:EXPANDED_LIMIT]:
            table.add_row(key, *values)
        if len(diffs) > EXPANDED_LIMIT:
            table.add_row(f"… {len(diffs) - EXPANDED_LIMIT} more", *[""] * len(dirs))
        sets = Text()
        for i, d in enumerate(dirs):
            if overrides(d):
                sets.append(f"{LETTERS[i]} ", style=f"bold {PALETTE[i]}")
                sets.append("--set " + " ".join(overrides(d)) + "\n", style="dim")
        parts: list[RenderableType] = [table]
        if sets.plain:
            parts.append(sets)
        box.update(Group(*parts))

    def _show_table(self, c: Comparison) -> None:
        t = self.query_one("#compare-table", DataTable)
        t.clear(columns=True)
        t.add_column("metric %", key="metric")
        for i in range(len(c.run_ids)):
            t.add_column(Text(LETTERS[i], style=f"bold {PALETTE[i]}"), key=LETTERS[i], width=CELL if i else 5)
        self.sections = []
        for mode in MODES:
            rows = [r for r in c.rows if r.mode == mode]
            if not rows:
                continue
            self.sections.append((mode, t.row_count))
            head = Text(f"{MODE_LABELS.get(mode, mode)} ({len(rows)})", style="bold underline")
            t.add_row(head, *[""] * len(c.run_ids), key=f"section:{mode}")
            for row in rows:
                t.add_row(f"  {row.label}", *(delta_cell(row, i) for i in range(len(c.run_ids))),
                          key=f"{mode}/{row.split}/{row.level}/{row.metric}")  # fmt: skip

    def _show_plot(self) -> None:
        c = self.comparison
        if c is None:
            return
        split, level = VIEWS[self.view]
        curves = c.curves.get((split, level)) or ()
        # every run gets its series (empty ones draw nothing), so a run keeps its colour in plot and legend
        series: dict[str, tuple[list[float], list[float]]] = {}
        for i, run_id in enumerate(c.run_ids):
            pts = curves[i] if i < len(curves) else ()
            series[f"{LETTERS[i]} {run_id}"] = ([float(k) for k, _ in pts], [100 * v for _, v in pts])
        plot = self.query_one("#compare-plot", CurvePlot)
        plot.set_series(dict(series), title=f"recall@K % — {split} {level} (v: next)")
        self.query_one("#plot-legend", Static).update(plot.legend())

    def _show_costs(self, c: Comparison) -> None:
        t = self.query_one("#cost-table", DataTable)
        t.clear(columns=True)
        for col in ("run", "params", "epochs", "images", "train", "total", "img/s", "device"):
            t.add_column(col, key=col)
        dirs = self._dirs()
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

    # ----------------------------------------------------------------------------------- actions
    def action_toggle_diff(self) -> None:
        self.diff_expanded = not self.diff_expanded
        self._show_diff()

    def action_toggle_page(self) -> None:
        pages = self.query_one("#compare-pages", ContentSwitcher)
        pages.current = "compare-plot-page" if pages.current == "compare-table" else "compare-table"
        if pages.current == "compare-table":
            self.query_one("#compare-table").focus()
        else:
            self.query_one("#compare-plot-page").focus()

    def action_section(self, step: int) -> None:
        """Move to the next (or previous) section's first row, its header at the top of the table."""
        if not self.sections:
            return
        pages = self.query_one("#compare-pages", ContentSwitcher)
        if pages.current != "compare-table":
            self.action_toggle_page()
        t = self.query_one("#compare-table", DataTable)
        starts = [start for _, start in self.sections]
        current = max((i for i, s in enumerate(starts) if s <= t.cursor_row), default=0)
        target = starts[(current + step) % len(starts)]
        t.move_cursor(row=min(target + 1, t.row_count - 1), animate=False)
        t.scroll_to(y=target, animate=False)
        mode = self.sections[starts.index(target)][0]
        self.notify(f"{MODE_LABELS.get(mode, mode)} rows", timeout=1.5)

    def action_cycle_view(self) -> None:
        self.view = (self.view + 1) % len(VIEWS)
        self._show_plot()

    def action_write_report(self) -> None:
        # same folder layout as `ofgr report RUN... -o DIR`, beside the runs folder
        out = self.run_dirs[0].parent.parent / "reports" / f"{time.strftime('%Y%m%d-%H%M%S')}-compare"
        self.report_out = out
        self.post_message(WriteReport(list(self.run_dirs), out))
        # a stage can take minutes without a progress line (a report's t-SNE): the clock keeps ticking
        if self._report_clock is not None:
            self._report_clock.stop()
        self._report_clock = self.set_interval(1.0, self._tick_report, name="report-clock")

    def _tick_report(self) -> None:
        job = self.ofgr.job("report", self.report_out) if self.report_out is not None else None
        if job is not None:
            self.job_updated(job)

    def job_updated(self, job: Any) -> None:
        """The app hands down its report job's progress (this screen's report only)."""
        if job.kind != "report" or self.report_out is None or job.key != str(self.report_out):
            return
        status = self.query_one("#compare-status", Static)
        status.display = True
        if job.done and self._report_clock is not None:
            self._report_clock.stop()
            self._report_clock = None
        if job.error:
            status.update(Text(f"report failed: {job.error}", style="bold red"))
        elif job.done:
            where = sorted({str(Path(p).parent) for p in job.result.get("caches") or []})
            text = Text(f"report written: {job.result['path']}", style="green")
            if where:
                text.append(f"\ncaches written to {', '.join(where)}", style="dim")
            status.update(text)
        else:
            stage = job.progress.get("stage") or "starting the worker"
            status.update(Text(f"writing report ({job.seconds:.0f} s): {stage}…", style="yellow"))

    def action_next_baseline(self) -> None:
        # rotate which run is A; the worker re-runs the paired tests against it
        self.run_dirs = self.run_dirs[1:] + self.run_dirs[:1]
        self.compute()
