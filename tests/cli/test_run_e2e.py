"""A tiny end-to-end run through the real CLI entry point, and the folder contract it must satisfy."""

import json

import numpy as np
import yaml
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.config import load_config
from ofgr_core.runs.eventlog import read_events
from ofgr_core.runs.state import load_run

runner = CliRunner()


def test_run_folder_contents(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    for f in ("config.yaml", "env.json", "events.jsonl", "metrics.json", "split.json", "data_report.json",
              "checkpoints", "embeddings"):
        assert f in names, f"{f} missing from run folder"
    # the resolved config is complete and valid, with the overrides applied
    cfg = load_config(finished_run / "config.yaml")
    assert cfg.model.name == "test_resnet" and cfg.train.epochs == 1 and cfg.name == "tiny"
    env = json.loads((finished_run / "env.json").read_text())
    assert {"packages", "device", "seed", "command", "python"} <= set(env)
    assert "torch" in env["packages"]
    assert (finished_run / "checkpoints" / "last.pt").is_file()


def test_events_log_tells_the_whole_story(finished_run):
    events = read_events(finished_run)
    types = [e["type"] for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert all("time" in e for e in events)
    stages = [e["stage"] for e in events if e["type"] == "stage_finished"]
    for s in ("data", "split", "train", "embed", "evaluate"):
        assert s in stages
    steps = [e for e in events if e["type"] == "train_step"]
    assert steps and {"arcface", "htriplet"} <= set(steps[0]["losses"])
    epochs = [e for e in events if e["type"] == "train_epoch"]
    assert len(epochs) == 1 and "recall@1" in epochs[0]["val"]
    assert load_run(finished_run).status == "finished"


def test_metrics_schema(finished_run):
    m = json.loads((finished_run / "metrics.json").read_text())
    for split in ("unseen", "seen"):
        for level in ("fine", "coarse"):
            for k in (1, 5, 10):
                v = m[split][level][f"recall@{k}"]
                assert 0.0 <= v <= 1.0
            lo, hi = m[split]["ci95"][level]["recall@1"]
            assert lo <= m[split][level]["recall@1"] <= hi
        assert m[split]["n_queries"] > 0
    # coarse is never harder than fine: a fine hit is a coarse hit
    assert m["unseen"]["coarse"]["recall@1"] >= m["unseen"]["fine"]["recall@1"]
    assert {"data", "split", "train", "embed", "evaluate"} <= set(m["timings"])
    assert m["train"]["images_seen"] > 0


def test_split_is_class_disjoint_and_saved(finished_run):
    split = json.loads((finished_run / "split.json").read_text())
    train, unseen, val = (set(split["classes"][k]) for k in ("train", "unseen", "val"))
    assert train and unseen and not (train & unseen) and not (val & unseen) and not (train & val)
    emb = np.load(finished_run / "embeddings" / "unseen.npy")
    assert emb.shape[0] == len(split["ids"]["unseen"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_runs_listing_and_show_json(finished_run):
    runs_dir = finished_run.parent
    r = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir), "--json"])
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)
    assert listed[0]["run_id"] == finished_run.name and listed[0]["status"] == "finished"
    r = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir)])
    assert r.exit_code == 0 and "finished" in r.stdout
    r = runner.invoke(app, ["show", finished_run.name, "--runs-dir", str(runs_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads((finished_run / "metrics.json").read_text())
    r = runner.invoke(app, ["show", "latest", "--runs-dir", str(runs_dir)])
    assert r.exit_code == 0 and "R@1" in r.stdout


def test_show_unknown_run_is_one_line_error(tmp_path):
    r = runner.invoke(app, ["show", "nope", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 5
    assert "not found" in r.output and "Traceback" not in r.output


def test_run_with_bad_config_key_fails_fast(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"epoch": 2}}))
    r = runner.invoke(app, ["run", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 3
    assert "train.epoch: unknown key, did you mean train.epochs?" in r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_query_by_item_id(finished_run):
    import csv

    with open(finished_run / "embeddings" / "unseen.csv") as f:
        first = next(csv.DictReader(f))
    r = runner.invoke(app, ["query", str(finished_run), "--id", first["id"], "--k", "5", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert len(res["results"]) == 5
    assert all(h["id"] != first["id"] for h in res["results"])  # never itself
    scores = [h["score"] for h in res["results"]]
    assert scores == sorted(scores, reverse=True)
    assert res["results"][0]["hit_fine"] == (res["results"][0]["fine"] == first["fine"])
