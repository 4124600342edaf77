"""The content-addressed feature cache: hits, misses, invalidation, and resuming an interrupted fill."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ofgr_core.common.errors import DataError
from ofgr_core.embedding.features import FeatureStore, clear, extract_features, file_digest, key_digest, list_entries
from ofgr_core.models.factory import create_model_and_transforms
from ofgr_core.models.timm.config import TimmModelConfig


def _images(root: Path, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


class CountingTower:
    """Wraps an encoder and counts how many images ran through its tower."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def tower_features(self, x):
        self.calls += len(x)
        return self.model.tower_features(x)


@pytest.fixture()
def encoder():
    torch.manual_seed(0)
    model, _, tf = create_model_and_transforms(TimmModelConfig(name="test_resnet", freeze="all", head="none"),
                                               image_size=32)
    return model.eval(), tf


def test_cache_hits_skip_the_tower_and_equal_fresh_features(tmp_path: Path, encoder) -> None:
    model, tf = encoder
    paths = _images(tmp_path / "img", 10)
    store = FeatureStore(tmp_path / "cache", model.feature_key(), model.feature_dim)
    counted = CountingTower(model)
    first, stats = extract_features(counted, paths[:6], tf, "cpu", store=store, chunk=4)
    assert stats == {"hits": 0, "computed": 6} and counted.calls == 6
    both, stats = extract_features(counted, paths, tf, "cpu", store=store)
    assert stats == {"hits": 6, "computed": 4} and counted.calls == 10  # only the 4 new images ran
    fresh, _ = extract_features(model, paths, tf, "cpu", store=None)
    np.testing.assert_allclose(both, fresh, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(both[:6], first)


def test_cache_is_keyed_by_content_not_file_name(tmp_path: Path, encoder) -> None:
    model, tf = encoder
    a = _images(tmp_path / "a", 2, seed=1)
    b = _images(tmp_path / "b", 2, seed=2)  # same file names, other pixels (Stanford Cars train/test)
    store = FeatureStore(tmp_path / "cache", model.feature_key(), model.feature_dim)
    fa, _ = extract_features(model, a, tf, "cpu", store=store)
    fb, stats = extract_features(model, b, tf, "cpu", store=store)
    assert stats["computed"] == 2 and not np.allclose(fa, fb)
    assert file_digest(a[0]) != file_digest(b[0])


def test_any_key_part_changes_the_cache_folder(encoder) -> None:
    model, _ = encoder
    key = model.feature_key()
    other_size = {**key, "preprocess": {**key["preprocess"], "input_size": [3, 64, 64]}}
    torch.manual_seed(1)
    other_weights, _, _ = create_model_and_transforms(TimmModelConfig(name="test_resnet", freeze="all"), 32)
    assert len({key_digest(key), key_digest(other_size), key_digest(other_weights.feature_key())}) == 3


def test_every_feature_changing_factor_gives_a_new_cache_key(monkeypatch) -> None:
    """Weights, activation, preprocessing, image size, autocast dtype and ofgr's extraction version each change the
    features, so each must change the key (activation and autocast did not: two towers shared cached features)."""
    from ofgr_core.embedding import features
    from ofgr_core.models.clip.config import ClipModelConfig
    from ofgr_core.models.factory import create_model

    def clip(image_size=None, **kw):
        torch.manual_seed(0)  # the same weights every time unless asked otherwise
        return create_model(ClipModelConfig(name="ofgr-tiny-clip", pretrained=None, head="none", **kw),
                            image_size=image_size)

    base = clip()
    quick = clip(quick_gelu=True)
    assert base.feature_key()["weights"] == quick.feature_key()["weights"]  # only the activation differs
    half = clip()
    half.autocast_dtype = torch.float16  # model.precision: fp16 (resolved for a GPU)
    key = features.feature_cache_key(base)
    variants = {
        "activation": features.feature_cache_key(quick),
        "autocast": features.feature_cache_key(half),
        "image size": features.feature_cache_key(clip(image_size=32)),
    }
    torch.manual_seed(1)
    variants["weights"] = features.feature_cache_key(
        create_model(ClipModelConfig(name="ofgr-tiny-clip", pretrained=None, head="none")))
    base.data_config = {**base.data_config, "mean": (0.5, 0.5, 0.5)}
    variants["preprocessing"] = features.feature_cache_key(base)
    base.data_config = clip().data_config
    assert features.key_digest(features.feature_cache_key(base)) == features.key_digest(key)
    monkeypatch.setattr(features, "EXTRACTION_VERSION", features.EXTRACTION_VERSION + 1)
    variants["extraction version"] = features.feature_cache_key(base)
    digests = {name: features.key_digest(k) for name, k in variants.items()}
    same = [name for name, d in digests.items() if d == features.key_digest(key)]
    assert not same, f"these factors do not change the cache key: {same}"
    assert len(set(digests.values())) == len(digests)


def test_extraction_refuses_a_store_opened_for_another_precision(tmp_path: Path, encoder) -> None:
    from ofgr_core.common.errors import ConfigError
    from ofgr_core.embedding.features import open_feature_store

    model, tf = encoder
    store = open_feature_store(model, tmp_path / "cache")
    assert store.key["autocast"] == "fp32" and store.key["extraction"] >= 1
    bf16 = FeatureStore(tmp_path / "cache", {**store.key, "autocast": "bf16"}, model.feature_dim)
    with pytest.raises(ConfigError, match="holds bf16 features.*runs in fp32"):
        extract_features(model, _images(tmp_path / "img", 2), tf, "cpu", store=bf16)


def test_interrupted_fill_resumes_and_a_torn_append_is_repaired(tmp_path: Path, encoder) -> None:
    model, tf = encoder
    paths = _images(tmp_path / "img", 8)
    root = tmp_path / "cache"
    store = FeatureStore(root, model.feature_key(), model.feature_dim)

    class Crash(Exception):
        pass

    def crash_after_first_chunk(done: int, total: int) -> None:
        if done >= 4:
            raise Crash

    with pytest.raises(Crash):  # progress comes per batch; the first chunk is written before the crash unwinds
        extract_features(model, paths, tf, "cpu", store=store, chunk=4, batch_size=4,
                         progress=crash_after_first_chunk)
    # a crash between the features write and the hashes write leaves extra feature bytes behind
    with open(store.features_path, "ab") as f:
        f.write(np.ones(model.feature_dim, np.float32).tobytes()[:-3])
    reopened = FeatureStore(root, model.feature_key(), model.feature_dim)
    assert len(reopened) == 4
    counted = CountingTower(model)
    feats, stats = extract_features(counted, paths, tf, "cpu", store=reopened, chunk=4)
    assert stats == {"hits": 4, "computed": 4} and counted.calls == 4
    fresh, _ = extract_features(model, paths, tf, "cpu")
    np.testing.assert_allclose(feats, fresh, rtol=1e-5, atol=1e-6)
    (entry,) = list_entries(root)
    assert entry.rows == 8 and entry.dim == model.feature_dim
    assert clear(root) > 0 and list_entries(root) == []


def test_non_finite_features_are_never_cached(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, {"family": "x"}, 4)
    with pytest.raises(DataError, match="non-finite"):
        store.append(["a"], np.array([[np.nan, 0, 0, 0]], np.float32))
    assert len(store) == 0


def test_cache_cli_lists_and_clears(tmp_path: Path, encoder) -> None:
    import json

    from typer.testing import CliRunner

    from ofgr_core.cli import app

    model, tf = encoder
    store = FeatureStore(tmp_path / "c", model.feature_key(), model.feature_dim)
    extract_features(model, _images(tmp_path / "img", 3), tf, "cpu", store=store)
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "ls", "--root", str(tmp_path / "c"), "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.stdout)
    assert entry["rows"] == 3 and entry["key"]["arch"] == "test_resnet"
    bad = runner.invoke(app, ["cache", "clear", "nope", "--root", str(tmp_path / "c"), "-y"])
    assert bad.exit_code != 0 and "no feature cache entry 'nope'" in bad.output
    ok = runner.invoke(app, ["cache", "clear", entry["digest"][:6], "--root", str(tmp_path / "c"), "-y"])
    assert ok.exit_code == 0 and list_entries(tmp_path / "c") == []


def test_an_unwritable_cache_names_the_keys_that_move_it(tmp_path: Path) -> None:
    """The message names the config key that exists (data.feature_cache), the flag and the variable."""
    from ofgr_core.common.errors import ConfigError
    from ofgr_core.config import load_config

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be\n")
    with pytest.raises(ConfigError) as e:
        FeatureStore(blocker, {"model": "m"}, 8)
    msg = str(e.value)
    assert str(blocker) in msg and "--feature-cache" in msg and "OFGR_CACHE" in msg
    key = msg.split("set ", 1)[1].split(" ", 1)[0]
    load_config(None, [f"{key}={tmp_path / 'elsewhere'}"])  # the key named is one the config accepts
