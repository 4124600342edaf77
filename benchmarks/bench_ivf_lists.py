"""IVF-Flat all-vs-all searched list by list (``ofgr_core/retrieval/ivf_lists.py``) against faiss's own IVF search
and the exact search, side by side in one process.

    python benchmarks/bench_ivf_lists.py --n 200000 --nprobe 16,72
    python benchmarks/bench_ivf_lists.py --n 1000000 --nprobe 256        # the data of bench_eval.py --million
    python benchmarks/bench_ivf_lists.py --n 200000 --nprobe 72 --threads 1,2   # the thread split, side by side

The data are those of ``bench_eval.py --million`` (Gaussian blobs of 50 items per fine class, noise 1.6,
L2-normalised), in memory. One IVF-Flat index (ofgr's ``build_index``: nlist ~ 4 sqrt(N)) is built once; then,
for each nprobe: faiss's search of ``--sample`` random rows (its all-vs-all time extrapolated as x N / sample:
faiss searches each query alone), the list-wise search of every row (measured whole), and the exact search of
the same sample (``faiss.knn``, extrapolated the same way: an exact all-vs-all is N such searches). Prints the
times, the ratios (list-wise / exact, list-wise / faiss IVF) and how many of the sample's top-k rows the
list-wise search shares with faiss's (1.0 up to the order of near-equal scores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def blobs(n: int, d: int, per_class: int = 50, seed: int = 0) -> np.ndarray:
    """``bench_eval.make_data``'s vectors, in memory."""
    rng = np.random.default_rng(seed)
    n_fine = max(2, n // per_class)
    centres = rng.normal(size=(n_fine, d)).astype(np.float32)
    fine = rng.integers(0, n_fine, size=n)
    x = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 65536):
        b = min(a + 65536, n)
        c = centres[fine[a:b]] + 1.6 * rng.standard_normal((b - a, d), dtype=np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        x[a:b] = c
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--nprobe", default="16,72", help="comma-separated nprobe values")
    ap.add_argument("--k", type=int, default=64, help="results per query (ofgr's depth: k + exclusions + ties)")
    ap.add_argument("--sample", type=int, default=3000, help="queries timed for faiss's IVF and the exact search")
    ap.add_argument("--threads", default="", help="comma-separated thread counts for the list-wise search, "
                    "each timed in turn (default: ofgr's choice only)")
    a = ap.parse_args()

    import faiss

    from ofgr_core.config import IndexConfig
    from ofgr_core.retrieval.index import build_index, set_search_params
    from ofgr_core.retrieval.ivf_lists import ivf_knn_by_list

    x = blobs(a.n, a.dim)
    t = time.perf_counter()
    searcher = build_index(x, IndexConfig(type="ivf_flat"))
    build = time.perf_counter() - t
    nlist = searcher.params["nlist"]
    sample = np.sort(np.random.default_rng(1).choice(a.n, min(a.sample, a.n), replace=False))
    xs = x[sample]
    print(f"{a.n:,} x {a.dim}, IVF-Flat nlist {nlist} built in {build:.1f} s; {os.cpu_count()} CPUs, "
          f"faiss {faiss.__version__}, sample {len(sample):,} queries, k {a.k}", flush=True)
    threads = [int(v) for v in a.threads.split(",")] if a.threads else [None]
    print(f"{'nprobe':>6s} {'threads':>7s} {'exact (x N)':>12s} {'faiss IVF (x N)':>16s} {'by list':>9s} "
          f"{'by list / exact':>16s} {'by list / faiss IVF':>20s} {'same rows':>10s}")
    for nprobe in (int(v) for v in a.nprobe.split(",")):
        set_search_params(searcher, nprobe=nprobe)
        t = time.perf_counter()
        _, ref_rows = searcher.index.search(xs, a.k)
        ivf = (time.perf_counter() - t) * a.n / len(sample)
        by_list: dict[int | None, float] = {}
        for n_threads in threads:
            t = time.perf_counter()
            _, rows = ivf_knn_by_list(searcher.index, x, a.k, threads=n_threads)
            by_list[n_threads] = time.perf_counter() - t
        t = time.perf_counter()
        faiss.knn(xs, x, a.k, faiss.METRIC_INNER_PRODUCT)
        exact = (time.perf_counter() - t) * a.n / len(sample)
        same = np.mean([len(np.intersect1d(r, g)) / a.k for r, g in zip(rows[sample], ref_rows, strict=True)])
        for n_threads, sec in by_list.items():
            print(f"{nprobe:6d} {n_threads or 'auto':>7} {exact:11.1f}s {ivf:15.1f}s {sec:8.1f}s "
                  f"{sec / exact:16.3f} {sec / ivf:20.3f} {same:10.5f}", flush=True)
        if len(by_list) > 1:
            first = next(iter(by_list.values()))
            print("list-wise time / the first thread count's: "
                  + ", ".join(f"{n}: {sec / first:.3f}" for n, sec in by_list.items()))
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")


if __name__ == "__main__":
    main()
