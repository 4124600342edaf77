"""Resident memory of an `ofgr run`, stage by stage, against the memory plan's estimates.

    python benchmarks/bench_train_memory.py --model resnet50 --size 224 --batch 128            # as shipped
    python benchmarks/bench_train_memory.py --model resnet50 --size 224 --batch 128 --malloc system
    python benchmarks/bench_train_memory.py --model resnet50 --size 224 --batch 128 --force-budget 64

Runs `ofgr run` on a demo-sized fine-tuning config (``configs/demo_resnet50.yaml`` or
``configs/demo_efficientnet_b0.yaml``, random init, the demo world) at ``--size`` px with batches of ``--batch``
(``4 x (batch / 32) x 8`` C x P x K, the shipped recipes' batch at 128), one epoch of ``--batches`` batches and then
validation, in a process of its own; polls its resident memory every 50 ms and prints, per stage, the growth from
what the process held when the stage began, against the plan's two estimates (a training step, an embedding
batch) and their sum (``MemoryPlan.peak_bytes``). By default the run stops when the train stage ends (``--stop-at
embed``).

``--malloc`` picks the allocator setting: ``kept`` is what the ``ofgr`` command does (freed memory kept for reuse,
``keep_freed_memory``) as long as the plan's ``KEPT_PEAK_FACTOR`` times the peak estimate fits the host's budget;
``system`` is glibc's defaults (``OFGR_MALLOC=system``). Where three times the estimate is more than this
machine's memory the plan puts the defaults back; ``--force-budget GIB`` makes the run believe the host has that
many GiB (so the kept setting is measured where it would apply on a larger machine) and caps the process's data
segment at ``--data-cap`` GiB, so that growth beyond the box's memory ends in an allocation error instead of the
OOM killer. Memory figures only: the seconds it prints are single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"resnet50": "configs/demo_resnet50.yaml", "efficientnet_b0": "configs/demo_efficientnet_b0.yaml"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(CONFIGS), default="resnet50")
    ap.add_argument("--size", type=int, default=224, help="image side in px (data.image_size)")
    ap.add_argument("--batch", type=int, default=128, help="a multiple of 32: C=4 coarse x P fine x K=8")
    ap.add_argument("--batches", type=int, default=3, help="training batches (one epoch)")
    ap.add_argument("--malloc", choices=("kept", "system"), default="kept")
    ap.add_argument("--force-budget", type=float, default=None, metavar="GIB",
                    help="the host budget the plan sees (scratch override of ofgr_core.common.memory.host_budget)")
    ap.add_argument("--data-cap", type=float, default=21.0, metavar="GIB",
                    help="with --force-budget: RLIMIT_DATA of the run's process (default 21)")
    ap.add_argument("--stop-at", default="embed", help="stop the run when this stage starts ('' = run to the end)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra override")
    a = ap.parse_args()
    if a.batch % 32:
        ap.error(f"--batch {a.batch}: give a multiple of 32")

    work = Path(tempfile.mkdtemp(prefix="ofgr-bench-trainmem-"))
    overrides = [f"data.image_size={a.size}", "model.embed_dim=512", f"sampler.batches_per_epoch={a.batches}",
                 "sampler.coarse_per_batch=4", f"sampler.fine_per_coarse={a.batch // 32}", "sampler.k=8",
                 "train.epochs=1", "train.grad_clip=5.0", "model.pretrained=false",
                 f"data.feature_cache={work / 'features'}", *a.overrides]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("OFGR_MALLOC", None)
    if a.malloc == "system":
        env["OFGR_MALLOC"] = "system"
    prelude = ""
    if a.force_budget is not None:
        cap = int(a.data_cap * 2**30)
        prelude = (f"import resource; resource.setrlimit(resource.RLIMIT_DATA, ({cap}, {cap})); "
                   "import ofgr_core.common.memory as M; "
                   f"M.host_budget = lambda: M.MemoryBudget({int(a.force_budget * 2**30)}, "
                   f"'--force-budget {a.force_budget:g} GiB (bench_train_memory.py)'); ")
    runs = work / "runs"
    cmd = [sys.executable, "-c", prelude + "import sys; from ofgr_core.cli import main; sys.argv[0] = 'ofgr'; main()",
           "run", CONFIGS[a.model], "--runs-dir", str(runs), "-q"]
    for o in overrides:
        cmd += ["--set", o]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[tuple[float, float]] = []
    stop_at = a.stop_at
    while p.poll() is None:
        if stop_at:
            for f in runs.glob("*/events.jsonl"):
                if f'"stage": "{stop_at}"' in f.read_text():
                    p.send_signal(signal.SIGINT)
                    stop_at = ""
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS"):
                        samples.append((time.time(), int(line.split()[1]) / 1024))
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    err = p.stderr.read().decode() if p.stderr else ""
    run_dirs = sorted(runs.glob("*/"))
    if not run_dirs:
        sys.exit(f"the run did not start: {err[-2000:]}")
    run = run_dirs[0]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    if p.returncode and not a.stop_at:
        sys.exit(f"the run failed ({p.returncode}): {err[-2000:]}")
    stages = [(e["time"], e["stage"]) for e in events if e["type"] == "stage_started"]
    seconds = {e["stage"]: e["seconds"] for e in events if e["type"] == "stage_finished"}
    sys.path.insert(0, str(REPO))
    import torch

    from ofgr_core.common.memory import MemoryBudget
    from ofgr_core.config import load_config
    from ofgr_core.models.factory import create_model_and_transforms
    from ofgr_core.train.memplan import _plan

    cfg = load_config(run / "config.yaml")
    model, _, _ = create_model_and_transforms(cfg.model, image_size=cfg.data.image_size, crop_scale=cfg.data.crop_scale)
    est = _plan(cfg, model, torch.device("cpu"), image_size=cfg.data.image_size, trains_images=True, max_rows=4800,
                budget=MemoryBudget(1 << 40, "x")).to_dict()
    mib = 2**20
    step, embed = est["train_step_bytes"] / mib, est["embed_batch_bytes"] / mib
    larger, total = max(step, embed), step + embed
    print(f"{a.model} at {a.size} px, batches of {a.batch}, malloc {a.malloc}"
          + (f", budget forced to {a.force_budget:g} GiB, data segment capped at {a.data_cap:g} GiB"
             if a.force_budget is not None else "")
          + f"; load average {os.getloadavg()[0]:.1f}")
    print(f"plan: training step {step:,.0f} MiB, embedding batch {embed:,.0f} MiB "
          f"(batch {est.get('eval_batch_size')}), sum {total:,.0f} MiB")
    for i, (t0, name) in enumerate(stages):
        t1 = stages[i + 1][0] if i + 1 < len(stages) else float("inf")
        rss = [r for t, r in samples if t0 <= t < t1]
        if not rss:
            continue
        growth = max(rss) - rss[0]
        print(f"  {name:9s} {seconds.get(name, float('nan')):6.0f} s  start {rss[0]:7,.0f}  peak {max(rss):7,.0f}  "
              f"growth {growth:7,.0f} MiB = {growth / larger:.2f}x the larger estimate, {growth / total:.2f}x the sum")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
