"""CLIP head vs CNN fine-tuning: fit + evaluate wall time on the same data and split, feature cache cold and warm.

    python benchmarks/bench_clip_vs_cnn.py                       # the demo world, the demo configs
    python benchmarks/bench_clip_vs_cnn.py --cnn-config configs/resnet50_arcface_htriplet.yaml \\
        --clip-config configs/clip_vitb32_head.yaml --data-root /data   # the study, on a GPU box

Runs, in one process and one after the other: the CNN config; the CLIP config with an empty feature cache
(cold: the image tower runs on every image); the CLIP config again on the now-filled cache (warm: only the head
trains), alternated ``--warm-repeats`` times with a warm run whose head trains through autograd
(``train.head_step=autograd``), so the written-out head step (``ofgr_core/train/headstep.py``) is compared side by
side; the warm ratios are the medians (single 6-10 s runs move by 20 % on this box). All use the CNN run's split.
Prints, per run, the stage times that make up "fit + evaluate" (features + train + embed + evaluate), the steps
trained and the train time per step (per-epoch validation and checkpoints included), and the ratios CLIP / CNN.
Goal of issues 19/20: warm <= 1/20, measured on an idle box. Both sides run their configs as shipped (same
epochs, batch, head).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIT_EVAL = ("features", "train", "embed", "evaluate")


def run(config: str, runs_dir: Path, overrides: list[str]) -> dict:
    from ofgr_core.config import load_config
    from ofgr_core.runs.eventlog import EventWriter
    from ofgr_core.runs.folder import RunFolder
    from ofgr_core.workflows.bench import start_run
    from ofgr_core.workflows.pipeline import execute_run

    cfg = load_config(config, overrides)
    run_dir = start_run(cfg, runs_dir, config_path=config, overrides=overrides)
    with EventWriter(RunFolder(run_dir).events) as writer:
        status, metrics = execute_run(cfg, run_dir, writer, None, config_path=config)
    assert status == "finished" and metrics, f"{run_dir}: {status}"
    metrics["_run_dir"] = str(run_dir)
    return metrics


def steps_trained(m: dict) -> int:
    """Optimisation steps of a run: epochs trained x steps per epoch (from its events.jsonl)."""
    per_epoch = 0
    with open(Path(m["_run_dir"]) / "events.jsonl") as f:
        for line in f:
            if '"train_step"' in line:
                per_epoch = json.loads(line)["steps_per_epoch"]
    return per_epoch * int(m["train"]["epochs"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnn-config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--clip-config", default=str(REPO / "configs" / "demo_clip.yaml"))
    ap.add_argument("--data-root", default=None, help="sets data.sources.0.root (default: the configs' own)")
    ap.add_argument("--clip-pretrained", default=None,
                    help="model.pretrained for the CLIP runs (default: the config's; 'null' = random init, "
                         "which times the same work)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for every run")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--warm-repeats", type=int, default=3,
                    help="warm runs as shipped, each followed by one through autograd (default 3)")
    a = ap.parse_args()
    from ofgr_core.common.memory import keep_freed_memory

    keep_freed_memory()  # glibc's malloc as the ofgr command sets it (OFGR_MALLOC=system: its defaults)

    work = Path(tempfile.mkdtemp(prefix="ofgr-bench-clip-"))
    common = list(a.overrides) + ([f"data.sources.0.root={a.data_root}"] if a.data_root else [])
    cnn = run(a.cnn_config, work / "runs", common)
    clip_over = [*common, f"split.reuse={cnn['_run_dir']}", f"data.feature_cache={work / 'features'}"]
    if a.clip_pretrained:
        clip_over.append(f"model.pretrained={a.clip_pretrained}")
    cold = run(a.clip_config, work / "runs", clip_over)
    warm: list[dict] = []
    autograd: list[dict] = []
    for _ in range(max(1, a.warm_repeats)):
        warm.append(run(a.clip_config, work / "runs", clip_over))
        autograd.append(run(a.clip_config, work / "runs", [*clip_over, "train.head_step=autograd"]))

    def fit_eval(m: dict) -> float:
        return sum(float(m["timings"].get(k, 0.0)) for k in FIT_EVAL)

    rows = [("cnn", cnn), ("clip cold cache", cold)]
    for w, g in zip(warm, autograd, strict=True):
        rows += [("clip warm cache", w), ("clip warm, autograd", g)]
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    print(f"{'run':20s} {'features':>9s} {'train':>8s} {'embed':>7s} {'eval':>7s} {'fit+eval':>9s} "
          f"{'steps':>6s} {'ms/step':>8s} {'unseen fine R@1':>16s} {'trained params':>15s}")
    for name, m in rows:
        t = m["timings"]
        steps = steps_trained(m)
        per_step = 1000 * t.get("train", 0.0) / steps if steps else float("nan")
        print(f"{name:20s} {t.get('features', 0.0):9.1f} {t.get('train', 0.0):8.1f} {t.get('embed', 0.0):7.1f} "
              f"{t.get('evaluate', 0.0):7.1f} {fit_eval(m):9.1f} {steps:6d} {per_step:8.2f} "
              f"{100 * m['unseen']['fine']['recall@1']:15.1f}% {m['model']['trainable_params']:15,d}")
    base = fit_eval(cnn)
    warm_s = statistics.median(fit_eval(m) for m in warm)
    autograd_s = statistics.median(fit_eval(m) for m in autograd)
    pairs = [float(w["timings"]["train"]) / float(g["timings"]["train"]) for w, g in zip(warm, autograd, strict=True)]
    result = {
        "cnn_seconds": base,
        "clip_cold_seconds": fit_eval(cold),
        "clip_warm_seconds": [fit_eval(m) for m in warm],
        "clip_warm_autograd_seconds": [fit_eval(m) for m in autograd],
        "ratio_cold": fit_eval(cold) / base,
        "ratio_warm": warm_s / base,
        "ratio_warm_range": [min(fit_eval(m) for m in warm) / base, max(fit_eval(m) for m in warm) / base],
        "ratio_warm_autograd": autograd_s / base,
        "head_step_train_vs_autograd": pairs,
        "warm_features_computed": warm[0]["fit"]["features"]["computed"],
        "ms_per_step": {n: 1000 * float(m["timings"].get("train", 0.0)) / max(steps_trained(m), 1)
                        for n, m in rows[:3]},
        "unseen_fine_r1": {n: m["unseen"]["fine"]["recall@1"] for n, m in rows},
    }
    lo, hi = result["ratio_warm_range"]
    print(f"CLIP fit+evaluate / CNN fit+evaluate: cold cache {result['ratio_cold']:.3f} "
          f"(1/{1 / result['ratio_cold']:.1f}), warm cache (median of {len(warm)}) {result['ratio_warm']:.3f} "
          f"(1/{1 / result['ratio_warm']:.1f}; range 1/{1 / hi:.1f} to 1/{1 / lo:.1f}); goal warm <= 1/20; warm runs "
          f"computed {result['warm_features_computed']} tower features")
    print(f"warm through autograd (median): {result['ratio_warm_autograd']:.3f} "
          f"(1/{1 / result['ratio_warm_autograd']:.1f}); head train time, written-out step / autograd, each pair: "
          + ", ".join(f"{r:.2f}" for r in pairs) + f" (median {statistics.median(pairs):.2f})")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
