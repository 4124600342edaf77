"""Plotext-backed plots: named line series, and a labelled scatter."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rich.text import Text
from textual.color import Color
from textual_plotext import PlotextPlot

# Plain ANSI colour names render the same in 16/256-colour terminals (SSH, tmux).
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red", "white", "orange")


class CurvePlot(PlotextPlot):
    """Line plot of named series. The owner sets data with ``set_series``; nothing is read from outside."""

    def __init__(
        self,
        title: str = "",
        *,
        xlabel: str = "",
        log_y: bool = False,
        empty_text: str = "waiting for data",
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.xlabel = xlabel
        self.log_y = log_y
        self.empty_text = empty_text
        self.series: dict[str, tuple[Sequence[float], Sequence[float | None]]] = {}
        self.markers: dict[str, str] = {}
        self._draw()

    def set_series(
        self,
        series: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
        *,
        title: str | None = None,
        markers: dict[str, str] | None = None,
        log_y: bool | None = None,
    ) -> None:
        self.series = dict(series)
        self.markers = markers or {}
        if title is not None:
            self.title = title
        if log_y is not None:
            self.log_y = log_y
        self._draw()
        self.refresh()

    def legend(self) -> Text:
        """Each series' name in the colour of its curve (series without points are left out)."""
        out = Text()
        for i, (name, (_xs, ys)) in enumerate(self.series.items()):
            if not any(y is not None and math.isfinite(y) for y in ys):
                continue
            if out.plain:
                out.append("  ")
            out.append("━━ ", style=PALETTE[i % len(PALETTE)])
            out.append(name)
        return out

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.title(self.title)
        if self.xlabel:
            plt.xlabel(self.xlabel)
        drawn = 0
        for i, (name, (xs, ys)) in enumerate(self.series.items()):
            pts = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None and math.isfinite(y)]
            if self.log_y:
                pts = [(x, y) for x, y in pts if y > 0]
            if not pts:
                continue
            px, py = [p[0] for p in pts], [p[1] for p in pts]
            color = PALETTE[i % len(PALETTE)]
            marker = self.markers.get(name, "braille")
            # no plotext legend: it is drawn over the curves; ``legend()`` gives one for beside the plot
            if len(pts) == 1:
                plt.scatter(px, py, color=color, marker="dot" if marker == "braille" else marker)
            else:
                plt.plot(px, py, color=color, marker=marker)
            drawn += 1
        if self.log_y and drawn:
            plt.yscale("log")
        if not drawn:
            plt.text(self.empty_text, 0.5, 0.5, alignment="center")
            plt.xlim(0, 1)
            plt.ylim(0, 1)
            plt.xticks([])
            plt.yticks([])


class ScatterPlot(PlotextPlot):
    """Scatter of labelled groups: one colour per group, marker per subgroup (e.g. seen vs unseen)."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = ""
        self.groups: list[tuple[str, int, list[float], list[float], str]] = []
        self.empty_text = "computing…"
        self._draw()

    def set_groups(
        self, groups: list[tuple[str, int, list[float], list[float], str]], *, title: str = ""
    ) -> None:
        """``groups``: (label, color, xs, ys, marker) tuples drawn in order."""
        self.groups = groups
        self.title = title
        self._draw()
        self.refresh()

    def background_rgb(self) -> tuple[int, int, int] | None:
        """The colour points are drawn on (the app theme's surface, as textual-plotext uses it)."""
        try:
            color = Color.parse(self.app.theme_variables["surface"])
        except (KeyError, ValueError, Exception):  # no app yet (unit use)
            return None
        return (color.r, color.g, color.b)

    def show_message(self, text: str) -> None:
        self.groups = []
        self.empty_text = text
        self._draw()
        self.refresh()

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.title(self.title)
        if not self.groups:
            plt.text(self.empty_text, 0.5, 0.5, alignment="center")
            plt.xlim(0, 1)
            plt.ylim(0, 1)
        for _label, color, xs, ys, marker in self.groups:
            plt.scatter(xs, ys, color=color, marker=marker)  # the screen draws the legend beside the plot
        plt.xticks([])
        plt.yticks([])
