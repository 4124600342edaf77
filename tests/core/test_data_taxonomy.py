"""Taxonomy files: normalisation, synonyms, explicit maps, merging sources, unmapped labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from datafix import make_manifest_world, stanford_devkit, write_image

from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.config import DataConfig
from ofgr_core.data.dataset import load_dataset
from ofgr_core.data.taxonomy import load_taxonomy, normalize, parse_taxonomy


def test_normalize() -> None:
    assert normalize("Pick-up  Truck") == normalize("pick_up truck") == "pick up truck"
    assert normalize("PICK UP TRUCK") == "pick up truck"
    assert normalize(" Sedan. ") == "sedan"


def test_synonyms_and_levels() -> None:
    tax = load_taxonomy("vehicles")
    assert tax.levels == ("fine", "coarse", "super")
    assert tax.place("s", {"fine": "Pick-up Truck"}) == {"fine": "pickup", "coarse": "pickup", "super": "car"}
    assert tax.place("s", {"fine": "Dodge Dakota Club Cab 2007", "coarse": "Club Cab"})["coarse"] == "pickup"
    assert tax.place("s", {"fine": "Motorbike"})["super"] == "two-wheeler"
    # a label that names only a top-level node has no coarse node: unmapped
    assert tax.place("s", {"fine": "Watercraft"}) is None
    assert tax.place("s", {"fine": "xyz", "coarse": "unknown"}) is None


def test_explicit_maps_win() -> None:
    tax = parse_taxonomy({
        "name": "t", "version": 2, "levels": ["fine", "coarse"], "tree": ["car", "truck"],
        "fine": {"Pickup": "truck"}, "sources": {"mine": {"lorry": "truck"}},
    })
    assert tax.place("x", {"fine": "pickup", "coarse": "car"})["coarse"] == "truck"
    assert tax.place("mine", {"fine": "big one", "coarse": "Lorry"})["coarse"] == "truck"
    assert tax.place("other", {"fine": "big one", "coarse": "Lorry"}) is None


@pytest.mark.parametrize("bad,match", [
    ({"levels": ["coarse", "fine"]}, "levels"),
    ({"colour": 1}, "unknown key"),
    ({"fine": {"a": "nowhere"}}, "not a node"),
    ({"synonyms": {"car": ["auto"], "truck": ["auto"]}}, "both"),
])
def test_bad_taxonomy_files(bad: dict, match: str) -> None:
    spec = {"name": "t", "version": 1, "levels": ["fine", "coarse"], "tree": ["car", "truck"], **bad}
    with pytest.raises(ConfigError, match=match):
        parse_taxonomy(spec)


def test_merge_stanford_and_manifest_onto_unified(tmp_path: Path) -> None:
    stanford_devkit(tmp_path / "cars", {1: (2, 0), 2: (2, 0)})
    make_manifest_world(tmp_path / "m", {"Pick-up Truck": ["Ranger X"], "Motorbike": ["Vespa"]}, per_class=2,
                        seed=3)
    cfg = DataConfig(taxonomy="vehicles", cache=False, sources=[
        {"type": "stanford_cars", "root": str(tmp_path / "cars")},
        {"type": "manifest", "root": str(tmp_path / "m"), "name": "folder"},
    ])
    p = load_dataset(cfg)
    assert p.hierarchy.level_names == ("fine", "coarse", "super")
    rows = {f: (c, s) for f, c, s in zip(*p.table.labels.values(), strict=True)}
    assert rows["AM General Hummer SUV 2000"] == ("suv", "car")
    assert rows["Acura RL Sedan 2012"] == ("sedan", "car")
    assert rows["Ranger X"] == ("pickup", "car")
    assert rows["Vespa"] == ("motorcycle", "two-wheeler")
    assert set(p.table.sources) == {"stanford_cars", "folder"}
    assert p.report["taxonomy"]["name"] == "vehicles"


def test_unmapped_labels_error_or_drop(tmp_path: Path) -> None:
    make_manifest_world(tmp_path / "m", {"sedan": ["a", "b"], "spaceship": ["c"]}, per_class=2)
    src = [{"type": "manifest", "root": str(tmp_path / "m")}]
    with pytest.raises(DataError, match=r"not in taxonomy 'vehicles'.*spaceship.*data.unmapped: drop"):
        load_dataset(DataConfig(taxonomy="vehicles", sources=src, cache=False))
    p = load_dataset(DataConfig(taxonomy="vehicles", unmapped="drop", sources=src, cache=False))
    assert len(p.table) == 4
    assert p.report["unmapped"]["images"] == 2
    assert p.report["unmapped"]["labels"][0]["label"] == "c / spaceship"


def test_taxonomy_file_from_path(tmp_path: Path) -> None:
    path = tmp_path / "tax.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "version": 3, "levels": ["fine", "coarse"],
                                    "tree": ["round", "square"], "synonyms": {"round": ["circle"]}}))
    for i, c in enumerate(["Circle", "square"]):
        for k in range(2):
            write_image(tmp_path / "f" / c / f"{c}{k}" / "0.png", 10 * i + k)
    p = load_dataset(DataConfig(taxonomy=str(path), cache=False,
                                sources=[{"type": "imagefolder", "root": str(tmp_path / "f")}]))
    assert p.hierarchy.classes[1] == ("round", "square")
