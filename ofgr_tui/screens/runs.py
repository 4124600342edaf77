"""The first screen: every run in the runs folder, refreshed as runs appear or change.

The cursor and the marks belong to run ids, not row numbers: a rescan that adds, removes or reorders runs
keeps the same run selected. ``/`` filters, ``T``/``U``/``M``/``A``/``N`` sort (again: reverse).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

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

WIDE = 110  # columns from which dataset, split and start time get their own columns
RESUMABLE = ("interrupted", "stale", "failed")

# sort key -> (label, column key, function of a run); the first press sorts the natural way round
SORTS = {
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


class RunsTable(NavTable):
    """The runs table: its own enter (select the row, which opens the live view) is the one the key bar shows."""

    BINDINGS = [Binding("enter", "select_cursor", "Live")]


class RunsScreen(OfgrScreen[None]):
    """Runs table + details of the highlighted run. The app hands runs down with ``set_runs``."""

    HELP_TITLE = "Runs"
    # in order of importance: the key bar shows as many as fit, ? Help lists them all
    BINDINGS = [
        # not a priority binding: those run before keys typed earlier are handled ("G enter" must open the
        # last run); the table's own enter selects the row and on_data_table_row_selected opens it
        Binding("enter", "open('live')", "Live"),
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
        self._wide: bool | None = None
        self._width = 0
        self._keys: list[str] = []
        self._want: Path | None = None
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
        if self.app.scanned:  # type: ignore[attr-defined]
            self.set_runs(self.app.runs, self.app.scan_error)  # type: ignore[attr-defined]

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
        self._fill()

    def select_run(self, run_dir: Path) -> None:
        """Move the cursor to ``run_dir`` now or, if it is not listed yet, as soon as it is."""
        self._want = run_dir
        self._fill()

    @property
    def visible(self) -> list[RunInfo]:
        """The runs shown: filtered, then sorted."""
        runs = [r for r in self.runs if matches(r, self.filter_text)] if self.filter_text else list(self.runs)
        key = SORTS[self.sort_key][2]
        return sorted(runs, key=key, reverse=self.sort_desc)  # type: ignore[arg-type]

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

    def _build_columns(self) -> None:
        width = self.size.width or 80
        self._width = width
        self._wide = width >= WIDE
        t = self.table
        before = self.current_id
        t.clear(columns=True)
        self._keys = []
        # widths (plus 2 cells of padding each, and 2 for a scrollbar) add up to the terminal width
        fixed = {"mark": 1, "status": 13, "model": 14, "r1": 5, "duration": 8}
        if self._wide:
            fixed |= {"model": 16, "dataset": 10, "split": 8, "r1": 10, "started": 11}
        run_w = max(20, min(34, width - sum(fixed.values()) - 2 * (len(fixed) + 1) - 2))
        arrow = "▼" if self.sort_desc else "▲"
        sort_col = SORTS[self.sort_key][1]

        def label(key: str, text: str) -> str:
            return f"{text}{arrow}" if key == sort_col else text

        t.add_column("", key="mark", width=fixed["mark"])
        t.add_column(label("status", "status"), key="status", width=fixed["status"])
        t.add_column(label("run", "run" if self.sort_key != "name" else "run (name)"), key="run", width=run_w)
        t.add_column(label("model", "model"), key="model", width=fixed["model"])
        if self._wide:
            t.add_column("dataset", key="dataset", width=fixed["dataset"])
            t.add_column("split", key="split", width=fixed["split"])
        t.add_column(label("r1", "R@1 unseen" if self._wide else "R@1"), key="r1", width=fixed["r1"])
        t.add_column("duration", key="duration", width=fixed["duration"])
        if self._wide:  # narrow terminals: the run id already starts with the start time
            t.add_column("started", key="started", width=fixed["started"])
        if before is not None:
            self._want = next((r.path for r in self.runs if r.run_id == before), self._want)
        self._fill()

    def _row(self, info: RunInfo) -> list[str | Text]:
        now = self.app.clock()  # type: ignore[attr-defined]
        mark = Text("●", style="bold cyan") if info.path in self.marked else Text(" ")
        r1 = Text(fmt_pct(info.recall_at_1_unseen), justify="right")
        row: list[str | Text] = [mark, status_text(info.status), info.run_id, model_name(info)]
        if self._wide:
            row += [info.dataset or "-", info.split or "-"]
        row += [r1, fmt_seconds(display_duration(info, now))]
        if self._wide:
            row.append(fmt_time(info.started, short=True))
        return row

    def _fill(self) -> None:
        t = self.table
        if self.is_current and self.app.focused is None:  # a rebuilt table can lose focus: keys must reach it
            t.focus()
        if not t.columns:
            return
        shown = self.visible
        keys = [r.run_id for r in shown]
        current = self.current_id
        if self._want is not None and self._want.name in keys:
            current, self._want = self._want.name, None
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
        # the table consumes enter itself; selecting a row opens its live view
        event.stop()
        self.action_open("live")

    def _show_detail(self) -> None:
        detail = self.query_one("#run-detail", Static)
        info = self.current
        runs_dir = self.app.runs_dir  # type: ignore[attr-defined]
        if self.scan_error is not None:
            detail.update(Text(self.scan_error, style="bold red"))
            return
        if info is None:
            if self.runs and self.filter_text:
                detail.update(Text(f"No run matches {self.filter_text!r} (esc in the filter clears it).", "bold"))
                return
            detail.update(
                Text.assemble(
                    (f"No runs in {runs_dir} yet. ", "bold"),
                    "Press ",
                    ("n", "bold cyan"),
                    " to launch one from a config, or start one in another shell with ",
                    ("ofgr run CONFIG", "bold"),
                    "; it appears here within seconds.",
                )
            )
            return
        lines = Text()
        lines.append(f"{info.path}\n", style="dim")
        cfg = info.config or {}
        train = cfg.get("train", {}) if isinstance(cfg.get("train"), dict) else {}
        parts = [
            f"name {info.name or '-'}",
            f"model {info.model or '-'}",
            f"data {info.dataset or '-'}",
            f"split {info.split or '-'}",
            f"epochs {train.get('epochs', '-')}",
        ]
        lines.append("  ".join(parts) + "\n")
        overrides = run_overrides(info.path)
        if overrides:
            lines.append("set " + " ".join(overrides) + "\n", style="cyan")
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
                for level in ("fine", "coarse"):
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        bits.append(f"R@1 {split}/{level} {100 * float(m[split][level]['recall@1']):.1f}")
            lines.append("  ".join(bits) or f"{METRICS_FILE} has no recall@1", style="green")
        elif info.status == "running":
            lines.append(f"running ({info.reason}): enter = live view, s = clean stop", style="yellow")
        elif info.status == "interrupted":
            lines.append("interrupted: u = resume (ofgr resume)", style="magenta")
        if self.marked:
            lines.append(
                f"\nmarked for compare: {len(self.marked)} (c to compare, space to unmark)", style="cyan"
            )
        detail.update(lines)

    # ----------------------------------------------------------------------------------- actions
    def action_open(self, view: str) -> None:
        box = self.query_one("#runs-filter", Input)
        if box.has_focus:  # enter in the filter keeps it and goes back to the list
            self.table.focus()
            if not self.filter_text:
                box.display = False
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
            box.value = ""
            self.filter_text = ""
            box.display = False
            self.table.focus()
            self._fill()
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

        self.app.push_screen(LaunchDialog(self.app.configs_dir), done)  # type: ignore[attr-defined]

    def action_stop(self) -> None:
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
            ConfirmDialog(
                f"Stop {info.run_id}?",
                "It checkpoints and stops after the current step; resume it later with u "
                f"or `ofgr resume {info.run_id}`.",
                confirm="Stop",
            ),
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
        self.app.rescan()  # type: ignore[attr-defined]
