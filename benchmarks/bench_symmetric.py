"""Exact all-vs-all evaluation with and without the symmetric search, against raw ``IndexFlatIP.search``.

Not a test. Leave-one-out evaluation searches every item against all the others; the symmetric search
(``ofgr_core.retrieval.index.symmetric_knn``) computes each block of the similarity matrix once and feeds the
top-k of its rows and of its columns. Measured side by side in one run, each in its own subprocess (so peak RSS
belongs to it alone), on the same clustered memmap as ``bench_eval.py``:

- ``raw``: ``faiss.IndexFlatIP`` built on the embeddings, ``search(all, k + 1)`` (the search alone is timed);
- ``symmetric``: ofgr ``run_split`` as shipped (fine + coarse, bootstrap) - it takes the symmetric path;
- ``plain``: the same ``run_split`` with the symmetric path switched off (one ``faiss.knn`` per query chunk);
- ``knn``: ``symmetric_knn`` alone, the search part of ``symmetric``.

It prints the times, the ratios (goal: symmetric / raw <= 0.7), peak RSS growth over the embedding bytes, and
whether the two ofgr paths produced the same per-query metric values. With ``--repeats N`` the symmetric and raw
runs alternate N times and the ratio is the median of the pairs, with its range (the rows show the median runs).

    python benchmarks/bench_symmetric.py                     # 100,000 x 512 (the issue's size; ~10 min idle)
    python benchmarks/bench_symmetric.py --n 12000 --d 256   # a quick check (the symmetric path needs d >= 256)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_eval  # noqa: E402  (the same data, memory probes and worker launch)
from bench_eval import make_data, peak_mb, rss_mb  # noqa: E402


def worker(kind: str, folder: Path, k: int, bootstrap: int) -> dict:
    emb = np.load(folder / "emb.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    import faiss

    from ofgr_core.config import EvalConfig
    from ofgr_core.retrieval import evaluate as ev
    from ofgr_core.retrieval.index import symmetric_knn

    if kind != "raw":
        # measured as in `ofgr run` and `ofgr bench`, which hold torch already: the symmetric search then uses
        # torch's transpose for the blocks it offers whole (without torch, as in `ofgr eval-embeddings`, numpy
        # tiles: ~50 ms more a dense block)
        import torch  # noqa: F401
    base = rss_mb()
    t0 = time.perf_counter()
    out: dict = {}
    if kind == "raw":
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(np.ascontiguousarray(emb))
        q = index.reconstruct_n(0, index.ntotal)
        base = rss_mb()
        t0 = time.perf_counter()  # the search alone
        index.search(q, k)
    elif kind == "knn":
        symmetric_knn(emb, k)
    else:
        if kind == "plain":
            ev.SYMMETRIC_BLOCK = 1 << 62  # every gallery fits "one block": the plain chunked search
        calls = []
        real = ev.symmetric_knn

        def counted(*args, **kwargs):  # records that run_split took the symmetric path
            calls.append(1)
            return real(*args, **kwargs)

        ev.symmetric_knn = counted
        res = ev.run_split(emb, labels, cfg=EvalConfig(bootstrap=bootstrap), seed=0)
        out = {"k": res.block["r_cap"]["k"], "n_queries": res.block["n_queries"], "symmetric_used": bool(calls)}
        np.savez(folder / f"per_query_{kind}.npz",
                 **{f"{lv}/{m}": v for lv, ms in res.per_query.items() for m, v in ms.items()})
    seconds = time.perf_counter() - t0
    return {"kind": kind, "seconds": seconds, "mem_ratio": (peak_mb() - base) * 2**20 / (emb.size * 4), **out}


def run_worker(args: list[str]) -> dict:
    return bench_eval.run_worker(args, script=__file__)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1,
                   help="symmetric and raw runs, alternated; the ratio's median and range are printed (single runs of "
                        "a minute on this 2-core box spread by 10 %% and more)")
    p.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        kind, folder, k = a.worker
        print(json.dumps(worker(kind, Path(folder), int(k), a.bootstrap)))
        return
    import faiss

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          f"(1/5/15 min), faiss {faiss.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(folder, a.n, a.d, a.per_class)
        print(f"data: {a.n:,} x {a.d} float32 clustered memmap ({a.n * a.d * 4 / 2**20:.0f} MiB), "
              f"{a.per_class} per fine class, 4 fine per coarse; leave-one-out all-vs-all")
        syms, raws = [run_worker(["symmetric", tmp, "0"])], []
        k = syms[0]["k"]
        raws.append(run_worker(["raw", tmp, str(k + 1)]))  # +1: the self-match ofgr removes
        for _ in range(a.repeats - 1):
            syms.append(run_worker(["symmetric", tmp, "0"]))
            raws.append(run_worker(["raw", tmp, str(k + 1)]))
        plain = run_worker(["plain", tmp, "0"])
        knn = run_worker(["knn", tmp, str(k + 2)])  # the depth run_split asks of it (k + 1 excluded + 1)
        ratios = sorted(sy["seconds"] / r["seconds"] for sy, r in zip(syms, raws, strict=True))
        sym = sorted(syms, key=lambda r: r["seconds"])[len(syms) // 2]  # the median runs stand for the rows
        raw = sorted(raws, key=lambda r: r["seconds"])[len(raws) // 2]
        if not sym["symmetric_used"] or plain["symmetric_used"]:
            raise SystemExit("the symmetric path was not taken where expected (is the gallery one block?)")
        a_q, b_q = np.load(folder / "per_query_symmetric.npz"), np.load(folder / "per_query_plain.npz")
        n_diff = sum(int((a_q[key] != b_q[key]).sum()) for key in a_q.files)
        max_mean = max(abs(float(a_q[key].mean()) - float(b_q[key].mean())) for key in a_q.files)
    print(f"k = {k} ({sym['n_queries']:,} queries, fine + coarse, {a.bootstrap} bootstrap resamples)")
    rows = [("raw IndexFlatIP.search(k + 1)", raw), ("ofgr run_split, plain chunked search", plain),
            ("ofgr run_split, symmetric search", sym), ("  of which symmetric_knn alone", knn)]
    print(f"{'measurement':40s} {'seconds':>9s} {'/ raw':>7s} {'peak RSS / emb':>15s}")
    for name, r in rows:
        print(f"{name:40s} {r['seconds']:9.1f} {r['seconds'] / raw['seconds']:7.3f} {r['mem_ratio']:15.2f}")
    secs = {name: ", ".join(f"{r['seconds']:.1f}" for r in runs) for name, runs in (("sym", syms), ("raw", raws))}
    print(f"ratio symmetric / raw search: {float(np.median(ratios)):.3f} (goal <= 0.7; median of {len(ratios)} "
          f"alternated pairs, range {ratios[0]:.3f}-{ratios[-1]:.3f}; seconds: symmetric {secs['sym']}, "
          f"raw {secs['raw']}); "
          f"symmetric / plain: {sym['seconds'] / plain['seconds']:.3f}")
    print(f"same numbers: {n_diff} per-query values differ between the two ofgr paths "
          f"(max |difference of means| {max_mean:.2e})")


if __name__ == "__main__":
    main()
