"""The first screen: every run in the runs folder, refreshed as runs appear or change.

The cursor and the marks belong to run ids, not row numbers: a rescan that adds, removes or reorders runs
keeps the same run selected. ``/`` filters, ``T``/``U``/``M``/``A``/``N`` sort (again: reverse).

Columns are planned for the terminal's width (:func:`plan_columns`): the run column gets its room first;
dataset and split get columns only where runs differ in them (the detail pane always names them).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.widgets import Header, Input, Static

from ofgr_core.runs.folder import METRICS_FILE, RunFolder
from ofgr_core.runs.state import RunInfo
from ofgr_tui.format import fmt_pct, fmt_seconds, fmt_time, status_text
from ofgr_tui.messages import CompareRuns, DeleteRun, LaunchRun, OpenRun, ResumeRun, StopRun
from ofgr_tui.rundiff import overrides as run_overrides
from ofgr_tui.screens.base import OfgrScreen
from ofgr_tui.widgets.keybar import KeyBar
from ofgr_tui.widgets.navtable import NavTable

WIDE = 110  # columns from which the start time gets its own column
ONE_LINE_HEADER = 100  # columns from which the R@1 header fits on one line
PAD = 2  # a DataTable cell's padding (one cell each side)
RESUMABLE = ("interrupted", "stale", "failed")

SortKey = Callable[[RunInfo], tuple[Any, ...]]
# sort key -> (label, column key, function of a run); the first press sorts the natural way round
SORTS: dict[str, tuple[str, str, SortKey]] = {
    "started": ("started", "run", lambda r: (r.started or 0.0, r.run_id)),
    "status": ("status", "status", lambda r: (r.status, r.run_id)),
    "model": ("model", "model", lambda r: (r.model, r.run_id)),
    "r1": ("R@1", "r1", lambda r: (r.recall_at_1_unseen if r.recall_at_1_unseen is not None else -1.0, r.run_id)),
    "name": ("name", "run", lambda r: (r.name.lower(), r.run_id)),
}
NATURAL_DESC = {"started", "r1"}  # newest first, best first


def display_duration(info: RunInfo, now: float) -> float | None:
    """Running: up to now. Ended: to the terminal event, or the log's last write when the process vanished."""
    if info.started is None:
        return None
    end = info.ended
    if end is None and info.status != "running":
        try:
            end = RunFolder(info.path).events.stat().st_mtime
        except OSError:
            end = None
    return max(0.0, (end if end is not None else now) - info.started)


def model_name(info: RunInfo) -> str:
    """The model column: ``RunInfo.model_label`` (the name alone for the default family, ``kind:name``
    otherwise)."""
    return info.model_label


def matches(info: RunInfo, text: str) -> bool:
    """Filter: every word must appear in the run id, name, status, model, dataset or split."""
    hay = " ".join((info.run_id, info.name, info.status, info.model, info.dataset, info.split)).lower()
    return all(word in hay for word in text.lower().split())


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int


DATE_PREFIX = re.compile(r"^\d{8}-(?=\d{6}-)")  # the YYYYMMDD- of a run id (ofgr_core.runs.folder)


def run_label(run_id: str, width: int, *, short: bool = False) -> str:
    """The run id in ``width`` cells: whole, or (``short``: when not every id fits) without its date, since
    the time of day and the name still tell runs apart; cut at the end with ``…`` if still too long."""
    text = DATE_PREFIX.sub("", run_id) if short else run_id
    return fit(text, width)


def short_ids(runs: list[RunInfo], width: int) -> bool:
    """Whether the run column shows ids without their date (not every whole id fits ``width``)."""
    return any(len(r.run_id) > width for r in runs)


def fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def plan_columns(
    width: int, runs: list[RunInfo], *, sort_col: str = "", arrow: str = "", run_title: str = "run"
) -> list[Column]:
    """Columns for a terminal ``width`` cells wide.

    Always: status (with the compare mark), run, model, R@1 of unseen fine classes, duration. Then, as room
    allows: dataset and split where the runs differ in them, and the start time on wide terminals. The run
    column gets its natural width before the model column grows past 8 cells.
    """

    def label(key: str, text: str) -> str:
        if key != sort_col:
            return text
        first, _, rest = text.partition("\n")
        return f"{first}{arrow}" + (f"\n{rest}" if rest else "")

    r1_title, r1_w = ("R@1 unseen fine", 16) if width >= ONE_LINE_HEADER else ("unseen\nfine R@1", 8)
    status = Column("status", label("status", "status"), 14)
    r1 = Column("r1", label("r1", r1_title), r1_w)
    duration = Column("duration", "duration", 8)
    room = width - 2 - sum(c.width + PAD for c in (status, r1, duration)) - 2 * PAD  # 2: a scrollbar
    model_nat = max([len(model_name(r)) for r in runs] + [len("model") + 1])
    run_nat = max([len(r.run_id) for r in runs] + [len(run_title) + 1])
    if run_nat > room - min(model_nat, 8):  # not every whole id fits: all lose their date
        run_nat = max([len(DATE_PREFIX.sub("", r.run_id)) for r in runs] + [len(run_title) + 1])
    run_w = max(12, min(run_nat, room - min(model_nat, 8)))
    model_w = max(5, min(model_nat, room - run_w))
    left = room - run_w - model_w
    middle: list[Column] = []
    for key, values in (("dataset", {r.dataset for r in runs}), ("split", {r.split for r in runs})):
        w = max([len(v or "-") for v in values] + [len(key)])
        if len(values) > 1 and left >= w + PAD:
            middle.append(Column(key, key, w))
            left -= w + PAD
    cols = [status, Column("run", label("run", run_title), run_w), Column("model", label("model", "model"), model_w)]
    cols += [*middle, r1, duration]
    if width >= WIDE and left >= 11 + PAD:
        cols.append(Column("started", "started", 11))
    return cols


class RunsTable(NavTable):
    """The runs table: its own enter (select the row: results of a finished run, else its live view) is the
    one the key bar shows."""

    BINDINGS = [Binding("enter", "select_cursor", "Open")]


