"""Evaluation at scale: approximate all-vs-all with its measured error, and sharded vs one-process evaluation.

Part 1 (``--approx``): N x D clustered unit embeddings (fine classes of ~20 images, 10 fine per coarse), then
* exact leave-one-out evaluation (``index.type: flat``),
* the same with an IVF-Flat index (``nlist ~ 4 sqrt(N)``, ``--nprobe``) and ``exact_check`` sampled queries
  searched exactly too;
and prints the time ratio, the true error of R@1 / MAP@R (approximate - exact, both known here), the error
ofgr estimated from the sample with its confidence interval, and whether the interval holds the true error.
It also extrapolates the time ratio to 1M queries (exact ~ N^2; IVF search ~ N^1.5 at fixed nprobe with
nlist ~ sqrt(N); the exact sample ~ S * N), stating that it is an extrapolation.

Part 2 (``--sharded``): ``ofgr eval-embeddings`` on N x D in one process and under
``torchrun --nproc_per_node 2`` (gloo, CPU): identical stdout, wall-time ratio.

Run: ``.venv/bin/python benchmarks/bench_scale_eval.py --approx --n 100000 --dim 128 --sharded --n-sharded 40000``
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make(n: int, d: int, seed: int = 0, noise: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_fine = max(2, n // 20)
    fine = rng.integers(0, n_fine, n)
    coarse_centres = rng.normal(size=(n_fine // 10 + 1, d)).astype(np.float32)
    fine_centres = coarse_centres[np.arange(n_fine) // 10] + 0.8 * rng.normal(size=(n_fine, d)).astype(np.float32)
    x = fine_centres[fine] + noise * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.stack([fine, fine // 10], axis=1)


def approx(n: int, d: int, nprobe: int, sample: int, noise: float) -> None:
    from ofgr_core.config import EvalConfig
    from ofgr_core.retrieval.evaluate import run_split
    from ofgr_core.retrieval.index import default_nlist

    x, labels = make(n, d, noise=noise)
    nlist = default_nlist(n)
    t0 = time.perf_counter()
    exact = run_split(x, labels, cfg=EvalConfig(bootstrap=0, index={"device": "cpu"})).block
    t_exact = time.perf_counter() - t0
    cfg = EvalConfig(bootstrap=0, index={"type": "ivf_flat", "nlist": nlist, "nprobe": nprobe,
                                         "exact_check": sample, "device": "cpu"})
    t0 = time.perf_counter()
    ivf = run_split(x, labels, cfg=cfg).block
    t_ivf = time.perf_counter() - t0
    t_sample = t_exact * sample / n  # exact cost is linear in the number of queries at fixed gallery size
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs)")
    print(f"N = {n:,} x {d} (noise {noise}), {labels[:, 0].max() + 1:,} fine classes; IVF-Flat nlist {nlist}, "
          f"nprobe {nprobe}, exact sample {sample:,} queries")
    print("| measurement | value |")
    print("| --- | ---: |")
    print(f"| exact evaluation (flat) | {t_exact:.1f} s |")
    print(f"| approximate evaluation (IVF + exact sample) | {t_ivf:.1f} s |")
    print(f"| time ratio approximate / exact | **{t_ivf / t_exact:.3f}** |")
    appr = ivf["approximation"]
    for key in ("recall@1", "map@r"):
        true = 100 * (ivf["fine"][key] - exact["fine"][key])
        est = appr["difference"]["fine"][key]
        lo, hi = (100 * v for v in est["ci"])
        held = "yes" if lo <= true <= hi else "NO"
        print(f"| fine {key}: true error approx - exact | {true:+.3f} pt |")
        print(f"| fine {key}: ofgr's estimate from the sample [95% CI] | {100 * est['mean']:+.3f} pt "
              f"[{lo:+.3f}, {hi:+.3f}] (holds the true error: {held}) |")
    for key, value in ivf["index"].items():
        if key.startswith("recall_vs_exact"):
            print(f"| {key} (sampled queries) | {value:.4f} |")
    # extrapolation to 1M: exact ~ N^2, IVF search ~ N^1.5 (nlist ~ sqrt N, fixed nprobe), sample ~ S*N
    scale = 1_000_000 / n
    t_ivf_search = max(t_ivf - t_sample, 1e-9)
    ex_1m = t_exact * scale**2
    ivf_1m = t_ivf_search * scale**1.5 + t_sample * scale
    print(f"| extrapolated to 1,000,000 queries (not measured): exact | {ex_1m / 3600:.1f} h |")
    print(f"| extrapolated: approximate with a {sample:,}-query exact sample | {ivf_1m / 3600:.2f} h "
          f"(ratio **{ivf_1m / ex_1m:.3f}**) |")
    print(f"(the exact sample's share of the approximate run is taken as exact x S/N = {t_sample:.1f} s)")


def sharded(n: int, d: int) -> None:
    x, labels = make(n, d, seed=1)
    folder = Path(tempfile.mkdtemp(prefix="ofgr_shard_"))
    np.save(folder / "emb.npy", x)
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "fine", "coarse"])
        w.writerows([f"i{i}", f"f{labels[i, 0]}", f"c{labels[i, 1]}"] for i in range(n))
    args = ["eval-embeddings", str(folder / "emb.npy"), str(folder / "labels.csv"), "--json", "--device", "cpu",
            "--bootstrap", "200"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per rank: 2 ranks use the 2 cores
    t0 = time.perf_counter()
    one = subprocess.run([sys.executable, "-m", "ofgr_core.cli", *args], capture_output=True, text=True,
                         env=env, check=True)
    t_one = time.perf_counter() - t0
    torchrun = Path(sys.executable).with_name("torchrun")
    t0 = time.perf_counter()
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ofgr_core.cli", *args],
                         capture_output=True, text=True, env=env, check=True, cwd=folder)
    t_two = time.perf_counter() - t0
    print(f"sharded eval-embeddings, {n:,} x {d} (one thread per process, wall time incl. start-up):")
    print("| processes | wall time | same stdout as 1 process |")
    print("| ---: | ---: | --- |")
    print(f"| 1 | {t_one:.1f} s | - |")
    print(f"| 2 (torchrun, gloo) | {t_two:.1f} s | {two.stdout == one.stdout} |")
    print(f"wall-time ratio 1 / 2 processes: **{t_one / t_two:.2f}x**")
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--approx", action="store_true")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--sample", type=int, default=10_000)
    ap.add_argument("--noise", type=float, default=0.9, help="within-class spread (higher: harder data)")
    ap.add_argument("--sharded", action="store_true")
    ap.add_argument("--n-sharded", type=int, default=40_000)
    args = ap.parse_args()
    if args.approx:
        approx(args.n, args.dim, args.nprobe, args.sample, args.noise)
    if args.sharded:
        sharded(args.n_sharded, args.dim)


if __name__ == "__main__":
    main()
