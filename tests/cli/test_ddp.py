"""The same config runs data-parallel under torchrun: 2 gloo processes on CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ofgr_core import runs
from ofgr_testing import REPO, tiny_overrides


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path, tiny_data_root):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun") or "torchrun")
    runs_dir = tmp_path / "runs"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ofgr_core.cli", "run",
           str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(runs_dir), "--name", "ddp", "-q",
           "--set", "device=cpu"]
    for o in tiny_overrides(tiny_data_root):
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]  # one folder: only rank 0 creates it
    assert runs.load_run(run_dir).status == "finished"
    env_json = json.loads((run_dir / "env.json").read_text())
    assert env_json["world_size"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2
    assert 0 <= metrics["unseen"]["fine"]["recall@1"] <= 1
    # every event line was written once, by rank 0
    started = [e for e in runs.read_events(run_dir) if e["type"] == "run_started"]
    assert len(started) == 1
