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

Part 3 (``--memmap``; ``--million`` is ``--memmap --n 1000000 --dim 512``): approximate all-vs-all at a size
where the exact one is too slow to run, on the data of ``bench_eval.py --million`` (Gaussian blobs of 50 items
per fine class, 4 fine per coarse, noise 1.6 unless ``--noise`` says otherwise, L2-normalised, read from a
memmap). Each measurement runs in its
own subprocess, so its peak RSS is its own:
* ``exact sample``: ``--exact-queries`` random queries searched exactly against the whole gallery; the exact
  all-vs-all time is this time x N / queries (exact search costs the same per query at a fixed gallery; this is
  the plain path - the symmetric search of ``bench_symmetric.py`` would take about its measured factor of that);
* ``approximate``: the whole leave-one-out evaluation through an IVF index (``--index``, ``--nprobe``) with
  ``--sample`` of its queries also searched exactly, from which ofgr estimates the metric error with a
  confidence interval (``block["approximation"]``);
* ``--full-exact`` (small N only) also runs the exact all-vs-all, to check the extrapolation and the interval.
* ``--probe-sweep 16,64,256,1024``: the time / error curve of IVF-Flat without a full run per setting (with
  ``--index hnsw``: of HNSW over ``ef_search``). One process trains and fills the index once (ofgr's
  ``build_index``), then, for each nprobe / ef_search (``set_search_params``), evaluates the same ``--sample``
  random queries through ``run_split`` against the whole gallery, and once exactly. The error is approximate -
  exact on those queries, paired, with a 95% bootstrap interval over the queries; the time of an all-vs-all is
  build + the sample's search time x N / S (extrapolated, stated so), against the exact sample's time x N / S.
It prints the time ratio approximate / exact (goal <= 0.2 at 1M), the error estimate with its 95% CI (goal
< 0.1 point), the recall against exact on the sample, and peak RSS growth of each run against the machine's RAM.

Run: ``.venv/bin/python benchmarks/bench_scale_eval.py --approx --n 100000 --dim 128 --sharded --n-sharded 40000``
     ``.venv/bin/python benchmarks/bench_scale_eval.py --million --nprobe 16``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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

    load = os.getloadavg()[0]  # before this script's own work: whether something else ran
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
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, 1-minute load average {load:.2f} at the start")
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


