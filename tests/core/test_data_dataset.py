"""load_dataset: corrupt files, duplicates and leakage, the check memo, the pixel cache, ImageDataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from datafix import corrupt, make_manifest_world, write_image

from ofgr_core.common.errors import DataError
from ofgr_core.config import DataConfig, SplitConfig
from ofgr_core.data.dataset import class_size_histogram, load_dataset
from ofgr_core.data.splits import make_split


def manifest_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(sources=[{"type": "manifest", "root": str(root)}], **{"cache": False, **kw})


def test_one_percent_corrupt_images_are_skipped_and_listed(tmp_path: Path) -> None:
    coarse = {f"c{i}": [f"c{i}f{j}" for j in range(4)] for i in range(5)}
    make_manifest_world(tmp_path / "m", coarse, per_class=10, ext="jpg")  # 200 images
    corrupt(tmp_path / "m" / "images" / "c0" / "c0f0" / "3.jpg", "truncate")
    corrupt(tmp_path / "m" / "images" / "c4" / "c4f3" / "1.jpg", "text")
    p = load_dataset(manifest_cfg(tmp_path / "m"))
    assert len(p.table) == 198 and p.report["n_images_found"] == 200
    bad = {Path(u["path"]).relative_to(tmp_path / "m").as_posix() for u in p.report["unreadable"]}
    assert set(bad) == {"images/c0/c0f0/3.jpg", "images/c4/c4f3/1.jpg"}
    assert "2 of 200 images are unreadable" in " ".join(p.report["warnings"])


def test_duplicates_removed_within_and_across_sources(tmp_path: Path) -> None:
    make_manifest_world(tmp_path / "a", {"x": ["a1", "a2"]}, per_class=3, seed=1)
    make_manifest_world(tmp_path / "b", {"x": ["a1", "b2"]}, per_class=3, seed=2)
    # same class copied across sources: one copy kept
    shutil.copy(tmp_path / "a/images/x/a1/0.png", tmp_path / "b/images/x/a1/0.png")
    # one image under two different classes (would straddle seen/unseen): both copies removed
    shutil.copy(tmp_path / "a/images/x/a2/0.png", tmp_path / "a/images/x/a1/1.png")
    cfg = DataConfig(cache=False, sources=[
        {"type": "manifest", "root": str(tmp_path / "a"), "name": "a"},
        {"type": "manifest", "root": str(tmp_path / "b"), "name": "b"},
    ])
    dup = load_dataset(cfg).report["duplicates"]
    assert dup["groups"] == 2 and dup["removed"] == 3 and dup["cross_source"] == 1
    assert dup["same_label"][0]["ids"] == ["a:images/x/a1/0.png", "b:images/x/a1/0.png"]
    assert len(dup["conflicting_labels"]) == 1 and dup["conflicting_labels"][0]["fine"] == ["a1", "a2"]
    assert "a:images/x/a2/0.png" in dup["removed_ids"]

    kept = load_dataset(cfg.model_copy(update={"dedup": False}))
    assert len(kept.table) == 12 and kept.report["duplicates"]["removed"] == 0


def test_split_removes_hash_leaks_when_dedup_is_off(tmp_path: Path) -> None:
    coarse = {"c": [f"f{j}" for j in range(4)]}
    make_manifest_world(tmp_path / "m", coarse, per_class=6)
    # f0's first image is also filed under f3: whichever side f3 lands on, one copy leaks
    shutil.copy(tmp_path / "m/images/c/f0/0.png", tmp_path / "m/images/c/f3/0.png")
    p = load_dataset(manifest_cfg(tmp_path / "m", dedup=False))
    cfg = SplitConfig(protocol="file", unseen=["f3"], val_fraction=0)
    split = make_split(p.table, p.hierarchy, p.labels, cfg, 0)
    assert split.report["leakage_removed"] == {"train": ["manifest:images/c/f0/0.png"]}
    assert p.report["split"] is split.report  # reachable for the run's data_report.json


def test_check_memo_and_cache(tmp_path: Path) -> None:
    make_manifest_world(tmp_path / "m", {"c": ["a", "b"]}, per_class=3)
    write_image(tmp_path / "m/images/c/a/0.png", 99, size=(300, 100))  # wide: aspect kept in the cache
    cfg = manifest_cfg(tmp_path / "m", cache=True, image_size=32, cache_dir=str(tmp_path / "cache"))
    p = load_dataset(cfg)
    assert (tmp_path / "cache" / "image_checks.bin").is_file()
    from ofgr_core.data.loader import ImageDataset

    ds = ImageDataset(p.table.paths, p.labels, lambda im: np.asarray(im))
    assert ds.cache is not None and ds.cache.side == 37
    i = p.table.paths.index(str(tmp_path / "m/images/c/a/0.png"))
    first = ds[i][0]
    assert first.shape == (37, 111, 3)  # short side 37, aspect 3:1
    assert ds.cache.filled == 1
    np.testing.assert_array_equal(ds[i][0], first)  # second read comes from the memory map
    plain = ImageDataset(p.table.paths, p.labels, lambda im: im.size, cache=None)
    assert plain[i][0] == (300, 100)
    # a re-load reuses the same cache file (same key) and the memoised checks
    p2 = load_dataset(cfg)
    assert p2.report["cache"]["path"] == p.report["cache"]["path"]


def test_empty_dataset_and_duplicate_source_names(tmp_path: Path) -> None:
    make_manifest_world(tmp_path / "m", {"c": ["a", "b"]}, per_class=2)
    src = {"type": "manifest", "root": str(tmp_path / "m")}
    with pytest.raises(DataError, match="distinct"):
        load_dataset(DataConfig(cache=False, sources=[src, src]))
    for f in (tmp_path / "m" / "images").rglob("*.png"):
        corrupt(f, "text")
    with pytest.raises(DataError, match="no usable images"):
        load_dataset(manifest_cfg(tmp_path / "m"))


def test_class_size_histogram() -> None:
    h = class_size_histogram([1, 1, 3, 7, 120])
    assert h["1"] == 2 and h["2-4"] == 1 and h["5-9"] == 1 and h["100-199"] == 1
