"""Fit strategies through the real CLI: a frozen tower trains only its head, on cached features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.retrieval.query import embed_image
from ofgr_core.runs.checkpoint import load_checkpoint
from ofgr_core.runs.folder import RunFolder
from ofgr_testing import REPO

runner = CliRunner()


def _run(tmp: Path, data: Path, *overrides: str) -> Path:
    runs_dir = tmp / "runs"
    before = set(runs_dir.iterdir()) if runs_dir.is_dir() else set()
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(runs_dir), "-q"]
    base = [
        f"data.sources.0.root={data}",
        "data.sources.0.options={seed: 0, num_coarse: 4, fine_per_coarse: 4, images_per_class: 16, image_size: 32}",
        "data.image_size=32", "model.name=test_resnet", "sampler.coarse_per_batch=2", "sampler.fine_per_coarse=2",
        "sampler.k=4", "eval.bootstrap=0", "split.unseen_fraction=0.25", "split.val_fraction=0.25",
    ]
    for o in [*base, *overrides]:
        args += ["--set", o]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = set(runs_dir.iterdir()) - before
    return run_dir


@pytest.fixture(scope="module")
def tower_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "tower.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    return path


def test_frozen_tower_trains_its_head_on_cached_features(tmp_path: Path, tower_file: Path) -> None:
    data = tmp_path / "data"
    frozen = [f"model.pretrained={tower_file}", "model.freeze=all"]
    baseline = _run(tmp_path, data, *frozen, "model.head=none", "train.epochs=0")
    trained = _run(tmp_path, data, *frozen, "model.head=neck", "model.embed_dim=32", "train.epochs=8",
                   "train.lr=0.003")
    mb = json.loads(RunFolder(baseline).metrics.read_text())
    mt = json.loads(RunFolder(trained).metrics.read_text())
    assert mb["fit"]["strategy"] == mt["fit"]["strategy"] == "head_on_features"
    # the second run found every tower feature in the shared cache: the tower never ran again
    assert mt["fit"]["features"]["computed"] == 0 and mt["fit"]["features"]["hits"] > 0
    assert mb["model"]["embed_dim"] == mb["model"]["feature_dim"]  # head: none = the pooled features
    # the head beats the frozen identity baseline on the seen validation classes (what model selection sees;
    # the baseline's score is measured on the same validation set without training)
    assert mt["train"]["val_recall@1"] > mb["train"]["val_recall@1"] + 0.05, (mt["train"], mb["train"])
    # checkpoints hold the head only; the tower is rebuilt from its weights file
    state = load_checkpoint(RunFolder(trained).checkpoint("best"))["model"]
    assert state and not any(k.startswith("backbone.") for k in state)
    # a new image embeds to exactly the vector the run stored for it (two paths, one number)
    folder = RunFolder(trained)
    stored = np.load(folder.embeddings_npy("unseen"))
    path = folder.embeddings_csv("unseen").read_text().splitlines()[1].split(",")[1]
    np.testing.assert_allclose(embed_image(trained, path)[0], stored[0], atol=1e-4)


def test_end_to_end_checkpoint_holds_the_whole_network(finished_run: Path) -> None:
    state = load_checkpoint(RunFolder(finished_run).checkpoint("last"))["model"]
    assert any(k.startswith("backbone.") for k in state) and any(k.startswith("neck.") for k in state)
    m = json.loads(RunFolder(finished_run).metrics.read_text())
    assert m["fit"]["strategy"] == "end_to_end" and m["model"]["trainable_params"] == m["model"]["params"]
