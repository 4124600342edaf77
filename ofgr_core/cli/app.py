"""The Typer application object and the helpers every command module shares.

Only ``ofgr_core.cli`` may import typer and rich. Data goes to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ofgr_core.common.diskspace import disk_error_from
from ofgr_core.common.errors import ExitCode, OfgrError
from ofgr_core.common.textio import dumps_strict

app = typer.Typer(
    name="ofgr",
    help="Open-set fine-grained image retrieval workbench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Create and inspect datasets.", no_args_is_help=True)
index_app = typer.Typer(help="Build and inspect FAISS indexes.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")

# emoji=False: user text such as a class named ":car:" is printed as written (escape() only covers markup)
out = Console(emoji=False)  # data (tables, JSON) -> stdout
err = Console(stderr=True, emoji=False)  # progress and diagnostics -> stderr

P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn known errors into one red line and an exit code; tracebacks only with OFGR_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OfgrError as e:
            if os.environ.get("OFGR_DEBUG") == "1":
                raise
            err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(int(e.exit_code)) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except OSError as e:  # a full, read-only or misplaced folder: one line, not a traceback
            disk = disk_error_from(e, "file system error")
            if disk is None or os.environ.get("OFGR_DEBUG") == "1":
                raise
            err.print(f"[bold red]error:[/] {escape(str(disk))}", highlight=False, soft_wrap=True)
            raise typer.Exit(int(disk.exit_code)) from None

    return wrapper


def print_json(obj: object) -> None:
    """Write one JSON document to stdout, nothing else; non-ASCII text (class names) as written, in UTF-8."""
    text = dumps_strict(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"  # NaN/Inf -> null
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:  # a stdout that cannot encode it (LANG=C on an old Python): \u escapes
        sys.stdout.write(dumps_strict(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()
