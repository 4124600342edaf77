"""The Live screen's model: folding events, ETA, epoch numbering, downsampling (no Textual needed)."""

from __future__ import annotations

import rundirs
from ofgr_tui.livestate import LiveState, downsample, fmt_seconds


def steps(epoch: int, n: int, spe: int, t0: float, dt: float = 1.0) -> list[dict]:
    return [
        {"type": "train_step", "time": t0 + i * dt, "epoch": epoch, "step": i + 1, "steps_per_epoch": spe,
         "loss": 1.0, "losses": {"a": 0.5}, "lr": 0.1, "images_per_s": 100.0}
        for i in range(n)
    ]  # fmt: skip


def test_progress_and_eta_with_one_based_epochs() -> None:
    st = LiveState(epochs=4)
    st.feed([{"type": "stage_started", "time": 0.0, "stage": "train"}])
    st.feed(steps(1, 5, 10, t0=1.0))  # half of epoch 1 of 4, one second per step
    assert st.train_fraction() == 5 / 40
    assert st.eta_seconds(now=5.0) == 35.0
    assert st.eta_seconds(now=9.0) == 31.0  # the clock keeps running between events


def test_zero_based_epochs() -> None:
    st = LiveState(epochs=2)
    st.feed(steps(0, 10, 10, t0=0.0) + steps(1, 5, 10, t0=10.0))
    assert st.train_fraction() == 15 / 20


def test_epoch_axis_of_a_three_epoch_run_ends_at_three() -> None:
    """The trainer numbers epochs from 1: the axis counts epochs done, so it spans 0..3, not 1..4."""
    st = LiveState(epochs=3)
    st.feed(rundirs.training_events(0.0, 3, 10))
    assert min(st.steps_x) > 0 and max(st.steps_x) == 3.0
    assert st.epoch_x == [1.0, 2.0, 3.0]


def test_a_resume_after_an_end_event_clears_it() -> None:
    st = LiveState()
    t0 = rundirs.T0
    st.feed([rundirs.started("r", "n", t0, 1), {"type": "run_interrupted", "time": t0 + 1, "reason": "stop"}])
    assert st.finished
    st.feed([rundirs.started("r", "n", t0 + 5, 2)])
    assert not st.finished and st.terminal is None


def test_a_stop_during_training_does_not_tick_train_done() -> None:
    st = LiveState(epochs=3)
    t0 = rundirs.T0
    st.feed([rundirs.stage("started", "train", t0)] + rundirs.training_events(t0, 3, 10)[:12])
    st.feed([rundirs.stage("finished", "train", t0 + 30, seconds=30.0),
             {"type": "run_interrupted", "time": t0 + 31, "reason": "stop"}])  # fmt: skip
    assert st.stages["train"].state == "stopped"


def test_components_align_with_steps_even_when_one_appears_late() -> None:
    st = LiveState()
    evs = steps(0, 3, 10, t0=0.0)
    evs[2]["losses"] = {"a": 0.5, "b": 0.2}
    st.feed(evs)
    assert st.components["a"] == [0.5, 0.5, 0.5] and st.components["b"] == [None, None, 0.2]


def test_terminal_events_and_log_lines() -> None:
    st = LiveState()
    t0 = rundirs.T0
    lines = st.feed(
        [
            rundirs.started("r", "n", t0, 1),
            {"type": "log", "time": t0 + 1, "level": "warning", "message": "3 images skipped"},
            {"type": "run_failed", "time": t0 + 2, "error": "boom", "traceback": "..."},
        ]
    )
    assert [ln.level for ln in lines] == ["stage", "warning", "error"]
    assert st.finished and st.eta_seconds() is None
    assert st.elapsed(now=t0 + 999) == 2.0


def test_downsample_keeps_shape_and_bounds() -> None:
    xs = [float(i) for i in range(10_000)]
    ys: list[float | None] = [float(i % 7) for i in range(10_000)]
    dx, dy = downsample(xs, ys, 400)
    assert len(dx) == len(dy) == 400 and dx == sorted(dx) and min(dy) >= 0 and max(dy) <= 6
    assert downsample([1.0, 2.0], [None, 3.0]) == ([2.0], [3.0])


def test_fmt_seconds() -> None:
    assert [fmt_seconds(s) for s in (None, 3.21, 75, 3600 * 5 + 60, 86400 * 3)] == [
        "-",
        "3.2s",
        "1m15s",
        "5h01m",
        "3d00h",
    ]
