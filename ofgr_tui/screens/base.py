"""The base of every ofgr screen: forwards worker state changes to the app's single error reporter.

``Worker.StateChanged`` does not bubble, so without this each screen would need its own handler.
"""

from __future__ import annotations

from typing import TypeVar

from textual.screen import Screen
from textual.worker import Worker

T = TypeVar("T")


class OfgrScreen(Screen[T]):
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        self.app.report_worker(event)  # type: ignore[attr-defined]
