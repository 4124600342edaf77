"""One head step on cached features: where its time goes, by feature width, CPU threads, gradients and update.

    python benchmarks/bench_head_step.py                 # feature widths 128, 512, 1280; 1 and all threads
    python benchmarks/bench_head_step.py --dims 1280 --steps 2000
    python benchmarks/bench_head_step.py --dims 1280 --compiled   # + autograd under torch.compile

A step is what ``ofgr_core.train.loop`` runs for a head on features: gather a batch of 32 rows from the in-memory
matrix, ``MLPHead`` (depth 2, width 512, GELU, dropout 0.1) -> L2 normalise -> ArcFace + hierarchical triplet (the
demo config's losses), the gradients, AdamW. The gradients come from autograd (``train.head_step: autograd``) or
from the written-out backward (``ofgr_core.train.headstep.HeadStep``, what ``auto`` runs) or, with ``--compiled``,
from autograd over the model and losses under ``torch.compile`` (its compile time is in the printed first 100 steps,
not in ms / step); the update is the multi-tensor or the fused AdamW. Each setting runs in its own subprocess
(thread counts cannot be changed back reliably in one), the settings one after another; loss + gradients and the
update are timed separately. It prints ms per step and, per feature width, the ratio of every setting to the shipped
one (head_step auto, ``train.fused: auto`` = fused; threads: ``HEAD_THREADS_MIN_WEIGHTS`` in
``ofgr_core/train/fit.py``).
Measure on an idle box: the ratios are the result, the milliseconds depend on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# how the gradients come + which AdamW update; the last is what a head on features runs as shipped
SETTINGS = ("autograd+foreach", "autograd+fused", "written+fused")


def demo_head(dim: int, setting: str = "written+fused") -> dict[str, Any]:
    """The demo config's head (``dim`` -> 512 -> 128, its losses, AdamW) on 1,440 random cached features of 24
    classes: ``head``, ``loss``, ``params``, ``opt``, ``written`` (its ``HeadStep``, None through autograd),
    ``x_all``, ``y_all``. ``setting``: ``"written|autograd|compiled" + "+" + "fused|foreach"`` (``compiled``:
    autograd, the model and losses as ``worker`` compiles them)."""
    import torch

    sys.path.insert(0, str(REPO))
    from ofgr_core.config import load_config
    from ofgr_core.losses.factory import create_loss
    from ofgr_core.models.base import FeatureHead, MLPHead
    from ofgr_core.train.headstep import HeadStep

    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "demo_clip.yaml", [])
    head = MLPHead(dim, 128, depth=2, width=512, dropout=0.1)
    loss = create_loss(cfg.loss, 24, 128)
    params = list(head.parameters()) + list(loss.parameters())
    grads, update = setting.split("+")
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05,
                            **({"fused": True} if update == "fused" else {"foreach": True}))
    owner = torch.nn.Module()
    owner.head, owner.embed_dim = head, 128
    written = HeadStep.build(FeatureHead(owner), loss) if grads == "written" else None
    assert (written is None) == (grads != "written")
    fine = torch.arange(1440) % 24
    return {"head": head, "loss": loss, "params": params, "opt": opt, "written": written,
            "x_all": torch.randn(1440, dim), "y_all": torch.stack([fine, fine // 4], 1)}


def worker(dim: int, threads: int, setting: str, steps: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    d = demo_head(dim, setting)
    head, loss, opt, written, x_all, y_all = d["head"], d["loss"], d["opt"], d["written"], d["x_all"], d["y_all"]
    acc = [0.0, 0.0]

    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total, _ = loss(F.normalize(head(x), dim=-1), y)
        return total

    # torch.compile (inductor's C++ kernels on the CPU): the same autograd step, compiled on its first call
    fwd = torch.compile(forward) if setting.startswith("compiled") else forward

    def step(record: bool) -> None:
        rows = torch.randint(0, 1440, (32,))
        t0 = time.perf_counter()
        x, y = x_all.index_select(0, rows), y_all.index_select(0, rows)
        if written is not None:
            total, _ = written.step(x, y)
            float(total)
        else:
            total = fwd(x, y)
            opt.zero_grad(set_to_none=True)
            float(total.detach())
            total.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if record:
            acc[0] += t1 - t0
            acc[1] += t2 - t1

    t = time.perf_counter()
    for _ in range(100):
        step(False)
    first_s = time.perf_counter() - t  # with compiling, where it compiles
    t = time.perf_counter()
    for _ in range(steps):
        step(True)
    total_s = time.perf_counter() - t
    return {"step": 1e3 * total_s / steps, "gradients": 1e3 * acc[0] / steps, "update": 1e3 * acc[1] / steps,
            "first_100_s": first_s}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        dim, threads, setting, steps = sys.argv[2:6]
        print(json.dumps(worker(int(dim), int(threads), setting, int(steps))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="128,512,1280")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--compiled", action="store_true",
                    help="also time autograd under torch.compile (needs a C++ compiler; compiles in each process)")
    a = ap.parse_args()
    settings = (*(("compiled+fused",) if a.compiled else ()), *SETTINGS)
    sys.path.insert(0, str(REPO))
    from ofgr_core.train.fit import HEAD_THREADS_MIN_WEIGHTS

    cores = os.cpu_count() or 1
    load = os.getloadavg()
    print(f"{cores} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; {a.steps} steps per setting")
    print("| feature dim | threads | gradients + update | ms / step | loss + gradients | update | vs shipped |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for dim in (int(v) for v in a.dims.split(",")):
        shipped_threads = cores if dim * 512 >= HEAD_THREADS_MIN_WEIGHTS else 1
        results = {}
        for threads in sorted({1, cores}):
            for setting in settings:
                out = subprocess.run([sys.executable, __file__, "--worker", str(dim), str(threads), setting,
                                      str(a.steps)], capture_output=True, text=True, check=True)
                results[(threads, setting)] = json.loads(out.stdout.strip().splitlines()[-1])
        shipped = (shipped_threads, SETTINGS[-1])
        base = results[shipped]["step"]
        for (threads, setting), r in results.items():
            mark = " (shipped)" if (threads, setting) == shipped else ""
            print(f"| {dim} | {threads} | {setting}{mark} | {r['step']:.2f} | {r['gradients']:.2f} | "
                  f"{r['update']:.2f} | {r['step'] / base:.2f} |", flush=True)
        if a.compiled:
            print("first 100 steps (s; compiled: with compiling): " + ", ".join(
                f"{setting} {threads} thr. {r['first_100_s']:.2f}" for (threads, setting), r in results.items()))


if __name__ == "__main__":
    main()
