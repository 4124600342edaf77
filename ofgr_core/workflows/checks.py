"""The run's own sanity checks, hooked into the pipeline: the memory plan before training, an ETA line within
seconds of the first step, and degenerate embeddings flagged after embedding.

Each check reports through the run's events (a ``Log`` line, ``level="warning"`` when it matters) and returns
what goes into ``metrics.json`` (``memory_plan``, ``warnings``, per split ``embedding_health``); docs/reliability.md
describes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ofgr_core.runs.events import Event, Log

if TYPE_CHECKING:
    import torch

    from ofgr_core.config import Config

Emit = Callable[[Event], None]


def memory_preflight(cfg: Config, model: torch.nn.Module, device: torch.device, *, image_size: int, trains_images: bool,
                     max_rows: int, emit: Emit) -> dict[str, Any]:
    """Run the memory plan (``ofgr_core.train.memplan``); refusals raise, lowered batches and notes are logged.

    Returns:
        ``{"plan": metrics["memory_plan"], "warnings": [...]}``.
    """
    from ofgr_core.train.memplan import plan_run

    plan = plan_run(cfg, model, device, image_size=image_size, trains_images=trains_images, max_rows=max_rows)
    for note in plan.notes:
        emit(Log(note))
    for w in plan.warnings:
        emit(Log(w, level="warning"))
    return {"plan": plan.to_dict(), "warnings": list(plan.warnings)}


def _span(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


class EtaLine:
    """Wraps the training events: after the first logged step, one line with the time per step and the time
    the whole training will take at that pace (again once the pace has settled, after ``refine_after`` s).

    The loop logs its first step at once, so a setting that makes training last for days (a huge
    ``sampler.batches_per_epoch``) is visible within seconds, not when an epoch ends.
    """

    def __init__(self, emit: Emit, epochs: int, *, refine_after: float = 30.0) -> None:
        self.emit, self.epochs, self.refine_after = emit, epochs, refine_after
        self.t0 = time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.said = 0

    def __call__(self, event: Event) -> None:
        self.emit(event)
        if getattr(event, "type", None) != "train_step" or self.said >= 2:
            return
        now = time.perf_counter()
        steps_per_epoch = int(getattr(event, "steps_per_epoch", 0))
        done = (int(getattr(event, "epoch", 1)) - 1) * steps_per_epoch + int(getattr(event, "step", 0))
        if self.first is None:  # the loop logs the first step this process runs (also after a resume)
            self.first = (now, done)
            per_step = now - self.t0
        elif now - self.first[0] >= self.refine_after and done > self.first[1]:
            per_step = (now - self.first[0]) / (done - self.first[1])
        else:
            return
        total = steps_per_epoch * self.epochs
        left = max(0, total - done) * per_step
        self.said += 1
        pace = "from the first step" if self.said == 1 else "at the current pace"
        self.emit(Log(f"train: {steps_per_epoch:,} steps per epoch x {self.epochs} epochs at {per_step:.3g} s/step "
                      f"({pace}): about {_span(left)} left (ETA)",
                      level="warning" if left > 86400 else "info"))


def flag_degenerate(part: str, emb: np.ndarray, query_mask: np.ndarray, emit: Emit, *, seed: int = 0
                    ) -> tuple[dict[str, Any], list[str]]:
    """``embedding_health`` of a split's query embeddings; each failed check becomes a loud warning line."""
    from ofgr_core.retrieval.embcheck import embedding_health

    rows = np.flatnonzero(np.asarray(query_mask))
    stats, warnings = embedding_health(np.asarray(emb)[rows], part, seed=seed)
    for w in warnings:
        emit(Log(w, level="warning"))
    return stats, warnings
