"""The latest events of a run as colour-coded, time-stamped lines."""

from __future__ import annotations

import time

from rich.text import Text
from textual import events
from textual.widgets import RichLog

from ofgr_tui.livestate import LogLine

STYLES = {
    "error": "bold red",
    "warning": "yellow",
    "stage": "cyan",
    "epoch": "green",
    "eval": "magenta",
    "info": "",
}


class EventLog(RichLog):
    """Append ``LogLine``s with ``add_lines``; keeps the newest ``max_lines``.

    Long lines wrap to the widget's width (``min_width`` would otherwise render them 78 cells wide and cut
    them), and the log keeps following the newest line across resizes.
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            id=id, classes=classes, max_lines=1000, wrap=True, markup=False, auto_scroll=True, min_width=20
        )

    def on_resize(self, event: events.Resize) -> None:  # RichLog's own on_resize runs too (Textual calls both)
        # a resize re-wraps every line; without this the view stays where it was and stops following
        self.call_after_refresh(self.scroll_end, animate=False)

    def add_lines(self, lines: list[LogLine]) -> None:
        for line in lines:
            stamp = time.strftime("%H:%M:%S", time.localtime(line.time))
            self.write(Text.assemble((stamp + " ", "dim"), (line.text, STYLES.get(line.level, ""))))
