"""Memory allocation settings on a CPU: page faults and speed of the tiny tower, its extraction pipeline, a head step.

    python benchmarks/bench_malloc.py                  # 6 alternations of the three settings, one process each

With glibc's defaults a CPU forward pass of the tiny CLIP tower on 256 images maps, zeroes and unmaps its largest
activations (~68 MB, above glibc's mmap threshold) every batch: ~17,000-33,000 minor page faults a batch. The
settings are fixed when a process starts (or, for malloc, before the blocks are allocated), so each runs in
processes of its own, alternated:

- ``system``: glibc's defaults (``OFGR_MALLOC=system``; what ofgr ran with before ``keep_freed_memory``);
- ``ofgr``: ``ofgr_core.common.memory.keep_freed_memory()``, which the ``ofgr`` command applies when it starts
  (glibc keeps freed memory for reuse: ``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` ``KEEP_TRIM_BYTES``, 1 GiB);
- ``thp``: glibc's defaults and torch's ``THP_MEM_ALLOC_ENABLE=1`` (2 MB pages for CPU allocations of 2 MB and
  more; not set by ofgr).

Each process times the tower alone on one batch, the extraction pipeline on 2,000 64 px JPEG files with their
hashes given (``extract_features``, cold cache) and 1,000 steps of the demo head on 1280-d cached features
(``HeadStep`` + gradient clip + fused AdamW), and counts the faults of one forward pass. Printed: each setting's
medians and, run by run, its speed over the neighbouring ``system`` run (medians and ranges). Measure on an idle
box.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "system": {"OFGR_MALLOC": "system"},
    "ofgr": {},
    "thp": {"OFGR_MALLOC": "system", "THP_MEM_ALLOC_ENABLE": "1"},
}


def worker(files: str) -> dict[str, float]:
    import resource

    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from ofgr_core.common.memory import keep_freed_memory

    keep_freed_memory()  # as the ofgr command does (nothing under OFGR_MALLOC=system)
    from ofgr_core.embedding.features import extract_features, file_digests, open_feature_store
    from ofgr_core.models.clip.config import ClipModelConfig
    from ofgr_core.models.factory import create_model_and_transforms
    from ofgr_core.train.guard import clip_grad_norm

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    paths = sorted(str(p) for p in Path(files).glob("*.jpg"))
    torch.manual_seed(0)
    model, _, tf = create_model_and_transforms(
        ClipModelConfig(name="ofgr-tiny-clip", pretrained=None, head="none"), image_size=64)
    model.eval()
    x = torch.randn(256, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(2):
            model.tower_features(x)
        f0 = faults()
        model.tower_features(x)
        per_forward = faults() - f0
        encs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(8):
                model.tower_features(x)
            encs.append(8 * 256 / (time.perf_counter() - t0))
    digests = file_digests(paths)
    pipes = []
    with tempfile.TemporaryDirectory(prefix="ofgr-bench-malloc-") as cache:
        for r in range(2):
            t0 = time.perf_counter()
            extract_features(model, paths, tf, "cpu", store=open_feature_store(model, Path(cache) / str(r)),
                             digests=digests, batch_size=256)
            pipes.append(len(paths) / (time.perf_counter() - t0))
    from bench_head_step import demo_head  # the same head, losses and update as bench_head_step.py's shipped setting

    d = demo_head(1280)
    step, params, opt, feats, labels = d["written"], d["params"], d["opt"], d["x_all"], d["y_all"]

    def one() -> None:
        rows = torch.randint(0, 1440, (32,))
        total, _ = step.step(feats.index_select(0, rows), labels.index_select(0, rows))
        float(total)
        clip_grad_norm(params, 5.0)
        opt.step()

    for _ in range(100):
        one()
    t0 = time.perf_counter()
    for _ in range(1000):
        one()
    head_ms = time.perf_counter() - t0  # seconds for 1,000 steps = ms a step
    return {"faults_per_forward": per_forward, "encoder": float(np.median(encs)), "pipeline": float(np.median(pipes)),
            "head_ms": head_ms}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=6, help="alternations of the three settings")
    a = ap.parse_args()
    import shutil

    import numpy as np
    from PIL import Image

    files = Path(tempfile.mkdtemp(prefix="ofgr-bench-malloc-files-"))
    rng = np.random.default_rng(0)
    for i in range(2000):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(files / f"{i:06d}.jpg", quality=90)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    load = os.getloadavg()
    try:
        for _ in range(a.repeats):
            for name, env in SETTINGS.items():
                clean = {k: v for k, v in os.environ.items()
                         if k not in ("OFGR_MALLOC", "THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")
                         and not k.startswith("MALLOC_")}
                out = subprocess.run([sys.executable, __file__, "--worker", str(files)], capture_output=True,
                                     text=True, check=True, env={**clean, **env})
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(files, ignore_errors=True)
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} at the start; {a.repeats} alternations")
    print("| setting | faults a forward | encoder alone img/s | pipeline img/s | head ms / step | encoder vs system "
          "| pipeline vs system | head step speed vs system |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- | --- |")
    base = runs["system"]
    for name, rs in runs.items():
        def med(key: str, rs: list[dict[str, float]] = rs) -> float:
            return float(np.median([r[key] for r in rs]))

        def vs(key: str, inverse: bool = False, rs: list[dict[str, float]] = rs) -> str:
            q = sorted((b[key] / r[key]) if inverse else (r[key] / b[key]) for r, b in zip(rs, base, strict=True))
            return f"{np.median(q):.2f} [{q[0]:.2f}, {q[-1]:.2f}]"

        print(f"| {name} | {med('faults_per_forward'):,.0f} | {med('encoder'):,.1f} | {med('pipeline'):,.1f} | "
              f"{med('head_ms'):.2f} | {vs('encoder')} | {vs('pipeline')} | {vs('head_ms', inverse=True)} |")


if __name__ == "__main__":
    main()
