"""Small text formatters shared by screens (no Textual)."""

from __future__ import annotations

import time

from rich.text import Text

from ofgr_tui.livestate import fmt_seconds

STATUS_STYLE = {
    "running": ("▶ running", "bold yellow"),
    "finished": ("✓ finished", "green"),
    "failed": ("✗ failed", "bold red"),
    "interrupted": ("‖ interrupted", "magenta"),
    "stale": ("? stale", "bold magenta"),
    "broken": ("! broken", "bold red"),
}


def status_text(status: str) -> Text:
    label, style = STATUS_STYLE.get(status, (status, ""))
    return Text(label, style=style)


def fmt_time(t: float | None, *, short: bool = False) -> str:
    if not t:
        return "-"
    return time.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M", time.localtime(t))


def fmt_num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


__all__ = ["fmt_count", "fmt_num", "fmt_pct", "fmt_seconds", "fmt_time", "status_text"]
