"""A stopped run resumes from its last checkpoint and ends with the same metrics as an uninterrupted run."""

import json

from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.config import dump_config, load_config
from ofgr_core.runs.eventlog import EventWriter, read_events
from ofgr_core.runs.folder import CONFIG_FILE, EVENTS_FILE, METRICS_FILE, create_run_dir
from ofgr_core.runs.state import load_run, request_stop
from ofgr_core.workflows.pipeline import execute_run
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


def two_epoch_config(data_root):
    # bit-identical resumption is a CPU guarantee (CUDA kernels are not all deterministic)
    return load_config(REPO / "configs" / "demo.yaml", tiny_overrides(data_root) + ["train.epochs=2", "device=cpu"])


def test_stop_then_resume_matches_uninterrupted(tmp_path, tiny_data_root):
    cfg = two_epoch_config(tiny_data_root)

    # uninterrupted reference
    ref_dir = create_run_dir(tmp_path / "runs", "ref")
    with EventWriter(ref_dir / EVENTS_FILE) as w:
        status, ref_metrics = execute_run(cfg, ref_dir, w)
    assert status == "finished"

    # the same run, asked to stop as soon as epoch 1 is checkpointed
    run_dir = create_run_dir(tmp_path / "runs", "stopped")
    (run_dir / CONFIG_FILE).write_text(dump_config(cfg))

    def stop_after_first_epoch(ev):
        if ev.type == "train_epoch" and ev.epoch == 1:
            request_stop(run_dir)

    with EventWriter(run_dir / EVENTS_FILE) as w:
        status, metrics = execute_run(cfg, run_dir, w, stop_after_first_epoch)
    assert status == "interrupted" and metrics is None
    info = load_run(run_dir)
    assert info.status == "interrupted"
    assert not (run_dir / METRICS_FILE).exists()

    r = runner.invoke(app, ["resume", run_dir.name, "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert r.exit_code == 0, r.output
    assert load_run(run_dir).status == "finished"
    events = read_events(run_dir)
    assert [e["epoch"] for e in events if e["type"] == "train_epoch"] == [1, 2]
    resumed = json.loads((run_dir / METRICS_FILE).read_text())
    for split in ("unseen", "seen"):
        for level in ("fine", "coarse"):
            for key in ("recall@1", "recall@5", "map@r"):
                assert resumed[split][level][key] == ref_metrics[split][level][key], (split, level, key)


def test_resume_refuses_finished_run(finished_run):
    r = runner.invoke(app, ["resume", str(finished_run)])
    assert r.exit_code != 0 and "already finished" in r.output
