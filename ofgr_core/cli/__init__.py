"""Headless front end: ``ofgr``. Importing this package must not import torch."""

from __future__ import annotations

# Command modules register themselves on ``app`` when imported.
import ofgr_core.cli.eval_cmd  # noqa: F401
from ofgr_core.cli import data_cmd, hier_cmd, query_cmd, run_cmd  # noqa: F401
from ofgr_core.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
