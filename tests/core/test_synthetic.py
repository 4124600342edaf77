"""The built-in synthetic world: determinism, class structure, captions, reuse, adapter, option checks."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.data import synthetic
from ofgr_core.data.base import ADAPTERS, DatasetTable

SMALL = dict(num_coarse=6, fine_per_coarse=8, images_per_class=3, image_size=32)


def _digest(root: Path) -> dict[str, str]:
    """sha256 of the manifest and every image, keyed by relative path."""
    files = [root / synthetic.MANIFEST, *sorted((root / synthetic.IMAGES).rglob("*.png"))]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _adapter(root: str | None, name: str | None = None, **options: object) -> DatasetTable:
    return ADAPTERS.get("synthetic")(root=root, name=name, **options)


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / synthetic.MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("synth") / "w", seed=0, **SMALL)


def test_same_seed_gives_identical_bytes(world: Path, tmp_path: Path) -> None:
    again = synthetic.generate(tmp_path / "again", seed=0, **SMALL)
    assert _digest(again) == _digest(world)


def test_worker_count_does_not_change_output(tmp_path: Path) -> None:
    opts = dict(num_coarse=2, fine_per_coarse=2, images_per_class=4, image_size=32)
    serial = synthetic.generate(tmp_path / "serial", seed=3, workers=1, **opts)
    pooled = synthetic.generate(tmp_path / "pooled", seed=3, workers=2, **opts)
    assert _digest(serial) == _digest(pooled)


def test_different_seed_gives_different_world(world: Path, tmp_path: Path) -> None:
    other = synthetic.generate(tmp_path / "other", seed=1, **SMALL)
    assert (other / synthetic.MANIFEST).read_bytes() != (world / synthetic.MANIFEST).read_bytes()
    a = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (world / "images").rglob("*.png")}
    b = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (other / "images").rglob("*.png")}
    assert not a & b
    fine_params = lambda seed: [c["params"] for c in synthetic.build_classes(seed, 6, 8)]  # noqa: E731
    assert fine_params(0) != fine_params(1)


def test_class_structure(world: Path) -> None:
    rows = _rows(world)
    assert len(rows) == 6 * 8 * 3
    assert list(rows[0]) == list(synthetic.MANIFEST_COLUMNS)
    coarse_of: dict[str, set[str]] = {}
    for r in rows:
        coarse_of.setdefault(r["fine"], set()).add(r["coarse"])
        assert (world / r["path"]).is_file()
        assert r["path"].startswith(f"images/{r['coarse']}/")
    assert all(len(c) == 1 for c in coarse_of.values()), "every fine class has exactly one coarse parent"
    per_coarse = Counter(next(iter(c)) for c in coarse_of.values())
    assert len(per_coarse) >= 6 and min(per_coarse.values()) >= 8
    assert set(Counter(r["fine"] for r in rows).values()) == {3}
    assert {"sedan", "hatchback", "suv", "pickup", "van", "bus"} <= set(per_coarse)
    with Image.open(world / rows[0]["path"]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def test_siblings_differ_in_structure() -> None:
    classes = synthetic.build_classes(0, 8, 8)
    assert len({c["fine"] for c in classes}) == len({c["slug"] for c in classes}) == 64
    for ci in range(8):
        params = [c["params"] for c in classes if c["coarse_index"] == ci]
        sigs = [synthetic._signature(p) for p in params]
        assert len(set(sigs)) == len(sigs), "no two siblings share all discrete details"


def test_captions_mention_colour_and_body_type(world: Path) -> None:
    rows = _rows(world)
    body_word = {"suv": "SUV"}
    for r in rows:
        assert r["color"] in synthetic.PALETTE
        assert r["domain"] in synthetic.DOMAINS
        assert f" {r['color']} {body_word.get(r['coarse'], r['coarse'])}" in r["caption"]
        assert ("facing left" in r["caption"]) or ("facing right" in r["caption"])
        if r["accessory"] != "none":
            assert r["accessory"] in r["caption"]
    assert len({r["domain"] for r in rows}) == len(synthetic.DOMAINS)
    assert len({r["color"] for r in rows}) >= 6


def test_reuse_does_not_regenerate(world: Path, tmp_path: Path) -> None:
    opts = dict(num_coarse=1, fine_per_coarse=2, images_per_class=2, image_size=16)
    root = synthetic.generate(tmp_path / "w", seed=0, **opts)
    probe = root / "images" / "sedan"
    first = sorted(probe.rglob("*.png"))[0]
    stamp = first.stat().st_mtime_ns
    calls: list[tuple[int, int]] = []
    synthetic.generate(root, seed=0, progress=lambda d, t: calls.append((d, t)), **opts)
    assert first.stat().st_mtime_ns == stamp
    assert calls == [(4, 4)]
    # Different options: the folder is regenerated in place.
    synthetic.generate(root, seed=0, **{**opts, "images_per_class": 3})
    assert len(_rows(root)) == 6
    assert json.loads((root / synthetic.SPEC_FILE).read_text())["params"]["images_per_class"] == 3


def test_missing_manifest_or_file_means_incomplete(tmp_path: Path) -> None:
    opts = dict(num_coarse=1, fine_per_coarse=1, images_per_class=2, image_size=16)
    root = synthetic.generate(tmp_path / "w", seed=0, **opts)
    victim = root / _rows(root)[1]["path"]
    victim.unlink()
    synthetic.generate(root, seed=0, **opts)
    assert victim.is_file()
    (root / synthetic.MANIFEST).unlink()
    synthetic.generate(root, seed=0, **opts)
    assert len(_rows(root)) == 2


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a synthetic world"):
        synthetic.generate(tmp_path, seed=0, num_coarse=1, fine_per_coarse=1, images_per_class=1)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_adapter_returns_consistent_table(world: Path) -> None:
    table = _adapter(str(world), name="toy", seed=0, **SMALL)
    rows = _rows(world)
    assert len(table) == len(rows)
    assert table.level_names == ["fine", "coarse"]
    assert len(set(table.ids)) == len(table)
    assert table.ids[0] == f"toy:{rows[0]['path']}"
    assert set(table.sources) == {"toy"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table.paths)
    assert table.labels["fine"] == [r["fine"] for r in rows]
    assert table.labels["coarse"] == [r["coarse"] for r in rows]
    assert table.domains == [r["domain"] for r in rows] and table.captions == [r["caption"] for r in rows]
    assert table.meta["options"]["image_size"] == 32


def test_adapter_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    opts = dict(seed=0, num_coarse=1, fine_per_coarse=2, images_per_class=1, image_size=16)
    table = _adapter(None, **opts)
    assert set(table.sources) == {"synthetic"} and table.ids[0].startswith("synthetic:images/")
    roots = list((tmp_path / "data").iterdir())
    assert len(roots) == 1 and roots[0].name.startswith("synthetic-")
    assert synthetic.default_root(synthetic.SynthOptions(**opts)) == Path("data") / roots[0].name


@pytest.mark.parametrize(
    ("options", "needle"),
    [({"colour": 1}, "colour"), ({"num_coarse": 0}, "num_coarse"), ({"image_size": "big"}, "image_size")],
)
def test_bad_options_name_the_option_and_the_valid_ones(tmp_path: Path, options: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _adapter(str(tmp_path / "w"), **options)
    msg = str(exc.value)
    assert needle in msg
    assert "images_per_class" in msg and "fine_per_coarse" in msg
    assert not (tmp_path / "w").exists()
