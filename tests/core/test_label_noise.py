"""Label noise in the synthetic world, sub-center ArcFace, and the suspects detector."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.config import ArcFaceConfig, LossConfig
from ofgr_core.data import synthetic
from ofgr_core.hierarchy.suspects import find_suspects, load_run_embeddings, precision_recall_at
from ofgr_core.losses import ArcFaceLoss, SubCenterArcFaceLoss, create_loss

runner = CliRunner()
TINY = dict(seed=3, num_coarse=3, fine_per_coarse=4, images_per_class=10, image_size=16)


@pytest.fixture(scope="module")
def noisy_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("w") / "noisy", label_noise=0.2, **TINY)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------- noise
def test_label_noise_flips_the_stated_share_within_the_coarse_class(noisy_world: Path) -> None:
    truth = _rows(noisy_world / synthetic.NOISE_FILE)
    manifest = _rows(noisy_world / synthetic.MANIFEST)
    assert [r["path"] for r in truth] == [r["path"] for r in manifest]
    flipped = [t for t in truth if t["flipped"] == "1"]
    assert len(flipped) == round(0.2 * len(truth)) == 24
    classes = {c["fine"]: c["coarse"] for c in synthetic.build_classes(3, 3, 4)}
    for t, m in zip(truth, manifest, strict=True):
        assert m["fine"] == t["fine"]
        assert (t["true_fine"] != t["fine"]) == (t["flipped"] == "1")
        assert classes[t["true_fine"]] == classes[m["fine"]] == m["coarse"]  # flips stay in the coarse class
        assert t["true_fine"] in m["path"].replace("-", " ").title() or t["true_fine"].lower().replace(
            " ", "-") in m["path"]  # the image is the true class's


def test_label_noise_is_deterministic_and_keeps_the_images(noisy_world: Path, tmp_path: Path) -> None:
    again = synthetic.generate(tmp_path / "again", label_noise=0.2, **TINY)
    assert (again / synthetic.MANIFEST).read_bytes() == (noisy_world / synthetic.MANIFEST).read_bytes()
    clean = synthetic.generate(tmp_path / "clean", **TINY)
    assert not (clean / synthetic.NOISE_FILE).exists()
    for r in _rows(clean / synthetic.MANIFEST)[::17]:
        assert (clean / r["path"]).read_bytes() == (noisy_world / r["path"]).read_bytes()
    # clean worlds keep their folder hash (label_noise is not part of a clean world's options)
    assert "label_noise" not in json.loads((clean / synthetic.SPEC_FILE).read_text())["params"]


def test_label_noise_needs_siblings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fine_per_coarse >= 2"):
        synthetic.generate(tmp_path / "w", label_noise=0.1, **{**TINY, "fine_per_coarse": 1})


def test_synth_cli_reports_flips(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "synth", str(tmp_path / "w"), "--num-coarse", "2", "--fine-per-coarse",
                              "2", "--images-per-class", "5", "--size", "16", "--label-noise", "0.3", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["flipped"] == 6 and summary["noise_truth"].endswith(synthetic.NOISE_FILE)


# ---------------------------------------------------------------------------------- sub-center ArcFace
def test_subcenter_arcface_equals_pml_reference() -> None:
    torch.manual_seed(0)
    ours = SubCenterArcFaceLoss(num_classes=5, embed_dim=8, subcenters=3, scale=20.0, margin=0.3)
    ref = pml_losses.SubCenterArcFaceLoss(num_classes=5, embedding_size=8, margin=math.degrees(0.3), scale=20.0,
                                          sub_centers=3)
    ref.W.data.copy_(ours.weight.data)
    x, y = torch.randn(12, 8), torch.randint(0, 5, (12,))
    assert ours.weight.shape == (8, 15)
    torch.testing.assert_close(ours(x, y), ref(x, y))
    assert ours.logits(x).shape == (12, 5)


def test_factory_builds_subcenter_arcface_from_config() -> None:
    combined = create_loss(LossConfig(arcface=ArcFaceConfig(subcenters=3)), num_classes=4, embed_dim=8)
    assert isinstance(combined.losses["arcface"], SubCenterArcFaceLoss)
    plain = create_loss(LossConfig(), num_classes=4, embed_dim=8)
    assert type(plain.losses["arcface"]) is ArcFaceLoss
    with pytest.raises(ValueError, match="subcenters"):
        SubCenterArcFaceLoss(4, 8, subcenters=1)


# ------------------------------------------------------------------------------------------- suspects
def _naive_scores(emb: np.ndarray, labels: list[str], k: int) -> dict[int, tuple[float, str]]:
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    lab = [i for i, v in enumerate(labels) if v]
    out = {}
    for i in lab:
        sims = sorted(((float(x[i] @ x[j]), j) for j in lab if j != i), key=lambda t: -t[0])[:k]
        w = [max(s, 0.0) for s, _ in sims]
        total = sum(w)
        votes: dict[str, float] = {}
        for (_, j), wj in zip(sims, w, strict=True):
            votes[labels[j]] = votes.get(labels[j], 0.0) + wj / total
        own = votes.get(labels[i], 0.0)
        others = {c: v for c, v in votes.items() if c != labels[i] and v > 0}
        best = max(others.values(), default=0.0)
        out[i] = (best - own, min(c for c, v in others.items() if v == best) if others else labels[i])
    return out


def test_suspect_scores_match_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 6))
    labels = [str(c) for c in rng.integers(0, 4, 40)]
    labels[3] = labels[17] = ""  # coarse-only rows: no score, no vote
    found = find_suspects(emb, labels, k=5)
    ref = _naive_scores(emb, labels, 5)
    assert {int(s.id) for s in found} == set(ref)
    for s in found:
        assert s.score == pytest.approx(ref[int(s.id)][0], abs=1e-5)  # float32 similarities
        assert s.suggested == ref[int(s.id)][1]
    assert [s.score for s in found] == sorted((s.score for s in found), reverse=True)


def test_suspects_find_planted_flips_well_above_chance(noisy_world: Path) -> None:
    """Embeddings that know each image's true class (with noise, like a decent encoder) expose the flips."""
    table = synthetic.load_table(noisy_world)
    truth = synthetic.load_noise_truth(noisy_world)
    names = sorted(set(truth.values()))
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(names), 16))
    emb = centres[[names.index(truth[i]) for i in table.ids]] + rng.normal(scale=0.9, size=(len(table), 16))
    wrong = {i for i, f in zip(table.ids, table.labels["fine"], strict=True) if truth[i] != f}
    found = find_suspects(emb, table.labels["fine"], table.ids, k=8)
    pr = precision_recall_at(found, wrong, top=len(wrong))
    chance = len(wrong) / len(table)  # 0.2
    assert pr["precision"] >= 3 * chance, pr
    # suggested labels of the top suspects point at the true class
    right = sum(s.suggested == truth[s.id] for s in found[: len(wrong)] if s.id in wrong)
    assert right >= 0.7 * pr["hits"]


