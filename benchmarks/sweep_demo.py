"""Run a config under several override sets and print unseen/seen Recall@1 side by side.

Used to choose the demo's defaults (on a GPU box it takes a couple of minutes):

    python benchmarks/sweep_demo.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "as configured": [],
    "crop 0.08-1 (timm)": ["data.crop_scale=[0.08,1.0]"],
    "crop 0.6-1": ["data.crop_scale=[0.6,1.0]"],
    "arcface only": ["loss.htriplet.weight=0"],
    "htriplet only": ["loss.arcface.weight=0"],
    "lr 3e-3": ["train.lr=0.003"],
    "12 epochs": ["train.epochs=12"],
    "resnet10t": ["model.name=resnet10t"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--set", action="append", default=[], help="override applied to every variant")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra variant 'name=k1=v1;k2=v2' (replaces the built-in list when given)")
    args = ap.parse_args()
    if args.variant:
        VARIANTS.clear()
        for spec in args.variant:
            name, _, sets = spec.partition("=")
            VARIANTS[name] = [x for x in sets.split(";") if x]
    runs_dir = Path(tempfile.mkdtemp(prefix="ofgr-sweep-"))
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    print(f"{'variant':<22}{'unseen R@1':>11}{'coarse':>8}{'seen R@1':>10}{'best val':>10}{'epochs':>8}{'train s':>9}")
    for name in names:
        cmd = [sys.executable, "-m", "ofgr_core.cli", "run", args.config, "--runs-dir", str(runs_dir), "-q",
               "--name", name.replace(" ", "_"), "--set", f"device={args.device}"]
        for o in args.set + VARIANTS[name]:
            cmd += ["--set", o]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name:<22} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        run_dir = max(runs_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        m = json.loads((run_dir / "metrics.json").read_text())
        print(f"{name:<22}{m['unseen']['fine']['recall@1']:>11.3f}{m['unseen']['coarse']['recall@1']:>8.3f}"
              f"{m['seen']['fine']['recall@1']:>10.3f}{m['train']['val_recall@1'] or 0:>10.3f}"
              f"{m['train']['epochs']:>8}{m['train']['seconds']:>9.1f}  ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
