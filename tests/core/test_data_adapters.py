"""Each adapter against a tiny fixture in its source's real on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datafix import (
    STANFORD_NAMES,
    make_manifest_world,
    openimages,
    stanford_csv,
    stanford_devkit,
    write_image,
    write_manifest,
)

import ofgr_core.data  # noqa: F401  (registers adapters)
from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.data.base import ADAPTERS
from ofgr_core.data.dataset import detect_source


def table_of(type_: str, root: Path, **options):
    return ADAPTERS.get(type_)(root=str(root), name=None, **options)


# ------------------------------------------------------------------------------------------ stanford
def test_stanford_devkit_reads_mat_files(tmp_path: Path) -> None:
    root = stanford_devkit(tmp_path / "cars", {1: (2, 1), 99: (2, 1), 196: (1, 1)})
    t = table_of("stanford_cars", root)
    assert len(t) == 8
    assert set(t.labels["fine"]) == {STANFORD_NAMES[0], STANFORD_NAMES[98], STANFORD_NAMES[195]}
    body = dict(zip(t.labels["fine"], t.labels["coarse"], strict=True))
    assert body["AM General Hummer SUV 2000"] == "suv"
    assert body["smart fortwo Convertible 2012"] == "convertible"
    assert sorted(set(t.splits)) == ["test", "train"]
    assert t.meta["class_ids"][STANFORD_NAMES[98]] == 99
    assert t.ids[0].startswith("stanford_cars:cars_train/")
    assert detect_source(root)["type"] == "stanford_cars"


def test_stanford_make_levels_and_crop(tmp_path: Path) -> None:
    root = stanford_devkit(tmp_path / "cars", {8: (1, 0), 9: (1, 0)})  # two Aston Martins
    t = table_of("stanford_cars", root, make="middle")
    assert list(t.labels) == ["fine", "make", "coarse"]
    assert set(t.labels["make"]) == {"convertible/Aston Martin", "coupe/Aston Martin"}
    t = table_of("stanford_cars", root, make="coarse")
    assert set(t.labels["coarse"]) == {"Aston Martin"}
    from PIL import Image

    t = table_of("stanford_cars", root, crop=True, crop_dir=str(tmp_path / "crops"))
    with Image.open(t.paths[0]) as im:
        assert im.size == (29, 23)  # the 1-based inclusive box (2,3)-(30,25)
    assert t.ids[0].startswith("stanford_cars:cars_train/")  # ids still name the original file


@pytest.mark.parametrize("columns", [6, 2])
def test_stanford_csv_layouts(tmp_path: Path, columns: int) -> None:
    root = stanford_csv(tmp_path / "cars", {3: (2, 1), 150: (1, 2)}, columns=columns)
    t = table_of("stanford_cars", root)
    assert len(t) == 6
    # train and test reuse file names; each row must point at its own split's file
    assert all(f"/{s}/" in p for p, s in zip(t.paths, t.splits, strict=True))
    assert set(t.labels["coarse"]) == {"sedan", "coupe"}
    assert detect_source(root)["layout"] == "Stanford Cars (csv)"


def test_stanford_missing_images_named(tmp_path: Path) -> None:
    root = stanford_csv(tmp_path / "cars", {3: (2, 0)}, kaggle_folders=False)
    next((root / "car_data").rglob("00002.jpg")).unlink()
    with pytest.raises(DataError, match="00002.jpg"):
        table_of("stanford_cars", root)


def test_shipped_taxonomy_covers_all_196_names() -> None:
    assert len(STANFORD_NAMES) == 196 and len(set(STANFORD_NAMES)) == 196
    from ofgr_core.data.taxonomy import load_taxonomy, shipped_fine_map

    tax = load_taxonomy("stanford_cars")
    body = shipped_fine_map("stanford_cars")
    assert set(body.values()) <= set(tax.parents[1])
    assert body["Ford Ranger SuperCab 2011"] == "pickup"
    assert body["Ram C/V Cargo Van Minivan 2012"] == "minivan"
    assert body["Ford E-Series Wagon Van 2012"] == "van"


def test_unknown_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'crp'.*crop"):
        table_of("stanford_cars", tmp_path, crp=True)


# ------------------------------------------------------------------------------------------ vehicle10
def test_vehicle10_with_split_folders(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for i, cls in enumerate(("taxi", "bus", "boat")):
            write_image(tmp_path / "v10" / split / cls / f"{i}.jpg", hash((split, cls)) % 10_000)
    t = table_of("vehicle10", tmp_path / "v10")
    assert dict(zip(t.labels["fine"], t.labels["coarse"], strict=True)) == {
        "taxi": "car", "bus": "bus", "boat": "watercraft"}
    assert sorted(set(t.splits)) == ["test", "train"]
    assert detect_source(tmp_path / "v10")["type"] == "vehicle10"


def test_vehicle10_unknown_and_empty_class(tmp_path: Path) -> None:
    write_image(tmp_path / "v10" / "car" / "0.jpg", 1)
    write_image(tmp_path / "v10" / "spaceship" / "0.jpg", 2)
    with pytest.raises(DataError, match="spaceship"):
        table_of("vehicle10", tmp_path / "v10")
    (tmp_path / "v10" / "spaceship" / "0.jpg").unlink()
    with pytest.raises(DataError, match="contain no images: .*spaceship"):
        table_of("vehicle10", tmp_path / "v10")


# ----------------------------------------------------------------------------------------- openimages
def test_openimages_subtree_deepest_label(tmp_path: Path) -> None:
    root = openimages(tmp_path / "oi")
    t = table_of("openimages", root)
    rows = zip(t.ids, t.labels["fine"], t.labels["coarse"], strict=True)
    got = {i.split("/")[-1]: (f, c) for i, f, c in rows}
    assert got == {
        "a1.jpg": ("Car", "Land vehicle"), "a2.jpg": ("Taxi", "Land vehicle"),
        "a3.jpg": ("Taxi", "Land vehicle"),
        "a4.jpg": ("Bicycle", "Land vehicle"),  # Confidence 0 for Car is ignored
        "a5.jpg": ("Boat", "Watercraft"), "a6.jpg": ("Boat", "Watercraft"),
    }  # a7 (car + bicycle) is ambiguous, a8 is outside the subtree, "gone" is not on disk
    assert t.meta["ambiguous"] == 1 and t.meta["not_on_disk"] == 1
    t2 = table_of("openimages", root, coarse_depth=2, ambiguous="first")
    assert dict(zip(t2.labels["fine"], t2.labels["coarse"], strict=True))["Taxi"] == "Car"
    assert detect_source(root)["type"] == "openimages"


# ---------------------------------------------------------------------------------------- imagefolder
def test_imagefolder_nested_levels(tmp_path: Path) -> None:
    for i, (c, f) in enumerate([("car", "sedan"), ("car", "suv"), ("bike", "bmx"), ("bike", "other"),
                                ("car", "other")]):
        write_image(tmp_path / "f" / c / f / f"{i}.png", i)
    t = table_of("imagefolder", tmp_path / "f")
    assert list(t.labels) == ["fine", "coarse"]
    # "other" exists under two parents, so it is qualified to stay a tree
    assert sorted(set(t.labels["fine"])) == ["bike/other", "bmx", "car/other", "sedan", "suv"]
    t3 = table_of("imagefolder", tmp_path / "f", levels=["kind", "fine"])
    assert list(t3.labels) == ["fine", "kind"]


def test_imagefolder_depth_mismatch(tmp_path: Path) -> None:
    write_image(tmp_path / "f" / "a" / "b" / "0.png", 0)
    write_image(tmp_path / "f" / "c" / "1.png", 1)
    with pytest.raises(DataError, match="different folder depths"):
        table_of("imagefolder", tmp_path / "f")


# ------------------------------------------------------------------------------------------- manifest
def test_manifest_columns(tmp_path: Path) -> None:
    make_manifest_world(tmp_path / "m", {"suv": ["x", "y"]}, per_class=2, domains=["day", "night"])
    t = table_of("manifest", tmp_path / "m")
    assert len(t) == 4 and set(t.domains) == {"day", "night"}
    assert t.ids[0] == "manifest:images/suv/x/0.png"
    assert detect_source(tmp_path / "m")["type"] == "manifest"


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "images/../../x.png"])
def test_manifest_path_traversal_refused(tmp_path: Path, bad: str) -> None:
    write_image(tmp_path / "outside.png", 0)
    write_manifest(tmp_path / "m", [{"path": bad, "fine": "a", "coarse": "b"}])
    with pytest.raises(DataError, match="refused"):
        table_of("manifest", tmp_path / "m")


def test_manifest_missing_file_named_or_skipped(tmp_path: Path) -> None:
    write_image(tmp_path / "m" / "a.png", 0)
    write_manifest(tmp_path / "m", [{"path": "a.png", "fine": "a", "coarse": "c"},
                                    {"path": "nope.png", "fine": "a", "coarse": "c"}])
    with pytest.raises(DataError, match="nope.png"):
        table_of("manifest", tmp_path / "m")
    t = table_of("manifest", tmp_path / "m", missing="skip")
    assert len(t) == 1 and t.meta["missing_files"] == ["nope.png"]


def test_openimages_columnar_reader_equals_csv_reference(tmp_path: Path) -> None:
    from ofgr_core.data.openimages import read_image_labels, read_image_labels_csv

    rng = np.random.default_rng(0)
    labels = [f"/m/{i:05x}" for i in range(40)]
    lines = ["\ufeffImageID,Source,LabelName,Confidence"]  # a BOM, as some downloads have
    for _ in range(3000):
        conf = rng.choice(["1", "0", "", "0.7", "0.4"])
        source = rng.choice(["verification", '"crowd,src"'])  # a quoted comma must not shift the columns
        lines.append(f"{rng.integers(0, 800):016x},{source},{rng.choice(labels)},{conf}")
    train = tmp_path / "oidv6-train-annotations-human-imagelabels.csv"
    val = tmp_path / "validation-annotations-human-imagelabels.csv"
    train.write_text("\n".join(lines[:2000]) + "\n", encoding="utf-8")
    val.write_text("\n".join([lines[0][1:], *lines[2000:]]) + "\n", encoding="utf-8")
    wanted = set(labels[:15])
    for conf in (0.5, 0.0):
        fast = read_image_labels([train, val], wanted, conf)
        slow = read_image_labels_csv([train, val], wanted, conf)
        assert fast == slow and len(fast[0]) > 100
        assert set(fast[1].values()) == {"train", "val"}


def test_openimages_reader_names_missing_column(tmp_path: Path) -> None:
    from ofgr_core.data.openimages import read_image_labels

    bad = tmp_path / "train-imagelabels.csv"
    bad.write_text("ImageID,Source,Label,Confidence\nx,y,/m/1,1\n")
    with pytest.raises(DataError, match=r"train-imagelabels.csv lacks columns \['LabelName'\]"):
        read_image_labels([bad], {"/m/1"}, 0.5)


def test_stanford_csv_header_names_columns(tmp_path: Path) -> None:
    """A header row is read by name: columns in any order, a box only when all four corners are named."""
    from ofgr_core.data.stanford_cars import _read_anno_csv

    boxed = tmp_path / "boxed.csv"
    boxed.write_text("class,bbox_y1,Image,x1,bbox_x2,y2\n7,3,a.jpg,2,30,25\n9,1,b.jpg,0,10,11\n")
    assert _read_anno_csv(boxed, "train") == [("a.jpg", 7, (2, 3, 30, 25)), ("b.jpg", 9, (0, 1, 10, 11))]
    no_y2 = tmp_path / "no_y2.csv"
    no_y2.write_text("fname,x1,y1,x2,label\na.jpg,2,3,30,7\n")
    assert _read_anno_csv(no_y2, "test") == [("a.jpg", 7, None)]
    bad = tmp_path / "bad.csv"
    bad.write_text("image,x1,y1,x2,y2,class\na.jpg,2,3,x,25,7\n")
    with pytest.raises(DataError, match="row 1"):
        _read_anno_csv(bad, "train")
