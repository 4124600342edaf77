"""Approximate indexes vs exact search: speed-up at recall >= 0.95 of the exact top-10.

Not a test. Builds IVF-PQ (with exact re-ranking) and HNSW through ``ofgr_core.retrieval.index.build_index`` on
clustered unit vectors, then sweeps ``nprobe`` / ``ef_search`` and reports, for each sweep, the fastest
setting whose recall of the exact top-10 is at least ``--target``.

    python benchmarks/bench_ann.py                 # 1,000,000 x 128
    python benchmarks/bench_ann.py --n 200000      # smaller
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ofgr_core.config import IndexConfig
from ofgr_core.retrieval.index import build_index, exact_searcher, set_search_params


def clustered(n: int, d: int, n_centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 65536):
        b = min(a + 65536, n)
        noise = rng.standard_normal((b - a, d), dtype=np.float32)
        x = centres[rng.integers(0, n_centres, b - a)] + 0.8 * noise
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    return float((exact[:, :, None] == approx[:, None, :]).any(axis=2).mean())


def timed_search(index, q: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    _, rows = index.search_rows(q, k, batch_size=len(q))
    return time.perf_counter() - t, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--pq-m", type=int, default=32, help="IVF-PQ sub-quantizers (bytes per vector)")
    p.add_argument("--refine", type=int, default=16, help="IVF-PQ exact re-ranking of refine x k candidates")
    p.add_argument("--only", choices=["ivf_pq", "hnsw"], default=None)
    a = p.parse_args()
    x = clustered(a.n, a.d, max(10, a.n // 100))
    q = x[np.random.default_rng(1).choice(a.n, a.queries, replace=False)]
    print(f"data: {a.n} x {a.d} clustered, {a.queries} queries, top-{a.k}; {os.cpu_count()} CPUs")
    exact = exact_searcher(x, device="auto")
    t_exact, truth = timed_search(exact, q, a.k)
    print(f"exact ({exact.device}): {t_exact:.3f}s  ({a.queries / t_exact:.0f} queries/s)")
    sweeps = [
        ("ivf_pq+refine", IndexConfig(type="ivf_pq", pq_m=a.pq_m, refine_k_factor=a.refine, device="auto"),
         "nprobe", [1, 2, 4, 8, 16, 32, 64, 128]),
        ("hnsw", IndexConfig(type="hnsw", hnsw_m=32, ef_construction=100, device="auto"),
         "ef_search", [16, 32, 64, 128, 256, 512]),
    ]
    sweeps = [sw for sw in sweeps if a.only is None or sw[0].startswith(a.only)]
    for name, cfg, knob, values in sweeps:
        t = time.perf_counter()
        idx = build_index(x, cfg)
        print(f"{name}: built in {time.perf_counter() - t:.1f}s on {idx.device} ({idx.params})")
        best = None
        for v in values:
            set_search_params(idx, **{knob: v})
            secs, rows = timed_search(idx, q, a.k)
            rec = recall_at(rows, truth)
            print(f"  {knob}={v:<4} recall@{a.k} vs exact {rec:.4f}  {secs:.3f}s  "
                  f"speed-up {t_exact / secs:.1f}x")
            if rec >= a.target and best is None:
                best = (v, rec, t_exact / secs)
        if best:
            print(f"  -> operating point {knob}={best[0]}: recall {best[1]:.4f}, "
                  f"{best[2]:.1f}x faster than exact")
        else:
            print(f"  -> no setting reached recall {a.target}")


if __name__ == "__main__":
    main()
