"""`ofgr show` prints a CLIP run's text->image block (every space, the free-text one starred); other runs get
no such block."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ofgr_core.cli import app

runner = CliRunner()


def _space(r1: float) -> dict:
    return {"fine": {"recall@1": r1, "recall@5": 0.5, "map@r": 0.1},
            "coarse": {"recall@1": 0.6, "recall@5": 0.9, "map@r": 0.3},
            "n_queries": {"fine": 8, "coarse": 4}, "n_gallery": 96}  # fmt: skip


def _run(runs: Path, run_id: str, t2i: dict | None) -> None:
    d = runs / run_id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("name: x\nmodel: {kind: clip, name: ofgr-tiny-clip}\n")
    (d / "events.jsonl").write_text(
        json.dumps({"type": "run_started", "time": 1.0, "run_id": run_id, "name": "x", "pid": 2**22 + 7,
                    "host": "elsewhere"}) + "\n"
        + json.dumps({"type": "run_finished", "time": 2.0, "seconds": 1.0, "metrics_path": "metrics.json"}) + "\n"
    )  # fmt: skip
    block = {"fine": {"recall@1": 0.4, "map@r": 0.2}, "coarse": {"recall@1": 0.7, "map@r": 0.4}, "n_queries": 96}
    if t2i is not None:
        block["text_to_image"] = t2i
    (d / "metrics.json").write_text(json.dumps({"schema_version": 1, "unseen": block}))


def test_show_prints_text_to_image_per_space(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs, "20251127-101500-clip", {"raw": _space(0.125), "head": _space(0.375), "space_for_free_text": "head"})
    r = runner.invoke(app, ["show", "20251127-101500-clip", "--runs-dir", str(runs)])
    assert r.exit_code == 0, r.output
    assert "text→image" in r.output
    lines = [ln.split() for ln in r.output.splitlines()]
    assert ["unseen", "raw", "fine", "12.5", "50.0", "10.0", "8"] in lines
    assert ["unseen", "head*", "fine", "37.5", "50.0", "10.0", "8"] in lines
    assert ["unseen", "head*", "coarse", "60.0", "90.0", "30.0", "4"] in lines


def test_show_has_no_text_block_without_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs, "20251127-101500-cnn", None)
    r = runner.invoke(app, ["show", "20251127-101500-cnn", "--runs-dir", str(runs)])
    assert r.exit_code == 0, r.output
    assert "text→image" not in r.output
