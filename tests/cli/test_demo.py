"""`ofgr demo` end to end on a tiny world: pretrain the CLIP stand-in, run the three demo runs, one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.runs.folder import RunFolder
from ofgr_core.workflows.demo import summary_rows, verdict

runner = CliRunner()


@pytest.mark.slow
def test_demo_compares_cnn_frozen_clip_and_clip_head_on_one_split(tmp_path: Path) -> None:
    tiny = [
        "data.sources.0.options={seed: 0, num_coarse: 3, fine_per_coarse: 4, images_per_class: 10, image_size: 32}",
        "data.image_size=32", "sampler.coarse_per_batch=2", "sampler.fine_per_coarse=2", "sampler.k=2",
        "train.epochs=1", "eval.bootstrap=20",
    ]
    args = ["demo", "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data"), "-q",
            "--pretrain-images-per-class", "4", "--pretrain-epochs", "1"]
    for o in tiny:
        args += ["--set", o]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("cnn_finetuned", "clip_frozen", "clip_head"):
        assert name in result.output
    state = json.loads((tmp_path / "runs" / "bench.json").read_text())["runs"]
    dirs = [tmp_path / "runs" / state[n] for n in ("cnn_finetuned", "clip_frozen", "clip_head")]
    metrics = [json.loads(RunFolder(d).metrics.read_text()) for d in dirs]
    splits = {RunFolder(d).split.read_text() for d in dirs}
    assert len(splits) == 1  # the three runs share one split
    cnn, frozen, head = metrics
    assert cnn["fit"]["strategy"] == "end_to_end"
    assert frozen["fit"]["strategy"] == head["fit"]["strategy"] == "head_on_features"
    assert frozen["model"]["trainable_params"] == 0 < head["model"]["trainable_params"] < cnn["model"]["params"]
    assert head["fit"]["features"]["computed"] == 0  # the frozen run filled the feature cache already
    assert (tmp_path / "data" / "clip-tiny" / "open_clip_config.json").is_file()
    # a second demo reuses the pretrained weights and every finished run
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "runs" / "bench.json").read_text())["runs"] == state


def test_summary_rows_and_verdict(tmp_path: Path) -> None:
    def fake(name: str, r1: float, ci: float, params: int, t: float) -> Path:
        d = tmp_path / name
        d.mkdir()
        RunFolder(d).metrics.write_text(json.dumps({
            "model": {"kind": "timm", "name": name, "trainable_params": params},
            "timings": {"data": 1.0, "train": t, "evaluate": 1.0},
            "unseen": {"fine": {"recall@1": r1}, "coarse": {"recall@1": r1 + 0.2},
                       "ci95": {"fine": {"recall@1": [r1 - ci, r1 + ci]}}},
        }))
        return d

    rows = summary_rows([fake("a", 0.40, 0.02, 10, 100.0), fake("b", 0.50, 0.02, 5, 5.0)], ["a", "b"])
    assert rows[0]["fit_seconds"] == 100.0 and rows[0]["run_seconds"] == 102.0
    assert rows[1]["fine_ci"] == pytest.approx(0.02)
    assert verdict(rows).startswith("best unseen fine R@1: b (50.0%), clearly ahead of a (40.0%)")
    close = summary_rows([fake("c", 0.40, 0.05, 1, 1.0), fake("d", 0.42, 0.05, 1, 1.0)], ["c", "d"])
    assert "within the 95% intervals" in verdict(close)
