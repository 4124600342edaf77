"""In-terminal t-SNE of a run's stored embeddings, coloured by coarse or fine class, seen vs unseen by marker.

One projection of all stored splits is computed in the app's job worker process (scikit-learn never loads into
the TUI), with progress on screen; the app keeps the job, so leaving the screen does not stop it and coming
back shows it. It is cached in the run folder; the split key filters that projection, so seen and unseen stay
where they were. Colours: as many classes as the legend can name, the rest grey ("other").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Header, Static

from ofgr_core.reports.tsne import TsneResult
from ofgr_tui.messages import ComputeTsne, OpenRun
from ofgr_tui.screens.base import OfgrScreen
from ofgr_tui.widgets.keybar import KeyBar
from ofgr_tui.widgets.plots import ScatterPlot

if TYPE_CHECKING:
    from ofgr_tui.app import Job

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


OTHER_COLOR = 244  # mid grey: the classes beyond the legend (contrast >= 3 on dark and light surfaces)
SPLIT_ORDER = {"seen": 0, "unseen": 1}  # drawn in this order: where both fall in one cell, unseen shows


def other_color(background: tuple[int, int, int] | None) -> int:
    """The grey for "other" classes: mid grey, or the grey that stands out most on ``background``."""
    if background is None or contrast(rgb_of(OTHER_COLOR), background) >= MIN_CONTRAST:
        return OTHER_COLOR
    return max(range(240, 252), key=lambda c: contrast(rgb_of(c), background))


def group_points(
    result: TsneResult,
    by: str,
    *,
    split: str = "all",
    palette: tuple[int, ...] = COLORS,
    max_colors: int = LEGEND_ROWS,
    other: int = OTHER_COLOR,
) -> tuple[list[Group], list[tuple[str, int, int]]]:
    """Points grouped by (class, split), with colours only as many as can be told apart.

    Classes are ranked by frequency over the whole projection (so a class keeps its colour when the split
    changes). If they are more than ``max_colors`` (or than the palette has), the first ``max_colors - 1``
    get a colour each and the rest are one grey "other" group: every colour on screen is in the legend
    and means one class. ``split`` filters the projection (``all`` keeps every point).

    Groups are ordered seen before unseen (then by class), whatever the colouring: where a seen and an
    unseen point share a cell, the unseen marker is the one drawn, so the markers do not change with the
    colour mode.

    Returns the groups and the legend rows ``(label, colour, count)`` of the points shown.
    """
    labels = result.coarse if by == "coarse" else result.fine
    counts = Counter(labels)
    order = sorted(counts, key=lambda c: (-counts[c], c))
    n_colors = min(max_colors, len(palette))
    if len(order) > n_colors:
        named, rest = order[: n_colors - 1], order[n_colors - 1 :]
    else:
        named, rest = order, []
    other_label = f"other ({len(rest)} classes)"
    color = {c: palette[i] for i, c in enumerate(named)} | {c: other for c in rest}
    legend_of = {c: c for c in named} | {c: other_label for c in rest}
    keep = [split == "all" or s == split for s in result.split]
    shown = Counter(legend_of[lab] for lab, k in zip(labels, keep, strict=True) if k)
    buckets: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for (x, y), lab, sp, k in zip(result.xy.tolist(), labels, result.split, keep, strict=True):
        if not k:
            continue
        xs, ys = buckets.setdefault((legend_of[lab], sp), ([], []))
        xs.append(x)
        ys.append(y)
    rank = {c: i for i, c in enumerate(named)} | {other_label: -1}  # grey first: colours drawn over it
    colour_of = {legend_of[c]: color[c] for c in order}
    groups = [
        Group(lab, colour_of[lab], sp, xs, ys)
        for (lab, sp), (xs, ys) in sorted(
            buckets.items(), key=lambda kv: (SPLIT_ORDER.get(kv[0][1], 2), rank[kv[0][0]])
        )
    ]
    rows = [(c, color[c], shown[c]) for c in named if shown[c]]
    if rest and shown[other_label]:
        rows.append((other_label, other, shown[other_label]))
    return groups, rows


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

    def __init__(self, run_dir: Path, *, max_points: int = 2000) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.max_points = max_points
        self.color_by = "coarse"
        self.split = "all"
        self.result: TsneResult | None = None
        self.palette: tuple[int, ...] = COLORS
        self._shown: object = None  # the job result on screen

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
        job = self.ofgr.job("tsne", self.run_dir)
        if job is not None and (not job.done or job.result is not None):
            self.job_updated(job)  # computing since an earlier visit, or done: no second projection
        else:
            self.compute()

    def compute(self, use_cache: bool = True) -> None:
        """Ask the app for the projection: it runs in the job worker and outlives this screen."""
        self.result = None
        self.query_one(ScatterPlot).show_message("computing the t-SNE of the stored embeddings…")
        self.query_one("#tsne-info", Static).update(Text("reading embeddings…", style="dim"))
        self.query_one("#tsne-legend", Static).update("")
        self.post_message(ComputeTsne(self.run_dir, self.max_points, use_cache))

    def job_updated(self, job: Job) -> None:
        """The app hands down the progress or the end of this run's projection."""
        if job.kind != "tsne" or job.key != str(self.run_dir):
            return
        if job.error is not None:
            self.query_one(ScatterPlot).show_message("nothing to plot (why: on the right)")
            self.query_one("#tsne-info", Static).update(Text(job.error, style="yellow"))
        elif job.result is not None:
            if job.result is not self._shown:  # each projection is converted and drawn once
                self._shown = job.result
                self.result = tsne_result(job.result)
                self.draw()
        else:
            self._progress(job)

    def _progress(self, job: Job) -> None:
        done = int(job.progress.get("done") or 0)
        total = int(job.progress.get("total") or 0)
        frac = done / total if total else 0.0
        seconds = job.seconds
        eta = seconds * (1 - frac) / frac if frac > 0.02 else None
        width = 20
        bar = "█" * int(round(frac * width)) + "░" * (width - int(round(frac * width)))
        text = Text()
        text.append("computing t-SNE\n", style="bold")
        text.append(f"{bar} {100 * frac:3.0f}%\n")
        text.append(f"iteration {done}/{total or '?'}\n{seconds:.0f} s", style="dim")
        if eta is not None:
            text.append(f", ~{eta:.0f} s left", style="dim")
        text.append("\nesc leaves it running; come back to see it (cached in the run folder)", style="dim")
        self.query_one("#tsne-info", Static).update(text)
        self.query_one(ScatterPlot).show_message(f"computing t-SNE… {100 * frac:.0f}%")

    def draw(self) -> None:
        r = self.result
        if r is None:
            return
        plot = self.query_one(ScatterPlot)
        bg = plot.background_rgb()
        self.palette = palette_for(bg)
        groups, legend = group_points(r, self.color_by, split=self.split, palette=self.palette,
                                      other=other_color(bg))  # fmt: skip
        plot.set_groups(
            [(g.label, g.color, g.xs, g.ys, MARKERS.get(g.split, "•")) for g in groups],
            title=f"t-SNE · {self.split} · colour = {self.color_by} class",
        )
        splits = Counter(s for s in r.split if self.split in ("all", s))
        info = Text()
        info.append(f"{sum(splits.values()):,} points", style="bold")
        if self.split != "all":
            info.append(f" of {len(r):,}", style="dim")
        for s, n in sorted(splits.items()):  # one per line: never wrapped mid-way
            info.append(f"\n{MARKERS.get(s, '•')} {s} {n:,}")
        if r.note:
            info.append(f"\n{r.note}", style="yellow")
        info.append("\n(cached)" if r.cached else "\n(computed, now cached)", style="dim")
        self.query_one("#tsne-info", Static).update(info)
        n_classes = len(set(r.coarse if self.color_by == "coarse" else r.fine))
        leg = Text(f"\n{self.color_by} classes ({n_classes})\n", style="bold")
        for name, color, n in legend:
            leg.append("██ ", style=f"color({color})")
            leg.append(f"{name[:18]} ")
            leg.append(f"{n}\n", style="dim")
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


def tsne_result(d: dict[str, Any]) -> TsneResult:
    """The job worker's reply as a :class:`TsneResult`."""
    return TsneResult(
        xy=np.asarray(d["xy"], dtype=np.float32).reshape(-1, 2),
        ids=list(d["ids"]),
        fine=list(d["fine"]),
        coarse=list(d["coarse"]),
        split=list(d["split"]),
        n_total=int(d["n_total"]),
        note=d.get("note"),
        cached=bool(d.get("cached")),
        cache_path=Path(d["cache_path"]),
    )
