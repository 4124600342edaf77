"""Folds a run's events into what the Live screen shows. Plain Python, no Textual: easy to test.

The Live screen feeds it batches from ``EventTail.read_new()``; every field is derived from events alone, so
the same state results whether the TUI watched from the start or attached to a run hours in.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("data", "split", "train", "embed", "evaluate", "report")
RATE_WINDOW = 30  # recent train_step events used for the ETA


@dataclass
class StageState:
    name: str
    state: str = "pending"  # pending | running | done | stopped (ended by a stop, a kill or an error)
    done: int = 0
    total: int | None = None
    seconds: float | None = None
    started: float | None = None

    @property
    def fraction(self) -> float | None:
        if self.state == "done":
            return 1.0
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


@dataclass
class LogLine:
    time: float
    level: str  # info | warning | error | stage | epoch | eval
    text: str


@dataclass
class LiveState:
    run_id: str = ""
    name: str = ""
    epochs: int | None = None  # from the config or train_epoch events
    stages: dict[str, StageState] = field(default_factory=lambda: {s: StageState(s) for s in STAGES})
    current_stage: str | None = None
    # loss curves: x is a fractional epoch so curves from resumed runs line up
    steps_x: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    components: dict[str, list[float | None]] = field(default_factory=dict)
    lr: list[float] = field(default_factory=list)
    epoch_x: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    val: dict[str, list[float | None]] = field(default_factory=dict)
    best_epoch: int | None = None
    images_per_s: float | None = None
    gpu_mem_mb: float | None = None
    epoch: int | None = None
    first_epoch: int | None = None
    step: int | None = None
    steps_per_epoch: int | None = None
    eval_results: list[dict[str, Any]] = field(default_factory=list)
    terminal: dict[str, Any] | None = None
    last_time: float | None = None
    first_time: float | None = None
    n_events: int = 0
    logs: deque[LogLine] = field(default_factory=lambda: deque(maxlen=1000))
    _recent_steps: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW))

    # ------------------------------------------------------------------------------------- folding
    def feed(self, events: list[dict[str, Any]]) -> list[LogLine]:
        """Fold new events in; returns the log lines they produced (for an incremental log widget)."""
        new: list[LogLine] = []
        for ev in events:
            line = self._fold(ev)
            if line is not None:
                self.logs.append(line)
                new.append(line)
        return new

    def _fold(self, ev: dict[str, Any]) -> LogLine | None:
        t = ev.get("type")
        now = _f(ev.get("time")) or 0.0
        self.n_events += 1
        self.last_time = now
        if self.first_time is None:
            self.first_time = now
        if t == "run_started":
            self.terminal = None  # a new attempt (a resume): an earlier end event no longer decides
            self.run_id = str(ev.get("run_id", self.run_id))
            self.name = str(ev.get("name", self.name))
            return LogLine(now, "stage", f"run started (pid {ev.get('pid', '?')} on {ev.get('host', '?')})")
        if t == "stage_started":
            st = self._stage(ev)
            st.state, st.done, st.total, st.started = "running", 0, _i(ev.get("total")), now
            self.current_stage = st.name
            return LogLine(now, "stage", f"{st.name} started")
        if t == "stage_progress":
            st = self._stage(ev)
            if st.state == "pending":
                st.state, st.started = "running", now
            st.done = _i(ev.get("done")) or 0
            st.total = _i(ev.get("total")) or st.total
            self.current_stage = st.name
            return None
        if t == "stage_finished":
            st = self._stage(ev)
            st.state, st.seconds = "done", _f(ev.get("seconds"))
            if st.total:
                st.done = st.total
            return LogLine(now, "stage", f"{st.name} finished in {fmt_seconds(st.seconds)}")
        if t == "train_step":
            self._train_step(ev, now)
            return None
        if t == "train_epoch":
            return self._train_epoch(ev, now)
        if t == "eval_result":
            self.eval_results.append(ev)
            metrics = ev.get("metrics") or {}
            shown = "  ".join(f"{k} {v:.3f}" for k, v in list(metrics.items())[:4] if _f(v) is not None)
            return LogLine(now, "eval", f"eval {ev.get('split', '?')}/{ev.get('level', '?')}: {shown}")
        if t == "log":
            level = str(ev.get("level", "info"))
            level = level if level in ("info", "warning", "error") else "info"
            return LogLine(now, level, str(ev.get("message")))
        if t in ("run_finished", "run_failed", "run_interrupted"):
            self.terminal = ev
            if t != "run_finished":
                self._mark_stopped()
            if t == "run_finished":
                return LogLine(now, "stage", f"run finished in {fmt_seconds(_f(ev.get('seconds')))}")
            if t == "run_failed":
                return LogLine(now, "error", f"run failed: {ev.get('error', '')}")
            return LogLine(now, "warning", f"run interrupted: {ev.get('reason', '')}")
        return None

    def _mark_stopped(self) -> None:
        """A stop ends the train stage normally (it checkpoints), but training did not complete: say so."""
        for st in self.stages.values():
            if st.state == "running":
                st.state = "stopped"
        train = self.stages.get("train")
        done_epochs = len(self.epoch_x) and int(max(self.epoch_x))
        if train is not None and train.state == "done" and self.epochs and done_epochs < self.epochs:
            train.state = "stopped"

    def _stage(self, ev: dict[str, Any]) -> StageState:
        name = str(ev.get("stage", "?"))
        if name not in self.stages:
            self.stages[name] = StageState(name)
        return self.stages[name]

    def _train_step(self, ev: dict[str, Any], now: float) -> None:
        epoch, step, spe = _i(ev.get("epoch")), _i(ev.get("step")), _i(ev.get("steps_per_epoch"))
        loss = _f(ev.get("loss"))
        if epoch is None or step is None or loss is None:
            return
        self.epoch, self.step, self.steps_per_epoch = epoch, step, spe
        if self.first_epoch is None:
            self.first_epoch = epoch
        # the axis counts epochs done: epoch e (1-based, as the trainer numbers them) spans (e-1, e]
        x = epoch - self._epoch_base() + (step / spe if spe else 0.0)
        n = len(self.steps_x)
        self.steps_x.append(x)
        self.loss.append(loss)
        comps = ev.get("losses") or {}
        for name in comps:
            self.components.setdefault(name, [None] * n)
        for name, series in self.components.items():
            series.append(_f(comps.get(name)))
        lr = _f(ev.get("lr"))
        self.lr.append(lr if lr is not None else (self.lr[-1] if self.lr else 0.0))
        self.images_per_s = _f(ev.get("images_per_s")) or self.images_per_s
        self.gpu_mem_mb = _f(ev.get("gpu_mem_mb")) or self.gpu_mem_mb
        self._recent_steps.append((now, epoch * (spe or 0) + step))
        st = self.stages.setdefault("train", StageState("train"))
        if st.state == "pending":
            st.state, st.started = "running", now
        self.current_stage = "train"

    def _train_epoch(self, ev: dict[str, Any], now: float) -> LogLine:
        epoch = _i(ev.get("epoch")) or 0
        self.epochs = _i(ev.get("epochs")) or self.epochs
        if self.first_epoch is None:
            self.first_epoch = epoch
        self.epoch_x.append(float(epoch - self._epoch_base() + 1))  # the end of the epoch, on the steps' axis
        self.epoch_loss.append(_f(ev.get("loss")) or 0.0)
        val = ev.get("val") or {}
        n = len(self.epoch_loss) - 1
        for k in val:
            self.val.setdefault(k, [None] * n)
        for k, series in self.val.items():
            series.append(_f(val.get(k)))
        if ev.get("best"):
            self.best_epoch = epoch
        shown = "  ".join(f"val {k} {v:.3f}" for k, v in val.items() if _f(v) is not None)
        best = "  (best)" if ev.get("best") else ""
        total = f"/{self.epochs}" if self.epochs else ""
        loss = _f(ev.get("loss"))
        loss_s = f"{loss:.4f}" if loss is not None else "?"
        return LogLine(now, "epoch", f"epoch {epoch}{total}: loss {loss_s}  {shown}{best}".rstrip())

    # ------------------------------------------------------------------------------------ derived
    @property
    def finished(self) -> bool:
        return self.terminal is not None

    def train_fraction(self) -> float | None:
        st = self.stages.get("train")
        if st and st.state == "done":
            return 1.0
        if self.epoch is None or self.step is None or not self.steps_per_epoch or not self.epochs:
            return st.fraction if st else None
        base = self._epoch_base()
        done = (self.epoch - base) * self.steps_per_epoch + self.step
        return max(0.0, min(1.0, done / (self.epochs * self.steps_per_epoch)))

    def _epoch_base(self) -> int:
        # Epochs may be numbered from 0 or 1: the log always starts with the first epoch (also after a resume)
        return 1 if self.first_epoch == 1 else 0

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left in training, from the recent step rate; None when unknown or not training."""
        if self.finished or self.current_stage not in (None, "train") or len(self._recent_steps) < 2:
            return None
        frac = self.train_fraction()
        if frac is None or frac >= 1.0 or not self.steps_per_epoch or not self.epochs:
            return None
        (t0, s0), (t1, s1) = self._recent_steps[0], self._recent_steps[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        per_step = (t1 - t0) / (s1 - s0)
        left = (1.0 - frac) * self.epochs * self.steps_per_epoch * per_step
        if now is not None and self.last_time is not None:
            left -= max(0.0, now - self.last_time)  # time since the last step already passed
        return max(0.0, left)

    def elapsed(self, now: float | None = None, *, running: bool = True) -> float | None:
        """Run time so far; a run that is not running (or vanished) ends at its last event."""
        if self.first_time is None:
            return None
        end = _f(self.terminal.get("time")) if self.terminal else None
        if end is None and not running:
            end = self.last_time
        return (end or (now if now is not None else time.time())) - self.first_time


# what a stop request ends in each stage (ofgr_core.workflows.pipeline checks it at every progress report)
STOP_AT = {
    "train": "after the current training step (checkpointed: resume continues from it)",
    "embed": "at the next embedding batch (embed and evaluate are redone on resume)",
    "evaluate": "at the next block of queries, or once the split's confidence intervals are done "
    "(evaluation is redone on resume)",
    "features": "at the next batch of tower features (those done stay cached)",
    "data": "at the next image check (checks done stay cached)",
}


def current_stage(events: list[dict[str, Any]]) -> str | None:
    """The stage of the current attempt that has started and not finished, if any."""
    for ev in reversed(events):
        t = ev.get("type")
        if t in ("stage_started", "stage_progress"):
            return str(ev.get("stage"))
        if t in ("stage_finished", "run_started"):
            return None
    return None


def stop_note(run_dir: Path) -> str:
    """What a stop request asked now will do, naming the stage the run is in (one line, for a toast)."""
    from ofgr_core.runs.eventlog import read_events
    from ofgr_core.runs.folder import RunFolder

    name = Path(run_dir).name
    stage = current_stage(read_events(run_dir))
    try:
        world = int(json.loads(RunFolder(run_dir).env.read_text()).get("world_size") or 1)
    except (OSError, ValueError, AttributeError, TypeError):
        world = 1
    if world > 1 and stage != "train":
        return (f"{name} is in {stage or 'between stages'}: under torchrun a stop takes effect during training "
                "only, so it runs to the end")
    where = STOP_AT.get(stage or "", "as it enters its next stage")
    return f"{name} is in {stage or 'between stages'}; it stops {where} (u resumes it)"


def downsample(
    xs: list[float], ys: list[float | None], max_points: int = 400
) -> tuple[list[float], list[float]]:
    """Bucket means, so that plotting hours of steps stays cheap and the curve stays smooth."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None]
    if len(pts) <= max_points:
        return [p[0] for p in pts], [p[1] for p in pts]
    size = len(pts) / max_points
    out_x, out_y = [], []
    for b in range(max_points):
        chunk = pts[int(b * size) : max(int((b + 1) * size), int(b * size) + 1)]
        out_x.append(sum(p[0] for p in chunk) / len(chunk))
        out_y.append(sum(p[1] for p in chunk) / len(chunk))
    return out_x, out_y


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _f(x: Any) -> float | None:
    try:
        return float(x) if x is not None else None
    except (TypeError, ValueError):
        return None


def _i(x: Any) -> int | None:
    try:
        return int(x) if x is not None else None
    except (TypeError, ValueError):
        return None
