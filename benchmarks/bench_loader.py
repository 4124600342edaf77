"""Data loading throughput vs a small model's forward pass, at the same image size.

Writes N JPEG images (camera-like 320x240 by default) to a temp folder, then measures images/s of:

* the DataLoader over ``ImageDataset`` decoding the files (0 and 2 workers),
* the same reading the decoded-and-resized memory-mapped cache (cold = first epoch fills it, warm = later),
* a resnet18 forward pass (``torch.no_grad``, batch 64) at the training resolution.

Run: ``.venv/bin/python benchmarks/bench_loader.py [--n 512] [--size 64] [--src 320x240]``
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from ofgr_core.config import DataConfig
from ofgr_core.data.dataset import load_dataset
from ofgr_core.data.loader import ImageDataset


def write_images(root: Path, n: int, w: int, h: int) -> None:
    rng = np.random.default_rng(0)
    rows = ["path,fine,coarse"]
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        # smooth-ish content so JPEG sizes are realistic (pure noise would be 5x larger than photos)
        img = np.roll(base, i * 7, axis=1) // 2 + rng.integers(0, 64, (1, 1, 3), dtype=np.uint8)
        rel = f"img/{i % 16}/{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((w, h)).save(root / rel, quality=90)
        rows.append(f"{rel},f{i % 16},c{i % 4}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")


def loader_rate(ds: ImageDataset, workers: int, epochs: int = 1, batch: int = 64) -> float:
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True,
                                     persistent_workers=workers > 0)
    start = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for x, _, _ in dl:
            n += len(x)
    return n / (time.perf_counter() - start)


def model_rate(size: int, batch: int = 64, iters: int = 5) -> float:
    import torchvision

    model = torchvision.models.resnet18(num_classes=128).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--src", default="320x240")
    args = ap.parse_args()
    w, h = (int(v) for v in args.src.split("x"))
    torch.set_num_threads(os.cpu_count() or 1)
    tf = transforms.Compose([transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor()])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root, args.n, w, h)
        cfg = DataConfig(sources=[{"type": "manifest", "root": str(root)}], image_size=args.size,
                         cache=True, cache_dir=str(root / "cache"))
        t0 = time.perf_counter()
        prep = load_dataset(cfg)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_dataset(cfg)
        t_reload = time.perf_counter() - t0
        paths, labels = prep.table.paths, prep.labels
        print(f"# {platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{args.n} JPEGs {w}x{h} -> {args.size}px")
        print(f"load_dataset (decode check + hash): {args.n / t_load:8.0f} img/s first, "
              f"{args.n / t_reload:8.0f} img/s memoised")
        results = []
        for workers in (0, 2):
            plain = ImageDataset(paths, labels, tf, cache=None)
            results.append((f"files, {workers} workers", loader_rate(plain, workers)))
        for workers in (0, 2):
            # fresh cache file per setting so "cold" really is the first epoch
            sub = root / f"cache{workers}"
            prep_c = load_dataset(cfg.model_copy(update={"cache_dir": str(sub)}))
            cached = ImageDataset(prep_c.table.paths, prep_c.labels, tf)
            assert cached.cache is not None
            results.append((f"cache cold, {workers} workers", loader_rate(cached, workers)))
            results.append((f"cache warm, {workers} workers", loader_rate(cached, workers, epochs=2)))
        fwd = model_rate(args.size)
        print(f"{'loader':28s} {'img/s':>8s}   {'resnet18 fwd img/s':>18s}   loader/forward")
        for name, rate in results:
            print(f"{name:28s} {rate:8.0f}   {fwd:18.0f}   {rate / fwd:8.2f}x")


if __name__ == "__main__":
    main()