class RunsScreen(OfgrScreen[None]):
    """Runs table + details of the highlighted run. The app hands runs down with ``set_runs``."""

    HELP_TITLE = "Runs"
    # in order of importance: the key bar shows as many as fit, ? Help lists them all
    BINDINGS = [
        # not a priority binding: those run before keys typed earlier are handled ("G enter" must open the
        # last run); the table's own enter selects the row and on_data_table_row_selected opens it
        Binding("enter", "open_current", "Open"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("n", "launch", "New"),
        Binding("s", "stop", "Stop"),
        Binding("u", "resume", "Resume"),
        Binding("d", "delete", "Delete"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("r", "open('results')", "Results"),
        Binding("e", "open('embeddings')", "t-SNE"),
        Binding("f", "open('query')", "Query"),
        Binding("l", "open('live')", "Live"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("T", "sort('started')", "Sort by start time", show=False),
        Binding("U", "sort('status')", "Sort by status", show=False),
        Binding("M", "sort('model')", "Sort by model", show=False),
        Binding("A", "sort('r1')", "Sort by R@1", show=False),
        Binding("N", "sort('name')", "Sort by name", show=False),
        Binding("ctrl+r", "rescan", "Refresh", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunInfo] = []
        self.marked: list[Path] = []
        self.filter_text = ""
        self.sort_key = "started"
        self.sort_desc = True
        self.scan_error: str | None = None
        self._width = 0
        self._columns: list[Column] = []
        self._short = False  # run ids shown without their date
        self._keys: list[str] = []
        self._want: Path | None = None
        self._last_id: str | None = None  # the run the cursor was last on (kept while a filter matches none)
        self._filter_opening = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="runs-body"):
            yield Input(placeholder="filter: words in id, name, status, model, data (esc clears)", id="runs-filter")
            # no table.loading: its overlay could leave the table with no region once removed (blank list)
            yield RunsTable(id="runs-table", cursor_type="row", zebra_stripes=True)
            yield Static(Text("reading the runs folder…", style="dim"), id="run-detail")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#runs-filter", Input).display = False
        self.table.focus()
        self._build_columns()
        if self.ofgr.scanned:
            self.set_runs(self.ofgr.runs, self.ofgr.scan_error)

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._width:
            self._build_columns()

    # -------------------------------------------------------------------------------- data down
    @property
    def table(self) -> NavTable:
        return self.query_one("#runs-table", NavTable)

    def set_runs(self, runs: list[RunInfo], error: str | None = None) -> None:
        self.runs = runs
        self.scan_error = error
        if not self.query("#runs-table"):  # not composed yet, or being torn down: on_mount catches up
            return
        present = {r.path for r in runs}
        self.marked = [p for p in self.marked if p in present]
        if self._plan() != self._columns:  # a new run needs room (or differs in dataset or split)
            self._build_columns()
        else:
            self._fill()

    def select_run(self, run_dir: Path) -> None:
        """Move the cursor to ``run_dir`` now or, if it is not listed yet, as soon as it is."""
        self._want = run_dir
        self._fill()

    @property
    def shown(self) -> list[RunInfo]:
        """The runs shown: filtered, then sorted."""
        runs = [r for r in self.runs if matches(r, self.filter_text)] if self.filter_text else list(self.runs)
        key = SORTS[self.sort_key][2]
        return sorted(runs, key=key, reverse=self.sort_desc)

    @property
    def current_id(self) -> str | None:
        """The run id under the cursor, read from the table itself (never from a list that may be newer)."""
        t = self.table
        if t.row_count == 0:
            return None
        try:
            key = t.coordinate_to_cell_key(Coordinate(t.cursor_row, 0)).row_key.value
        except Exception:  # cursor outside the rows while the table is rebuilt
            return None
        return str(key) if key is not None else None

    @property
    def current(self) -> RunInfo | None:
        run_id = self.current_id
        return next((r for r in self.runs if r.run_id == run_id), None)

    def _plan(self) -> list[Column]:
        arrow = "▼" if self.sort_desc else "▲"
        title = "run (name)" if self.sort_key == "name" else "run"
        return plan_columns(self.size.width or 80, self.runs, sort_col=SORTS[self.sort_key][1], arrow=arrow,
                            run_title=title)  # fmt: skip

    def _build_columns(self) -> None:
        self._width = self.size.width or 80
        self._columns = self._plan()
        t = self.table
        before = self.current_id
        t.clear(columns=True)
        self._keys = []
        t.header_height = max(c.label.count("\n") + 1 for c in self._columns)
        for c in self._columns:
            t.add_column(c.label, key=c.key, width=c.width)
        if before is not None:
            self._want = next((r.path for r in self.runs if r.run_id == before), self._want)
        self._fill()

    def _cell(self, info: RunInfo, col: Column, now: float) -> str | Text:
        if col.key == "status":
            mark = Text("●", style="bold cyan") if info.path in self.marked else Text(" ")
            return mark + Text(" ") + status_text(info.status)
        if col.key == "run":
            return run_label(info.run_id, col.width, short=self._short)
        if col.key == "model":
            return fit(model_name(info), col.width)
        if col.key == "dataset":
            return fit(info.dataset or "-", col.width)
        if col.key == "split":
            return fit(info.split or "-", col.width)
        if col.key == "r1":
            return Text(fmt_pct(info.recall_at_1_unseen), justify="right")
        if col.key == "duration":
            return fmt_seconds(display_duration(info, now))
        return fmt_time(info.started, short=True)

    def _row(self, info: RunInfo) -> list[str | Text]:
        now = self.ofgr.clock()
        return [self._cell(info, c, now) for c in self._columns]

    def _fill(self) -> None:
        t = self.table
        if self.is_current and self.app.focused is None:  # a rebuilt table can lose focus: keys must reach it
            t.focus()
        if not t.columns:
            return
        shown = self.shown
        keys = [r.run_id for r in shown]
        current = self.current_id
        if current is None and self._last_id in keys:
            current = self._last_id  # back from a filter that matched nothing: the run it was on
        if self._want is not None and self._want.name in keys:
            current, self._want = self._want.name, None
        run_w = next((c.width for c in self._columns if c.key == "run"), 0)
        self._short = short_ids(self.runs, run_w)  # all runs, not only the shown: a filter keeps the ids
        rows = [self._row(r) for r in shown]
        if keys == self._keys:  # same runs in the same order: update changed cells in place (no flicker)
            for key, row in zip(keys, rows, strict=True):
                for col, value in zip(t.columns, row, strict=False):
                    old = t.get_cell(key, col)
                    if str(old) != str(value) or (isinstance(value, Text) and old != value):
                        t.update_cell(key, col, value)
        else:
            row_before = t.cursor_row
            t.clear()
            for key, row in zip(keys, rows, strict=True):
                t.add_row(*row, key=key)
            self._keys = keys
            if current not in keys and keys:
                # the selected run is gone (deleted, filtered out): stay on the same row number
                t.move_cursor(row=min(max(row_before, 0), len(keys) - 1))
        if current in keys:
            t.move_cursor(row=keys.index(current))
        self._show_detail()

    def on_data_table_row_highlighted(self, event: NavTable.RowHighlighted) -> None:
        self._show_detail()

    def on_data_table_row_selected(self, event: NavTable.RowSelected) -> None:
        # the table consumes enter itself; selecting a row opens the run
        event.stop()
        self.action_open_current()

    def _show_detail(self) -> None:
        detail = self.query_one("#run-detail", Static)
        info = self.current
        if info is not None:
            self._last_id = info.run_id
        if self.scan_error is not None:
            detail.update(Text(self.scan_error, style="bold red"))
            return
        if info is None:
            if self.runs and self.filter_text:
                detail.update(Text(f"No run matches {self.filter_text!r} (esc clears the filter).", "bold"))
                return
            detail.update(
                Text.assemble(
                    (f"No runs in {self.ofgr.runs_dir} yet. ", "bold"),
                    "Press ",
                    ("n", "bold cyan"),
                    " to launch one from a config, or start one in another shell with ",
                    ("ofgr run CONFIG", "bold"),
                    "; it appears here within seconds.",
                )
            )
            return
        detail.update(detail_text(info, max(20, (detail.size.width or self.size.width or 80) - 2), self.marked))

    # ----------------------------------------------------------------------------------- actions
    def _leave_filter(self) -> bool:
        """Enter in the filter keeps it and goes back to the list (``True``: the key was that)."""
        box = self.query_one("#runs-filter", Input)
        if not box.has_focus:
            return False
        self.table.focus()
        if not self.filter_text:
            box.display = False
        return True

    def action_open_current(self) -> None:
        """Enter: a finished run's results, any other run's live view."""
        if self._leave_filter():
            return
        info = self.current
        self.action_open("results" if info is not None and info.status == "finished" else "live")

    def action_open(self, view: str) -> None:
        if self._leave_filter():
            return
        info = self.current
        if info is None:
            self.notify("no run selected", severity="warning")
            return
        self.post_message(OpenRun(info.path, view))

    def action_mark(self) -> None:
        """Toggle the mark of the run under the cursor; the cursor stays (space only marks)."""
        info = self.current
        if info is None:
            return
        if info.path in self.marked:
            self.marked.remove(info.path)
        elif len(self.marked) >= 4:
            self.notify("compare takes at most 4 runs", severity="warning")
            return
        else:
            self.marked.append(info.path)
        self._fill()

    def action_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.display = True
        box.focus()
        self._filter_opening = True  # focus moves on the next refresh; keys typed before then are the filter's

    def action_clear_filter(self) -> None:
        """Esc on the list: clear a filter that is set (the cursor stays on its run)."""
        box = self.query_one("#runs-filter", Input)
        if not self.filter_text and not box.display:
            return
        box.value = ""
        self.filter_text = ""
        box.display = False
        self.table.focus()
        self._fill()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "runs-filter":
            self.filter_text = event.value.strip()
            self._fill()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "runs-filter":
            event.stop()
            self.table.focus()
            if not self.filter_text:
                event.input.display = False

    def on_key(self, event: events.Key) -> None:
        box = self.query_one("#runs-filter", Input)
        if event.key == "slash" and not box.has_focus and not self._filter_opening:
            # opened here, not by the binding: binding actions run later, after keys already queued
            event.stop()
            event.prevent_default()
            self.action_filter()
            return
        if self._filter_opening and not box.has_focus and event.is_printable and event.character:
            # typed right after / (a fast typist, a paste, tmux send-keys): text, never a key binding
            event.stop()
            event.prevent_default()
            box.insert_text_at_cursor(event.character)
            return
        self._filter_opening = False
        if not box.has_focus:
            return
        if event.key == "escape":  # clear and close the filter
            event.stop()
            event.prevent_default()
            self.action_clear_filter()
        elif event.key in ("down", "up"):  # the arrows move the list, the filter stays as typed
            event.stop()
            event.prevent_default()
            self.table.focus()
            if event.key == "down":
                self.table.action_cursor_down()
            else:
                self.table.action_cursor_up()

    def action_sort(self, key: str) -> None:
        if key == self.sort_key:
            self.sort_desc = not self.sort_desc
        else:
            self.sort_key, self.sort_desc = key, key in NATURAL_DESC
        self._build_columns()
        self.notify(f"sorted by {SORTS[key][0]} ({'descending' if self.sort_desc else 'ascending'})", timeout=2)

    def action_compare(self) -> None:
        dirs = list(self.marked)
        if len(dirs) == 1 and self.current is not None and self.current.path not in dirs:
            dirs.append(self.current.path)
        if not 2 <= len(dirs) <= 4:
            self.notify("mark 2-4 runs with space, then press c", severity="warning")
            return
        not_done = [d.name for d in dirs if not RunFolder(d).metrics.exists()]
        if not_done:
            self.notify(f"not finished (no metrics.json): {', '.join(not_done)}", severity="warning")
            return
        self.post_message(CompareRuns(dirs))

    def action_launch(self) -> None:
        from ofgr_tui.screens.launch import LaunchDialog

        def done(result: tuple[Path, list[str]] | None) -> None:
            if result is not None:
                self.post_message(LaunchRun(*result))

        self.app.push_screen(LaunchDialog(self.ofgr.configs_dir), done)

    def action_stop(self) -> None:
        from ofgr_tui.livestate import stop_note
        from ofgr_tui.screens.confirm import ConfirmDialog

        info = self.current
        if info is None:
            return
        if info.status != "running":
            self.notify(f"{info.run_id} is not running ({info.status})", severity="warning")
            return
        path = info.path

        def done(ok: bool | None) -> None:
            if ok:
                self.post_message(StopRun(path))

        self.app.push_screen(
            ConfirmDialog(f"Stop {info.run_id}?", f"{stop_note(path)}.", confirm="Stop"),
            done,
        )

    def action_resume(self) -> None:
        info = self.current
        if info is None:
            return
        if info.live:
            self.notify(f"{info.run_id} is running ({info.reason}): not resumed", severity="warning")
            return
        if info.status not in RESUMABLE:
            self.notify(
                f"only interrupted, stale or failed runs can be resumed ({info.run_id} is {info.status})",
                severity="warning",
            )
            return
        self.post_message(ResumeRun(info.path))

    def action_delete(self) -> None:
        from ofgr_tui.screens.confirm import ConfirmDialog

        info = self.current
        if info is None:
            return
        if info.live:
            self.notify(f"{info.run_id} is running: stop it first (s)", severity="warning")
            return
        path = info.path

        def done(ok: bool | None) -> None:
            if ok:
                self.post_message(DeleteRun(path))

        self.app.push_screen(
            ConfirmDialog(
                f"Delete {info.run_id}?",
                "This removes the run folder and everything in it: checkpoints, embeddings, metrics.",
                confirm="Delete",
                danger=True,
            ),
            done,
        )

    def action_rescan(self) -> None:
        self.ofgr.rescan()


def fit_parts(parts: list[str], width: int, sep: str = "  ") -> str:
    """As many whole ``parts`` as fit in ``width`` cells, then ``+N more`` (never a word cut in two)."""
    out = ""
    for i, part in enumerate(parts):
        candidate = part if not out else out + sep + part
        rest = len(parts) - i - 1
        tail = f"{sep}+{rest} more" if rest else ""
        if len(candidate) + len(tail) > width:
            more = f"+{len(parts) - i} more"
            return (out + sep + more) if out else fit(part, width)
        out = candidate
    return out


def detail_text(info: RunInfo, width: int, marked: list[Path]) -> Text:
    """The detail pane of one run: whole words on every line, at most 5 lines."""
    lines = Text()
    path = str(info.path)
    lines.append(("…" + path[-(width - 1) :] if len(path) > width else path) + "\n", style="dim")
    cfg = info.config or {}
    train = cfg.get("train", {}) if isinstance(cfg.get("train"), dict) else {}
    parts = [
        f"name {info.name or '-'}",
        f"model {info.model or '-'}",
        f"data {info.dataset or '-'}",
        f"split {info.split or '-'}",
        f"epochs {train.get('epochs', '-')}",
    ]
    lines.append("  ".join(parts) + "\n")  # may wrap: between parts, never inside a word
    overrides = run_overrides(info.path)
    if overrides:
        lines.append(fit_parts(["set"] + overrides, width, sep=" ") + "\n", style="cyan")
    if info.status == "failed":
        lines.append(f"error: {info.error or 'unknown'}", style="bold red")
    elif info.status == "broken":
        lines.append(f"broken: {info.reason}", style="bold red")
    elif info.status == "stale":
        lines.append(f"stale: {info.reason} (u = resume)", style="magenta")
    elif info.metrics:
        m = info.metrics
        bits = []
        for split in ("unseen", "seen"):
            levels = []
            for level in ("fine", "coarse"):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    levels.append(f"{level} {100 * float(m[split][level]['recall@1']):.1f}")
            if levels:
                bits.append(f"{split} " + " ".join(levels))
        text = ("R@1 " + "  ·  ".join(bits)) if bits else f"{METRICS_FILE} has no recall@1"
        lines.append(fit(text, width), style="green")
    elif info.status == "running":
        lines.append(f"running ({info.reason}): enter = live view, s = stop", style="yellow")
    elif info.status == "interrupted":
        lines.append("interrupted: u = resume (ofgr resume)", style="magenta")
    if marked:
        lines.append(f"\nmarked for compare: {len(marked)} (c compares, space unmarks)", style="cyan")
    return lines
