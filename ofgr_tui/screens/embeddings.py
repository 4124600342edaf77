"""In-terminal t-SNE of a run's stored embeddings, coloured by coarse or fine class, seen vs unseen by marker.

One projection of all stored splits runs in a worker (scikit-learn is imported there, progress shown) and is
cached in the run folder; the split key filters that projection, so seen and unseen stay where they were.
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

from ofgr_core.reports.tsne import TsneResult
from ofgr_tui.messages import OpenRun
from ofgr_tui.screens.base import OfgrScreen
from ofgr_tui.widgets.keybar import KeyBar
from ofgr_tui.widgets.plots import ScatterPlot

# 256-colour indices (passed to plotext as ints: it ignores numbers given as strings), most distinct first;
# those too close to the plot's background are left out at draw time (see ``palette_for``)
COLORS = (
    51, 201, 46, 226, 33, 196, 208, 129, 48, 220, 99, 160, 39, 118, 213, 172, 27, 190, 124, 87,  # for dark
    19, 20, 22, 90, 130, 24, 54, 28, 88, 94, 57, 23, 126, 58, 18, 52,  # for light backgrounds
)  # fmt: skip
MIN_CONTRAST = 3.0  # WCAG contrast ratio a point colour needs against the background
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


def _luminance(rgb: tuple[int, int, int]) -> float:
    def lin(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = rgb
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG contrast ratio of two colours (1 = identical, 21 = black on white)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def rgb_of(index: int) -> tuple[int, int, int]:
    from rich.color import Color as RichColor

    t = RichColor.from_ansi(index).get_truecolor()
    return (t.red, t.green, t.blue)


def palette_for(background: tuple[int, int, int] | None) -> tuple[int, ...]:
    """``COLORS`` without those a point would vanish into on ``background`` (never fewer than 6)."""
    if background is None:
        return COLORS
    kept = tuple(c for c in COLORS if contrast(rgb_of(c), background) >= MIN_CONTRAST)
    if len(kept) >= 6:
        return kept
    return tuple(sorted(COLORS, key=lambda c: -contrast(rgb_of(c), background))[:6])


def group_points(
    result: TsneResult, by: str, *, split: str = "all", palette: tuple[int, ...] = COLORS
) -> tuple[list[Group], list[tuple[str, int, int]]]:
    """Points grouped by (class, split); classes ordered by frequency, the most frequent get colours first.

    ``split`` filters the projection (``all`` keeps every point). Colours are given to classes over the
    whole projection, so a class keeps its colour when the split changes.

    Returns the groups and the legend rows ``(class, colour, count)`` of the points shown.
    """
    labels = result.coarse if by == "coarse" else result.fine
    counts = Counter(labels)
    order = sorted(counts, key=lambda c: (-counts[c], c))
    color = {c: palette[i % len(palette)] for i, c in enumerate(order)}
    keep = [split == "all" or s == split for s in result.split]
    shown = Counter(lab for lab, k in zip(labels, keep, strict=True) if k)
    buckets: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for (x, y), lab, sp, k in zip(result.xy.tolist(), labels, result.split, keep, strict=True):
        if not k:
            continue
        split_of = sp
        xs, ys = buckets.setdefault((lab, split_of), ([], []))
        xs.append(x)
        ys.append(y)
    rank = {c: i for i, c in enumerate(order)}
    groups = [
        Group(lab, color[lab], sp, xs, ys)
        for (lab, sp), (xs, ys) in sorted(buckets.items(), key=lambda kv: (rank[kv[0][0]], kv[0][1]))
    ]
    return groups, [(c, color[c], shown[c]) for c in order if shown[c]]


class EmbeddingsScreen(OfgrScreen[None]):
    HELP_TITLE = "Embeddings (t-SNE)"
    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("c", "toggle_color", "Colour"),
        Binding("s", "cycle_split", "Split"),
        Binding("x", "recompute", "Recompute", show=False),
        Binding("l", "view('live')", "Live"),
        Binding("r", "view('results')", "Results"),
        Binding("f", "view('query')", "Query"),
    ]

    @dataclass
    class Computed(Message):
        result: TsneResult

    @dataclass
    class Progress(Message):
        done: int
        total: int | None
        seconds: float

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, EmbeddingsScreen.Progress)

    def __init__(self, run_dir: Path, *, max_points: int = 2000) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.max_points = max_points
        self.color_by = "coarse"
        self.split = "all"
        self.result: TsneResult | None = None
        self.palette: tuple[int, ...] = COLORS

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
        self.query_one(ScatterPlot).show_message("computing the t-SNE of the stored embeddings…")
        self.query_one("#tsne-info", Static).update(Text("reading embeddings…", style="dim"))
        self.query_one("#tsne-legend", Static).update("")
        self._compute(use_cache)

    @work(thread=True, exclusive=True, group="tsne", exit_on_error=False, name="t-SNE")
    def _compute(self, use_cache: bool) -> None:
        import time

        from ofgr_core.reports.tsne import compute_tsne

        t0 = time.monotonic()

        def on_event(ev: object) -> None:
            if getattr(ev, "type", "") in ("stage_started", "stage_progress"):
                done = int(getattr(ev, "done", 0))
                self.post_message(self.Progress(done, getattr(ev, "total", None), time.monotonic() - t0))

        # always every stored split: the split key filters this one projection
        result = compute_tsne(self.run_dir, "all", max_points=self.max_points, use_cache=use_cache,
                              on_event=on_event)  # fmt: skip
        self.post_message(self.Computed(result))

    def on_embeddings_screen_progress(self, message: Progress) -> None:
        if self.result is not None:
            return
        total = message.total or 0
        frac = message.done / total if total else 0.0
        eta = message.seconds * (1 - frac) / frac if frac > 0.02 else None
        width = 20
        bar = "█" * int(round(frac * width)) + "░" * (width - int(round(frac * width)))
        text = Text()
        text.append("computing t-SNE (cached afterwards)\n", style="bold")
        text.append(f"{bar} {100 * frac:3.0f}%\n")
        text.append(f"iteration {message.done}/{total}  {message.seconds:.0f} s", style="dim")
        if eta is not None:
            text.append(f"  ~{eta:.0f} s left", style="dim")
        self.query_one("#tsne-info", Static).update(text)
        self.query_one(ScatterPlot).show_message(f"computing t-SNE… {100 * frac:.0f}%")

    def worker_failed(self, worker: Worker[None], text: str) -> None:
        self.query_one(ScatterPlot).show_message("nothing to plot (why: on the right)")
        self.query_one("#tsne-info", Static).update(Text(text, style="yellow"))

    def on_embeddings_screen_computed(self, message: Computed) -> None:
        self.result = message.result
        self.draw()

    def draw(self) -> None:
        r = self.result
        if r is None:
            return
        plot = self.query_one(ScatterPlot)
        self.palette = palette_for(plot.background_rgb())
        groups, legend = group_points(r, self.color_by, split=self.split, palette=self.palette)
        plot.set_groups(
            [(g.label, g.color, g.xs, g.ys, MARKERS.get(g.split, "•")) for g in groups],
            title=f"t-SNE · {self.split} · colour = {self.color_by} class",
        )
        splits = Counter(s for s in r.split if self.split in ("all", s))
        info = Text()
        info.append(f"{sum(splits.values()):,} points", style="bold")
        if self.split != "all":
            info.append(f" of {len(r):,}", style="dim")
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
        """Filter the one projection (no recomputation: points stay where they were)."""
        self.split = SPLITS[(SPLITS.index(self.split) + 1) % len(SPLITS)]
        self.draw()

    def action_recompute(self) -> None:
        self.compute(use_cache=False)

    def action_view(self, view: str) -> None:
        self.post_message(OpenRun(self.run_dir, view))
