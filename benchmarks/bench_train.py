"""Training throughput per backbone, and how much of a step is spent waiting for data.

For each backbone, on the same batches, side by side in one run:
  * loader img/s   : the real DataLoader (decode + augment) alone, no model;
  * compute img/s  : forward + loss + backward + optimizer step on batches already in memory;
  * train img/s    : the real loop (loader feeding the model), and the share of its time spent in data.

CPU (default): the demo setting (synthetic world, 64 px). GPU: ``--device cuda --size 224`` with AMP (bf16);
compute img/s there uses device-resident batches, so it is the model's ceiling.

    python benchmarks/bench_train.py                          # resnet18, resnet50, efficientnet_b0 @ 64 px CPU
    python benchmarks/bench_train.py --device cuda --size 224 --steps 30 --batch-pk 8,8
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ofgr_core.config import LossConfig, SamplerConfig
from ofgr_core.data.base import create_table
from ofgr_core.data.labels import Hierarchy
from ofgr_core.data.loader import ImageDataset
from ofgr_core.losses import create_loss
from ofgr_core.models.factory import create_model, create_transforms
from ofgr_core.models.precision import autocast, resolve_autocast
from ofgr_core.models.timm.config import TimmModelConfig
from ofgr_core.samplers import create_sampler
from ofgr_core.train.loop import TrainModule


def bench_backbone(name: str, args: argparse.Namespace, table, labels: np.ndarray) -> dict[str, float]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = create_model(TimmModelConfig(name=name, pretrained=False, embed_dim=512), image_size=args.size)
    p, k = args.batch_pk
    scfg = SamplerConfig(coarse_per_batch=args.coarse, fine_per_coarse=p, k=k, batches_per_epoch=args.steps + 2)
    loss = create_loss(LossConfig(), num_classes=int(labels[:, 0].max()) + 1, embed_dim=model.embed_dim)
    module = TrainModule(model, loss).to(device)
    if cuda:
        module.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    ds = ImageDataset(table.paths, labels, create_transforms(model, train=True))
    sampler = create_sampler(scfg, labels, seed=0, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=args.workers, pin_memory=cuda)

    def step(images: torch.Tensor, y: torch.Tensor) -> None:
        images = images.to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, resolve_autocast("auto", "auto", device)):
            total, _ = module(images, y.to(device))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # loader alone
    batches = []
    t0 = time.perf_counter()
    n_load = 0
    for images, y, _ in loader:
        batches.append((images, y))
        n_load += len(images)
    t_load = time.perf_counter() - t0

    # compute alone, on in-memory batches (after warm-up)
    for images, y in batches[:2]:
        step(images, y)
    sync()
    timed = batches[2:]
    if cuda:
        timed = [(i.to(device), yy.to(device)) for i, yy in timed]
    t0 = time.perf_counter()
    for images, y in timed:
        step(images, y)
    sync()
    t_compute = time.perf_counter() - t0
    n_compute = sum(len(i) for i, _ in timed)

    # the real loop: time waiting for data vs total
    t_wait = 0.0
    n_loop = 0
    t0 = time.perf_counter()
    t_fetch = time.perf_counter()
    for i, (images, y, _) in enumerate(loader):
        t_got = time.perf_counter()
        if i >= 2:
            t_wait += t_got - t_fetch
            n_loop += len(images)
        if i == 2:
            sync()
            t0 = time.perf_counter()
        step(images, y)
        if i >= 2:
            sync()
        t_fetch = time.perf_counter()
    t_loop = time.perf_counter() - t0
    return {
        "loader": n_load / t_load,
        "compute": n_compute / t_compute,
        "train": n_loop / t_loop if t_loop > 0 else float("nan"),
        "data_share": t_wait / t_loop if t_loop > 0 else float("nan"),
        "batch": len(batches[0][0]),
        "mem_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,resnet50,efficientnet_b0")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per measurement (+2 warm-up)")
    ap.add_argument("--coarse", type=int, default=2)
    ap.add_argument("--batch-pk", default="4,4", help="P,K per coarse class (batch = coarse*P*K)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--data", default=None, help="synthetic data folder (default: a temp folder)")
    args = ap.parse_args()
    args.batch_pk = tuple(int(x) for x in args.batch_pk.split(","))
    torch.manual_seed(0)

    root = Path(args.data or tempfile.mkdtemp(prefix="ofgr-bench-"))
    table = create_table("synthetic", str(root), num_coarse=6, fine_per_coarse=8, images_per_class=40,
                         image_size=max(64, args.size))
    hier = Hierarchy.from_labels(table.labels)
    labels = hier.encode(table.labels)

    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# device: {dev}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"size {args.size}px; workers {args.workers}; AMP {'bf16' if args.device.startswith('cuda') else 'off'}")
    print(f"{'model':<18}{'batch':>6}{'loader img/s':>14}{'compute img/s':>15}{'train img/s':>13}"
          f"{'data share':>12}{'loader/compute':>16}{'GPU MB':>8}")
    for name in args.models.split(","):
        r = bench_backbone(name, args, table, labels)
        print(f"{name:<18}{r['batch']:>6}{r['loader']:>14.1f}{r['compute']:>15.1f}{r['train']:>13.1f}"
              f"{100 * r['data_share']:>11.1f}%{r['loader'] / r['compute']:>16.2f}{r['mem_mb']:>8.0f}")


if __name__ == "__main__":
    main()
