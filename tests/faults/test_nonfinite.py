"""A NaN/Inf loss or gradient stops the run naming step and component (or skips the step), keeps the last good
checkpoint, marks the run failed, and events.jsonl stays strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ofgr_core.losses as losses_pkg
from ofgr_core.common.atomic import atomic_write_json
from ofgr_core.common.errors import NonFiniteError
from ofgr_core.config import dump_config, load_config
from ofgr_core.runs.checkpoint import load_checkpoint
from ofgr_core.runs.eventlog import EventWriter
from ofgr_core.runs.folder import CONFIG_FILE, EVENTS_FILE, METRICS_FILE, create_run_dir
from ofgr_core.runs.state import load_run
from ofgr_core.workflows.pipeline import execute_run
from ofgr_testing import REPO, tiny_overrides


def _strict(line: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


def _poison(monkeypatch: pytest.MonkeyPatch, state: dict, kind: str, times: int) -> None:
    """After the first epoch, make the next ``times`` steps' loss (or gradient) non-finite."""
    original = losses_pkg.create_loss

    def create_loss(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        module = original(*args, **kwargs)
        forward = module.forward

        def poisoned(emb, labels):  # noqa: ANN001, ANN202
            total, parts = forward(emb, labels)
            if state["armed"] and state["left"] > 0:
                state["left"] -= 1
                if kind == "loss":
                    parts = dict(parts)
                    parts["arcface"] = parts["arcface"] * float("nan")
                    total = sum(parts.values())
                else:  # finite value, NaN gradient: d sqrt(|x|)/dx at 0
                    total = total + torch.sqrt((emb * 0).sum().abs())
            return total, parts

        module.forward = poisoned
        return module

    monkeypatch.setattr(losses_pkg, "create_loss", create_loss)
    state["left"] = times


def _run(tmp_path: Path, data_root: Path, state: dict, extra: list[str]) -> tuple[Path, str, Exception | None]:
    cfg = load_config(REPO / "configs" / "demo.yaml", tiny_overrides(data_root) + ["train.epochs=2", "device=cpu"]
                      + extra)
    run_dir = create_run_dir(tmp_path / "runs", "nan")
    (run_dir / CONFIG_FILE).write_text(dump_config(cfg))

    def on_event(ev) -> None:  # noqa: ANN001
        if ev.type == "train_epoch":
            state["armed"] = True

    error = None
    with EventWriter(run_dir / EVENTS_FILE) as w:
        try:
            status, _ = execute_run(cfg, run_dir, w, on_event)
        except NonFiniteError as e:
            status, error = "failed", e
    return run_dir, status, error


@pytest.mark.parametrize("kind,component", [("loss", "arcface"), ("gradient", "gradient norm")])
def test_nonfinite_stops_names_step_and_keeps_checkpoint(
    tmp_path: Path, tiny_data_root: Path, monkeypatch: pytest.MonkeyPatch, kind: str, component: str
) -> None:
    state = {"armed": False}
    _poison(monkeypatch, state, kind, times=1)
    run_dir, status, error = _run(tmp_path, tiny_data_root, state, [])
    assert status == "failed" and error is not None
    msg = str(error)
    assert "\n" not in msg and "epoch 2 step 1" in msg and component in msg and "last.pt" in msg
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 0  # the good epoch-1 checkpoint
    info = load_run(run_dir)
    assert info.status == "failed" and "epoch 2 step 1" in (info.error or "")
    lines = (run_dir / EVENTS_FILE).read_text().splitlines()
    events = [_strict(ln) for ln in lines]
    assert events[-1]["type"] == "run_failed"


def test_nonfinite_skip_drops_the_step_and_finishes(
    tmp_path: Path, tiny_data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"armed": False}
    _poison(monkeypatch, state, "loss", times=1)
    run_dir, status, error = _run(tmp_path, tiny_data_root, state, ["train.nonfinite=skip"])
    assert status == "finished" and error is None
    events = [_strict(ln) for ln in (run_dir / EVENTS_FILE).read_text().splitlines()]
    skipped = [e for e in events if e["type"] == "log" and "skipped step" in e["message"]]
    assert len(skipped) == 1 and "arcface=nan" in skipped[0]["message"]
    assert all(e["loss"] is not None for e in events if e["type"] in ("train_step", "train_epoch"))
    metrics = _strict((run_dir / METRICS_FILE).read_text())
    assert metrics["unseen"]["fine"]["recall@1"] > 0


def test_events_and_metrics_writers_emit_strict_json(tmp_path: Path) -> None:
    from ofgr_core.runs.events import TrainEpoch

    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        w.write(TrainEpoch(epoch=1, epochs=1, loss=float("nan"), losses={"a": float("inf")}, lr=1e-3,
                           val={"recall@1": float("-inf")}, seconds=1.0, best=False))
    ev = _strict(p.read_text().strip())
    assert ev["loss"] is None and ev["losses"]["a"] is None and ev["val"]["recall@1"] is None
    atomic_write_json(tmp_path / "m.json", {"x": float("nan"), "y": [1.0, float("inf")]})
    assert _strict((tmp_path / "m.json").read_text()) == {"x": None, "y": [1.0, None]}
