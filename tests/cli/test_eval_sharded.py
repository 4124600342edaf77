"""``ofgr eval-embeddings`` under torchrun: 2 gloo ranks on CPU print what one process prints, to the digit."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ofgr_testing import REPO


def _torchrun() -> str:
    exe = Path(sys.executable).with_name("torchrun")
    return str(exe) if exe.exists() else shutil.which("torchrun") or "torchrun"


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    # (approximate indexes are covered in tests/core/test_eval_scale.py with simulated ranks)
    rng = np.random.default_rng(0)
    n = 20000  # several query chunks (of up to 4096) per rank
    fine = rng.integers(0, 60, n)
    x = rng.normal(size=(60, 24))[fine] + 0.8 * rng.normal(size=(n, 24))
    np.save(tmp_path / "emb.npy", x.astype(np.float32))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "fine", "coarse", "split", "domain"])
        for i in range(n):
            w.writerow([f"i{i}", f"f{fine[i]}", f"c{fine[i] // 6}", "unseen" if fine[i] % 3 else "seen",
                        "a" if i % 3 else "b"])
    args = ["eval-embeddings", str(tmp_path / "emb.npy"), str(tmp_path / "labels.csv"), "--json",
            "--bootstrap", "100", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    one = subprocess.run([sys.executable, "-m", "ofgr_core.cli", *args], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "ofgr_core.cli", *args],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert two.stdout == one.stdout  # byte for byte: every metric, interval and per-class value
    shares = {r: int(two.stderr.split(f"rank {r} of 2: searched ")[1].split()[0]) for r in (0, 1)}
    assert shares[0] > 1 and shares[1] > 1  # both ranks searched queries: the work was really shared
