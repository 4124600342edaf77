"""A one-line key bar (k9s-style): as many of the screen's keys as fit, and always ``? Help`` at the right.

Textual's ``Footer`` lays keys out in a grid and cuts the last ones at 80 columns, so the one key that lists
all others could vanish. Here keys are dropped from the end of the list instead, and ``?`` stays.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widget import Widget

HELP_ACTION = "app.help"
KEY_NAMES = {"question_mark": "?", "escape": "esc", "space": "space", "backspace": "⌫", "slash": "/"}
SEP = " "  # the key is drawn in reverse video: one space parts the items


def key_label(binding: Binding) -> str:
    if binding.key_display:
        return binding.key_display
    key = binding.key.split(",")[0]
    return KEY_NAMES.get(key, key)


def fit_keys(items: list[tuple[str, str]], width: int, help_item: tuple[str, str] = ("?", "Help")) -> Text:
    """Lay ``(key, description)`` pairs out in ``width`` cells, dropping trailing ones; ``help_item`` stays.

    Pure function (tested on its own): the result is never wider than ``width`` when ``width`` can hold the
    help item.
    """
    help_text = _item(*help_item)
    room = width - help_text.cell_len - 1
    out = Text(" ")
    shown = 0
    for key, desc in items:
        if (key, desc) == help_item:
            continue
        piece = _item(key, desc)
        if out.cell_len + piece.cell_len + len(SEP) > room:
            break
        out.append_text(piece)
        out.append(SEP)
        shown += 1
    pad = max(0, width - out.cell_len - help_text.cell_len - 1)
    out.append(" " * pad)
    out.append_text(help_text)
    out.truncate(width)
    return out


def _item(key: str, desc: str) -> Text:
    return Text.assemble((key, "bold reverse"), " ", (desc, ""))


class KeyBar(Widget):
    """Docked at the bottom of each screen; renders the active bindings that have a description."""

    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $panel; color: $text; }
    """

    def on_mount(self) -> None:
        # bindings depend on the focused widget (e.g. the filter box): redraw when focus moves
        self.watch(self.screen, "focused", lambda _old, _new: self.refresh(), init=False)

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

    def render(self) -> Text:
        return fit_keys(self.items(), self.size.width or 80)