def memmap_worker(kind: str, folder: Path, opts: dict) -> dict:
    """One measurement of ``--memmap`` in this process: seconds, peak RSS growth, what it computed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_eval import peak_mb, rss_mb

    from ofgr_core.config import EvalConfig
    from ofgr_core.retrieval.evaluate import run_split

    emb = np.load(folder / "emb.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    n = len(emb)
    base = rss_mb()
    t0 = time.perf_counter()
    out: dict = {}
    if kind == "exact_sample":
        qmask = np.zeros(n, bool)
        qmask[np.random.default_rng(1).choice(n, size=min(n, opts["exact_queries"]), replace=False)] = True
        block = run_split(emb, labels, query_mask=qmask,
                          cfg=EvalConfig(bootstrap=0, index={"device": opts["device"]})).block
        out = {"queries": block["n_queries"], "fine": block["fine"], "device": block["index"].get("device")}
    elif kind == "approx":
        index = {"type": opts["index"], "nprobe": opts["nprobe"], "exact_check": opts["sample"],
                 "device": opts["device"]}
        if opts["index"] == "ivf_pq":
            index.update(pq_m=opts["pq_m"], refine_k_factor=opts["refine"])
        block = run_split(emb, labels, cfg=EvalConfig(bootstrap=opts["bootstrap"], index=index)).block
        out = {"queries": block["n_queries"], "fine": block["fine"], "index": block["index"],
               "approximation": block["approximation"]}
    elif kind == "sweep":
        out = probe_sweep(emb, labels, opts)
    else:  # full exact all-vs-all (symmetric path where it applies)
        block = run_split(emb, labels, cfg=EvalConfig(bootstrap=0, index={"device": opts["device"]})).block
        out = {"queries": block["n_queries"], "fine": block["fine"], "device": block["index"].get("device")}
    return {"kind": kind, "seconds": time.perf_counter() - t0, "peak_growth_mb": peak_mb() - base, **out}


def probe_sweep(emb: np.ndarray, labels: np.ndarray, opts: dict) -> dict:
    """``--probe-sweep`` in one process: the IVF trained once, a query sample searched at each nprobe and exactly."""
    from ofgr_core.config import EvalConfig, IndexConfig
    from ofgr_core.retrieval import evaluate as ev
    from ofgr_core.retrieval.index import build_index, set_search_params

    n = len(emb)
    qmask = np.zeros(n, bool)
    qmask[np.random.default_rng(2).choice(n, size=min(n, opts["sample"]), replace=False)] = True
    kind = opts["index"] if opts["index"] == "hnsw" else "ivf_flat"
    knob = "ef_search" if kind == "hnsw" else "nprobe"
    t = time.perf_counter()
    index = build_index(emb, IndexConfig(type=kind, device=opts["device"]), ids=np.arange(n))
    build = time.perf_counter() - t
    # run_split builds its own index from the config; here every setting reuses the one built above
    real_build = ev.build_index
    rows = []
    try:
        per_query = {}
        for nprobe in [0, *opts["sweep"]]:  # 0: the exact search of the same queries
            if nprobe:
                set_search_params(index, **{knob: nprobe})
            ev.build_index = (lambda *args, **kwargs: index) if nprobe else real_build  # noqa: ARG005
            cfg = EvalConfig(bootstrap=0, ks=[1, 10], index={"device": opts["device"], **(
                {"type": kind, knob: nprobe, "exact_check": 0} if nprobe else {})})
            t = time.perf_counter()
            res = ev.run_split(emb, labels, query_mask=qmask, cfg=cfg)
            seconds = time.perf_counter() - t
            per_query[nprobe] = res.per_query["fine"]
            rows.append({"nprobe": nprobe, "seconds": seconds, "fine": res.block["fine"]})
    finally:
        ev.build_index = real_build
    rng = np.random.default_rng(0)
    pick = rng.integers(0, int(qmask.sum()), size=(1000, int(qmask.sum())))
    for row in rows[1:]:
        for key in ("recall@1", "map@r"):
            diff = per_query[row["nprobe"]][key] - per_query[0][key]
            boots = diff[pick].mean(axis=1)
            row[f"err_{key}"] = [float(diff.mean()), *np.quantile(boots, [0.025, 0.975]).tolist()]
    return {"queries": int(qmask.sum()), "build_seconds": build, "rows": rows, "index": kind, "knob": knob,
            "params": dict(index.params)}


def memmap_sweep(a: argparse.Namespace, run: Callable[..., dict], emb_gib: float) -> None:
    """``--probe-sweep``: prints the time / error table of IVF-Flat at each nprobe (see the module docstring)."""
    res = run("sweep", sweep=a.sweep_list)
    s, n = res["queries"], a.n
    exact = res["rows"][0]
    t_exact = exact["seconds"] * n / s
    built = ", ".join(f"{k} {v}" for k, v in res["params"].items() if k in ("nlist", "hnsw_m", "ef_construction"))
    name = {"hnsw": f"HNSW ({built}) built", "ivf_flat": f"IVF-Flat ({built}) trained and filled"}[res["index"]]
    print(f"{name} once: {res['build_seconds']:.0f} s. Exact search of the {s:,} sampled "
          f"queries: {exact['seconds']:.1f} s -> an exact all-vs-all {t_exact:.0f} s (x N / S, extrapolated). "
          f"Exact fine R@1 of the sample {100 * exact['fine']['recall@1']:.2f} %, MAP@R "
          f"{100 * exact['fine']['map@r']:.2f} %.")
    cols = [res["knob"], "sample search", "all-vs-all (build + search x N/S)", "ratio to exact (goal <= 0.2)",
            "fine R@1 error [95% CI]", "fine MAP@R error [95% CI]"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " ---: |" * len(cols))
    for row in res["rows"][1:]:
        t_all = res["build_seconds"] + row["seconds"] * n / s
        cells = [str(row["nprobe"]), f"{row['seconds']:.1f} s", f"{t_all:.0f} s", f"**{t_all / t_exact:.3f}**"]
        for key in ("recall@1", "map@r"):
            m, lo, hi = (100 * v for v in row[f"err_{key}"])
            cells.append(f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}] pt")
        print("| " + " | ".join(cells) + " |", flush=True)


def memmap_approx(a: argparse.Namespace) -> None:
    """``--memmap``: approximate all-vs-all against exact on a query sample (see the module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import faiss
    from bench_eval import make_data

    from ofgr_core.config import IndexConfig
    from ofgr_core.retrieval.index import default_nlist, index_bytes

    opts = {"exact_queries": a.exact_queries, "index": a.index, "sample": a.sample,
            "bootstrap": a.bootstrap, "pq_m": a.pq_m, "refine": a.refine, "device": a.device}
    folder = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="ofgr_approx_"))
    folder.mkdir(parents=True, exist_ok=True)
    noise = 1.6 if a.noise is None else a.noise
    made = folder / "data.json"  # what the folder's data was made with
    if not (folder / "emb.npy").is_file() or np.load(folder / "emb.npy", mmap_mode="r").shape != (a.n, a.dim) \
            or (json.loads(made.read_text()) if made.is_file() else {"noise": 1.6}).get("noise") != noise:
        t = time.perf_counter()
        make_data(folder, a.n, a.dim, 50, noise=noise)
        made.write_text(json.dumps({"noise": noise}))
        print(f"data written in {time.perf_counter() - t:.0f} s to {folder}")

    def run(kind: str, **extra: object) -> dict:
        proc = subprocess.run([sys.executable, __file__, "--memmap-worker", kind, str(folder),
                               json.dumps({**opts, **extra})], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def run_with(nprobe: int) -> dict:
        return run("approx", nprobe=nprobe)

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    emb_gib = a.n * a.dim * 4 / 2**30
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {ram:.1f} GiB RAM, faiss {faiss.__version__}; "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    nlist = default_nlist(a.n)
    plan = index_bytes(a.n, a.dim, IndexConfig(type=a.index, pq_m=a.pq_m, refine_k_factor=a.refine))
    lists = "" if a.index == "hnsw" else f" nlist {nlist}"
    print(f"N = {a.n:,} x {a.dim} float32 memmap ({emb_gib:.2f} GiB), bench_eval.py data, noise {noise}; "
          f"{a.index}{lists} "
          f"(index ~{plan / 2**30:.2f} GiB); {a.sample:,} audited queries; exact timed on {a.exact_queries:,} queries")
    if a.sweep_list:
        memmap_sweep(a, run, emb_gib)
        if not a.dir:
            shutil.rmtree(folder, ignore_errors=True)
        return
    ex = run("exact_sample")
    full = run("full_exact") if a.full_exact else None
    print(f"exact search of {ex['queries']:,} random queries against all {a.n:,} on {ex['device']}: "
          f"{ex['seconds']:.1f} s, peak RSS growth {ex['peak_growth_mb'] / 1024:.2f} GiB")
    if full is not None:
        print(f"exact all-vs-all, measured on {full['device']} (symmetric search where it applies): "
              f"{full['seconds']:.0f} s, peak RSS growth {full['peak_growth_mb'] / 1024:.2f} GiB")
    print("Approximate all-vs-all = index build + search of every query + exact audit of the sample + bootstrap. "
          "Exact = the measured sample's time x queries / sample. Errors are approximate - exact in points, "
          "estimated by ofgr from the audited queries with the 95% interval; 'max end' is the largest |end| of "
          "any headline interval (every metric, both levels).")
    cols = ["nprobe", "device", "approximate", "exact (extrapolated)", "ratio (goal <= 0.2)", "fine R@1 error [95% CI]",
            "fine MAP@R error [95% CI]", "max end (goal < 0.1)", "recall vs exact@10", "peak RSS growth"]
    if full is not None:
        cols += ["ratio to measured exact", "true R@1 / MAP@R error (in CI)"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " ---: |" * len(cols))
    for nprobe in a.nprobe_list:
        ap_ = run_with(nprobe)
        nq = ap_["queries"]
        t_exact = ex["seconds"] * nq / ex["queries"]
        appr = ap_["approximation"]
        cells = [str(nprobe), str(ap_["index"].get("device")), f"{ap_['seconds']:.0f} s", f"{t_exact:.0f} s",
                 f"**{ap_['seconds'] / t_exact:.3f}**"]
        for key in ("recall@1", "map@r"):
            d = appr["difference"]["fine"][key]
            lo, hi = (100 * v for v in (d["ci"] or [float("nan")] * 2))
            cells.append(f"{100 * d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        bound = appr["max_abs_error"]
        cells.append("n/a" if bound is None else f"{100 * bound:.3f}")
        rec = [v for k, v in ap_["index"].items() if k.startswith("recall_vs_exact")]
        cells.append(f"{rec[0]:.4f}" if rec else "-")
        cells.append(f"{ap_['peak_growth_mb'] / 1024:.2f} GiB ({ap_['peak_growth_mb'] / 1024 / emb_gib:.2f}x emb.; "
                     f"RAM {ram:.0f} GiB)")
        if full is not None:
            cells.append(f"{ap_['seconds'] / full['seconds']:.3f}")
            parts = []
            for key in ("recall@1", "map@r"):
                true = 100 * (ap_["fine"][key] - full["fine"][key])
                d = appr["difference"]["fine"][key]
                lo, hi = (100 * v for v in (d["ci"] or [float("nan")] * 2))
                parts.append(f"{true:+.3f} ({'yes' if lo <= true <= hi else 'NO'})")
            cells.append(" / ".join(parts))
        print("| " + " | ".join(cells) + " |", flush=True)
    if not a.dir:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memmap-worker":
        kind, folder, opts = sys.argv[2:5]
        print(json.dumps(memmap_worker(kind, Path(folder), json.loads(opts))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--approx", action="store_true")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--nprobe", default="8", help="IVF lists probed; --memmap takes a comma list (one run each)")
    ap.add_argument("--sample", type=int, default=10_000)
    ap.add_argument("--noise", type=float, default=None,
                    help="within-class spread (higher: harder data); default 0.9 with --approx, 1.6 with --memmap")
    ap.add_argument("--sharded", action="store_true")
    ap.add_argument("--n-sharded", type=int, default=40_000)
    ap.add_argument("--memmap", action="store_true", help="approximate all-vs-all on bench_eval.py's memmap data")
    ap.add_argument("--million", action="store_true", help="--memmap --n 1000000 --dim 512")
    ap.add_argument("--index", default="ivf_flat", choices=["ivf_flat", "ivf_pq", "hnsw"])
    ap.add_argument("--pq-m", type=int, default=64, help="ivf_pq sub-quantizers")
    ap.add_argument("--refine", type=int, default=16, help="ivf_pq exact re-ranking factor")
    ap.add_argument("--exact-queries", type=int, default=2000, help="queries the exact time is measured on")
    ap.add_argument("--device", default="cpu", choices=["cpu", "auto", "gpu"],
                    help="--memmap: eval.index.device of every run (gpu: faiss-gpu, refused without a GPU)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--full-exact", action="store_true", help="also run the exact all-vs-all (small N only)")
    ap.add_argument("--dir", default=None, help="keep the data here (reused when its shape matches)")
    ap.add_argument("--probe-sweep", default="",
                    help="with --memmap/--million: nprobe list for the sampled sweep (ef_search with --index hnsw)")
    args = ap.parse_args()
    args.sweep_list = [int(v) for v in args.probe_sweep.split(",") if v]
    args.nprobe_list = [int(v) for v in str(args.nprobe).split(",")]
    args.nprobe = args.nprobe_list[0]
    if args.million:
        args.memmap, args.n, args.dim = True, 1_000_000, 512
    if args.memmap:
        memmap_approx(args)
    if args.approx:
        approx(args.n, args.dim, args.nprobe, args.sample, 0.9 if args.noise is None else args.noise)
    if args.sharded:
        sharded(args.n_sharded, args.dim)


if __name__ == "__main__":
    main()
