"""All-vs-all evaluation speed and memory: ofgr vs raw FAISS search vs pytorch-metric-learning.

Not a test. Each measurement runs in its own subprocess so that peak RSS (``ru_maxrss``) belongs to it alone;
the figure reported is peak RSS growth after imports, divided by the bytes of the embeddings.

    python benchmarks/bench_eval.py                    # 200k x 512 (slow on a laptop: hours of FLOPs)
    python benchmarks/bench_eval.py --n 50000          # smaller, same ratios
    python benchmarks/bench_eval.py --million --queries 20000   # 1M x 512 gallery from a memmap

Data: Gaussian blobs around class centres (``--per-class`` items per fine class, 4 fine per coarse), L2
normalised, written to a memmap in a temporary folder, so evaluation reads it like a run's stored embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_data(folder: Path, n: int, d: int, per_class: int, seed: int = 0, noise: float = 1.6) -> None:
    """Clustered unit vectors to ``emb.npy`` (memmap, written in chunks) and labels to ``labels.npy``: a standard
    normal centre per fine class plus ``noise`` times standard normal noise per item (1.6 in every figure of
    docs/benchmarks.md unless it says otherwise)."""
    rng = np.random.default_rng(seed)
    n_fine = max(2, n // per_class)
    centres = rng.normal(size=(n_fine, d)).astype(np.float32)
    fine = rng.integers(0, n_fine, size=n)
    labels = np.stack([fine, fine // 4], axis=1).astype(np.int64)
    emb = np.lib.format.open_memmap(folder / "emb.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for a in range(0, n, 65536):
        b = min(a + 65536, n)
        x = centres[fine[a:b]] + np.float32(noise) * rng.standard_normal((b - a, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        emb[a:b] = x
    emb.flush()
    del emb
    np.save(folder / "labels.npy", labels)


def worker(kind: str, folder: Path, k: int, levels: int, queries: int, bootstrap: int) -> dict:
    """One measurement; returns seconds, peak RSS growth and the numbers computed."""
    emb = np.load(folder / "emb.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")[:, :levels]
    if kind == "pml":
        import torch  # noqa: F401  (import cost outside the timed region)
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    else:
        import faiss  # noqa: F401

        from ofgr_core.config import EvalConfig
        from ofgr_core.retrieval.evaluate import run_split
    base = rss_mb()
    nbytes = emb.size * 4
    t0 = time.perf_counter()
    result: dict = {}
    if kind == "raw":
        import faiss

        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(np.ascontiguousarray(emb))
        q = np.ascontiguousarray(emb[:queries]) if queries else index.reconstruct_n(0, index.ntotal)
        t0 = time.perf_counter()  # the search alone
        index.search(q, k)
    elif kind == "ofgr":
        qmask = None
        if queries:
            qmask = np.zeros(len(emb), bool)
            qmask[:queries] = True
        block = run_split(emb, labels, query_mask=qmask, cfg=EvalConfig(bootstrap=bootstrap), seed=0).block
        result = {"k": block["r_cap"]["k"], "n_queries": block["n_queries"],
                  **{lv: block[lv] for lv in ("fine", "coarse") if lv in block}}
    elif kind == "pml":
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count",
            device=torch.device("cpu"),
        )
        x = torch.from_numpy(np.ascontiguousarray(emb))
        # AccuracyCalculator compares one label per item, so each hierarchy level is its own kNN pass
        result = {lv: calc.get_accuracy(x, torch.from_numpy(labels[:, i]))
                  for i, lv in enumerate(("fine", "coarse")[:levels])}
    seconds = time.perf_counter() - t0
    return {"kind": kind, "seconds": seconds, "peak_growth_mb": peak_mb() - base,
            "mem_ratio": (peak_mb() - base) * 2**20 / nbytes, **result}


def run_worker(args: list[str], script: str = __file__) -> dict:
    """``script --worker ARGS`` in a fresh process (its peak RSS is its own); the JSON on its last line."""
    proc = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--pml-n", type=int, default=None, help="size for the PML comparison (default --n)")
    p.add_argument("--no-pml", action="store_true")
    p.add_argument("--pml-only", action="store_true",
                   help="only the two PML comparisons (fine level; fine + coarse), no raw-search baseline")
    p.add_argument("--million", action="store_true", help="1,000,000 x 512 gallery")
    p.add_argument("--queries", type=int, default=0, help="evaluate only the first Q queries (0 = all)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        kind, folder, k, levels, queries = a.worker
        out = worker(kind, Path(folder), int(k), int(levels), int(queries), a.bootstrap)
        print(json.dumps(out))
        return
    if a.million:
        a.n, a.no_pml = 1_000_000, True
    import faiss

    print(f"machine: {os.cpu_count()} CPUs, faiss {faiss.__version__}, GPUs seen by faiss: "
          f"{faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        make_data(folder, a.n, a.d, a.per_class)
        print(f"data: {a.n} x {a.d} float32 ({a.n * a.d * 4 / 2**30:.2f} GiB memmap), {a.per_class} per fine "
              f"class, 4 fine per coarse ({time.perf_counter() - t:.0f}s to write)")
        q = str(a.queries)
        ofgr = run_worker(["ofgr", tmp, "0", "2", q])
        if a.pml_only:
            compare_pml(tmp, ofgr)
            return
        raw = run_worker(["raw", tmp, str(ofgr["k"] + 1), "2", q])  # +1: the self-match ofgr removes
        nq = ofgr["n_queries"]
        print(f"ofgr run_split (fine+coarse, {a.bootstrap} bootstrap resamples, k={ofgr['k']}): "
              f"{ofgr['seconds']:.1f}s, {nq} queries")
        print(f"raw IndexFlatIP.search(k={ofgr['k'] + 1}):  {raw['seconds']:.1f}s")
        print(f"ratio ofgr / raw search: {ofgr['seconds'] / raw['seconds']:.3f}  (goal <= 1.15)")
        print(f"peak RSS growth / embedding bytes: ofgr {ofgr['mem_ratio']:.2f} (goal <= 3), "
              f"raw IndexFlatIP {raw['mem_ratio']:.2f}")
        if a.queries:
            full = ofgr["seconds"] * a.n / max(nq, 1)
            print(f"extrapolated all-vs-all time for {a.n} queries: {full / 3600:.1f} h on this machine")
        if a.no_pml:
            return
        if a.pml_n and a.pml_n != a.n:
            make_data(folder, a.pml_n, a.d, a.per_class)
            ofgr = run_worker(["ofgr", tmp, "0", "2", "0"])
        compare_pml(tmp, ofgr)


PAIRS = [("recall@1", "precision_at_1"), ("r_precision", "r_precision"), ("map@r", "mean_average_precision_at_r")]


def compare_pml(tmp: str, ofgr_two_levels: dict) -> None:
    """PML AccuracyCalculator vs ofgr on the same data: fine level alone, then the fine + coarse evaluation."""
    ours = run_worker(["ofgr", tmp, "0", "1", "0"])  # the same work as one PML call: fine level only
    pml = run_worker(["pml", tmp, "0", "1", "0"])
    print(f"PML, fine level only: ofgr {ours['seconds']:.1f}s (mem {ours['mem_ratio']:.2f}x), "
          f"PML AccuracyCalculator {pml['seconds']:.1f}s (mem {pml['mem_ratio']:.2f}x); "
          f"PML / ofgr = {pml['seconds'] / ours['seconds']:.2f}")
    pml2 = run_worker(["pml", tmp, "0", "2", "0"])
    ours2 = ofgr_two_levels
    print(f"PML, fine + coarse (what ofgr reports; PML needs one kNN pass per level): ofgr {ours2['seconds']:.1f}s, "
          f"PML {pml2['seconds']:.1f}s; PML / ofgr = {pml2['seconds'] / ours2['seconds']:.2f} (goal >= 2)")
    diffs = [abs(res[lv][o] - ref[lv][m]) for res, ref in ((ours, pml), (ours2, pml2))
             for lv in ("fine", "coarse") if lv in ref for o, m in PAIRS]
    print("same numbers: " + ", ".join(f"{lv} {o} ofgr {ours2[lv][o]:.6f} / PML {pml2[lv][m]:.6f}"
                                       for lv in ("fine", "coarse") for o, m in PAIRS)
          + f"; max |diff| over both comparisons {max(diffs):.2e}")


if __name__ == "__main__":
    main()
