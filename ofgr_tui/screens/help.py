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


def _rows(bindings: list[Binding]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for b in bindings:
        if not b.description:
            continue
        key = b.key_display or b.key.split(",")[0]
        key = {"question_mark": "?", "space": "space", "escape": "esc"}.get(key, key)
        if (key, b.description) not in out:
            out.append((key, b.description))
    return out


def _bindings(obj: object) -> list[Binding]:
    out = []
    for b in getattr(obj, "BINDINGS", []):
        out.append(b if isinstance(b, Binding) else Binding(*b))
    return out


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, under: Screen[object]) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        name = getattr(self.under, "HELP_TITLE", type(self.under).__name__.replace("Screen", ""))
        table.add_row(Text(name, style="bold underline"), "")
        for key, desc in _rows(_bindings(self.under)):
            table.add_row(key, desc)
        table.add_row("", "")
        table.add_row(Text("everywhere", style="bold underline"), "")
        for key, desc in _rows(_bindings(self.app)):
            table.add_row(key, desc)
        table.add_row("esc", "back / close")
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Static("Keys", classes="dialog-title")
            yield Static(table)
            yield Static(ABOUT, classes="dialog-body")
            yield Static("esc closes", classes="dim")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