def _fake_run(root: Path, parts: dict[str, tuple[np.ndarray, list[dict[str, str]]]]) -> Path:
    run = root / "runs" / "r1"
    (run / "embeddings").mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    for part, (emb, rows) in parts.items():
        np.save(run / "embeddings" / f"{part}.npy", emb.astype(np.float32))
        with open(run / "embeddings" / f"{part}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "path", "fine", "coarse", "split"])
            w.writeheader()
            w.writerows(rows)
    return run


def test_suspects_cli_ranks_the_odd_one_out(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    emb = np.concatenate([rng.normal([5, 0, 0], 0.3, (6, 3)), rng.normal([0, 5, 0], 0.3, (6, 3))])
    rows = [{"id": f"s:{i}", "path": f"/x/{i}.png", "fine": "A" if i < 6 else "B", "coarse": "c",
             "split": "unseen"} for i in range(12)]
    rows[2]["fine"] = "B"  # planted: an A image labelled B
    run = _fake_run(tmp_path, {"unseen": (emb, rows)})
    res = runner.invoke(app, ["data", "suspects", str(run), "--top", "3", "--k", "4", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["n_labelled"] == 12 and len(doc["suspects"]) == 3
    first = doc["suspects"][0]
    assert first["id"] == "s:2" and first["suggested"] == "A" and first["score"] > 0.9
    plain = runner.invoke(app, ["data", "suspects", str(run), "--top", "2"])
    assert plain.exit_code == 0 and "s:2" in plain.stdout


def test_suspects_without_embeddings_is_one_line_error(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r0"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    res = runner.invoke(app, ["data", "suspects", str(run)])
    assert res.exit_code != 0 and "no stored embeddings" in res.output and "Traceback" not in res.output
    with pytest.raises(DataError, match="unseen"):
        load_run_embeddings(run, ["unseen"])
