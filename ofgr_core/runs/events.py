"""Typed events that long operations yield.

The run writer turns them into ``events.jsonl`` lines, the CLI into rich progress, the TUI into widgets.
Each event serialises to a flat JSON object with ``type`` and ``time`` (see docs/run-folder.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    run_id: str
    name: str
    pid: int
    host: str
    config_path: str | None = None


@dataclass(frozen=True)
class StageStarted(Event):
    type: ClassVar[str] = "stage_started"
    stage: str
    total: int | None = None


@dataclass(frozen=True)
class StageProgress(Event):
    """``rate`` (items/s since the stage's first progress report) and ``eta_s`` are None until known."""

    type: ClassVar[str] = "stage_progress"
    stage: str
    done: int
    total: int | None = None
    rate: float | None = None
    eta_s: float | None = None


class RateMeter:
    """Items per second and time left, measured from the first report (work answered from a memo or a
    cache before that does not inflate the rate)."""

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None

    def __call__(self, done: int, total: int | None) -> tuple[float | None, float | None]:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
            return None, None
        t0, d0 = self._first
        if now <= t0 or done <= d0:
            return None, None
        rate = (done - d0) / (now - t0)
        return rate, (max(0, total - done) / rate if total else None)


@dataclass(frozen=True)
class StageFinished(Event):
    type: ClassVar[str] = "stage_finished"
    stage: str
    seconds: float


@dataclass(frozen=True)
class TrainStep(Event):
    type: ClassVar[str] = "train_step"
    epoch: int
    step: int
    steps_per_epoch: int
    loss: float
    losses: dict[str, float]
    lr: float
    images_per_s: float
    gpu_mem_mb: float | None = None


@dataclass(frozen=True)
class TrainEpoch(Event):
    type: ClassVar[str] = "train_epoch"
    epoch: int
    epochs: int
    loss: float
    losses: dict[str, float]
    lr: float
    val: dict[str, float]
    seconds: float
    best: bool


@dataclass(frozen=True)
class EvalResult(Event):
    type: ClassVar[str] = "eval_result"
    split: str
    level: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Log(Event):
    type: ClassVar[str] = "log"
    message: str
    level: str = "info"


@dataclass(frozen=True)
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    seconds: float
    metrics_path: str


@dataclass(frozen=True)
class RunFailed(Event):
    type: ClassVar[str] = "run_failed"
    error: str
    traceback: str = ""


@dataclass(frozen=True)
class RunInterrupted(Event):
    type: ClassVar[str] = "run_interrupted"
    reason: str


class SignalInterrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM outside the training loop; its message names the signal (the interrupt reason)."""


TERMINAL_TYPES = frozenset({RunFinished.type, RunFailed.type, RunInterrupted.type})
