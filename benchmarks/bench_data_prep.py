"""Data preparation at a million images: rows/s and peak RSS of load, split and describe.

Generates a manifest of N rows (10 images per fine class, 20 fine classes per coarse class) whose files are
tiny distinct JPEGs: one encoded 16x16 image plus a per-file trailer after the end-of-image marker, so every
file hashes differently (no de-duplication collapse) and still decodes. Each size runs in a fresh process
that times, one after the other:

* ``load``: ``load_dataset`` with the hash + decode check (memo file and pixel cache in a fresh folder);
* ``load (memo)``: the same again, answered from the memo file (what a resumed or repeated run pays);
* ``split``: ``make_split`` (random protocol, with its leakage checks);
* ``describe``: ``describe`` of the table;

and reports rows/s, wall seconds and the peak RSS reached after each stage, plus the table's own size.

Run: ``.venv/bin/python benchmarks/bench_data_prep.py [--sizes 100000,1000000] [--dir /tmp/x] [--workers N]
[--baseline OLD_CHECKOUT]`` (e.g. ``git archive <commit> | tar -x -C /tmp/old``: the same stages with the old code,
side by side, up to ``--baseline-max`` rows).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def generate(root: Path, n: int) -> Path:
    """Files ``img/<k>/<i>.jpg`` for i < n (reused when present) and ``manifest_<n>.csv``."""
    manifest = root / f"manifest_{n}.csv"
    if manifest.is_file():
        return manifest
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
    base = buf.getvalue()
    lines = ["path,fine,coarse"]
    for i in range(n):
        rel = f"img/{i // 10000}/{i}.jpg"
        full = root / rel
        if i % 10000 == 0:
            full.parent.mkdir(parents=True, exist_ok=True)
        if not full.exists():
            with open(full, "wb") as f:
                f.write(base + i.to_bytes(8, "little"))  # after the EOI marker: ignored by decoders
        fine = i // 10
        lines.append(f"{rel},f{fine},c{fine // 20}")
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(manifest: str, workers: int) -> None:
    from ofgr_core.config import DataConfig, SplitConfig
    from ofgr_core.data.dataset import describe, load_dataset

    try:
        from ofgr_core.data.splits import make_split
    except ModuleNotFoundError:  # a --baseline checkout from before the package layout of issue 17
        from ofgr_core.splits import make_split  # type: ignore[no-redef]

    cache = Path(tempfile.mkdtemp(prefix="ofgr_bench_cache_"))
    cfg = DataConfig.model_validate({"sources": [{"type": "manifest", "root": manifest}], "cache": True,
                                     "cache_dir": str(cache), "num_workers": workers})
    out: dict[str, float] = {"rss_start": rss_mb()}
    t0 = time.perf_counter()
    prepared = load_dataset(cfg)
    out["load_s"], out["rss_load"] = time.perf_counter() - t0, rss_mb()
    n = len(prepared.table)
    del prepared
    t0 = time.perf_counter()
    prepared = load_dataset(cfg)
    out["memo_s"], out["rss_memo"] = time.perf_counter() - t0, rss_mb()
    t0 = time.perf_counter()
    make_split(prepared.table, prepared.hierarchy, prepared.labels, SplitConfig(), seed=0)
    out["split_s"], out["rss_split"] = time.perf_counter() - t0, rss_mb()
    t0 = time.perf_counter()
    describe(prepared.table)
    out["describe_s"], out["rss_describe"] = time.perf_counter() - t0, rss_mb()
    out["rows"] = n
    shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dir", default=None, help="folder for the generated files (kept; reused next time)")
    ap.add_argument("--workers", type=int, default=0, help="data.num_workers (0 = all cores)")
    ap.add_argument("--baseline", default=None,
                    help="a checkout of older ofgr code (e.g. `git archive main`) to run side by side")
    ap.add_argument("--baseline-max", type=int, default=100_000, help="largest size to run the baseline at")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="ofgr_prep_"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; files under {root}")
    print("| rows | stage | seconds | rows/s | peak RSS MB |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        manifest = generate(root, n)
        gen_s = time.perf_counter() - t0
        variants = [("this code", None)]
        if args.baseline and n <= args.baseline_max:
            variants.append(("baseline", args.baseline))
        results = {}
        for label, code in variants:
            env = dict(os.environ)
            if code:
                env["PYTHONPATH"] = str(Path(code).resolve())
            res = subprocess.run([sys.executable, __file__, "--child", str(manifest), str(args.workers)],
                                 capture_output=True, text=True, env=env)
            if res.returncode != 0:
                raise SystemExit(f"{label} ({code or 'this checkout'}) failed:\n{res.stderr[-2000:]}")
            r = results[label] = json.loads(res.stdout.strip().splitlines()[-1])
            for stage, key, rss in (("load (hash + decode + cache layout)", "load_s", "rss_load"),
                                    ("load again (memo file)", "memo_s", "rss_memo"),
                                    ("split", "split_s", "rss_split"), ("describe", "describe_s", "rss_describe")):
                print(f"| {n:,} | {label}: {stage} | {r[key]:.1f} | {n / r[key]:,.0f} | {r[rss]:,.0f} |", flush=True)
        if len(results) == 2:
            a, b = results["this code"], results["baseline"]
            print(f"ratios baseline / this code at {n:,}: load {b['load_s'] / a['load_s']:.1f}x, memo load "
                  f"{b['memo_s'] / a['memo_s']:.1f}x, split {b['split_s'] / a['split_s']:.1f}x, peak RSS "
                  f"{b['rss_describe'] / a['rss_describe']:.2f}x", flush=True)
        print(f"(generated in {gen_s:.0f} s; interpreter + imports {r['rss_start']:.0f} MB)", flush=True)
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
