"""Feature extraction: images/s from image files through the whole pipeline / the encoder alone on tensors.

    python benchmarks/bench_extract.py                                   # tiny CLIP, 64 px, CPU
    python benchmarks/bench_extract.py --model ViT-B-32 --size 224 --n 2000 --workers 8 --device cuda

"Pipeline" is ``ofgr_core.embedding.features.extract_features``: decode the files in DataLoader workers, preprocess,
run the frozen tower, write the cache. "Encoder alone" runs the same tower on the same images already decoded,
preprocessed and on the device, at the same batch size. The ratio pipeline / encoder says how much of the
tower's speed the data path keeps (goal >= 0.8: the encoder, not the loader, should be the bottleneck). Random
weights are used (no download); speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ofgr-tiny-clip", help="open_clip architecture")
    ap.add_argument("--size", type=int, default=64, help="image side (files are written at this size)")
    ap.add_argument("--n", type=int, default=2000, help="images")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader processes for the pipeline")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    a = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from ofgr_core.embedding.features import FeatureStore, extract_features
    from ofgr_core.models.clip.config import ClipModelConfig
    from ofgr_core.models.factory import create_model_and_transforms

    work = Path(tempfile.mkdtemp(prefix="ofgr-bench-extract-"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(a.n):
        p = work / f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 255, (a.size, a.size, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    model, _, tf = create_model_and_transforms(
        ClipModelConfig(name=a.model, pretrained=None, head="none", precision=a.precision), image_size=a.size)
    device = torch.device(a.device)
    model.to(device).eval()
    from ofgr_core.models.precision import autocast, resolve_autocast

    model.autocast_dtype = resolve_autocast(a.precision, "auto", device)

    # encoder alone: preprocessed tensors already on the device
    with Image.open(paths[0]) as im:
        x = tf(im.convert("RGB"))
    batch = x.unsqueeze(0).repeat(a.batch_size, 1, 1, 1).to(device)
    with torch.no_grad(), autocast(device, model.autocast_dtype):
        model.tower_features(batch)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        done = 0
        while done < a.n:
            model.tower_features(batch)
            done += a.batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        enc = done / (time.perf_counter() - t0)

    store = FeatureStore(work / "cache", model.feature_key(), model.feature_dim)
    t0 = time.perf_counter()
    feats, stats = extract_features(model, paths, tf, device, store=store, batch_size=a.batch_size,
                                    num_workers=a.workers)
    pipe = a.n / (time.perf_counter() - t0)
    assert stats["computed"] == a.n and feats.shape == (a.n, model.feature_dim)
    t0 = time.perf_counter()
    extract_features(model, paths, tf, device, store=store, batch_size=a.batch_size, num_workers=a.workers)
    cached = a.n / (time.perf_counter() - t0)
    print(f"{a.model} {a.size}px on {device} ({torch.get_num_threads()} threads, {a.workers} loader workers), "
          f"{a.n} JPEG files, batch {a.batch_size}:")
    print(f"  encoder alone on preloaded tensors: {enc:9.1f} img/s")
    print(f"  pipeline from files (cold cache):   {pipe:9.1f} img/s   ratio {pipe / enc:.2f} (goal >= 0.8)")
    print(f"  pipeline, warm cache (hash + read): {cached:9.1f} img/s")


if __name__ == "__main__":
    main()
