"""What a run records and how its encoder comes back (issue 18's defects in these mechanisms):

- without validation images, ``val_recall@1`` is null and metrics.json says the last epoch was kept (it used
  to hold -loss, which the report showed as "seen-val R@1 -800%");
- metrics.json records what was actually loaded (weights source and hash, activations, preprocessing);
- ``model.precision`` reaches autocast (it used to be ignored);
- a run's encoder is rebuilt by one function; ``ofgr data hierarchy --run`` on a CLIP run (head-only
  checkpoint) used to build a random tower and fail on a strict ``load_state_dict``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()
TINY_CLIP = "ofgr-tiny-clip"


def _run(runs_dir: Path, data_root: Path, name: str, *extra: str, keep_model: bool = True) -> Path:
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(runs_dir), "--name", name, "-q"]
    overrides = [o for o in tiny_overrides(data_root) if keep_model or not o.startswith("model.")]
    for o in [*overrides, *extra]:
        args += ["--set", o]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return next(p for p in runs_dir.iterdir() if p.is_dir() and p.name.endswith(f"-{name}"))


def _clip_weights(folder: Path) -> str:
    """A tiny random CLIP saved as a ``local-dir:`` weights source (so checkpoints hold the head only)."""
    from ofgr_core.models.clip import encoder as clipmod
    from ofgr_core.models.clip.config import ClipModelConfig
    from ofgr_core.models.factory import create_model

    torch.manual_seed(0)
    enc = create_model(ClipModelConfig(name=TINY_CLIP, pretrained=None, head="none"))
    clipmod.save_local_dir(enc.clip, folder, arch=TINY_CLIP)  # type: ignore[attr-defined]
    return f"local-dir:{folder}"


def test_a_run_without_validation_keeps_the_last_epoch_and_records_no_score(tmp_path, tiny_data_root):
    run = _run(tmp_path / "runs", tiny_data_root, "noval", "split.val_fraction=0", "train.epochs=3")
    m = json.loads((run / "metrics.json").read_text())
    tr = m["train"]
    assert m["data"]["n_fine_val"] == 0
    assert tr["val_recall@1"] is None  # not -loss
    assert tr["best_epoch"] == tr["epochs"] == 3 and "last epoch" in tr["selection"]
    r = runner.invoke(app, ["report", str(run), "--output", str(tmp_path / "rep"), "--no-tsne", "--resamples", "100"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("- **Training**"))
    assert "kept epoch 3 (last epoch" in line and not re.search(r"-\d", line), line


def test_a_run_with_validation_keeps_its_best_epoch_and_score(finished_run):
    tr = json.loads((finished_run / "metrics.json").read_text())["train"]
    assert 0.0 <= tr["val_recall@1"] <= 1.0 and "validation" in tr["selection"] and tr["best_epoch"] >= 1


def test_metrics_record_what_was_loaded(finished_run, tmp_path):
    from ofgr_core.models.base import weights_digest
    from ofgr_core.models.factory import create_model
    from ofgr_core.models.timm.config import TimmModelConfig

    prov = json.loads((finished_run / "metrics.json").read_text())["model"]["provenance"]
    assert prov["family"] == "timm" and prov["weights_source"] == "random init" and prov["weights_file"] is None
    assert prov["activations"] == ["ReLU"] and prov["precision"] == "fp32"
    assert prov["preprocess"]["input_size"] == [3, 32, 32] and len(prov["preprocess"]["mean"]) == 3
    # a weights file is recorded by path and by the hash of the tensors it put in the tower
    torch.manual_seed(1)
    src = create_model(TimmModelConfig(name="test_resnet"), image_size=32)
    path = tmp_path / "w.pth"
    torch.save(src.backbone.state_dict(), path)  # type: ignore[attr-defined]
    loaded = create_model(TimmModelConfig(name="test_resnet", pretrained=str(path)), image_size=32)
    p = loaded.provenance()
    assert p["weights_source"] == f"file {path.resolve()}" and p["weights_file"] == str(path.resolve())
    assert p["weights_sha256"] == weights_digest(src.backbone) != prov["weights_sha256"]  # type: ignore[arg-type]


def test_clip_provenance_tells_the_activation_apart():
    from ofgr_core.models.clip.config import ClipModelConfig
    from ofgr_core.models.factory import create_model

    torch.manual_seed(0)
    gelu = create_model(ClipModelConfig(name=TINY_CLIP, pretrained=None, quick_gelu=False)).provenance()
    torch.manual_seed(0)
    quick = create_model(ClipModelConfig(name=TINY_CLIP, pretrained=None, quick_gelu=True)).provenance()
    assert "QuickGELU" in quick["activations"] and "QuickGELU" not in gelu["activations"]
    assert "GELU" in gelu["activations"]
    assert gelu["weights_source"].endswith("(random init)") and gelu["preprocess"]["interpolation"] == "bicubic"


@pytest.fixture
def autocast_calls(monkeypatch):
    """Every ``torch.autocast`` entered: ``(device_type, dtype)``."""
    calls: list[tuple[str, torch.dtype]] = []
    real = torch.autocast

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, device_type: str, dtype: torch.dtype | None = None, **kw: object) -> None:
            calls.append((device_type, dtype))
            super().__init__(device_type, dtype=dtype, **kw)

    monkeypatch.setattr(torch, "autocast", Spy)
    return calls


def test_model_precision_reaches_autocast_and_the_feature_key(tmp_path, tiny_data_root, autocast_calls):
    model = f"{{kind: clip, name: {TINY_CLIP}, pretrained: null, embed_dim: 16, head_width: 32, precision: bf16}}"
    run = _run(tmp_path / "runs", tiny_data_root, "bf16", f"model={model}",
               f"data.feature_cache={tmp_path / 'cache'}", keep_model=False)
    assert ("cpu", torch.bfloat16) in autocast_calls  # extraction and the head's training steps
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"]["provenance"]["precision"] == "bf16"
    keys = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/key.json")]
    assert len(keys) == 1 and keys[0]["autocast"] == "bf16"


def test_fp16_with_amp_off_is_one_line(tmp_path, tiny_data_root):
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / "runs"), "-q"]
    for o in [*tiny_overrides(tiny_data_root), "model.precision=fp16", "train.amp='off'"]:
        args += ["--set", o]
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    assert "model.precision=fp16 needs autocast but train.amp=off" in " ".join(r.output.split())


def test_hierarchy_from_a_clip_run_rebuilds_its_tower_and_trained_head(tmp_path, tiny_data_root):
    weights = _clip_weights(tmp_path / "ck")
    model = f"{{kind: clip, name: {TINY_CLIP}, pretrained: '{weights}', embed_dim: 16, head_width: 32}}"
    run = _run(tmp_path / "runs", tiny_data_root, "clip", f"model={model}",
               f"data.feature_cache={tmp_path / 'cache'}", keep_model=False)
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["model"] and all(k.startswith("head.") for k in ckpt["model"])  # the head only
    out = tmp_path / "tax.yaml"  # the run's own config names the data (the same synthetic world)
    r = runner.invoke(app, ["data", "hierarchy", str(run / "config.yaml"), "--out", str(out), "--run", str(run),
                            "--groups", "2", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["encoder"]["checkpoint"] == str(run / "checkpoints" / "best.pt")
    assert report["encoder"]["features"] == "embedding" and out.is_file()
    # the rebuilt encoder is the run's: it reproduces the stored embeddings of the unseen split
    from PIL import Image

    from ofgr_core.models.run_encoder import load_run_encoder

    enc = load_run_encoder(run)
    rows = (run / "embeddings" / "unseen.csv").read_text().splitlines()[1:4]
    with torch.no_grad():
        x = torch.stack([enc.transform(Image.open(r.split(",")[1]).convert("RGB")) for r in rows])
        emb = enc.model.encode_images(x).numpy()
    assert np.allclose(emb, np.load(run / "embeddings" / "unseen.npy")[:3], atol=1e-5)
