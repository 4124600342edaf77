"""``ofgr cache ls|clear``: the shared feature cache of frozen towers (``ofgr_core.embedding.features``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table

from ofgr_core.cli.app import app, err, handle_errors, out, print_json

cache_app = typer.Typer(help="The feature cache of frozen encoders (shared across runs).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

ROOT_HELP = "Cache root (default: $OFGR_CACHE/features or ~/.cache/ofgr/features; a run's data.feature_cache)."


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cache_app.command("ls")
@handle_errors
def ls(
    root: Path = typer.Option(None, "--root", help=ROOT_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """One line per cached encoder: architecture, weights hash, input size, images, size on disk."""
    from ofgr_core.embedding.features import default_cache_root, list_entries

    entries = list_entries(root)
    if as_json:
        print_json([e.to_dict() for e in entries])
        return
    where = root or default_cache_root()
    if not entries:
        err.print(f"no cached features in {escape(str(where))}", highlight=False)
        return
    table = Table(title=f"feature cache {escape(str(where))}", title_justify="left", box=box.SIMPLE_HEAD)
    columns: tuple[tuple[str, JustifyMethod], ...] = (("id", "left"), ("encoder", "left"), ("px", "right"),
                                                       ("images", "right"), ("dim", "right"), ("size", "right"))
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=col in ("id", "images", "size"))
    for e in entries:
        size = (e.key.get("preprocess") or {}).get("input_size") or ["?"]
        table.add_row(e.path.name[:12], escape(f"{e.key.get('family', '?')}:{e.key.get('arch', '?')} "
                                               f"w:{str(e.key.get('weights', '?'))[:8]}"),
                      str(size[-1]), f"{e.rows:,}", str(e.dim), _size(e.bytes))
    out.print(table)


@cache_app.command("clear")
@handle_errors
def clear(
    entry: str = typer.Argument(None, metavar="[ID]", help="Only this entry (an id prefix from `ofgr cache ls`)."),
    root: Path = typer.Option(None, "--root", help=ROOT_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete cached features (all, or one encoder's); runs recompute them when needed."""
    from ofgr_core.embedding import features

    entries = features.list_entries(root)
    if entry is not None:
        entries = [e for e in entries if e.path.name.startswith(entry)]
    total = sum(e.bytes for e in entries)
    if not entries and entry is None:
        err.print("the feature cache is empty", highlight=False)
        return
    if not yes and not typer.confirm(f"delete {len(entries)} cache entr{'y' if len(entries) == 1 else 'ies'} "
                                     f"({_size(total)})?", err=True):
        raise typer.Exit(1)
    freed = features.clear(root, entry)
    err.print(f"freed {_size(freed)}", highlight=False)
