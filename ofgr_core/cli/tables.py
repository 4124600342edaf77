"""Tables that fit the terminal: columns carry a priority and the least important ones are dropped until the
table fits; cells never wrap (a run id is never broken across lines), and wider terminals show more columns.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich import box
from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text


@dataclass
class Column:
    """One column: ``priority`` 0 is never dropped; higher numbers go first when space runs out."""

    header: str
    cells: list[str | Text] = field(default_factory=list)
    priority: int = 0
    justify: JustifyMethod = "left"
    max_width: int | None = None  # cells longer than this are cut with an ellipsis (never the run id)

    def natural_width(self) -> int:
        widths = [Text.from_markup(c).cell_len if isinstance(c, str) else c.cell_len for c in self.cells]
        width = max([len(self.header), *widths]) if widths else len(self.header)
        return min(width, self.max_width) if self.max_width else width


def rendered_width(table: Table) -> int:
    """Width of the widest line of ``table`` rendered without a width limit."""
    console = Console(width=10_000, record=False, color_system=None, file=io.StringIO())
    with console.capture() as cap:
        console.print(table)
    return max((len(line.rstrip()) for line in cap.get().splitlines()), default=0)


def fit_columns(columns: Sequence[Column], width: int) -> list[Column]:
    """The columns to show at ``width`` (order kept), dropping the highest priority numbers first."""
    shown = list(columns)
    while len(shown) > 1:
        if rendered_width(_build(shown, None, None)) <= width:
            break
        droppable = [c for c in shown if c.priority > 0]
        if not droppable:
            break
        worst = max(droppable, key=lambda c: (c.priority, shown.index(c)))
        shown.remove(worst)
    return shown


def fitted_table(columns: Sequence[Column], width: int, *, title: str | None = None,
                 caption: str | None = None) -> Table:
    """A rich table of the columns that fit ``width``; no cell wraps."""
    return _build(fit_columns(columns, width), title, caption)


def _build(shown: Sequence[Column], title: str | None, caption: str | None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, caption=caption,
                  caption_justify="left", show_edge=False)
    for c in shown:
        table.add_column(c.header, justify=c.justify, no_wrap=True,
                         overflow="ellipsis" if c.max_width else "fold", max_width=c.max_width)
    n = max((len(c.cells) for c in shown), default=0)
    for i in range(n):
        table.add_row(*[c.cells[i] if i < len(c.cells) else "" for c in shown])
    return table


def dropped(columns: Sequence[Column], width: int) -> list[str]:
    shown = fit_columns(columns, width)
    return [c.header for c in columns if c not in shown]


def print_fitted(console: Console, columns: Sequence[Column], *, title: str | None = None,
                 caption: str | None = None) -> None:
    """Print the columns that fit the console; if even the priority-0 columns are wider (a very long run id
    on a very narrow terminal), print at their width rather than break the id."""
    table = fitted_table(columns, console.width, title=title, caption=caption)
    console.print(table, width=max(console.width, rendered_width(table)), crop=False)
