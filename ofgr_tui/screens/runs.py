"""The first screen: every run in the runs folder, refreshed as runs appear or change."""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Static

from ofgr_core.runs import RunFolder, RunInfo
from ofgr_tui.format import fmt_pct, fmt_seconds, fmt_time, status_text
from ofgr_tui.messages import CompareRuns, DeleteRun, LaunchRun, OpenRun, ResumeRun, StopRun
from ofgr_tui.screens.base import OfgrScreen

WIDE = 110  # columns from which the full table fits


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


class RunsScreen(OfgrScreen[None]):
    """Runs table + details of the highlighted run. The app hands runs down with ``set_runs``."""

    BINDINGS = [
        Binding("enter", "open('live')", "Live", priority=True),
        Binding("r", "open('results')", "Results"),
        Binding("e", "open('embeddings')", "t-SNE"),
        Binding("f", "open('query')", "Query"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("n", "launch", "New"),
        Binding("s", "stop", "Stop"),
        Binding("u", "resume", "Resume", show=False),
        Binding("d", "delete", "Del"),
        Binding("ctrl+r", "rescan", "Refresh", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunInfo] = []
        self.marked: list[Path] = []
        self._wide: bool | None = None
        self._keys: list[str] = []
        self._want: Path | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="runs-body"):
            table: DataTable[str | Text] = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
            table.loading = True
            yield table
            yield Static(id="run-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._build_columns()
        if self.app.scanned:  # type: ignore[attr-defined]
            self.set_runs(self.app.runs)  # type: ignore[attr-defined]

    def on_resize(self, event: events.Resize) -> None:
        if (event.size.width >= WIDE) != self._wide:
            self._build_columns()

    # -------------------------------------------------------------------------------- data down
    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#runs-table", DataTable)

    def set_runs(self, runs: list[RunInfo]) -> None:
        self.runs = runs
        if not self.query("#runs-table"):  # not composed yet, or being torn down: on_mount catches up
            return
        present = {r.path for r in runs}
        self.marked = [p for p in self.marked if p in present]
        if self.table.loading:
            self.table.loading = False
            self.table.focus()  # a loading widget cannot hold focus: give it back once the list is there
        self._fill()

    def select_run(self, run_dir: Path) -> None:
        """Move the cursor to ``run_dir`` now or, if it is not listed yet, as soon as it is."""
        self._want = run_dir
        self._fill()

    @property
    def current(self) -> RunInfo | None:
        if not self.runs or self.table.row_count == 0:
            return None
        row = self.table.cursor_row
        return self.runs[row] if 0 <= row < len(self.runs) else None

    def _build_columns(self) -> None:
        self._wide = self.size.width >= WIDE if self.size.width else False
        t = self.table
        t.clear(columns=True)
        self._keys = []
        t.add_column("", key="mark", width=1)
        t.add_column("status", key="status", width=13)
        t.add_column("run", key="run", width=28 if self._wide else 24)
        t.add_column("model", key="model", width=16 if self._wide else 14)
        if self._wide:
            t.add_column("dataset", key="dataset", width=12)
            t.add_column("split", key="split", width=8)
        t.add_column("R@1 unseen" if self._wide else "R@1", key="r1", width=10 if self._wide else 5)
        t.add_column("duration", key="duration", width=8)
        if self._wide:  # narrow terminals: the run id already starts with the start time
            t.add_column("started", key="started", width=16)
        self._fill()

    def _row(self, info: RunInfo) -> list[str | Text]:
        now = self.app.clock()  # type: ignore[attr-defined]
        mark = Text("●", style="bold cyan") if info.path in self.marked else Text(" ")
        r1 = Text(fmt_pct(info.recall_at_1_unseen), justify="right")
        row: list[str | Text] = [mark, status_text(info.status), info.run_id, info.model or "-"]
        if self._wide:
            row += [info.dataset or "-", info.split or "-"]
        row += [r1, fmt_seconds(display_duration(info, now))]
        if self._wide:
            row.append(fmt_time(info.started))
        return row

    def _fill(self) -> None:
        t = self.table
        if not t.columns:
            return
        keys = [r.run_id for r in self.runs]
        current = self.current.run_id if self.current else None
        if self._want is not None and self._want.name in keys:
            current, self._want = self._want.name, None
        rows = [self._row(r) for r in self.runs]
        if keys == self._keys:  # same runs in the same order: update cells in place (no flicker, no jump)
            for key, row in zip(keys, rows, strict=True):
                for col, value in zip(t.columns, row, strict=False):
                    if str(t.get_cell(key, col)) != str(value) or col == "status":
                        t.update_cell(key, col, value)
        else:
            t.clear()
            for key, row in zip(keys, rows, strict=True):
                t.add_row(*row, key=key)
            self._keys = keys
        if current in keys:
            t.move_cursor(row=keys.index(current))
        self._show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        # the table consumes enter itself; selecting a row opens its live view
        event.stop()
        self.action_open("live")

    def _show_detail(self) -> None:
        detail = self.query_one("#run-detail", Static)
        info = self.current
        if info is None:
            runs_dir = self.app.runs_dir  # type: ignore[attr-defined]
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
        if info.status == "failed":
            lines.append(f"error: {info.error or 'unknown'}", style="bold red")
        elif info.metrics:
            m = info.metrics
            bits = []
            for split in ("unseen", "seen"):
                for level in ("fine", "coarse"):
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        bits.append(f"R@1 {split}/{level} {100 * float(m[split][level]['recall@1']):.1f}")
            lines.append("  ".join(bits) or "metrics.json has no recall@1", style="green")
        elif info.status == "running":
            lines.append("running: enter = live view, s = clean stop (resumable)", style="yellow")
        elif info.status == "interrupted":
            lines.append("interrupted: u = resume (ofgr resume)", style="magenta")
        if self.marked:
            lines.append(
                f"\nmarked for compare: {len(self.marked)} (c to compare, space to unmark)", style="cyan"
            )
        detail.update(lines)

    # ----------------------------------------------------------------------------------- actions
    def action_open(self, view: str) -> None:
        info = self.current
        if info is None:
            self.notify("no run selected", severity="warning")
            return
        self.post_message(OpenRun(info.path, view))

    def action_mark(self) -> None:
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
        if self.table.cursor_row < self.table.row_count - 1:
            self.table.move_cursor(row=self.table.cursor_row + 1)

    def action_compare(self) -> None:
        dirs = list(self.marked)
        if len(dirs) == 1 and self.current is not None and self.current.path not in dirs:
            dirs.append(self.current.path)
        if not 2 <= len(dirs) <= 4:
            self.notify("mark 2-4 runs with space, then press c", severity="warning")
            return
        not_done = [d.name for d in dirs if not (d / "metrics.json").exists()]
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
        if info.status != "interrupted":
            self.notify(
                f"only interrupted runs can be resumed ({info.run_id} is {info.status})", severity="warning"
            )
            return
        self.post_message(ResumeRun(info.path))

    def action_delete(self) -> None:
        from ofgr_tui.screens.confirm import ConfirmDialog

        info = self.current
        if info is None:
            return
        if info.status == "running":
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
