"""A flat image folder (a single coarse class) runs end to end: the sampler adapts C x P x K and says so."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_testing import REPO


def test_flat_image_folder_runs(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "flat"
    for c in range(6):
        (root / f"class{c}").mkdir(parents=True)
        base = rng.integers(0, 255, size=3)
        for i in range(6):
            px = np.clip(base + rng.normal(0, 30, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / f"class{c}" / f"{i}.png")
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / "runs"), "-q",
            "--set", f"data.sources=[{{type: imagefolder, root: {root}}}]", "--set", "data.image_size=32",
            "--set", "model.name=test_resnet", "--set", "model.embed_dim=16", "--set", "train.epochs=1",
            "--set", "sampler.k=2", "--set", "split.val_fraction=0", "--set", "eval.bootstrap=20",
            "--set", "eval.ks=[1,2]", "--set", "data.cache=false"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= m["unseen"]["fine"]["recall@1"] <= 1.0
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any("sampling C=1 x P=8 x K=2" in e.get("message", "") for e in events)
