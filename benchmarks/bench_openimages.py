"""OpenImages image-level label CSV at its real size: the columnar (pyarrow) reader vs the csv-module path.

Generates a file in the real format (``ImageID,Source,LabelName,Confidence``; ~9M rows, rows grouped by
image, ~20k label ids with a long tail, ~1/3 of rows verified-absent), then reads it filtered to a vehicle-like
subtree of 40 labels (~5% of rows) with :func:`read_image_labels` (pyarrow, streamed) and with the old
``csv.DictReader`` path, each in a fresh process so peak RSS is that reader's own. Both results are compared.

Run: ``.venv/bin/python benchmarks/bench_openimages.py [--rows 9000000] [--old-rows 9000000] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SUBTREE = [f"/m/0v{i:03x}" for i in range(40)]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    vocab = np.array([f"/m/0{i:05x}" for i in range(20_000)] + SUBTREE, dtype=object)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 0.8  # long tail, like the real label frequencies
    weights[-len(SUBTREE):] = weights[:200].mean()  # subtree labels are common (cars, wheels, ...)
    weights /= weights.sum()
    opts = pacsv.WriteOptions(include_header=True, quoting_style="none")
    next_id = 0
    with pacsv.CSVWriter(path, pa.schema([("ImageID", pa.string()), ("Source", pa.string()),
                                          ("LabelName", pa.string()), ("Confidence", pa.string())]),
                         write_options=opts) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            per_image = rng.integers(1, 18, n // 8 + 2)  # ~9 labels per image
            image_index = np.repeat(np.arange(next_id, next_id + len(per_image)), per_image)[:n]
            next_id = int(image_index[-1]) + 1
            ids = np.char.mod("%016x", image_index * 0x9E3779B1 % (1 << 62))
            table = pa.table({
                "ImageID": pa.array(ids.astype(object)),
                "Source": pa.array(rng.choice(np.array(["verification", "crowdsource-verification"], object),
                                              n)),
                "LabelName": pa.array(vocab[rng.choice(len(vocab), n, p=weights)]),
                "Confidence": pa.array(np.where(rng.random(n) < 0.66, "1", "0").astype(object)),
            })
            writer.write_table(table)


def child(which: str, path: str) -> None:
    import resource

    from ofgr_core.data.openimages import read_image_labels, read_image_labels_csv

    fn = read_image_labels if which == "arrow" else read_image_labels_csv
    t0 = time.perf_counter()
    per_image, splits = fn([Path(path)], set(SUBTREE), 0.5)
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_pairs = sum(len(v) for v in per_image.values())
    digest = hash(frozenset((k, frozenset(v)) for k, v in per_image.items()))
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb, "images": len(per_image), "pairs": n_pairs,
                      "digest": digest}))


def run_child(which: str, path: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, __file__, "--child", which, str(path)], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def head(src: Path, dst: Path, rows: int) -> None:
    with src.open("rb") as f, dst.open("wb") as g:
        for i, line in enumerate(f):
            if i > rows:
                break
            g.write(line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=9_000_000)
    ap.add_argument("--old-rows", type=int, default=None, help="rows for the csv-module path (default: all)")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    folder = Path(args.dir or tempfile.mkdtemp(prefix="ofgr_oi_"))
    path = folder / "oidv6-train-annotations-human-imagelabels.csv"
    if not path.is_file():
        t0 = time.perf_counter()
        generate(path, args.rows)
        print(f"generated {args.rows:,} rows ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f} s")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    arrow = run_child("arrow", path)
    print(f"pyarrow reader, {args.rows:,} rows: {arrow['seconds']:.1f} s, peak RSS {arrow['rss_mb']:.0f} MB, "
          f"{args.rows / arrow['seconds']:,.0f} rows/s "
          f"-> {arrow['images']:,} images in the subtree")
    old_rows = min(args.old_rows or args.rows, args.rows)
    old_path = path
    if old_rows < args.rows:
        old_path = folder / "train-imagelabels-head.csv"
        head(path, old_path, old_rows)
        small = run_child("arrow", old_path)
    old = run_child("csv", old_path)
    print(f"csv module, {old_rows:,} rows: {old['seconds']:.1f} s, peak RSS {old['rss_mb']:.0f} MB, "
          f"{old_rows / old['seconds']:,.0f} rows/s")
    same = (small if old_rows < args.rows else arrow)
    print(f"same result as the csv path: {same['digest'] == old['digest'] and same['pairs'] == old['pairs']}")
    ratio = (old["seconds"] / old_rows) / (arrow["seconds"] / args.rows)
    print(f"speed-up per row (csv / pyarrow): {ratio:.1f}x; goal < 15 s and < 2048 MB: "
          f"{'met' if arrow['seconds'] < 15 and arrow['rss_mb'] < 2048 else 'NOT met'}")
    if not args.keep and not args.dir:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
