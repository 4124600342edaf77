"""Headless front end: ``ofgr``. Importing this package must not import torch."""

from __future__ import annotations

# Command modules register themselves on ``app`` when imported.
import ofgr_core.cli.eval_cmd  # noqa: F401
from ofgr_core.cli import (  # noqa: F401
    bench_cmd,
    cache_cmd,
    clip_cmd,
    compare_cmd,
    data_cmd,
    demo_cmd,
    hier_cmd,
    models_cmd,
    query_cmd,
    report_cmd,
    run_cmd,
)
from ofgr_core.cli.app import app


def main() -> None:
    from ofgr_core.common.memory import keep_freed_memory

    keep_freed_memory()  # this process runs ofgr's work: large blocks reused, not remapped every batch
    app()


__all__ = ["app", "main"]
