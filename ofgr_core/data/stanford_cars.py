"""Stanford Cars (Krause et al., 2013): 196 make/model/year classes, 16,185 images.

Three on-disk layouts are read:

* devkit: ``devkit/cars_meta.mat`` (``class_names``), ``devkit/cars_train_annos.mat`` and
  ``cars_test_annos_withlabels.mat`` (in ``devkit/`` or the root; struct arrays with ``bbox_x1``, ``bbox_y1``,
  ``bbox_x2``, ``bbox_y2``, ``class``, ``fname``), images in ``cars_train/`` and ``cars_test/``;
* all-in-one: ``cars_annos.mat`` (``annotations`` with ``relative_im_path``, bbox, ``class``, ``test``, and
  ``class_names``), images in ``car_ims/``;
* CSV: ``names.csv`` (no header; one name per line, or ``id,name``), ``anno_train.csv`` and ``anno_test.csv``
  (no header; ``image,x1,y1,x2,y2,class`` or ``image,class``; a header row is also accepted), images found by
  file name anywhere under the root (e.g. the Kaggle ``car_data/car_data/{train,test}/<class>/`` folders).

Fine = the class name; coarse = body type from the shipped ``stanford_cars`` taxonomy; with
``options.make`` the make becomes a middle level (``middle``) or the coarse level (``coarse``). The source's
train/test membership goes into ``DatasetTable.splits`` and class ids into ``meta["class_ids"]`` (used by the
``cars196`` protocol).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from ofgr_core.common.atomic import atomic_writer
from ofgr_core.common.errors import DataError
from ofgr_core.data.base import ADAPTERS, DatasetTable
from ofgr_core.data.common import Options, parse_options, relative_id, require_root, walk_images
from ofgr_core.data.taxonomy import normalize, shipped_fine_map

# Makes whose name is more than one word; every other make is the first word of the class name.
MULTIWORD_MAKES = ("AM General", "Aston Martin", "Land Rover")


class StanfordCarsOptions(Options):
    make: Literal["none", "middle", "coarse"] = "none"
    crop: bool = False  # crop every image to its bounding box (materialised once, see crop_dir)
    crop_margin: float = Field(0.0, ge=0.0, le=1.0)  # extra context around the box, fraction of box size
    crop_dir: str | None = None  # default: <root>/.ofgr_cache/crops_m<margin>, else ~/.cache/ofgr/...
    splits: list[Literal["train", "test"]] = ["train", "test"]


@dataclass
class _Row:
    path: Path
    class_id: int
    split: str
    box: tuple[int, int, int, int] | None


def make_of(name: str) -> str:
    """The make in a class name (``"Aston Martin V8 Vantage Coupe 2012"`` -> ``"Aston Martin"``)."""
    for make in MULTIWORD_MAKES:
        if name.startswith(make + " "):
            return make
    return name.split()[0]


def detect_layout(root: Path) -> str | None:
    """``devkit``, ``annos_mat``, ``csv`` or None."""
    if (root / "devkit" / "cars_meta.mat").is_file() or (root / "cars_meta.mat").is_file():
        return "devkit"
    if (root / "cars_annos.mat").is_file():
        return "annos_mat"
    if (root / "names.csv").is_file() and (
        (root / "anno_train.csv").is_file() or (root / "anno_test.csv").is_file()
    ):
        return "csv"
    return None


# --------------------------------------------------------------------------------------------- readers
def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat  # scipy is heavy to import; only this adapter needs it

    try:
        mat: dict[str, Any] = loadmat(str(path), squeeze_me=True)
        return mat
    except Exception as e:
        raise DataError(f"stanford_cars: cannot read {path}: {type(e).__name__}: {e}") from None


def _field(ann: np.ndarray, name: str, path: Path) -> np.ndarray:
    if ann.dtype.names is None or name not in ann.dtype.names:
        raise DataError(f"stanford_cars: {path} has no {name!r} field (found {ann.dtype.names})")
    return np.atleast_1d(ann[name])


def _first(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


def _image_dir(root: Path, split: str) -> Path:
    d = _first(root / f"cars_{split}" / f"cars_{split}", root / f"cars_{split}")
    if d is None:
        raise DataError(f"stanford_cars: image folder cars_{split}/ not found in {root}")
    return d


def _mat_rows(path: Path, split: str, image_dir: Path | None, root: Path) -> list[_Row]:
    raw = _loadmat(path).get("annotations")
    ann = np.atleast_1d(raw) if raw is not None else None
    if ann is None or ann.dtype.names is None:
        raise DataError(f"stanford_cars: {path} has no 'annotations' struct array")
    x1, y1, x2, y2 = (_field(ann, f"bbox_{k}", path) for k in ("x1", "y1", "x2", "y2"))
    cls = _field(ann, "class", path)
    if image_dir is not None:
        files = [image_dir / str(f) for f in _field(ann, "fname", path)]
        splits = [split] * len(files)
    else:  # cars_annos.mat: one file for both splits
        files = [root / str(f) for f in _field(ann, "relative_im_path", path)]
        splits = ["test" if int(t) else "train" for t in _field(ann, "test", path)]
    return [
        _Row(f, int(c), s, (int(a), int(b), int(c2), int(d)))
        for f, c, s, a, b, c2, d in zip(files, cls, splits, x1, y1, x2, y2, strict=True)
    ]


def _read_devkit(root: Path) -> tuple[list[str], list[_Row], list[str]]:
    devkit = root / "devkit" if (root / "devkit").is_dir() else root
    meta = _loadmat(devkit / "cars_meta.mat")
    names = [str(n) for n in np.atleast_1d(meta.get("class_names", []))]
    rows = _mat_rows(devkit / "cars_train_annos.mat", "train", _image_dir(root, "train"), root)
    warnings = []
    test = _first(devkit / "cars_test_annos_withlabels.mat", root / "cars_test_annos_withlabels.mat")
    if test is not None:
        rows += _mat_rows(test, "test", _image_dir(root, "test"), root)
    else:
        warnings.append(
            "cars_test_annos_withlabels.mat not found (devkit/cars_test_annos.mat has no labels): "
            "test images skipped"
        )
    return names, rows, warnings


def _read_annos_mat(root: Path) -> tuple[list[str], list[_Row], list[str]]:
    mat = _loadmat(root / "cars_annos.mat")
    names = [str(n) for n in np.atleast_1d(mat.get("class_names", []))]
    return names, _mat_rows(root / "cars_annos.mat", "", None, root), []


def _csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [[c.strip() for c in r] for r in csv.reader(f) if r and any(c.strip() for c in r)]


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _read_names_csv(path: Path) -> list[str]:
    rows = _csv_rows(path)
    if rows and len(rows[0]) >= 2 and _is_int(rows[0][0]):  # id,name
        by_id = {int(r[0]): ",".join(r[1:]) for r in rows}
        return [by_id[i] for i in sorted(by_id)]
    return [",".join(r) for r in rows]  # one name per line; a name may itself contain a comma


def _read_anno_csv(path: Path, split: str) -> list[tuple[str, int, tuple[int, int, int, int] | None]]:
    rows = _csv_rows(path)
    if not rows:
        return []
    image_col, class_col = 0, len(rows[0]) - 1
    box_cols: tuple[int, ...] | None = (1, 2, 3, 4) if len(rows[0]) >= 6 else None
    if not _is_int(rows[0][-1]):  # header row: find the columns by name
        header = [h.lower() for h in rows.pop(0)]

        def col(*names: str) -> int | None:
            return next((header.index(n) for n in names if n in header), None)

        image, klass = col("image", "fname", "filename", "file", "path"), col("class", "class_id", "label")
        if image is None or klass is None:
            raise DataError(f"stanford_cars: {path}: header {header} lacks an image or class column")
        found = [col(k, f"bbox_{k}") for k in ("x1", "y1", "x2", "y2")]
        image_col, class_col = image, klass
        box_cols = tuple(c for c in found if c is not None)
        if len(box_cols) != len(found):
            box_cols = None
    out: list[tuple[str, int, tuple[int, int, int, int] | None]] = []
    for line, r in enumerate(rows, start=1):
        try:
            box: tuple[int, int, int, int] | None = None
            if box_cols:
                x1, y1, x2, y2 = (int(float(r[i])) for i in box_cols)
                box = (x1, y1, x2, y2)
            out.append((r[image_col], int(r[class_col]), box))
        except (ValueError, IndexError):
            raise DataError(f"stanford_cars: {path} row {line}: cannot parse {r}") from None
    return out


def _read_csv(root: Path) -> tuple[list[str], list[_Row], list[str]]:
    names = _read_names_csv(root / "names.csv")
    # the CSVs give bare file names; train and test reuse the same names, so index by (split, name)
    index: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for p in walk_images(root):
        lowered = [part.lower() for part in p.relative_to(root).parts[:-1]]
        split = ("test" if any("test" in s for s in lowered)
                 else "train" if any("train" in s for s in lowered) else "")
        index[(split, p.name)].append(p)
    rows, missing = [], []
    for split in ("train", "test"):
        path = root / f"anno_{split}.csv"
        if not path.is_file():
            continue
        for fname, cid, box in _read_anno_csv(path, split):
            base = os.path.basename(fname)
            found = index.get((split, base)) or index.get(("", base)) or []
            if len(found) > 1 and 1 <= cid <= len(names):  # class-sorted folders: pick the class's one
                found = [p for p in found if normalize(p.parent.name) == normalize(names[cid - 1])] or found
            if len(found) != 1:
                if not found:
                    missing.append(f"{split}/{fname}")
                    continue
                raise DataError(
                    f"stanford_cars: {split} image {fname!r} matches {len(found)} files, e.g. {found[:2]}")
            rows.append(_Row(found[0], cid, split, box))
    if missing:
        raise DataError(
            f"stanford_cars: {len(missing)} annotated images not found under {root} "
            f"(first: {', '.join(missing[:3])})"
        )
    return names, rows, []


# ------------------------------------------------------------------------------------------------ crops
def _crop_dir(root: Path, margin: float, crop_dir: str | None) -> Path:
    if crop_dir:
        return Path(crop_dir).expanduser()
    preferred = root / ".ofgr_cache" / f"crops_m{margin:g}"
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    except OSError:  # read-only dataset: fall back to the user cache
        digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
        return Path.home() / ".cache" / "ofgr" / "crops" / f"{digest}_m{margin:g}"


def _crop_one(src: Path, dst: Path, box: tuple[int, int, int, int], margin: float) -> Path:
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    try:
        with Image.open(src) as im:
            x1, y1, x2, y2 = box
            mw, mh = (x2 - x1) * margin, (y2 - y1) * margin
            # devkit boxes are 1-based inclusive pixel coordinates
            area = (max(0, int(x1 - 1 - mw)), max(0, int(y1 - 1 - mh)),
                    min(im.width, int(x2 + mw)), min(im.height, int(y2 + mh)))
            if area[2] <= area[0] or area[3] <= area[1]:
                return src  # degenerate box: keep the full image
            crop = im.convert("RGB").crop(area)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(dst) as f:
            crop.save(f, format="JPEG", quality=95)
        return dst
    except Exception:
        return src  # unreadable source: leave it to the load-time check, which reports it


def _materialise_crops(rows: list[_Row], root: Path, margin: float, crop_dir: str | None) -> list[Path]:
    out_dir = _crop_dir(root, margin, crop_dir)
    jobs: list[tuple[Path, Path, tuple[int, int, int, int]] | None] = []
    for r in rows:
        if r.box is None:
            jobs.append(None)
            continue
        rel = Path(os.path.relpath(r.path, root)).with_suffix(".jpg")
        jobs.append((r.path, out_dir / r.split / rel, r.box))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        done = pool.map(lambda j: _crop_one(j[0], j[1], j[2], margin) if j else None, jobs)
        return [d if d is not None else r.path for d, r in zip(done, rows, strict=True)]


# ---------------------------------------------------------------------------------------------- adapter
@ADAPTERS.register("stanford_cars")
def stanford_cars_adapter(root: str | None = None, name: str | None = None, **options: Any) -> DatasetTable:
    """Adapter: Stanford Cars in any of the layouts in the module docstring."""
    opts = parse_options(StanfordCarsOptions, options, "stanford_cars")
    base = require_root(root, "stanford_cars")
    name = name or "stanford_cars"
    layout = detect_layout(base)
    readers = {"devkit": _read_devkit, "annos_mat": _read_annos_mat, "csv": _read_csv}
    if layout is None:
        raise DataError(
            f"stanford_cars: {base} holds neither devkit/cars_meta.mat, cars_annos.mat nor names.csv + "
            "anno_train.csv; point data.sources[].root at the dataset folder"
        )
    names, rows, warnings = readers[layout](base)
    if not names:
        raise DataError(f"stanford_cars: no class names found in {base} ({layout} layout)")
    bad = sorted({r.class_id for r in rows if not 1 <= r.class_id <= len(names)})
    if bad:
        raise DataError(f"stanford_cars: class ids {bad[:5]} are outside 1..{len(names)} ({layout} layout)")
    rows = [r for r in rows if r.split in opts.splits or r.split == ""]
    if not rows:
        raise DataError(f"stanford_cars: no annotated images in {base} for splits {opts.splits}")

    body = shipped_fine_map("stanford_cars")
    unknown = sorted({names[r.class_id - 1] for r in rows} - set(body))
    if unknown:
        raise DataError(
            f"stanford_cars: {len(unknown)} class names are not in the shipped body-type taxonomy "
            f"(first: {unknown[0]!r}); is this Stanford Cars?"
        )
    fine = [names[r.class_id - 1] for r in rows]
    labels: dict[str, list[str]] = {"fine": fine}
    if opts.make == "middle":
        # a make spans body types, so the middle node is the make within a body type to keep a tree
        labels["make"] = [f"{body[f]}/{make_of(f)}" for f in fine]
        labels["coarse"] = [body[f] for f in fine]
    elif opts.make == "coarse":
        labels["coarse"] = [make_of(f) for f in fine]
    else:
        labels["coarse"] = [body[f] for f in fine]

    paths = [r.path for r in rows]
    if opts.crop:
        if any(r.box is None for r in rows):
            warnings.append("crop: some annotations carry no bounding box; those images are used whole")
        paths = _materialise_crops(rows, base, opts.crop_margin, opts.crop_dir)
    n = len(rows)
    return DatasetTable(
        paths=[str(p) for p in paths],
        labels=labels,
        ids=[relative_id(name, base, r.path) for r in rows],
        sources=[name] * n,
        splits=[r.split for r in rows],
        meta={
            "format": f"stanford_cars/{layout}",
            "root": str(base),
            "class_ids": {nm: i + 1 for i, nm in enumerate(names)},
            "warnings": warnings,
        },
    )
