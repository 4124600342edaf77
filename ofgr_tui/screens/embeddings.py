"""In-terminal t-SNE of a run's stored embeddings, coloured by coarse or fine class, seen vs unseen by marker.

The projection runs in a worker (scikit-learn is imported there) and is cached in the run folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Header, Static
from textual.worker import Worker

from ofgr_core.tsne import TsneResult
from ofgr_tui.messages import OpenRun
from ofgr_tui.screens.base import OfgrScreen
from ofgr_tui.widgets.keybar import KeyBar
from ofgr_tui.widgets.plots import ScatterPlot

# 256-colour indices that stay apart on dark and light backgrounds
COLORS = (51, 201, 46, 226, 33, 196, 208, 129, 48, 220, 99, 160, 39, 118, 213, 172, 27, 190, 124, 87)
MARKERS = {"seen": "•", "unseen": "x"}
SPLITS = ("all", "unseen", "seen")
LEGEND_ROWS = 12


@dataclass(frozen=True)
class Group:
    label: str
    color: int
    split: str
    xs: list[float]
    ys: list[float]


def group_points(result: TsneResult, by: str) -> tuple[list[Group], list[tuple[str, int, int]]]:
    """Points grouped by (class, split); classes ordered by frequency, the most frequent get colours first.

    Returns the groups and the legend rows ``(class, colour, count)``.
    """
    labels = result.coarse if by == "coarse" else result.fine
    counts = Counter(labels)
    order = sorted(counts, key=lambda c: (-counts[c], c))
    color = {c: COLORS[i % len(COLORS)] for i, c in enumerate(order)}
    buckets: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for (x, y), lab, split in zip(result.xy.tolist(), labels, result.split, strict=True):
        xs, ys = buckets.setdefault((lab, split), ([], []))
        xs.append(x)
        ys.append(y)
    groups = [
        Group(lab, color[lab], split, xs, ys)
        for (lab, split), (xs, ys) in sorted(
            buckets.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])
        )
    ]
    return groups, [(c, color[c], counts[c]) for c in order]


class EmbeddingsScreen(OfgrScreen[None]):
    HELP_TITLE = "Embeddings (t-SNE)"
    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("c", "toggle_color", "Colour"),
        Binding("s", "cycle_split", "Split"),
        Binding("x", "recompute", "Recompute", show=False),
        Binding("l", "view('live')", "Live"),
        Binding("r", "view('results')", "Results"),
    ]

    @dataclass
    class Computed(Message):
        result: TsneResult

    def __init__(self, run_dir: Path, *, max_points: int = 2000) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.max_points = max_points
        self.color_by = "coarse"
        self.split = "all"
        self.result: TsneResult | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="tsne-main"):
            yield ScatterPlot(id="tsne-plot")
            with Vertical(id="tsne-side"):
                yield Static(id="tsne-info")
                yield Static(id="tsne-legend")
        yield KeyBar()

    def on_mount(self) -> None:
        self.title = self.run_dir.name
        self.sub_title = "t-SNE"
        self.compute()

    def compute(self, use_cache: bool = True) -> None:
        self.result = None
        self.query_one(ScatterPlot).show_message(f"computing t-SNE of {self.split} embeddings…")
        self.query_one("#tsne-info", Static).update(Text("computing… (cached afterwards)", style="dim"))
        self.query_one("#tsne-legend", Static).update("")
        self._compute(self.split, use_cache)

    @work(thread=True, exclusive=True, group="tsne", exit_on_error=False, name="t-SNE")
    def _compute(self, split: str, use_cache: bool) -> None:
        from ofgr_core.tsne import compute_tsne

        result = compute_tsne(self.run_dir, split, max_points=self.max_points, use_cache=use_cache)
        self.post_message(self.Computed(result))

    def worker_failed(self, worker: Worker[None], text: str) -> None:
        self.query_one(ScatterPlot).show_message(text)
        self.query_one("#tsne-info", Static).update(Text(text, style="yellow"))

    def on_embeddings_screen_computed(self, message: Computed) -> None:
        self.result = message.result
        self.draw()

    def draw(self) -> None:
        r = self.result
        if r is None:
            return
        groups, legend = group_points(r, self.color_by)
        self.query_one(ScatterPlot).set_groups(
            [(g.label, str(g.color), g.xs, g.ys, MARKERS.get(g.split, "•")) for g in groups],
            title=f"t-SNE · {self.split} · colour = {self.color_by} class",
        )
        splits = Counter(r.split)
        info = Text()
        info.append(f"{len(r):,} points", style="bold")
        info.append("  " + "  ".join(f"{MARKERS.get(s, '•')} {s} {n:,}" for s, n in sorted(splits.items())))
        if r.note:
            info.append(f"\n{r.note}", style="yellow")
        info.append("\n(cached)" if r.cached else "\n(computed, now cached)", style="dim")
        self.query_one("#tsne-info", Static).update(info)
        leg = Text(f"\n{self.color_by} classes ({len(legend)})\n", style="bold")
        for name, color, n in legend[:LEGEND_ROWS]:
            leg.append("██ ", style=f"color({color})")
            leg.append(f"{name[:18]} ")
            leg.append(f"{n}\n", style="dim")
        if len(legend) > LEGEND_ROWS:
            leg.append(f"… {len(legend) - LEGEND_ROWS} more (colours repeat)", style="dim")
        self.query_one("#tsne-legend", Static).update(leg)

    def action_toggle_color(self) -> None:
        self.color_by = "fine" if self.color_by == "coarse" else "coarse"
        self.draw()

    def action_cycle_split(self) -> None:
        self.split = SPLITS[(SPLITS.index(self.split) + 1) % len(SPLITS)]
        self.compute()

    def action_recompute(self) -> None:
        self.compute(use_cache=False)

    def action_view(self, view: str) -> None:
        self.post_message(OpenRun(self.run_dir, view))
