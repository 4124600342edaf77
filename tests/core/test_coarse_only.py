"""Coarse-only images (fine label missing): kept in the data, coarse terms only, never fine positives."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datafix import write_image, write_manifest
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.config import DataConfig, EvalConfig, SourceConfig, SplitConfig
from ofgr_core.data.dataset import load_dataset
from ofgr_core.data.labels import COARSE_ONLY, Hierarchy, training_labels
from ofgr_core.data.splits import make_split
from ofgr_core.losses import ArcFaceLoss, HierarchicalTripletLoss
from ofgr_core.retrieval.evaluate import run_split
from ofgr_core.samplers import HierarchicalPKSampler
from ofgr_testing import REPO


# --------------------------------------------------------------------------------------------- labels
def test_empty_fine_label_is_coarse_only_not_a_class() -> None:
    h = Hierarchy.from_labels({"fine": ["a", "", "b", "a"], "coarse": ["x", "x", "y", "x"]})
    assert h.classes[0] == ("a", "b") and h.parents[0] == (0, 1)
    enc = h.encode({"fine": ["a", "", "b", "a"], "coarse": ["x", "x", "y", "x"]})
    assert enc[:, 0].tolist() == [0, COARSE_ONLY, 1, 0] and enc[:, 1].tolist() == [0, 0, 1, 0]
    classes, tl = training_labels(np.array([[3, 0], [-1, 1], [5, 1], [3, 0]]))
    assert classes.tolist() == [3, 5] and tl[:, 0].tolist() == [0, -1, 1, 0]


# -------------------------------------------------------------------------------------------- sampler
def _labels(rng: np.random.Generator) -> np.ndarray:
    fine = np.repeat(np.arange(12), 6)  # 12 fine classes, 6 images each; coarse = fine // 4
    rows = np.stack([fine, fine // 4], axis=1)
    extra = np.stack([np.full(20, -1), rng.integers(0, 3, 20)], axis=1)  # 20 coarse-only rows
    labels = np.concatenate([rows, extra])
    return labels[rng.permutation(len(labels))]


def test_sampler_batches_never_make_coarse_only_rows_fine_positives() -> None:
    labels = _labels(np.random.default_rng(0))
    s = HierarchicalPKSampler(labels, coarse_per_batch=2, fine_per_coarse=2, k=3, coarse_only_k=2, seed=1)
    drawn = set()
    for epoch in range(3):
        s.set_epoch(epoch)
        for batch in s:
            b = labels[batch]
            co = b[:, 0] < 0
            assert co.sum() == 2 * 2  # coarse_only_k per coarse class of the batch
            # coarse-only rows come from coarse classes that the batch's fine groups use
            assert set(b[co, 1]) <= set(b[~co, 1])
            # the fine groups are intact: K images of P fine classes per coarse class
            fines, counts = np.unique(b[~co, 0], return_counts=True)
            assert len(fines) == 4 and set(counts) == {3}
            # fine positives (same fine id, both labelled) never involve a coarse-only row
            same = (b[:, 0][:, None] == b[:, 0][None, :]) & (b[:, 0][:, None] >= 0)
            assert not same[co].any() and not same[:, co].any()
            drawn.update(np.asarray(batch)[co].tolist())
    assert drawn == set(np.flatnonzero(labels[:, 0] < 0).tolist())  # every coarse-only image is used


def test_sampler_without_coarse_only_rows_is_unchanged() -> None:
    labels = _labels(np.random.default_rng(0))
    clean = labels[labels[:, 0] >= 0]
    a = HierarchicalPKSampler(clean, 2, 2, 3, seed=4)
    b = HierarchicalPKSampler(clean, 2, 2, 3, seed=4, coarse_only_k=5)
    assert list(a) == list(b)
    off = HierarchicalPKSampler(labels, 2, 2, 3, seed=4, coarse_only_k=0)
    assert all((labels[batch][:, 0] >= 0).all() for batch in off)


# ---------------------------------------------------------------------------------------------- losses
def _naive_htriplet(x: np.ndarray, fine: list[int], coarse: list[int], m_f: float, m_c: float, mining: str
                    ) -> float:
    n = len(fine)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)

    def d(i: int, j: int) -> float:
        return 1.0 - float(x[i] @ x[j])

    def pos(a: int, p: int) -> bool:  # a fine positive, or a coarse-level positive of a coarse-only anchor
        if p == a:
            return False
        if fine[a] < 0:
            return coarse[p] == coarse[a]
        return fine[p] >= 0 and fine[p] == fine[a]

    def neg(a: int, k: int) -> float | None:  # the margin of negative k for anchor a, None if not a negative
        if coarse[k] != coarse[a]:
            return m_c - m_f if fine[a] < 0 else m_c
        if fine[a] < 0 or fine[k] < 0 or fine[k] == fine[a]:
            return None
        return m_f

    if mining == "batch_hard":
        terms = []
        for a in range(n):
            ps = [p for p in range(n) if pos(a, p)]
            if not ps:
                continue
            d_ap = max(d(a, p) for p in ps)
            kinds = [m_c - m_f] if fine[a] < 0 else [m_f, m_c]
            for m in kinds:
                negs = [k for k in range(n) if neg(a, k) == m and (fine[a] < 0 or
                        (coarse[k] == coarse[a]) == (m == m_f))]
                if negs:
                    terms.append(max(0.0, d_ap - min(d(a, k) for k in negs) + m))
        return sum(terms) / len(terms) if terms else 0.0
    kept = []
    for a, p, k in itertools.product(range(n), repeat=3):
        m = neg(a, k)
        if not pos(a, p) or m is None:
            continue
        loss = d(a, p) - d(a, k) + m
        if loss > 0 and (mining == "all" or loss < m):
            kept.append(loss)
    return sum(kept) / len(kept) if kept else 0.0


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "all"])
@pytest.mark.parametrize("seed", [0, 1])
def test_htriplet_with_coarse_only_rows_matches_naive_loop(mining: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fine = [0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1]
    coarse = [0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 1]
    x = rng.normal(size=(len(fine), 5))
    loss = HierarchicalTripletLoss(0.1, 0.3, mining)
    got = float(loss(torch.tensor(x), torch.tensor(np.stack([fine, coarse], 1))))
    assert got == pytest.approx(_naive_htriplet(x, fine, coarse, 0.1, 0.3, mining), abs=1e-6)


def test_arcface_ignores_coarse_only_rows() -> None:
    torch.manual_seed(0)
    loss = ArcFaceLoss(3, 4, scale=10, margin=0.2)
    x = torch.randn(6, 4)
    y = torch.tensor([[0, 0], [1, 0], [2, 1], [-1, 0], [-1, 1], [0, 0]])
    keep = y[:, 0] >= 0
    assert float(loss(x, y).detach()) == pytest.approx(float(loss(x[keep], y[keep]).detach()))
    only = loss(x[~keep], y[~keep])  # no labelled row: zero, still in the graph
    assert float(only.detach()) == 0.0 and only.requires_grad


# ---------------------------------------------------------------------------------------- data + split
def _world(root: Path, hidden_per_class: int = 2) -> Path:
    rows, k = [], 0
    for c in ("car", "van"):
        for f in ("a", "b", "c", "d"):
            for i in range(6):
                rel = f"images/{c}/{f}/{i}.png"
                write_image(root / rel, k)
                k += 1
                rows.append({"path": rel, "fine": "" if i < hidden_per_class else f"{c}-{f}", "coarse": c})
    return write_manifest(root, rows)


@pytest.mark.parametrize("placement", ["train", "gallery"])
def test_split_places_coarse_only_rows_and_masks_never_make_them_queries(tmp_path: Path, placement: str) -> None:
    manifest = _world(tmp_path / "w")
    data = load_dataset(DataConfig(cache=False, sources=[SourceConfig(type="manifest", root=str(manifest))]))
    assert data.report["coarse_only"] == {"images": 16, "policy": "keep"}
    assert data.report["summary"]["coarse_only_images"] == 16 and data.report["summary"]["levels"]["fine"] == 8
    split = make_split(data.table, data.hierarchy, data.labels,
                       SplitConfig(unseen_fraction=0.5, val_fraction=0.0, coarse_only=placement), seed=0)
    co = np.flatnonzero(data.labels[:, 0] == COARSE_ONLY)
    where = {p: np.intersect1d(split.indices[p], co).size for p in split.indices}
    assert where == {"train": 16 * (placement == "train"), "val": 0, "seen": 0,
                     "unseen": 16 * (placement == "gallery")}
    assert split.report["coarse_only"]["placed_in"] == placement
    q, g = split.query_gallery("unseen", data.table)
    idx = split.indices["unseen"]
    is_co = data.labels[idx, 0] == COARSE_ONLY
    assert not q[is_co].any()  # never a query
    assert g[is_co].all() == (placement == "gallery") or not is_co.any()  # gallery items when placed there


def test_evaluation_counts_coarse_only_gallery_items_at_the_coarse_level_only() -> None:
    # two queries of fine class 0 (coarse 0); a coarse-only item sits on top of query 0
    emb = np.array([[1.0, 0.0], [0.6, 0.8], [0.999, 0.04], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([[0, 0], [0, 0], [COARSE_ONLY, 0], [1, 1]])
    q = np.array([True, True, False, True])
    res = run_split(emb, labels, query_mask=q, cfg=EvalConfig(ks=[1], bootstrap=0))
    per = dict(zip(res.query_ids.tolist(), res.per_query["fine"]["recall@1"].tolist(), strict=True))
    assert 2 not in per  # never a query
    assert per[0] == 0.0  # its nearest item is coarse-only: not a fine positive
    coarse = dict(zip(res.query_ids.tolist(), res.per_query["coarse"]["recall@1"].tolist(), strict=True))
    assert coarse[0] == 1.0  # ... but a coarse-level hit


def test_drop_policy_removes_and_reports_them(tmp_path: Path) -> None:
    manifest = _world(tmp_path / "w")
    data = load_dataset(DataConfig(cache=False, coarse_only="drop",
                                   sources=[SourceConfig(type="manifest", root=str(manifest))]))
    assert len(data.table) == 32 and (data.labels[:, 0] >= 0).all()
    assert data.report["coarse_only"]["policy"] == "drop" and any("coarse-only" in w for w in
                                                                  data.report["warnings"])


@pytest.mark.parametrize("placement", ["train", "gallery"])
def test_run_end_to_end_with_coarse_only_images(tmp_path: Path, placement: str) -> None:
    manifest = _world(tmp_path / "w", hidden_per_class=1)
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / "runs"), "--name", "co",
            "-q", "--set", f"data.sources=[{{type: manifest, root: {manifest}}}]", "--set", "data.image_size=32",
            "--set", "model.name=test_resnet", "--set", "model.embed_dim=16", "--set", "train.epochs=1",
            "--set", "sampler.coarse_per_batch=2", "--set", "sampler.fine_per_coarse=2", "--set", "sampler.k=2",
            "--set", "split.val_fraction=0", "--set", "eval.bootstrap=0", "--set", "data.cache=false",
            "--set", f"split.coarse_only={placement}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "runs").iterdir()
    report = json.loads((run / "data_report.json").read_text())
    assert report["coarse_only"]["images"] == 8 and report["split"]["coarse_only"]["placed_in"] == placement
    metrics = json.loads((run / "metrics.json").read_text())
    import csv

    with open(run / "embeddings" / "unseen.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n_co = sum(not r["fine"] for r in rows)
    assert n_co == (8 if placement == "gallery" else 0)
    # coarse-only gallery items are never queries: the unseen queries are the labelled unseen images
    assert metrics["unseen"]["n_queries"] == len(rows) - n_co > 0
