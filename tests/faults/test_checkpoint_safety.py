"""Checkpoints are tensors and plain data: a crafted pickle is refused with one line and its code never runs."""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import CheckpointError, ExitCode
from ofgr_core.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

runner = CliRunner()


class _Payload:
    """Unpickling this object would run ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _evil_files(folder: Path, marker: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    zipped = folder / "zipped.pt"
    torch.save({"model": {}, "x": _Payload(marker)}, zipped)  # torch's zip format with a pickled payload
    raw = folder / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": _Payload(marker)}))  # a bare pickle
    legacy = folder / "legacy.pt"
    torch.save({"model": {}, "x": _Payload(marker)}, legacy, _use_new_zipfile_serialization=False)
    return {"zipped": zipped, "raw": raw, "legacy": legacy}


@pytest.mark.parametrize("kind", ["zipped", "raw", "legacy"])
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = _evil_files(tmp_path / "ck", marker)[kind]
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "refused" in msg


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(3)}, "epoch": 1})
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: 200])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01not a checkpoint")
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    for p in (trunc, junk, listed):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(p)
        assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.standard_normal(), torch.rand(2).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.standard_normal(), torch.rand(2).tolist()) == expected


def test_real_run_checkpoints_load_safely(finished_run: Path) -> None:
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(finished_run / "checkpoints" / name)
        assert "model" in state


def _copy_run(finished_run: Path, tmp_path: Path) -> Path:
    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / finished_run.name
    shutil.copytree(finished_run, run_dir)
    return run_dir


def test_query_image_with_crafted_checkpoint_is_refused(finished_run: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(finished_run, tmp_path)
    marker = tmp_path / "pwned"
    evil = _evil_files(tmp_path / "ck", marker)["zipped"]
    for name in ("best.pt", "last.pt"):
        shutil.copy(evil, run_dir / "checkpoints" / name)
    image = next(Path(p) for p in _gallery_paths(run_dir))
    r = runner.invoke(app, ["query", str(run_dir), "--image", str(image)])
    assert r.exit_code == ExitCode.DATA, r.output
    assert "refused" in r.output and "Traceback" not in r.output
    assert not marker.exists()


def test_resume_with_crafted_checkpoint_is_refused(finished_run: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(finished_run, tmp_path)
    (run_dir / "metrics.json").unlink()
    with open(run_dir / "events.jsonl", "a") as f:
        f.write('{"type": "run_interrupted", "time": 1e12, "reason": "test"}\n')
    marker = tmp_path / "pwned"
    shutil.copy(_evil_files(tmp_path / "ck", marker)["zipped"], run_dir / "checkpoints" / "last.pt")
    r = runner.invoke(app, ["resume", str(run_dir), "-q"])
    assert r.exit_code == ExitCode.DATA, r.output
    assert "refused" in r.output
    assert not marker.exists()


def _gallery_paths(run_dir: Path) -> list[str]:
    import csv

    with open(run_dir / "embeddings" / "unseen.csv", newline="") as f:
        return [row["path"] for row in csv.DictReader(f)]
