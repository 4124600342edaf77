"""Embedding models: output contract, weight sources, freezing, preprocessing; tiny timm ``test_*`` models."""

from __future__ import annotations

import time

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from ofgr_core.common.errors import ConfigError, DependencyError, NotFoundError
from ofgr_core.config import load_config
from ofgr_core.models.factory import create_model, create_transforms
from ofgr_core.models.timm.config import TimmModelConfig
from ofgr_core.models.timm.encoder import EmbeddingModel

torch.set_num_threads(2)


def _model(**kw) -> EmbeddingModel:
    kw.setdefault("name", "test_resnet")
    kw.setdefault("embed_dim", 16)
    return create_model(TimmModelConfig(**kw), image_size=kw.pop("image_size", 64))


def _images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit"])
def test_forward_returns_unit_embeddings(name):
    model = _model(name=name, embed_dim=24)
    emb = model(_images())
    assert model.embed_dim == 24
    assert emb.shape == (4, 24)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    assert model.data_config["input_size"] == (3, 64, 64)
    assert {"mean", "std", "interpolation", "crop_pct"} <= set(model.data_config)


def test_default_input_size_comes_from_the_model():
    model = create_model(TimmModelConfig(name="test_resnet", embed_dim=8))
    assert model.data_config["input_size"] == (3, 160, 160)


def test_unknown_names_and_kinds_are_config_errors():
    with pytest.raises(ConfigError, match="model.name: unknown timm model 'resnet5O', did you mean resnet50"):
        create_model(TimmModelConfig(name="resnet5O"))
    with pytest.raises(ConfigError, match="model.kind: must be one of timm, clip, got 'vit'"):
        load_config(None, ["model.kind=vit"])


# -------------------------------------------------------------------------------------- checkpoints
def _reference_backbone() -> torch.nn.Module:
    # with its classifier, as a foreign training script would save it
    torch.manual_seed(123)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


def _expected_features(ref: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ref.forward_head(ref.forward_features(x), pre_logits=True)


def test_pth_checkpoint_round_trip_with_key_map(tmp_path):
    ref = _reference_backbone()
    path = tmp_path / "ckpt.pth"
    wrapped = {f"module.backbone.{k}": v for k, v in ref.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    model = _model(pretrained=str(path), key_map={"module.": "", "backbone.": ""}).eval()
    x = _images()
    with torch.no_grad():
        got = model.backbone(x)
    torch.testing.assert_close(got, _expected_features(ref, x))


def test_safetensors_checkpoint_round_trip(tmp_path):
    ref = _reference_backbone()
    path = tmp_path / "weights.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = _model(pretrained=str(path), key_map={"encoder.": ""}).eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), _expected_features(ref, x))


def test_mismatched_checkpoint_lists_keys_and_suggests_key_map(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({f"module.{k}": v for k, v in _reference_backbone().state_dict().items()}, path)
    with pytest.raises(ConfigError) as info:
        _model(pretrained=str(path))
    msg = str(info.value)
    assert "missing keys (conv1.0.weight" in msg
    assert "unexpected keys (module.conv1.0.weight" in msg
    assert "try model.key_map: {'module.': ''}" in msg
    assert "\n" not in msg


def test_checkpoint_of_another_width_reports_shapes(tmp_path):
    state = _reference_backbone().state_dict()
    state["conv1.0.weight"] = torch.zeros(5, 3, 3, 3)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"1 shape mismatches \(conv1.0.weight \(file \(5, 3, 3, 3\), mod"):
        _model(pretrained=str(path))


def test_missing_or_unreadable_checkpoint(tmp_path):
    with pytest.raises(NotFoundError, match="nope.pth' not found"):
        _model(pretrained=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        _model(pretrained=str(bad))
    with pytest.raises(ConfigError, match="is not a checkpoint"):
        _model(pretrained=str(tmp_path))


def test_hub_weights_offline_fail_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.hub.set_dir(str(tmp_path / "torch"))
    start = time.perf_counter()
    with pytest.raises(DependencyError, match="not cached and HF_HUB_OFFLINE is set"):
        _model(pretrained=True)
    assert time.perf_counter() - start < 5


def test_hub_weights_load_from_cache_offline(monkeypatch, tmp_path):
    ref = _reference_backbone()
    snapshot = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    model = _model(pretrained=True).eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), _expected_features(ref, x))


# ---------------------------------------------------------------------------------------- freezing
def _train_step(model: EmbeddingModel) -> None:
    model.train()
    model(_images(8, seed=1)).sum().backward()


def test_freeze_all_trains_only_the_neck():
    model = _model(freeze="all")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.neck.parameters())
    stats = model.backbone.bn1.running_mean.clone()
    _train_step(model)
    assert not model.backbone.training and model.neck.training
    torch.testing.assert_close(model.backbone.bn1.running_mean, stats)  # frozen BN statistics
    assert model.neck.proj.weight.grad is not None


def test_freeze_partial_trains_listed_prefixes():
    model = _model(freeze="partial", trainable=["layer4", "backbone.layer3.0"])
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable
    assert all(n.startswith(("layer4.", "layer3.0.")) for n in trainable)
    assert all(p.requires_grad for p in model.neck.parameters())
    frozen_stats = model.backbone.bn1.running_mean.clone()
    _train_step(model)
    assert not model.backbone.bn1.training
    assert model.backbone.layer4[0].bn1.training
    torch.testing.assert_close(model.backbone.bn1.running_mean, frozen_stats)


def test_freeze_none_and_partial_errors():
    assert all(p.requires_grad for p in _model(freeze="none").parameters())
    with pytest.raises(ConfigError, match="'layer9' match no backbone parameter; top-level names are conv1"):
        _model(freeze="partial", trainable=["layer9"])
    with pytest.raises(ConfigError, match="model.trainable: empty with model.freeze=partial"):
        _model(freeze="partial")


# ------------------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("train", [True, False])
def test_transforms_follow_the_data_config(train):
    model = _model(name="test_efficientnet")
    transform = create_transforms(model, train=train)
    rng = np.random.default_rng(0)
    for w, h in [(64, 64), (200, 90), (30, 50)]:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out = transform(img)
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    names = [type(t).__name__ for t in transform.transforms]
    if train:
        assert names[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    else:
        assert names[:2] == ["Resize", "CenterCrop"]
    mean = torch.tensor(model.data_config["mean"])
    assert torch.allclose(transform.transforms[-1].mean, mean)
