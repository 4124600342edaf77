"""Feature extraction: images/s from image files through the whole pipeline / the encoder alone on tensors.

    python benchmarks/bench_extract.py                                   # tiny CLIP, 64 px, CPU
    python benchmarks/bench_extract.py --model ViT-B-32 --size 224 --n 2000 --workers 8 --device cuda
    python benchmarks/bench_extract.py --parts                           # two parts of the data path, each vs before

"Pipeline" is ``ofgr_core.embedding.features.extract_features``: hash the files, decode and preprocess them in
DataLoader workers, or in this process on the tower's threads when workers would take its cores (whole batches:
``ImageBatchDataset``), run the frozen tower, append to the cache on a writer thread. "One decode thread" is
the same pipeline with the in-process decode on one thread, as before the decode threads; "hashes known" is the
pipeline given the files' content hashes, as ``ofgr run`` gives them from its data stage (no hash pass).
"Torch's batch conversion" is the pipeline with the batch built as before the numpy conversion (``torch.stack``,
whole-batch torch operations, then a copy into the tower's channels-last layout). Each pipeline run also times
its tower's forward passes: their share of the run's wall time is the ratio measured inside one run, which the
box's drift between runs (+-10 % and more) does not move.
"Encoder alone" runs the same tower on the same images already decoded, preprocessed and on the device, at the
same batch size. The ratio pipeline / encoder says how much of the tower's speed the data path keeps (goal
>= 0.8: the encoder, not the loader, should be the bottleneck). "Per-image pipeline" is the data path before
issue 20, rebuilt here for the side-by-side figure: ``file_digest`` file by file, one ``ImageDataset``
item (every transform step) per image, a DataLoader per 4096-image chunk, appends in line. Random weights are
used (no download); speed does not depend on the weights. The files are random-noise JPEGs by default, which
decode slower than photos of the same size (they compress badly: the worst case); ``--content photo`` writes
random crops of scikit-learn's two sample photographs instead (shipped with it, no download), resized to the
model's input size: what a folder of real photos costs to decode.
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--content", choices=("noise", "photo"), default="noise",
                    help="what the JPEG files show: uniform noise (the slowest to decode) or crops of photographs")
    ap.add_argument("--repeats", type=int, default=5,
                    help="encoder-alone and cold pipeline runs, alternated; the ratio's median and range are printed "
                         "(single runs of a few seconds on a 2-core box spread by +-10 %%)")
    ap.add_argument("--parts", action="store_true",
                    help="instead: the batch conversion (numpy into the tower's layout vs torch's, 64/96/224 px) and "
                         "read-then-decode vs reading and decoding on each thread, alternated, with their ratios")
    a = ap.parse_args()
    from ofgr_core.common.memory import keep_freed_memory

    keep_freed_memory()  # glibc's malloc as the ofgr command sets it (OFGR_MALLOC=system: its defaults)
    if a.parts:
        parts(a)
        return

    import numpy as np
    import torch
    from PIL import Image

    from ofgr_core.embedding.features import extract_features, open_feature_store
    from ofgr_core.models.clip.config import ClipModelConfig
    from ofgr_core.models.factory import create_model_and_transforms

    work = Path(tempfile.mkdtemp(prefix="ofgr-bench-extract-"))
    paths = write_jpegs(work, a.n, a.size, a.content)
    model, _, tf = create_model_and_transforms(
        ClipModelConfig(name=a.model, pretrained=None, head="none", precision=a.precision), image_size=a.size)
    device = torch.device(a.device)
    model.to(device).eval()
    from ofgr_core.models.precision import autocast, resolve_autocast

    model.autocast_dtype = resolve_autocast(a.precision, "auto", device)

    # encoder alone: preprocessed tensors already on the device
    with Image.open(paths[0]) as im:
        x = tf(im.convert("RGB"))
    # the layout extraction feeds the tower (channels-last: EXTRACTION_VERSION 1)
    batch = x.unsqueeze(0).repeat(a.batch_size, 1, 1, 1).to(device).contiguous(memory_format=torch.channels_last)
    def encoder_alone() -> float:
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
            return done / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    old = per_image_pipeline(model, paths, tf, device, open_feature_store(model, work / "cache-old"), a)
    before = a.n / (time.perf_counter() - t0)
    import ofgr_core.embedding.embed as embed_mod

    shipped_dataset = embed_mod.ImageBatchDataset

    class OneDecodeThread(shipped_dataset):  # type: ignore[misc,valid-type]
        """The in-process data path before its decode threads: one thread reads and decodes every file."""

        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **{**kwargs, "decode_threads": 1})

    from ofgr_core.data.loader import SplitTransform

    class TorchSplit(SplitTransform):
        """The batch conversion before the numpy one: ``torch.stack``, then whole-batch torch operations into a
        contiguous batch, which ``iter_embed`` then copies into the channels-last layout."""

        def batch_chw(self, pixels, *, channels_last: bool = False):  # noqa: ANN001, ANN202
            pixels = torch.stack(list(pixels)) if isinstance(pixels, list) else pixels
            x = pixels.to(torch.get_default_dtype(), memory_format=torch.contiguous_format)
            x.div_(255)
            if self.mean is not None and self.std is not None:
                x.sub_(self.mean.view(1, -1, 1, 1)).div_(self.std.view(1, -1, 1, 1))
            return x

    class TorchConversion(shipped_dataset):  # type: ignore[misc,valid-type]
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **{**kwargs, "channels_last": False})
            if self.split is not None:
                self.split = TorchSplit(self.split.pil, self.split.mean, self.split.std)

    from ofgr_core.embedding.features import file_digests

    hashed = file_digests(paths)
    real_tower = model.tower_features

    def pipeline(r: int, variant: str = "", digests: list[str] | None = None) -> tuple[float, float]:
        """Images/s of one cold extraction, and the share of its wall time the tower's forward passes took."""
        store = open_feature_store(model, work / f"cache-{r}-{variant}{'-run' if digests else ''}")
        embed_mod.ImageBatchDataset = {"": shipped_dataset, "one": OneDecodeThread,  # type: ignore[misc]
                                       "torch": TorchConversion}[variant]
        in_tower = [0.0]

        def timed(x):  # noqa: ANN001, ANN202
            t = time.perf_counter()
            out = real_tower(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            in_tower[0] += time.perf_counter() - t
            return out

        model.tower_features = timed
        try:
            t0 = time.perf_counter()
            feats, stats = extract_features(model, paths, tf, device, store=store, batch_size=a.batch_size,
                                            num_workers=a.workers, digests=digests)
            took = time.perf_counter() - t0
        finally:
            embed_mod.ImageBatchDataset = shipped_dataset  # type: ignore[misc]
            del model.tower_features
        assert stats["computed"] == a.n and feats.shape == (a.n, model.feature_dim)
        equal.append(bool(np.array_equal(feats, old)))
        return a.n / took, in_tower[0] / took

    encs, pipes, ones, runs, torchs = [], [], [], [], []
    shares: dict[str, list[float]] = {"": [], "one": [], "torch": [], "run": []}
    equal: list[bool] = []
    for r in range(a.repeats):  # alternated, each pipeline run on an empty cache of its own
        encs.append(encoder_alone())
        for variant, speeds in (("", pipes), ("one", ones), ("torch", torchs)):
            speed, share = pipeline(r, variant)
            speeds.append(speed)
            shares[variant].append(share)
        speed, share = pipeline(r, digests=hashed)
        runs.append(speed)
        shares["run"].append(share)
    ratios = sorted(p / e for p, e in zip(pipes, encs, strict=True))
    one_ratios = sorted(p / e for p, e in zip(ones, encs, strict=True))
    run_ratios = sorted(p / e for p, e in zip(runs, encs, strict=True))
    enc, pipe = float(np.median(encs)), float(np.median(pipes))
    store = open_feature_store(model, work / "cache-0-")  # the first shipped run filled it
    t0 = time.perf_counter()
    feats = extract_features(model, paths, tf, device, store=store, batch_size=a.batch_size,
                             num_workers=a.workers)[0]
    cached = a.n / (time.perf_counter() - t0)
    same = np.array_equal(feats, old)
    diff = float(np.abs(feats - old).max())
    load = os.getloadavg()
    from ofgr_core.embedding.embed import loader_workers

    used = loader_workers(a.workers, device)
    print(f"{a.model} {a.size}px on {device} ({torch.get_num_threads()} threads, {a.workers} loader workers "
          f"requested, {used} used), "
          f"{a.n} JPEG files ({a.content}), batch {a.batch_size}; load average {load[0]:.1f} / {load[1]:.1f} "
          "(1/5 min):")
    print(f"  encoder alone on preloaded tensors: {enc:9.1f} img/s (median of {a.repeats})")
    print(f"  pipeline from files (cold cache):   {pipe:9.1f} img/s (median)   ratio {np.median(ratios):.2f} "
          f"(median of {a.repeats} paired runs, range {ratios[0]:.2f}-{ratios[-1]:.2f}; goal >= 0.8)")
    print(f"  the same, one decode thread:        {float(np.median(ones)):9.1f} img/s (median)   ratio "
          f"{np.median(one_ratios):.2f} (range {one_ratios[0]:.2f}-{one_ratios[-1]:.2f}; the in-process data path "
          "before its decode threads)")
    print(f"  the same, hashes known (ofgr run):  {float(np.median(runs)):9.1f} img/s (median)   ratio "
          f"{np.median(run_ratios):.2f} (range {run_ratios[0]:.2f}-{run_ratios[-1]:.2f}; `ofgr run` passes the "
          "content hashes of its data stage: each file is read once)")
    print(f"  the same, torch's batch conversion (before): {float(np.median(torchs)):9.1f} img/s (median)   ratio "
          f"{np.median(sorted(p / e for p, e in zip(torchs, encs, strict=True))):.2f}")
    pairs = sorted(p / o for p, o in zip(pipes, ones, strict=True))  # neighbours in time: the box's drift cancels
    print(f"  decode threads / one decode thread, run by run: median {np.median(pairs):.2f} "
          f"(range {pairs[0]:.2f}-{pairs[-1]:.2f})")
    pairs = sorted(p / o for p, o in zip(pipes, torchs, strict=True))
    print(f"  numpy conversion into the tower's layout / torch's (before), run by run: median {np.median(pairs):.2f} "
          f"(range {pairs[0]:.2f}-{pairs[-1]:.2f})")
    print("  the tower's forward passes' share of the pipeline's wall time (the ratio above measured inside each run,"
          " so the box's drift between runs cancels): " + ", ".join(
              f"{name} {np.median(v):.2f} [{min(v):.2f}, {max(v):.2f}]" for name, v in
              (("shipped", shares[""]), ("hashes known", shares["run"]), ("one decode thread", shares["one"]),
               ("torch's conversion", shares["torch"]))))
    print(f"  per-image pipeline (before):        {before:9.1f} img/s   ratio {before / enc:.2f}")
    print(f"  pipeline, warm cache (hash + read): {cached:9.1f} img/s")
    print(f"  same features as the per-image pipeline: {'yes' if same else f'NO (max abs difference {diff:.2e})'}"
          f" (every cold run: {'yes' if all(equal) else 'NO'})")


def write_jpegs(folder: Path, n: int, size: int, content: str, seed: int = 0) -> list[str]:
    """``n`` JPEG files (quality 90) of ``size`` x ``size`` in ``folder``: uniform noise, or random square crops
    (a tenth to the whole of the shorter side) of scikit-learn's sample photographs, resized with bicubic."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    if content == "photo":
        from sklearn.datasets import load_sample_images

        photos = load_sample_images().images  # china.jpg and flower.jpg, 427 x 640, in scikit-learn's package
    paths = []
    for i in range(n):
        if photos:
            im = photos[i % len(photos)]
            h, w = im.shape[:2]
            side = int(rng.integers(min(h, w) // 10, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            img = Image.fromarray(im[y : y + side, x : x + side]).resize((size, size), Image.Resampling.BICUBIC)
        else:
            img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        p = folder / f"{i:06d}.jpg"
        img.save(p, quality=90)
        paths.append(str(p))
    return paths


def per_image_pipeline(model, paths, tf, device, store, a):  # noqa: ANN001, ANN201
    """The extraction data path before issue 20 (see the module docstring), for the side-by-side figure."""
    import numpy as np
    import torch

    from ofgr_core.data.loader import ImageDataset
    from ofgr_core.embedding.features import file_digest
    from ofgr_core.models.precision import autocast

    digests = [file_digest(p) for p in paths]
    todo = store.missing(digests)
    for c in range(0, len(todo), 4096):
        part = todo[c : c + 4096]
        ds = ImageDataset([paths[i] for i in part], np.zeros((len(part), 1), np.int64), tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers,
                                             pin_memory=device.type == "cuda")
        out = []
        with torch.no_grad():
            for x, _, _ in loader:
                with autocast(device, model.autocast_dtype):
                    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    out.append(model.tower_features(x).float().cpu().numpy())
        store.append([digests[i] for i in part], np.concatenate(out))
    return store.read(digests)


def parts(a) -> None:  # noqa: ANN001
    """Two parts of the data path alone, each against what it replaced, alternated (medians of paired runs)."""
    import numpy as np
    import torch
    from torchvision import transforms as T

    from ofgr_core.common.threads import map_slices
    from ofgr_core.data.decode import decode_chw, decode_chw_bytes, read_bytes
    from ofgr_core.data.loader import split_transform

    def timed(f) -> float:  # noqa: ANN001
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    rng = np.random.default_rng(0)
    norm = T.Normalize((0.481, 0.458, 0.408), (0.269, 0.261, 0.276))
    print(f"batch conversion, us an image (medians of {a.repeats} alternations; numpy into channels-last vs "
          "torch.stack, whole-batch torch steps and the copy into channels-last):")
    for size, batch in ((64, 256), (96, 128), (224, 64)):
        split = split_transform(T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), norm]))
        assert split is not None
        chw = [torch.from_numpy(im).permute(2, 0, 1) for im in rng.integers(0, 256, (batch, size, size, 3), np.uint8)]

        def before(split=split, chw=chw) -> torch.Tensor:  # noqa: ANN001
            x = torch.stack(chw).to(torch.float32, memory_format=torch.contiguous_format)
            x.div_(255).sub_(split.mean.view(1, -1, 1, 1)).div_(split.std.view(1, -1, 1, 1))
            return x.contiguous(memory_format=torch.channels_last)

        def now(split=split, chw=chw) -> torch.Tensor:  # noqa: ANN001
            return split.batch_chw(chw, channels_last=True)

        assert torch.equal(before(), now())
        runs = [(timed(before), timed(now)) for _ in range(a.repeats)]
        print(f"  {size} px: before {1e6 * np.median([b for b, _ in runs]) / batch:7.1f}   now "
              f"{1e6 * np.median([n for _, n in runs]) / batch:7.1f}   now / before, run by run: median "
              f"{np.median([n / b for b, n in runs]):.2f}")
    work = Path(tempfile.mkdtemp(prefix="ofgr-bench-extract-"))
    paths = write_jpegs(work, 2048, a.size, a.content)
    batches = [paths[s : s + 256] for s in range(0, len(paths), 256)]
    threads = torch.get_num_threads()

    def each_thread() -> None:
        for b in batches:
            map_slices(decode_chw, b, threads)

    def read_then_decode() -> None:
        for b in batches:
            map_slices(decode_chw_bytes, [read_bytes(p) for p in b], threads)

    runs = [(timed(each_thread), timed(read_then_decode)) for _ in range(max(a.repeats, 15))]
    n = len(paths)
    print(f"{n} JPEG files ({a.content}) of {a.size} px, batches of 256 on {threads} threads, us an image: read and "
          f"decode on each thread {1e6 * np.median([e for e, _ in runs]) / n:.1f}, read here then decode on the "
          f"threads {1e6 * np.median([r for _, r in runs]) / n:.1f}; ratio run by run: median "
          f"{np.median([r / e for e, r in runs]):.2f}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
