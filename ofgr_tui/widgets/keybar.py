"""The key bar (k9s-style): the screen's keys, always with ``? Help`` at the right.

Textual's ``Footer`` lays keys out in a grid and cuts the last ones at 80 columns, so keys could vanish, the
one that lists all others included. Here the keys wrap onto a second line when one is not enough (at 80
columns the runs list needs two), so every key stays in sight; keys that fit on neither line are dropped from
the end of the list (they are in ``?``, which always stays).
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.widget import Widget

HELP_ACTION = "app.help"
KEY_NAMES = {"question_mark": "?", "escape": "esc", "space": "space", "backspace": "⌫", "slash": "/"}
SEP = " "  # the key is drawn in reverse video: one space parts the items
MAX_LINES = 2


def key_label(binding: Binding) -> str:
    if binding.key_display:
        return binding.key_display
    key = binding.key.split(",")[0]
    return KEY_NAMES.get(key, key)


def fit_keys(
    items: list[tuple[str, str]], width: int, help_item: tuple[str, str] = ("?", "Help"), max_lines: int = 1
) -> Text:
    """Lay ``(key, description)`` pairs out in up to ``max_lines`` lines of ``width`` cells; ``help_item``
    ends the last line. Items that fit nowhere are dropped from the end.

    Pure function (tested on its own): no line is wider than ``width`` when ``width`` can hold the help item.
    """
    help_text = _item(*help_item)
    pieces = [_item(k, d) for k, d in items if (k, d) != help_item]
    lines: list[Text] = []
    line = Text(" ")
    for piece in pieces:
        placed = False
        while not placed:
            last = len(lines) == max_lines - 1
            room = width - (help_text.cell_len + 1 if last else 0)
            if line.cell_len + piece.cell_len + len(SEP) <= room:
                line.append_text(piece)
                line.append(SEP)
                placed = True
            elif last or line.cell_len <= 1:
                break
            else:
                lines.append(line)
                line = Text(" ")
        if not placed:
            break
    if line.cell_len + help_text.cell_len + 1 > width and len(lines) < max_lines - 1:
        lines.append(line)  # the help item gets its own line rather than being cut
        line = Text(" ")
    pad = max(0, width - line.cell_len - help_text.cell_len - 1)
    line.append(" " * pad)
    line.append_text(help_text)
    lines.append(line)
    for ln in lines:
        ln.truncate(width)
    return Text("\n").join(lines)


def _item(key: str, desc: str) -> Text:
    return Text.assemble((key, "bold reverse"), " ", (desc, ""))


class KeyBar(Widget):
    """Docked at the bottom of each screen; renders the active bindings that have a description."""

    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: auto; max-height: 2; background: $panel; color: $text; }
    """

    def on_mount(self) -> None:
        # bindings depend on the focused widget (e.g. the filter box): redraw when focus moves
        self.watch(self.screen, "focused", self._redraw, init=False)

    def _redraw(self) -> None:
        self.refresh(layout=True)

    def items(self) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        actions: set[str] = set()
        for _node, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if not binding.show or not binding.description or not enabled or binding.action in actions:
                continue
            actions.add(binding.action)
            item = (key_label(binding), binding.description)
            if item not in seen:
                seen.append(item)
        return seen

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(fit_keys(self.items(), width or 80, max_lines=MAX_LINES).split("\n"))

    def render(self) -> Text:
        return fit_keys(self.items(), self.size.width or 80, max_lines=MAX_LINES)
