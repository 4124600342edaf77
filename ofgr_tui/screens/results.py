"""Final results of a finished run, from its ``metrics.json``: recall tables with confidence intervals,
MAP@R, zero-shot text->image (CLIP runs), best and worst classes, timings.

The page scrolls (``j``/``k``, PgUp/PgDn, ``g``/``G``); ``t`` jumps to the text->image block, ``c`` to the
classes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Header, Static

from ofgr_core.common.errors import OfgrError
from ofgr_core.reports.compare import text_spaces
from ofgr_core.runs.folder import METRICS_FILE, RunFolder
from ofgr_core.runs.state import load_run
from ofgr_tui.format import fmt_count, fmt_seconds
from ofgr_tui.messages import OpenRun
from ofgr_tui.screens.base import OfgrScreen
from ofgr_tui.widgets.keybar import KeyBar

SPLITS = ("unseen", "seen")
LEVELS = ("fine", "coarse")
N_CLASSES = 5


def metric_names(metrics: dict[str, Any]) -> list[str]:
    """Every metric in any split/level block: recall@K by K, then the others in a fixed order."""
    names: set[str] = set()
    for split in SPLITS:
        for level in LEVELS:
            block = (metrics.get(split) or {}).get(level) or {}
            if isinstance(block, dict):
                names.update(k for k, v in block.items() if isinstance(v, (int, float)) or v is None)
    order = {"map@r": 0, "r_precision": 1, "map": 2}

    def key(n: str) -> tuple[int, float, str]:
        m = re.match(r"recall@(\d+)$", n)
        return (0, int(m.group(1)), n) if m else (1, order.get(n, 9), n)

    return sorted(names, key=key)


def cell(value: Any, ci: Any) -> Text:
    if not isinstance(value, (int, float)):
        return Text("-", style="dim", justify="right")
    out = Text(f"{100 * value:5.1f}", justify="right")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        out.append(f" ±{100 * (ci[1] - ci[0]) / 2:.1f}", style="dim")
    return out


def per_class_extremes(
    block: dict[str, Any], n: int = N_CLASSES, metric: str = "recall@1"
) -> tuple[list[tuple[str, float, int]], list[tuple[str, float, int]]]:
    """(best, worst) classes by ``metric`` from a ``per_class`` mapping ``{name: {"n", metric, ...}}``."""
    per = block.get("per_class") if isinstance(block, dict) else None
    rows = []
    if isinstance(per, dict):
        for name, v in per.items():
            if isinstance(v, dict) and isinstance(v.get(metric), (int, float)):
                rows.append((str(name), float(v[metric]), int(v.get("n", 0) or 0)))
            elif isinstance(v, (int, float)):
                rows.append((str(name), float(v), 0))
    rows.sort(key=lambda r: (-r[1], r[0]))
    best = rows[:n]
    rest = rows[n:]  # a class is never both best and worst
    worst = sorted(rest[-n:], key=lambda r: (r[1], r[0]))
    return best, worst


class ResultsScreen(OfgrScreen[None]):
    HELP_TITLE = "Results"
    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("t", "jump('#t2i')", "Text→image"),
        Binding("c", "jump('#classes')", "Classes"),
        Binding("l", "view('live')", "Live"),
        Binding("e", "view('embeddings')", "t-SNE"),
        Binding("f", "view('query')", "Query"),
        Binding("j,down", "scroll(1)", "Scroll down", show=False),
        Binding("k,up", "scroll(-1)", "Scroll up", show=False),
        Binding("g,home", "scroll_to(0)", "Top", show=False),
        Binding("G,end", "scroll_to(-1)", "Bottom", show=False),
    ]

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.metrics: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="results-body"):
            yield Static(id="results-summary")
            yield DataTable(id="recall-table", cursor_type="none", zebra_stripes=True)
            yield Static(id="results-extra")
            with Vertical(id="t2i"):
                yield Static(id="t2i-title")
                yield DataTable(id="t2i-table", cursor_type="none", zebra_stripes=True)
            with Horizontal(id="classes"):
                yield DataTable(id="best-classes", cursor_type="none")
                yield DataTable(id="worst-classes", cursor_type="none")
            yield Static(id="timings")
        yield KeyBar()

    def on_mount(self) -> None:
        self.title = self.run_dir.name
        self.sub_title = "results"
        self.load()

    def _why_no_metrics(self) -> Text:
        """The honest reason there is nothing to show, from the shared run state."""
        try:
            info = load_run(self.run_dir)
        except (OfgrError, OSError) as e:
            return Text(str(e), style="bold red")
        if info.status == "broken":
            return Text(f"{self.run_dir.name} is broken: {info.reason}", style="bold red")
        if info.status == "running":
            return Text(f"{self.run_dir.name} is still running: results appear when it finishes (l: live view).",
                        style="yellow")  # fmt: skip
        if info.status == "failed":
            return Text(f"{self.run_dir.name} failed: {info.error or 'unknown error'} (l: live view).", style="red")
        why = {"interrupted": "was stopped before the end", "stale": "stopped without an end event (killed?)"}
        return Text(
            f"No {METRICS_FILE} in {self.run_dir.name}: it {why.get(info.status, 'has not finished')}; "
            "u on the runs list resumes it.",
            style="yellow",
        )

    def load(self) -> None:
        from ofgr_core.runs.validate import METRICS, read_run_json

        # checked like every reader's (a string where a table was, NaN, deep nesting): broken, not a traceback
        m, _ = read_run_json(RunFolder(self.run_dir).metrics, METRICS)
        self.metrics = m if isinstance(m, dict) else None
        summary = self.query_one("#results-summary", Static)
        self.refresh_bindings()
        if self.metrics is None:
            summary.update(self._why_no_metrics())
            for w in ("#recall-table", "#classes", "#t2i"):
                self.query_one(w).display = False
            return
        m = self.metrics
        model, data, train = m.get("model") or {}, m.get("data") or {}, m.get("train") or {}
        s = Text()
        s.append(f"{model.get('kind', '?')}:{model.get('name', '?')}", style="bold")
        s.append(f"  dim {model.get('embed_dim', '-')}  params {fmt_count(model.get('params'))}\n")
        s.append(
            f"data {data.get('dataset', '-')}: {fmt_count(data.get('n_images'))} images, "
            f"{data.get('n_fine_seen', '-')} seen / {data.get('n_fine_unseen', '-')} unseen fine classes\n"
        )
        s.append(
            f"train {train.get('epochs', '-')} epochs (best {train.get('best_epoch', '-')}), "
            f"{fmt_count(train.get('images_seen'))} images, {fmt_seconds(train.get('seconds'))}"
        )
        index = m.get("index") or {}
        if index:
            s.append(f"   index {index.get('type', '?')}/{index.get('device', '?')}")
        for w in m.get("warnings") or []:  # degenerate embeddings, a lowered batch: as loud as in `ofgr show`
            s.append(f"\nwarning: {w}", style="bold yellow")
        summary.update(s)
        self._show_recall(m)
        self._show_extras(m)
        self._show_text_to_image(m)
        self._show_classes(m)
        self._show_timings(m)

    def _show_recall(self, m: dict[str, Any]) -> None:
        t = self.query_one("#recall-table", DataTable)
        t.clear(columns=True)
        cols = [(s, lv) for s in SPLITS for lv in LEVELS if isinstance(m.get(s), dict)]
        t.add_column("% (±95% CI)", key="metric")
        for s, lv in cols:
            t.add_column(f"{s} {lv}", key=f"{s}/{lv}")
        for name in metric_names(m):
            row: list[Text | str] = [name]
            for s, lv in cols:
                block = m[s].get(lv) or {}
                ci = ((m[s].get("ci95") or {}).get(lv) or {}).get(name)
                row.append(cell(block.get(name), ci))
            t.add_row(*row, key=name)
        t.styles.height = t.row_count + 1

    def _show_extras(self, m: dict[str, Any]) -> None:
        out = Text()
        for s in SPLITS:
            b = m.get(s)
            if not isinstance(b, dict):
                continue
            out.append(f"{s}: ", style="bold")
            out.append(f"{b.get('n_queries', '-')} queries, {b.get('n_gallery', '-')} gallery")
            if b.get("n_skipped_queries"):
                out.append(f", {b['n_skipped_queries']} skipped", style="yellow")
            rcwf = b.get("right_coarse_wrong_fine@1")
            if isinstance(rcwf, (int, float)):
                out.append(f"   right coarse, wrong fine @1: {100 * rcwf:.1f}%")
            out.append("\n")
        self.query_one("#results-extra", Static).update(out)

    def _show_text_to_image(self, m: dict[str, Any]) -> None:
        """Zero-shot text->image per image space (CLIP runs): the same metrics as image->image, class-name
        prompts as queries. Hidden for runs without it."""
        cols = [(s, lv) for s in SPLITS for lv in LEVELS]
        spaces: dict[str, dict[str, dict[str, Any]]] = {}
        free: str | None = None
        for s in SPLITS:
            for space, block, is_free in text_spaces(m.get(s)):
                spaces.setdefault(space, {})[s] = block
                free = space if is_free else free
        box = self.query_one("#t2i")
        box.display = bool(spaces)
        if not spaces:
            return
        title = Text("text→image ", style="bold")
        title.append("zero-shot: class-name prompts as queries, ±95% CI", style="dim")
        if free is not None and len(spaces) > 1:
            title.append(f"; free text searches the {free} space (*)", style="dim")
        self.query_one("#t2i-title", Static).update(title)
        t = self.query_one("#t2i-table", DataTable)
        t.clear(columns=True)
        cols = [(s, lv) for s, lv in cols if any(isinstance(b.get(s, {}).get(lv), dict) for b in spaces.values())]
        t.add_column("%", key="metric")
        for s, lv in cols:
            t.add_column(f"{s} {lv}", key=f"{s}/{lv}")
        for space, by_split in spaces.items():
            for name in ("recall@1", "recall@5", "map@r"):
                if not any(isinstance((b.get(lv) or {}).get(name), (int, float)) for b in by_split.values()
                           for lv in LEVELS):  # fmt: skip
                    continue
                star = "*" if space == free and len(spaces) > 1 else ""
                label = name if space == "-" else f"{space}{star} {name}"  # "-": a block without spaces
                row: list[Text | str] = [label]
                for s, lv in cols:
                    block = by_split.get(s) or {}
                    ci = ((block.get("ci95") or {}).get(lv) or {}).get(name)
                    row.append(cell((block.get(lv) or {}).get(name), ci))
                t.add_row(*row, key=f"{space}/{name}")
        t.styles.height = t.row_count + 1

    def _show_classes(self, m: dict[str, Any]) -> None:
        block = m.get("unseen") if isinstance(m.get("unseen"), dict) else m.get("seen")
        best, worst = per_class_extremes(block or {})
        split = "unseen" if isinstance(m.get("unseen"), dict) else "seen"
        for wid, rows, title in (
            ("#best-classes", best, f"best {split} classes"),
            ("#worst-classes", worst, f"worst {split} classes"),
        ):
            t = self.query_one(wid, DataTable)
            t.clear(columns=True)
            t.add_column(title, key="name")
            t.add_column("R@1", key="r1")
            t.add_column("n", key="n")
            for name, v, n in rows:
                t.add_row(name, Text(f"{100 * v:.1f}", justify="right"), Text(str(n or "-"), justify="right"))
            t.display = bool(rows)
            t.styles.height = len(rows) + 1
        self.query_one("#classes").display = bool(best)

    def _show_timings(self, m: dict[str, Any]) -> None:
        timings = m.get("timings") or {}
        if not isinstance(timings, dict) or not timings:
            self.query_one("#timings", Static).update("")
            return
        total = sum(v for v in timings.values() if isinstance(v, (int, float)))
        out = Text("timings ", style="bold")
        out.append(
            "  ".join(f"{k} {fmt_seconds(v)}" for k, v in timings.items() if isinstance(v, (int, float)))
        )
        out.append(f"   total {fmt_seconds(total)}", style="bold")
        self.query_one("#timings", Static).update(out)

    def action_view(self, view: str) -> None:
        self.post_message(OpenRun(self.run_dir, view))

    def action_scroll(self, rows: int) -> None:
        self.query_one("#results-body", VerticalScroll).scroll_relative(y=rows, animate=False)

    def action_scroll_to(self, where: int) -> None:
        body = self.query_one("#results-body", VerticalScroll)
        body.scroll_to(y=0 if where == 0 else body.max_scroll_y, animate=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """No text->image key for runs without such results (the key bar then has room for others)."""
        if action == "jump" and parameters == ("#t2i",) and self.metrics is not None:
            return any(text_spaces(self.metrics.get(s)) for s in SPLITS)
        return True

    def action_jump(self, selector: str) -> None:
        """Bring a block to the top of the page (or say that this run has none)."""
        target = self.query_one(selector)
        if not target.display:
            what = {"#t2i": "no text→image results (not a CLIP run)", "#classes": "no per-class results"}
            self.notify(f"{self.run_dir.name}: {what.get(selector, 'nothing there')}", severity="warning")
            return
        self.query_one("#results-body", VerticalScroll).scroll_to_widget(target, animate=False, top=True)
