"""The same config runs data-parallel under torchrun: 2 gloo processes on CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ofgr_core.runs.eventlog import read_events
from ofgr_core.runs.folder import RunFolder
from ofgr_core.runs.state import load_run
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
    assert load_run(run_dir).status == "finished"
    env_json = json.loads((run_dir / "env.json").read_text())
    assert env_json["world_size"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2
    assert 0 <= metrics["unseen"]["fine"]["recall@1"] <= 1
    # every event line was written once, by rank 0
    started = [e for e in read_events(run_dir) if e["type"] == "run_started"]
    assert len(started) == 1
    # the evaluation was sharded over the 2 ranks; its numbers are those of one process on the same embeddings
    import csv

    import numpy as np

    from ofgr_core.config import load_config
    from ofgr_core.retrieval.evaluate import encode_labels, run_split

    folder = RunFolder(run_dir)
    cfg = load_config(folder.config)
    emb = np.load(folder.embeddings_npy("unseen"))
    with open(folder.embeddings_csv("unseen"), newline="") as f:
        rows = list(csv.DictReader(f))
    labels, _ = encode_labels({c: [r[c] for r in rows] for c in ("fine", "coarse")}, ["fine", "coarse"])
    one = run_split(emb, labels, ids=np.array([r["id"] for r in rows]), cfg=cfg.eval, seed=cfg.seed)
    stored = np.load(folder.per_query("unseen"))
    assert list(stored["ids"]) == [str(i) for i in one.query_ids]
    for key, values in one.per_query["fine"].items():
        assert np.array_equal(stored[f"fine_{key}"], values)
    assert metrics["unseen"]["fine"] == one.block["fine"] and metrics["unseen"]["ci95"] == one.block["ci95"]


@pytest.mark.slow
def test_torchrun_ranks_fill_one_feature_cache(tmp_path, tiny_data_root):
    """A frozen tower under torchrun: the ranks share the extraction; the cache equals one process's."""
    import numpy as np
    import timm
    import torch

    from ofgr_core.embedding.features import FeatureStore, list_entries

    torch.manual_seed(3)
    tower = tmp_path / "tower.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), tower)
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun") or "torchrun")
    caches = {}
    for nproc in (2, 1):
        cache = tmp_path / f"cache{nproc}"
        cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(nproc), "-m", "ofgr_core.cli", "run",
               str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / f"runs{nproc}"), "-q",
               "--set", "device=cpu", "--set", f"model.pretrained={tower}", "--set", "model.freeze=all",
               "--set", f"data.feature_cache={cache}"]
        for o in tiny_overrides(tiny_data_root):
            cmd += ["--set", o]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        (entry,) = list_entries(cache)
        caches[nproc] = entry
    two, one = caches[2], caches[1]
    assert two.rows == one.rows > 0  # every image once, no duplicates from two writers
    hashes = (one.path / "hashes.txt").read_text().split()
    a = FeatureStore(two.path.parent, {k: v for k, v in two.key.items() if k != "dim"}, two.dim).read(hashes)
    b = FeatureStore(one.path.parent, {k: v for k, v in one.key.items() if k != "dim"}, one.dim).read(hashes)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


LEAVE_SCRIPT = """
import os, sys
from ofgr_core.train.ddp import cleanup, init_distributed

def threads():
    return sorted(os.listdir(f"/proc/{os.getpid()}/task"))

before = threads()
info = init_distributed("cpu")
joined = threads()
import timm  # after the group exists, as in a run: timm -> torchvision -> torch._dynamo -> torch.distributed.nn
import torch.distributed as dist
box = [None] * info.world_size
dist.all_gather_object(box, {"rank": info.rank})
cleanup(info)
print(f"rank {info.rank}: {len(before)} threads before, {len(joined)} in the group, {len(threads())} after",
      file=sys.stderr)
sys.exit(0 if threads() == before and len(joined) > len(before) else 3)
"""


@pytest.mark.slow
def test_leaving_the_process_group_ends_its_threads(tmp_path):
    """After `cleanup` no thread of the group is left, even with timm imported after the group was joined: its
    imports bound the group as a default argument of torch.distributed.nn's functions, the group outlived
    destroy_process_group, and a worker thread freeing a gathered tensor during interpreter shutdown aborted a
    rank (SIGABRT, the intermittent failure of the torchrun tests above)."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counts threads through /proc")
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun") or "torchrun")
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count(" after") == 2  # both ranks reported


@pytest.mark.parametrize("outcome", ["finished", "failed"])
def test_run_and_resume_leave_the_process_group(tmp_path, monkeypatch, outcome):
    """`ofgr run` and `ofgr resume` destroy the process group whatever the run's end, a failure before the
    pipeline included: one left to interpreter shutdown can make a rank abort at exit ("terminate called
    without an active exception", SIGABRT; the test above)."""
    from typer.testing import CliRunner

    from ofgr_core.cli import app, run_cmd
    from ofgr_core.train import ddp

    left: list[int] = []
    monkeypatch.setattr(ddp, "init_distributed", lambda device="auto": ddp.DistInfo(rank=0, world_size=2))
    monkeypatch.setattr(ddp, "broadcast_object", lambda obj, info: obj)
    monkeypatch.setattr(ddp, "cleanup", lambda info: left.append(info.world_size))

    def launch(cfg, run_dir, **kw):
        if outcome == "failed":
            raise RuntimeError("the run failed")

    monkeypatch.setattr(run_cmd, "_launch", launch)
    result = CliRunner().invoke(app, ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path),
                                      "-q"])
    assert (result.exit_code == 0) == (outcome == "finished"), result.output
    assert left == [2]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    # resume reads the run's state first; a stopped run's folder is what it continues
    monkeypatch.setattr(run_cmd, "load_run", lambda d, ours=None: type("I", (), {"status": "stopped",
                                                                                  "reason": None})())
    CliRunner().invoke(app, ["resume", str(run_dir), "--runs-dir", str(tmp_path), "-q"])
    assert left == [2, 2]
