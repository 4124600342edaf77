"""Caches that verify themselves: the pixel cache, the image-check memo and the feature cache of frozen towers,
damaged every way hypothesis can think of, never answer with garbage; a damaged index is rebuilt with one
warning line (issue 21, "Corrupt caches give garbage that still finishes").

The property is the same for the three: after any corruption, what the cache returns equals what recomputing
from the image files gives.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from test_fuzz import FUZZ, TRIED, _report
from typer.testing import CliRunner

from ofgr_core.data import dataset as ds
from ofgr_core.data.cache import ImageCache, decode_resized, stored_shape
from ofgr_core.embedding.features import FeatureStore, extract_features
from ofgr_core.models.factory import create_model_and_transforms
from ofgr_core.models.timm.config import TimmModelConfig
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


def _images(root: Path, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"img{i}.png"
        w, h = 20 + 3 * i, 30 - i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


# how a file is damaged: every kind keeps the file's name (a cache never notices a missing file alone)
DAMAGE = st.sampled_from(["random", "zeros", "truncate", "extend", "flip", "text", "object_npy", "empty"])


def _damage(path: Path, how: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = path.read_bytes() if path.is_file() else b""
    if how == "random":
        data = rng.integers(0, 256, max(1, len(raw)), dtype=np.uint8).tobytes()
    elif how == "zeros":
        data = bytes(len(raw))
    elif how == "truncate":
        data = raw[: len(raw) // 2]
    elif how == "extend":
        data = raw + rng.integers(0, 256, 13, dtype=np.uint8).tobytes()
    elif how == "flip":
        b = bytearray(raw or b"\0")
        for i in rng.integers(0, len(b), 3):
            b[int(i)] ^= 0xFF
        data = bytes(b)
    elif how == "text":
        data = b"hello\n" * 10
    elif how == "object_npy":
        with tempfile.TemporaryDirectory() as d:
            np.save(Path(d) / "o.npy", np.array([{"a": 1}, "x"], dtype=object), allow_pickle=True)
            data = (Path(d) / "o.npy").read_bytes()
    else:
        data = b""
    path.write_bytes(data)


# ------------------------------------------------------------------------------------------- pixel cache
@pytest.fixture(scope="module")
def pixel_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[tuple[int, int]], list[str]]:
    paths = _images(tmp_path_factory.mktemp("px"), 6)
    checks = ds.check_images(paths, workers=1)
    return paths, [(int(checks.widths[i]), int(checks.heights[i])) for i in range(6)], checks.hexdigests()


def _truth(path: str, size: tuple[int, int], side: int) -> np.ndarray:
    h, w = stored_shape(size[0], size[1], side)
    return np.asarray(decode_resized(path, h, w))


@FUZZ
@given(st.sampled_from([".idx.npy", ".u8", ".ok", ".crc", ".idx.npy.header.json"]), DAMAGE, st.integers(0, 99))
def test_a_damaged_pixel_cache_never_returns_garbage(pixel_world, suffix: str, how: str, seed: int) -> None:  # noqa: ANN001
    TRIED["pixel cache damage"] += 1
    paths, sizes, hashes = pixel_world
    with tempfile.TemporaryDirectory() as d:
        cache = ImageCache(paths, sizes, hashes, d, image_size=16)
        cache.warm(workers=1)
        target = next(Path(d).glob(f"*{suffix}"))
        _damage(target, how, seed)
        again = ImageCache(paths, sizes, hashes, d, image_size=16)
        for p, size in zip(paths, sizes, strict=True):
            assert np.array_equal(np.asarray(again.get(p)), _truth(p, size, again.side)), (suffix, how)
        if suffix == ".idx.npy.header.json" or (suffix == ".idx.npy" and how != "extend"):  # npy ignores a tail
            assert again.rebuilt is not None and "cache rebuilt" in again.rebuilt and "\n" not in again.rebuilt


def test_issue_cases_pixel_cache(pixel_world, tmp_path: Path) -> None:  # noqa: ANN001
    """The probe's cases: an index of the wrong shape, of zeros, or an object array; pixels overwritten."""
    paths, sizes, hashes = pixel_world
    for case in ("shape", "zeros", "object", "pixels"):
        d = tmp_path / case
        ImageCache(paths, sizes, hashes, d, image_size=16).warm(workers=1)
        idx = next(d.glob("*.idx.npy"))
        a = np.load(idx)
        if case == "shape":
            np.save(idx, np.zeros((len(a), 2), a.dtype))
        elif case == "zeros":
            np.save(idx, np.zeros_like(a))
        elif case == "object":
            np.save(idx, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        else:
            u8 = next(d.glob("*.u8"))
            u8.write_bytes(bytes([7]) * u8.stat().st_size)
        cache = ImageCache(paths, sizes, hashes, d, image_size=16)
        assert cache.rebuilt is not None, case
        got = [np.asarray(cache.get(p)) for p in paths]
        assert all(np.array_equal(g, _truth(p, s, cache.side)) for g, p, s in zip(got, paths, sizes, strict=True))
        assert len({g.tobytes() for g in got}) == len(paths), case  # never every image identical


# ---------------------------------------------------------------------------------------- image checks
@FUZZ
@given(st.sampled_from([ds.MEMO_FILE, ds.MEMO_FILE + ".header.json", ds.MEMO_REASONS]), DAMAGE,
       st.integers(0, 99))
def test_a_damaged_check_memo_never_answers_for_an_image(pixel_world, suffix: str, how: str, seed: int) -> None:  # noqa: ANN001
    TRIED["image-check memo damage"] += 1
    paths, _, _ = pixel_world
    with tempfile.TemporaryDirectory() as d:
        bad = Path(d) / "broken.png"
        bad.write_bytes(b"not an image")
        all_paths = [*paths, str(bad)]
        ds.check_images(all_paths, workers=1, memo_dir=Path(d))
        _damage(Path(d) / suffix, how, seed)
        again = ds.check_images(all_paths, workers=1, memo_dir=Path(d))
        for i, p in enumerate(all_paths):
            assert again[i] == ds.inspect_image(p), (suffix, how)
        assert all("\n" not in n for n in again.notes)


def test_issue_case_memo_overwritten(pixel_world, tmp_path: Path) -> None:  # noqa: ANN001
    """``image_checks.*`` overwritten (sizes of 2^20, zeroed fields): rebuilt with one line, every image
    checked again."""
    paths, _, _ = pixel_world
    ds.check_images(paths, workers=1, memo_dir=tmp_path)
    raw = bytearray((tmp_path / ds.MEMO_FILE).read_bytes())
    size = ds.MEMO_DTYPE.itemsize
    for i in range(0, len(raw), size):
        raw[i + 40 : i + 48] = (1 << 20).to_bytes(4, "little") * 2  # width and height of a huge image
    (tmp_path / ds.MEMO_FILE).write_bytes(bytes(raw))
    again = ds.check_images(paths, workers=1, memo_dir=tmp_path)
    assert [again[i] for i in range(len(paths))] == [ds.inspect_image(p) for p in paths]
    assert len(again.notes) == 1 and "image_checks.bin" in again.notes[0] and "checksum" in again.notes[0]


@pytest.mark.parametrize("damage", ["invalid utf-8", "another letter", "no checksum (an older memo)"])
def test_a_damaged_reason_line_is_never_the_answer(pixel_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                   damage: str) -> None:
    """A reasons line whose bytes changed (a flip inside the reason's text: the case the fuzz test above once hit,
    a flip to another letter that still decodes, or a line without its checksum) is not read as the reason: that
    file alone is checked again, and its fresh reason is what the memo answers from then on."""
    paths, _, _ = pixel_world
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    all_paths = [*paths, str(bad)]
    memo = tmp_path / "memo"
    truth = [ds.inspect_image(p) for p in all_paths]
    ds.check_images(all_paths, workers=1, memo_dir=memo)
    reasons = memo / ds.MEMO_REASONS
    raw = bytearray(reasons.read_bytes())
    at = raw.index(b"cannot")
    if damage == "invalid utf-8":
        raw[at + 1] ^= 0xFF
    elif damage == "another letter":
        raw[at] = ord("C")  # "Cannot ...": valid JSON, valid UTF-8, not what the image gives
    else:
        raw = bytearray(b"".join(line.rpartition(b"\t")[0] + b"\n" for line in raw.splitlines()))
    reasons.write_bytes(bytes(raw))
    inspected: list[str] = []
    real = ds._inspect_chunk

    def counted(chunk: list[str]) -> Any:
        inspected.extend(chunk)
        return real(chunk)

    monkeypatch.setattr(ds, "_inspect_chunk", counted)
    again = ds.check_images(all_paths, workers=1, memo_dir=memo)
    assert [again[i] for i in range(len(all_paths))] == truth, damage
    assert inspected == [str(bad)], damage  # the damaged line's file, and only it, was checked again
    inspected.clear()
    third = ds.check_images(all_paths, workers=1, memo_dir=memo)
    assert [third[i] for i in range(len(all_paths))] == truth and inspected == [], damage


# ---------------------------------------------------------------------------------------- feature cache
@pytest.fixture(scope="module")
def tower() -> Any:
    torch.manual_seed(0)
    model, _, tf = create_model_and_transforms(TimmModelConfig(name="test_resnet", freeze="all", head="none"),
                                               image_size=32)
    return model.eval(), tf


@pytest.fixture(scope="module")
def feature_truth(tower: Any, pixel_world: Any) -> np.ndarray:
    model, tf = tower
    return extract_features(model, pixel_world[0], tf, "cpu")[0]


@FUZZ
@given(st.sampled_from(["features.f32", "hashes.txt", "rows.crc", "hashes.txt.header.json", "key.json"]), DAMAGE,
       st.integers(0, 99))
def test_a_damaged_feature_cache_never_returns_garbage(tower, pixel_world, feature_truth, file: str, how: str,  # noqa: ANN001
                                                       seed: int) -> None:
    TRIED["feature cache damage"] += 1
    model, tf = tower
    paths = pixel_world[0]
    with tempfile.TemporaryDirectory() as d:
        store = FeatureStore(d, model.feature_key(), model.feature_dim)
        extract_features(model, paths, tf, "cpu", store=store)
        _damage(store.folder / file, how, seed)
        again = FeatureStore(d, model.feature_key(), model.feature_dim)
        feats, _ = extract_features(model, paths, tf, "cpu", store=again)
        np.testing.assert_allclose(feats, feature_truth, rtol=1e-5, atol=1e-6)
        assert all("\n" not in n for n in again.notes)


def test_issue_cases_feature_cache(tower, pixel_world, feature_truth, tmp_path: Path) -> None:  # noqa: ANN001
    """Features overwritten (random, constant), hashes reordered or garbage: recomputed, with a warning."""
    model, tf = tower
    paths = pixel_world[0]
    for case in ("random", "constant", "reordered", "garbage"):
        root = tmp_path / case
        store = FeatureStore(root, model.feature_key(), model.feature_dim)
        extract_features(model, paths, tf, "cpu", store=store)
        f, h = store.folder / "features.f32", store.folder / "hashes.txt"
        if case == "random":
            f.write_bytes(os.urandom(f.stat().st_size))
        elif case == "constant":
            f.write_bytes(np.ones(f.stat().st_size // 4, np.float32).tobytes())
        elif case == "reordered":
            h.write_text("\n".join(h.read_text().splitlines()[::-1]) + "\n")
        else:
            h.write_bytes(b"\xff\xfe garbage\x00\n" * 50)
        again = FeatureStore(root, model.feature_key(), model.feature_dim)
        feats, stats = extract_features(model, paths, tf, "cpu", store=again)
        np.testing.assert_allclose(feats, feature_truth, rtol=1e-5, atol=1e-6)
        assert stats["computed"] == len(paths) and len(again.notes) == 1 and "cache rebuilt" in again.notes[0]


def test_a_cold_cache_leaves_the_rng_where_a_warm_one_does(tower, pixel_world, tmp_path: Path) -> None:  # noqa: ANN001
    """Computing features must not draw from torch's generator: a frozen-tower run trained a different head
    on its first (cold cache) run than on every later one."""
    model, tf = tower
    draws = []
    for _ in range(2):  # cold, then warm
        torch.manual_seed(0)
        extract_features(model, pixel_world[0], tf, "cpu", store=FeatureStore(tmp_path, model.feature_key(),
                                                                              model.feature_dim))
        draws.append(torch.rand(4))
    assert torch.equal(draws[0], draws[1])


def test_a_corrupt_header_is_one_line(tmp_path: Path) -> None:
    from ofgr_core.common.integrity import CacheCorrupt, header_path, read_header

    p = tmp_path / "x.bin"
    header_path(p).write_text("[" * 100_000)
    with pytest.raises(CacheCorrupt) as e:
        read_header(p)
    assert "\n" not in str(e.value) and "x.bin.header.json" in str(e.value)


def test_a_run_on_a_damaged_pixel_cache_warns_and_matches_a_clean_run(tmp_path: Path, tiny_data_root: Path) -> None:
    """End to end through ``ofgr run``: the probe's "index of the wrong shape" gives the clean run's
    embeddings and one warning line naming the cache."""
    cache = tmp_path / "cache"

    def run(name: str) -> Any:
        args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / name), "-q"]
        for o in [*tiny_overrides(tiny_data_root), "device=cpu", f"data.cache_dir={cache}"]:
            args += ["--set", o]
        return runner.invoke(app_(), args)

    assert run("a").exit_code == 0
    idx = next(cache.glob("*.idx.npy"))
    np.save(idx, np.zeros((len(np.load(idx)), 2), np.int64))
    r = run("b")
    assert r.exit_code == 0, r.output
    (a,), (b,) = list((tmp_path / "a").iterdir()), list((tmp_path / "b").iterdir())
    assert np.array_equal(np.load(a / "embeddings" / "unseen.npy"), np.load(b / "embeddings" / "unseen.npy"))
    assert any("cache rebuilt" in line and ".idx.npy" in line for line in
               (b / "events.jsonl").read_text().splitlines())


def app_() -> Any:
    from ofgr_core.cli import app

    return app


def test_report_cache_damage() -> None:
    for name in ("pixel cache damage", "image-check memo damage", "feature cache damage"):
        _report(name)
