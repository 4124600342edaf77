"""Keys of the screen underneath and of the app, generated from their bindings."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

ABOUT = (
    "Runs are separate processes: they keep going when this app exits, and any run in the folder "
    "(also ones started by hand with `ofgr run`) can be watched here. Stopping is clean: the run "
    "checkpoints and can be resumed."
)


KEY_NAMES = {
    "question_mark": "?", "space": "space", "escape": "esc", "slash": "/", "backspace": "⌫",
    "right_square_bracket": "]", "left_square_bracket": "[",
}  # fmt: skip


def _key(b: Binding) -> str:
    if b.key_display:
        return b.key_display
    return " ".join(KEY_NAMES.get(k.strip(), k.strip()) for k in b.key.split(","))


def _rows(bindings: list[Binding]) -> list[tuple[str, str]]:
    """``(keys, description)`` of every binding with a description (shown in the key bar or not)."""
    out: list[tuple[str, str]] = []
    described: set[str] = set()
    for b in bindings:
        if not b.description or b.description in described:
            continue
        described.add(b.description)
        out.append((_key(b), b.description))
    return out


def _bindings(obj: object) -> list[Binding]:
    """The bindings ofgr's classes declare for ``obj``, its own class first, then those it inherits (not the
    generic ones of Textual's own classes: scrolling, focus)."""
    out = []
    for cls in type(obj).__mro__:
        if not cls.__module__.startswith("ofgr_tui"):
            continue
        for b in cls.__dict__.get("BINDINGS", []):
            out.append(b if isinstance(b, Binding) else Binding(*b))
    return out


def _widget_bindings(screen: Screen[object]) -> list[Binding]:
    """The keys of the widget that has focus on ``screen`` (the runs table's j/k/g/G, ...)."""
    return _bindings(screen.focused) if screen.focused is not None else []


def _two_columns(rows: list[tuple[str, str]]) -> Table:
    """Key rows in two columns (at 80x24 a screen's keys fit without scrolling)."""
    table = Table.grid(padding=(0, 1))
    for _ in range(2):
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis", min_width=16, max_width=24)
    half = (len(rows) + 1) // 2
    for i in range(half):
        right = rows[half + i] if half + i < len(rows) else ("", "")
        table.add_row(*rows[i], *right)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, under: Screen[object]) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        name = getattr(self.under, "HELP_TITLE", type(self.under).__name__.replace("Screen", ""))
        rows = _rows(_bindings(self.under) + _widget_bindings(self.under))
        everywhere = [*_rows(_bindings(self.app)), ("esc", "back / close")]
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Static(Text.assemble(("Keys: ", "bold"), (name, "bold underline")), classes="dialog-title")
            yield Static(_two_columns(rows))
            yield Static(Text("everywhere", style="bold underline"))
            yield Static(_two_columns(everywhere))
            yield Static(ABOUT, classes="dialog-body")
            yield Static("esc closes", classes="dim")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
