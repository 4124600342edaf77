"""The base of every ofgr screen: forwards worker state changes to the app's single error reporter, and
gives screens the app with its type (``self.ofgr``: runs, clock, worker clients, jobs).

``Worker.StateChanged`` does not bubble, so without this each screen would need its own handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, cast

from textual.screen import Screen
from textual.worker import Worker

if TYPE_CHECKING:
    from ofgr_tui.app import OfgrApp

T = TypeVar("T")


class OfgrScreen(Screen[T]):
    @property
    def ofgr(self) -> OfgrApp:
        """The app, typed (every ofgr screen runs inside :class:`~ofgr_tui.app.OfgrApp`)."""
        return cast("OfgrApp", self.app)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        self.ofgr.report_worker(event)
