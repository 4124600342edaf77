"""A stop request takes effect in every stage, not only between training steps: pressed during embed or
evaluate, the run ends as ``interrupted`` naming the stage, leaves no ``stop`` file behind, writes no
``stage_finished`` for the stage it stopped, and resumes to the same metrics as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ofgr_core.config import dump_config, load_config
from ofgr_core.runs.eventlog import EventWriter, read_events
from ofgr_core.runs.folder import CONFIG_FILE, EVENTS_FILE, METRICS_FILE, RunFolder, create_run_dir
from ofgr_core.runs.state import load_run, request_stop
from ofgr_core.workflows.pipeline import execute_run
from ofgr_testing import REPO, tiny_overrides


def _cfg(data_root: Path) -> Any:
    return load_config(REPO / "configs" / "demo.yaml", tiny_overrides(data_root) + ["device=cpu"])


def _stopped_in(cfg: Any, runs: Path, stage: str, *, first_progress: bool) -> Path:
    """A run whose stop is requested as ``stage`` starts (or at its first progress report)."""
    run_dir = create_run_dir(runs, f"stop-{stage}")
    (run_dir / CONFIG_FILE).write_text(dump_config(cfg))
    trigger = "stage_progress" if first_progress else "stage_started"

    def on_event(ev: Any) -> None:
        if ev.type == trigger and getattr(ev, "stage", None) == stage:
            request_stop(run_dir)

    with EventWriter(run_dir / EVENTS_FILE) as w:
        status, metrics = execute_run(cfg, run_dir, w, on_event)
    assert status == "interrupted" and metrics is None
    return run_dir


@pytest.mark.parametrize("stage", ["embed", "evaluate"])
def test_stop_during_a_late_stage_interrupts_the_run(tmp_path: Path, tiny_data_root: Path, stage: str) -> None:
    run_dir = _stopped_in(_cfg(tiny_data_root), tmp_path / "runs", stage, first_progress=True)
    info = load_run(run_dir)
    assert info.status == "interrupted"
    events = read_events(run_dir)
    last = events[-1]
    assert last["type"] == "run_interrupted" and f"during {stage}" in last["reason"], last
    assert not RunFolder(run_dir).stop_file.exists()  # no stray stop file
    assert not (run_dir / METRICS_FILE).exists()
    finished = [e["stage"] for e in events if e["type"] == "stage_finished"]
    assert stage not in finished and "report" not in finished
    assert "train" in finished  # training itself completed before the stop


def test_stop_before_a_stage_names_it_and_resume_finishes_with_the_same_metrics(
    tmp_path: Path, tiny_data_root: Path
) -> None:
    from typer.testing import CliRunner

    from ofgr_core.cli import app

    cfg = _cfg(tiny_data_root)
    ref_dir = create_run_dir(tmp_path / "runs", "ref")
    with EventWriter(ref_dir / EVENTS_FILE) as w:
        status, ref = execute_run(cfg, ref_dir, w)
    assert status == "finished" and ref is not None

    # asked to stop while the (short) embed stage starts: seen at its first batch or before evaluate
    run_dir = _stopped_in(cfg, tmp_path / "runs", "embed", first_progress=False)
    reason = read_events(run_dir)[-1]["reason"]
    assert "embed" in reason or "evaluate" in reason, reason

    r = CliRunner().invoke(app, ["resume", run_dir.name, "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert r.exit_code == 0, r.output
    assert load_run(run_dir).status == "finished"
    resumed = json.loads((run_dir / METRICS_FILE).read_text())
    for split in ("unseen", "seen"):
        for level in ("fine", "coarse"):
            assert resumed[split][level]["recall@1"] == ref[split][level]["recall@1"], (split, level)


def test_stopped_training_writes_no_train_finished(tmp_path: Path, tiny_data_root: Path) -> None:
    """A stopped training is not reported as a finished stage (the log said `train finished in 14s`)."""
    # steps are logged rarely (as on a long run): the step that stopped must still reach the live view
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        tiny_overrides(tiny_data_root) + ["device=cpu", "train.epochs=2", "train.log_every=1000"],
    )
    run_dir = create_run_dir(tmp_path / "runs", "stop-train")
    (run_dir / CONFIG_FILE).write_text(dump_config(cfg))

    def on_event(ev: Any) -> None:
        if ev.type == "stage_started" and ev.stage == "train":
            request_stop(run_dir)

    with EventWriter(run_dir / EVENTS_FILE) as w:
        status, _ = execute_run(cfg, run_dir, w, on_event)
    assert status == "interrupted"
    events = read_events(run_dir)
    assert "train" not in [e["stage"] for e in events if e["type"] == "stage_finished"]
    assert "during train" in events[-1]["reason"]
    # the live view's step is the step the log names
    stop_log = next(e for e in events if e["type"] == "log" and e["message"].startswith("stopped after"))
    last_step = [e for e in events if e["type"] == "train_step"][-1]
    assert stop_log["message"].startswith(f"stopped after epoch {last_step['epoch']} step {last_step['step']};")
