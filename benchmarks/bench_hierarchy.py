"""Hierarchy induction, coarse-only images and label noise, measured on a small synthetic world.

What it measures (docs/hierarchy.md records the figures):

A. agreement (adjusted Rand index) between the induced coarse level and the world's true body types, for a
   random encoder, a "pretrained" one and a trained one, with the group count chosen by silhouette and given;
B. unseen fine Recall@1 of an embedding trained with the true hierarchy, the induced one, and none;
C. coarse-only images: a share of the training images lose their fine label; kept (coarse terms only) vs
   dropped;
D. label noise 0 / 10 / 30 %: unseen fine Recall@1 with ArcFace vs sub-center ArcFace (K=3), and precision /
   recall of the suspect list at the top-N against the injected flips.

Protocol, chosen to fit in minutes on a shared 2-core CPU: the world (``--coarse`` body types x ``--fine`` make
/model classes x ``--images`` images, 32 px) is embedded once by a frozen encoder; what is trained per
configuration is an MLP embedding head (128 -> 256 -> 128, L2-normalised) on the frozen features, with ofgr's own
losses (``create_loss``: ArcFace or sub-center ArcFace + hierarchical triplet), sampler
(``HierarchicalPKSampler``, C=2 x P=4 x K=4, coarse-only images 4 per coarse class), evaluation (``run_split``,
leave-one-out over the unseen classes, true labels), induction (``induce_groups``) and suspects
(``find_suspects``). Half of each body type's fine classes are unseen. Every figure is a mean over ``--seeds``
head trainings (± standard deviation).

There are no real pretrained weights on this machine: the "pretrained" encoder is ``ofgr_tinycnn`` trained by
``ofgr run`` on a *disjoint* synthetic world (another seed: other make/model classes) with flat labels (one
coarse class, so it never saw body-type labels); pass its run folder with ``--pretrained``. "Random" is the same
network untrained; "trained" is the pretrained encoder plus a head trained on this world's seen classes with
flat labels (body types hidden).

    python benchmarks/bench_hierarchy.py --pretrained RUN_DIR --work /tmp/hb [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from ofgr_core.config import ArcFaceConfig, Config, EvalConfig, HTripletConfig, LossConfig
from ofgr_core.data import synthetic
from ofgr_core.embedding.embed import embed_paths
from ofgr_core.hierarchy.induce import class_centroids, induce_groups
from ofgr_core.hierarchy.suspects import find_suspects, precision_recall_at
from ofgr_core.losses import create_loss
from ofgr_core.models.factory import create_model_and_transforms
from ofgr_core.retrieval.evaluate import run_split
from ofgr_core.runs.checkpoint import load_checkpoint
from ofgr_core.runs.folder import RunFolder
from ofgr_core.samplers import HierarchicalPKSampler


# -------------------------------------------------------------------------------------------- encoders
def encode(paths: list[str], checkpoint: Path | None, image_size: int, cache: Path) -> np.ndarray:
    if cache.is_file():
        return np.load(cache)
    torch.manual_seed(0)
    model, _, eval_tf = create_model_and_transforms(Config().model, image_size=image_size)  # ofgr_tinycnn
    if checkpoint is not None:
        model.load_state_dict(load_checkpoint(checkpoint, map_location="cpu")["model"])
    model.eval()
    feats = embed_paths(model, paths, eval_tf, torch.device("cpu"), batch_size=128)
    np.save(cache, feats)
    return feats


# ------------------------------------------------------------------------------------------------ head
class Head(torch.nn.Module):
    def __init__(self, dim: int, hidden: int = 256, out: int = 128) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.net(x), dim=1)


def train_head(feats: np.ndarray, labels: np.ndarray, *, subcenters: int = 1, steps: int = 400, seed: int = 0
               ) -> Head:
    """An MLP head on frozen features with ofgr's losses and sampler; ``labels`` (N, 2), fine -1 = coarse-only."""
    torch.manual_seed(seed)
    fine = labels[:, 0]
    classes = np.unique(fine[fine >= 0])
    dense = np.where(fine >= 0, np.searchsorted(classes, fine), -1)
    lab = np.stack([dense, labels[:, 1]], axis=1)
    head = Head(feats.shape[1])
    loss_fn = create_loss(LossConfig(arcface=ArcFaceConfig(scale=16.0, margin=0.2, subcenters=subcenters),
                                     htriplet=HTripletConfig()), num_classes=len(classes), embed_dim=128)
    n_coarse = len(np.unique(lab[:, 1]))
    c = min(2, n_coarse)
    sampler = HierarchicalPKSampler(lab, coarse_per_batch=c, fine_per_coarse=8 // c, k=4, batches_per_epoch=50,
                                    seed=seed, coarse_only_k=4)
    opt = torch.optim.AdamW([{"params": head.parameters(), "lr": 1e-3}, *loss_fn.param_groups(1e-3)],
                            weight_decay=1e-4)
    x_all, y_all = torch.as_tensor(feats), torch.as_tensor(lab)
    step, epoch = 0, 0
    while step < steps:
        sampler.set_epoch(epoch)
        for batch in sampler:
            loss, _ = loss_fn(head(x_all[batch]), y_all[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
        epoch += 1
    head.eval()
    return head


def embed_head(head: Head, feats: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.as_tensor(feats)).numpy()


def unseen_r1(emb: np.ndarray, true_labels: np.ndarray) -> float:
    res = run_split(emb, true_labels, cfg=EvalConfig(ks=[1], bootstrap=0))
    return float(res.block["fine"]["recall@1"])


def mean_sd(xs: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(xs)), "sd": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0,
            "n": len(xs)}


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", type=Path, required=True, help="run folder of the pretraining run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ofgr_bench_hierarchy"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--world-seed", type=int, default=1)
    ap.add_argument("--coarse", type=int, default=6)
    ap.add_argument("--fine", type=int, default=6)
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--hide", type=float, nargs="+", default=[0.5, 0.8])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny heads)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    opts = dict(seed=args.world_seed, num_coarse=args.coarse, fine_per_coarse=args.fine,
                images_per_class=args.images, image_size=32)
    worlds = {p: synthetic.generate(work / f"world_noise{int(p * 100)}", label_noise=p, **opts)
              for p in (0.0, 0.1, 0.3)}
    table = synthetic.load_table(worlds[0.0])
    n = len(table)
    fine_names, fine_true = np.unique(table.labels["fine"], return_inverse=True)
    coarse_names, coarse_true = np.unique(table.labels["coarse"], return_inverse=True)
    true_labels = np.stack([fine_true, coarse_true], axis=1)
    class_coarse = np.zeros(len(fine_names), np.int64)
    class_coarse[fine_true] = coarse_true

    # class split: half of each body type's fine classes unseen (seeded)
    rng = np.random.default_rng(0)
    unseen_cls = np.concatenate([rng.permutation(np.flatnonzero(class_coarse == c))[: args.fine // 2]
                                 for c in range(len(coarse_names))])
    is_unseen = np.isin(fine_true, unseen_cls)
    tr, un = np.flatnonzero(~is_unseen), np.flatnonzero(is_unseen)

    ckpt = RunFolder(args.pretrained).checkpoint("best")
    t_enc = time.perf_counter()
    feats = {
        "random": encode(table.paths, None, 32, work / "feats_random.npy"),
        "pretrained": encode(table.paths, ckpt, 32, work / "feats_pretrained.npy"),
    }
    t_enc = time.perf_counter() - t_enc
    base = feats["pretrained"]
    results: dict[str, Any] = {
        "world": {**opts, "images": n, "train_images": len(tr), "unseen_images": len(un),
                  "unseen_classes": len(unseen_cls)},
        "protocol": {"head_steps": args.steps, "seeds": args.seeds, "batch": "C=2 x P=4 x K=4 (+4 coarse-only)"},
        "pretrained_run": str(args.pretrained),
    }
    seeds = range(args.seeds)

    def checkpoint(section: str) -> None:
        """Partial results after every section (a long run on a shared box can be read before it ends)."""
        results["seconds"] = {"encode": round(t_enc, 1), "so_far": round(time.perf_counter() - t0, 1)}
        print(f"[{results['seconds']['so_far']:.0f} s] {section} done", file=sys.stderr, flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")

    # ---- A: induction agreement with the true body types
    flat_train = np.stack([fine_true[tr], np.zeros(len(tr), np.int64)], axis=1)
    trained_head = train_head(base[tr], flat_train, steps=args.steps, seed=0)
    spaces = {**feats, "trained": embed_head(trained_head, base)}
    ari: dict[str, Any] = {}
    induced_assignment = None
    for name, f in spaces.items():
        classes, cents = class_centroids(f, table.labels["fine"])
        truth = [dict(zip(table.labels["fine"], table.labels["coarse"], strict=True))[c] for c in classes]
        auto = induce_groups(cents, classes)
        given = induce_groups(cents, classes, n_groups=len(coarse_names))
        ari[name] = {"silhouette_groups": auto.n_groups,
                     "ari_silhouette": float(adjusted_rand_score(truth, auto.assignment)),
                     "ari_given": float(adjusted_rand_score(truth, given.assignment))}
        if name == "pretrained":
            induced_assignment = dict(zip(classes, auto.assignment.tolist(), strict=True))
            ari[name]["induced_groups_used_in_B"] = auto.n_groups
    results["A_induction_ari"] = ari
    checkpoint("A")

    # ---- B: unseen fine R@1 with the true, induced and no hierarchy
    assert induced_assignment is not None
    induced = np.asarray([induced_assignment[c] for c in table.labels["fine"]])
    hier = {"true": coarse_true, "induced": induced, "none": np.zeros(n, np.int64)}
    results["B_unseen_r1_by_hierarchy"] = {
        name: mean_sd([unseen_r1(embed_head(train_head(base[tr], np.stack([fine_true[tr], coarse[tr]], 1),
                                                       steps=args.steps, seed=s), base[un]), true_labels[un])
                       for s in seeds])
        for name, coarse in hier.items()
    }
    results["B_unseen_r1_by_hierarchy"]["frozen_pretrained_no_head"] = {"mean": unseen_r1(base[un],
                                                                                          true_labels[un])}
    checkpoint("B")

    # ---- C: coarse-only images kept vs dropped
    c_res: dict[str, Any] = {}
    for share in args.hide:
        hide = np.random.default_rng(7).random(len(tr)) < share
        lab = np.stack([np.where(hide, -1, fine_true[tr]), coarse_true[tr]], axis=1)
        keep_r = [unseen_r1(embed_head(train_head(base[tr], lab, steps=args.steps, seed=s), base[un]),
                            true_labels[un]) for s in seeds]
        drop_r = [unseen_r1(embed_head(train_head(base[tr][~hide], lab[~hide], steps=args.steps, seed=s),
                                       base[un]), true_labels[un]) for s in seeds]
        c_res[f"{int(share * 100)}%_hidden"] = {"coarse_only_images": int(hide.sum()),
                                               "kept": mean_sd(keep_r), "dropped": mean_sd(drop_r)}
    results["C_coarse_only"] = c_res
    checkpoint("C")

    # ---- D: label noise: robust loss, suspects
    d_res: dict[str, Any] = {}
    for p, root in worlds.items():
        noisy_table = synthetic.load_table(root)
        assert noisy_table.ids == table.ids
        given = np.asarray(noisy_table.labels["fine"], dtype=object)
        noisy_fine = np.searchsorted(fine_names, given.astype(str))
        wrong = given != np.asarray(table.labels["fine"], dtype=object)
        entry: dict[str, Any] = {"flipped_train": int(wrong[tr].sum()), "flipped_unseen": int(wrong[un].sum())}
        lab = np.stack([noisy_fine[tr], coarse_true[tr]], axis=1)
        for k in (1, 3):
            rs, pr_eval, pr_train = [], [], []
            for s in seeds:
                head = train_head(base[tr], lab, subcenters=k, steps=args.steps, seed=s)
                emb_all = embed_head(head, base)
                rs.append(unseen_r1(emb_all[un], true_labels[un]))
                if p > 0:
                    for part, acc in ((un, pr_eval), (tr, pr_train)):
                        ids = [table.ids[i] for i in part]
                        found = find_suspects(emb_all[part], list(given[part]), ids, k=10)
                        bad = {table.ids[i] for i in part if wrong[i]}
                        acc.append(precision_recall_at(found, bad, top=len(bad)))
            entry[f"subcenters_{k}"] = {"unseen_r1": mean_sd(rs)}
            if p > 0:
                for name, acc in (("suspects_unseen_part", pr_eval), ("suspects_train_part", pr_train)):
                    entry[f"subcenters_{k}"][name] = {
                        "top_n": acc[0]["top"],
                        "precision": mean_sd([a["precision"] for a in acc]),
                        "recall": mean_sd([a["recall"] for a in acc]),
                    }
        if p > 0:
            # the frozen pretrained space never saw these labels: suspects there, over every image
            found = find_suspects(base, list(given), table.ids, k=10)
            bad = {table.ids[i] for i in range(n) if wrong[i]}
            entry["suspects_frozen_pretrained_all"] = {
                f"top_{m}": precision_recall_at(found, bad, top=m) for m in (len(bad) // 2, len(bad), 2 * len(bad))
            }
        d_res[f"noise_{int(p * 100)}%"] = entry
        results["D_label_noise"] = d_res
        checkpoint(f"D noise {p}")
    results["D_label_noise"] = d_res
    results["seconds"] = {"encode": round(t_enc, 1), "total": round(time.perf_counter() - t0, 1)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
