"""Tiny on-disk fixtures in each source's real format, written by the data-layer tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ofgr_core.data.taxonomy import shipped_fine_map

STANFORD_NAMES = list(shipped_fine_map("stanford_cars"))  # the 196 class names in class-id order


def write_image(path: Path, seed: int, size: tuple[int, int] = (24, 16), fmt: str | None = None) -> Path:
    """A small image with distinct content per seed (so content hashes differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def corrupt(path: Path, how: str = "truncate") -> None:
    """Damage an image file: cut it short, or replace it with text."""
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("this is not an image")


def write_manifest(root: Path, rows: list[dict[str, str]], name: str = "manifest.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with (root / name).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return root / name


def make_manifest_world(root: Path, coarse: dict[str, list[str]], per_class: int = 4, *,
                        domains: list[str] | None = None, seed: int = 0, ext: str = "png") -> Path:
    """images/<coarse>/<fine>/<k>.png plus manifest.csv (path, fine, coarse[, domain])."""
    rows, k = [], seed * 100_000
    for c, fines in coarse.items():
        for f in fines:
            for i in range(per_class):
                rel = f"images/{c}/{f}/{i}.{ext}"
                write_image(root / rel, k)
                k += 1
                row = {"path": rel, "fine": f, "coarse": c}
                if domains:
                    row["domain"] = domains[i % len(domains)]
                rows.append(row)
    return write_manifest(root, rows)


def stanford_devkit(root: Path, per_class: dict[int, tuple[int, int]]) -> Path:
    """Stanford Cars devkit layout; ``per_class`` maps class id -> (n train, n test) images."""
    from scipy.io import savemat

    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array(STANFORD_NAMES, dtype=object)[None]})
    k = 0
    for split, col in (("train", 0), ("test", 1)):
        (root / f"cars_{split}").mkdir(exist_ok=True)
        recs = []
        for cid, counts in per_class.items():
            for _ in range(counts[col]):
                k += 1
                fname = f"{k:05d}.jpg"
                write_image(root / f"cars_{split}" / fname, 1000 + k, (40, 30))
                recs.append((2, 3, 30, 25, cid, fname))
        arr = np.zeros((1, len(recs)), dtype=[(f, "O") for f in fields])
        for j, r in enumerate(recs):
            for f, v in zip(fields, r, strict=True):
                arr[0, j][f] = v
        name = "cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
        savemat(root / "devkit" / name, {"annotations": arr})
    return root


def stanford_csv(root: Path, per_class: dict[int, tuple[int, int]], columns: int = 6,
                 kaggle_folders: bool = True) -> Path:
    """The CSV layout: names.csv, anno_{train,test}.csv, images in car_data/car_data/<split>/<class>/."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "names.csv").write_text("\n".join(STANFORD_NAMES) + "\n")
    for split, col in (("train", 0), ("test", 1)):
        lines = []
        k = 0  # train and test reuse file names, as in the real dataset
        for cid, counts in per_class.items():
            for _ in range(counts[col]):
                k += 1
                fname = f"{k:05d}.jpg"
                folder = root / "car_data" / "car_data" / split
                if kaggle_folders:
                    folder = folder / STANFORD_NAMES[cid - 1].replace("/", "-")
                write_image(folder / fname, (5000 if split == "test" else 0) + k, (40, 30))
                lines.append(f"{fname},2,3,30,25,{cid}" if columns == 6 else f"{fname},{cid}")
        (root / f"anno_{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def openimages(root: Path) -> Path:
    """Hierarchy Entity > Vehicle > {Land vehicle > {Car > {Taxi}, Bicycle}, Watercraft > {Boat}}."""
    ids = {"Entity": "/m/0bl9f", "Vehicle": "/m/07yv9", "Land vehicle": "/m/01prls", "Car": "/m/0k4j",
           "Taxi": "/m/0pg52", "Bicycle": "/m/0199g", "Watercraft": "/m/01rzcn", "Boat": "/m/019jd",
           "Person": "/m/01g317"}
    hier = {"LabelName": ids["Entity"], "Subcategory": [
        {"LabelName": ids["Vehicle"], "Subcategory": [
            {"LabelName": ids["Land vehicle"], "Subcategory": [
                {"LabelName": ids["Car"], "Subcategory": [{"LabelName": ids["Taxi"]}]},
                {"LabelName": ids["Bicycle"]}]},
            {"LabelName": ids["Watercraft"], "Subcategory": [{"LabelName": ids["Boat"]}]}]},
        {"LabelName": ids["Person"]}]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "bbox_labels_600_hierarchy.json").write_text(json.dumps(hier))
    (root / "oidv6-class-descriptions.csv").write_text(
        "LabelName,DisplayName\n" + "".join(f"{v},{k}\n" for k, v in ids.items()))
    labels = {  # image -> positive labels (a verified-absent one is added below)
        "a1": ["Vehicle", "Land vehicle", "Car"], "a2": ["Car", "Taxi"], "a3": ["Taxi"], "a4": ["Bicycle"],
        "a5": ["Boat", "Watercraft"], "a6": ["Boat"], "a7": ["Car", "Bicycle"], "a8": ["Person"],
        "gone": ["Car"],
    }
    rows = ["ImageID,Source,LabelName,Confidence"]
    for img, labs in labels.items():
        rows += [f"{img},verification,{ids[lab]},1" for lab in labs]
    rows.append(f"a4,verification,{ids['Car']},0")
    (root / "oidv6-train-annotations-human-imagelabels.csv").write_text("\n".join(rows) + "\n")
    for i, img in enumerate(k for k in labels if k != "gone"):
        write_image(root / "train" / f"{img}.jpg", 70 + i)
    return root
