"""Every command's and option's help prints as written: Typer reads help through Rich markup, where ``[...]`` is a
style tag and vanishes (``id, fine, [coarse, split]`` printed as ``id, fine, .``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer
from rich.text import Text
from typer.testing import CliRunner

from ofgr_core.cli import app


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        yield from _commands(sub, (*path, name))


def test_no_help_text_loses_words_to_rich_markup() -> None:
    checked = 0
    for path, cmd in _commands(typer.main.get_command(app)):
        for name, text in [("help", cmd.help or "")] + [(p.name, getattr(p, "help", None) or "") for p in cmd.params]:
            shown = Text.from_markup(text)  # what Typer prints; "\\[" is Rich's escape for a literal "["
            where = f"ofgr {' '.join(path)}: {name}: {text!r}"
            assert not shown.spans and shown.plain == text.replace("\\[", "["), where
            checked += 1
    assert checked > 100


def test_eval_embeddings_help_names_the_optional_label_columns() -> None:
    r = CliRunner().invoke(app, ["eval-embeddings", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "id, fine, [coarse, split, domain, group]" in r.output
