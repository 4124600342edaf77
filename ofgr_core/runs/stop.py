"""Stop requests seen inside a run: at stage boundaries and inside long loops (embed batches, evaluation
blocks, feature extraction, image checks), not only between training steps.

The request itself is the run folder's ``stop`` file (``ofgr_core.runs.state.request_stop``: the TUI's ``s``,
SIGINT/SIGTERM during training). A stage that sees it raises :class:`StopRequested`; the pipeline ends the run
as ``interrupted`` naming that stage, and ``ofgr resume`` redoes the unfinished stages.
"""

from __future__ import annotations

from collections.abc import Callable


class StopRequested(BaseException):
    """A stop request seen in ``stage`` (``when`` is ``"during"`` or ``"before"`` it).

    A ``BaseException``, like ``KeyboardInterrupt``: a library's ``except Exception`` around a progress
    callback must not swallow a stop the user asked for.
    """

    def __init__(self, stage: str, when: str = "during") -> None:
        super().__init__(f"stopped {when} {stage}")
        self.stage = stage
        self.when = when


def check_stop(stop: Callable[[], bool] | None, stage: str, when: str = "during") -> None:
    """Raise :class:`StopRequested` when ``stop()`` says a stop was asked for (``None``: never)."""
    if stop is not None and stop():
        raise StopRequested(stage, when)
