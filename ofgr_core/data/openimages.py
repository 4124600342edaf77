"""OpenImages vehicle subset: image-level labels restricted to one subtree of the official label hierarchy.

Files (found under the root by name unless given in the options):

* image-level labels CSV(s) ``*imagelabels*.csv`` with ``ImageID,Source,LabelName,Confidence``; the split is
  read from the file name (``train``, ``validation``, ``test``);
* class descriptions ``*class-descriptions*.csv`` (``LabelName,DisplayName``; with or without header)
  mapping ``/m/...`` ids to names;
* the label hierarchy JSON (``bbox_labels_600_hierarchy.json``: nested
  ``{"LabelName", "Subcategory": [...]}``).

The label CSVs are large (~9M rows for the train split): they are streamed through pyarrow's CSV reader and
filtered to the subtree block by block (:func:`read_image_labels`), in seconds and bounded memory.

Only images present on disk are used (annotations cover millions of images; a local subset is the norm).
Fine = the deepest label of the subtree the image has; coarse = its ancestor ``coarse_depth`` levels below the
subtree root (the label itself when it is not that deep). Images whose subtree labels lie on two branches are
ambiguous (a car and a bicycle) and dropped, or resolved by ``ambiguous: first``.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ofgr_core.common.errors import DataError
from ofgr_core.data.base import ADAPTERS, DatasetTable
from ofgr_core.data.common import Options, parse_options, relative_id, require_root, walk_images

VEHICLE = "/m/07yv9"


class OpenImagesOptions(Options):
    subtree: str = VEHICLE  # label id (/m/...) or display name of the subtree root
    coarse_depth: int = Field(1, ge=1)  # coarse = ancestor this many levels below the subtree root
    labels: list[str] | None = None  # image-level label CSVs (relative to root); default: *imagelabels*.csv
    descriptions: str | None = None  # default: *class-descriptions*.csv
    hierarchy: str | None = None  # default: *hierarchy*.json
    min_confidence: float = 0.5  # human labels: 1 = present, 0 = verified absent
    ambiguous: Literal["drop", "first"] = "drop"


def detect_files(root: Path) -> dict[str, list[Path]]:
    """Candidate label, description and hierarchy files directly under ``root`` (or one level down)."""

    def glob(pattern: str) -> list[Path]:
        return sorted({*root.glob(pattern), *root.glob(f"*/{pattern}")})

    return {
        "labels": [p for p in glob("*.csv") if "imagelabels" in re.sub(r"[-_]", "", p.name.lower())],
        "descriptions": [p for p in glob("*.csv") if "class-descriptions" in p.name.lower()],
        "hierarchy": [p for p in glob("*.json") if "hierarchy" in p.name.lower()],
    }


def _split_of(path: Path) -> str:
    name = path.name.lower()
    return "val" if "validation" in name else "test" if "test" in name else "train" if "train" in name else ""


def _one(found: list[Path], given: str | None, root: Path, what: str) -> Path:
    if given:
        path = root / given
        if not path.is_file():
            raise DataError(f"openimages: {what} file {path} not found")
        return path
    if not found:
        raise DataError(f"openimages: no {what} file under {root}; name it in options")
    return found[0]


def read_descriptions(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if len(r) >= 2]
    if rows and not rows[0][0].startswith("/m/"):
        rows = rows[1:]  # v6 files have a LabelName,DisplayName header; older ones do not
    return {r[0]: ",".join(r[1:]) for r in rows}


def subtree_paths(hierarchy: dict[str, Any], root_id: str) -> dict[str, tuple[str, ...]]:
    """Label id -> path of ids from the subtree root's child down to the label (shallowest occurrence)."""

    def find(node: dict[str, Any]) -> dict[str, Any] | None:
        if node.get("LabelName") == root_id:
            return node
        for child in node.get("Subcategory", []):
            hit = find(child)
            if hit is not None:
                return hit
        return None

    top = find(hierarchy)
    if top is None:
        return {}
    paths: dict[str, tuple[str, ...]] = {}
    frontier: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        (child, (child["LabelName"],)) for child in top.get("Subcategory", [])]
    while frontier:  # breadth first, so a label listed under two parents keeps its shallowest place
        nxt: list[tuple[dict[str, Any], tuple[str, ...]]] = []
        for node, path in frontier:
            if node["LabelName"] not in paths:
                paths[node["LabelName"]] = path
            nxt.extend((c, (*path, c["LabelName"])) for c in node.get("Subcategory", []))
        frontier = nxt
    return paths


_NEED = ("ImageID", "LabelName", "Confidence")
_BLOCK = 16 << 20  # bytes per CSV block: bounds memory whatever the file size


def read_image_labels(files: list[Path], label_ids: set[str], min_confidence: float
                      ) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Image id -> its labels among ``label_ids`` (confidence >= ``min_confidence``), and image id -> split.

    The label CSVs run to ~9M rows per file; they are streamed block by block through Arrow's multi-threaded
    CSV reader (only the three needed columns are parsed, labels dictionary-encoded) and each block is
    filtered to the subtree before anything becomes a Python object, so time is seconds and memory is bounded
    by the block size plus the (small) matching subset. An image keeps the split of the first file naming it.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    per_image: dict[str, set[str]] = defaultdict(set)
    split_of: dict[str, str] = {}
    wanted = pa.array(sorted(label_ids), pa.string())
    for lf in files:
        split = _split_of(lf)
        header = _header(lf)
        lacking = [c for c in _NEED if c not in header]
        if lacking:
            raise DataError(f"openimages: {lf} lacks columns {lacking}")
        convert = pacsv.ConvertOptions(
            include_columns=list(_NEED),
            column_types={"ImageID": pa.string(), "LabelName": pa.string(), "Confidence": pa.float64()},
            strings_can_be_null=False,
        )
        try:
            reader = pacsv.open_csv(lf, read_options=pacsv.ReadOptions(block_size=_BLOCK),
                                    convert_options=convert)
            for batch in reader:
                conf = pc.fill_null(batch.column("Confidence"), 0.0)
                keep = pc.and_(pc.is_in(batch.column("LabelName"), value_set=wanted),
                               pc.greater_equal(conf, min_confidence))
                if not pc.any(keep).as_py():
                    continue
                ids = pc.filter(batch.column("ImageID"), keep).to_pylist()
                labs = pc.filter(batch.column("LabelName"), keep).to_pylist()
                for image_id, lab in zip(ids, labs, strict=True):
                    per_image[image_id].add(lab)
                    if image_id not in split_of:
                        split_of[image_id] = split
        except (pa.ArrowInvalid, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"openimages: cannot read {lf}: {msg}") from None
    return dict(per_image), split_of


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"openimages: cannot read {path}: {e}") from None


def read_image_labels_csv(files: list[Path], label_ids: set[str], min_confidence: float
                          ) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Reference implementation of :func:`read_image_labels` with the ``csv`` module (row by row).

    Kept for tests and ``benchmarks/bench_openimages.py``; about an order of magnitude slower.
    """
    per_image: dict[str, set[str]] = defaultdict(set)
    split_of: dict[str, str] = {}
    for lf in files:
        split = _split_of(lf)
        with lf.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            lacking = [c for c in _NEED if c not in (reader.fieldnames or [])]
            if lacking:
                raise DataError(f"openimages: {lf} lacks columns {lacking}")
            for row in reader:
                if row["LabelName"] in label_ids and float(row["Confidence"] or 0) >= min_confidence:
                    per_image[row["ImageID"]].add(row["LabelName"])
                    split_of.setdefault(row["ImageID"], split)
    return dict(per_image), split_of


@ADAPTERS.register("openimages")
def openimages_adapter(root: str | None = None, name: str | None = None, **options: Any) -> DatasetTable:
    """Adapter: an OpenImages subtree (see the module docstring)."""
    opts = parse_options(OpenImagesOptions, options, "openimages")
    base = require_root(root, "openimages")
    name = name or "openimages"
    found = detect_files(base)
    label_files = [base / p for p in opts.labels] if opts.labels else found["labels"]
    for p in label_files:
        if not p.is_file():
            raise DataError(f"openimages: labels file {p} not found")
    if not label_files:
        raise DataError(f"openimages: no image-level label CSV (*imagelabels*.csv) under {base}")
    names = read_descriptions(_one(found["descriptions"], opts.descriptions, base, "class-descriptions"))
    hier_path = _one(found["hierarchy"], opts.hierarchy, base, "hierarchy JSON")
    try:
        hierarchy = json.loads(hier_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"openimages: cannot read {hier_path}: {e}") from None

    root_id = opts.subtree
    if not root_id.startswith("/m/"):
        by_name = {v.casefold(): k for k, v in names.items()}
        if root_id.casefold() not in by_name:
            raise DataError(f"openimages: subtree {opts.subtree!r} is not a class name in the descriptions")
        root_id = by_name[root_id.casefold()]
    paths = subtree_paths(hierarchy, root_id)
    if not paths:
        raise DataError(f"openimages: subtree {opts.subtree!r} has no sub-labels in {hier_path}")

    per_image, split_of = read_image_labels(label_files, set(paths), opts.min_confidence)

    on_disk = {p.stem: p for p in walk_images(base)}
    rows: list[tuple[Path, str, str, str]] = []
    n_missing = n_ambiguous = 0
    for image_id in sorted(per_image):
        if image_id not in on_disk:
            n_missing += 1
            continue
        labels = per_image[image_id]
        # the image's leaves: labels that are not an ancestor of another of its labels
        ancestors = {a for lab in labels for a in paths[lab][:-1]}
        leaves = sorted(labels - ancestors, key=lambda lab: (-len(paths[lab]), names.get(lab, lab)))
        if len(leaves) > 1 and opts.ambiguous == "drop":
            n_ambiguous += 1
            continue
        leaf = leaves[0]
        coarse = paths[leaf][min(opts.coarse_depth, len(paths[leaf])) - 1]
        rows.append((on_disk[image_id], names.get(leaf, leaf), names.get(coarse, coarse), split_of[image_id]))
    if not rows:
        raise DataError(
            f"openimages: none of the {len(per_image)} images labelled under {opts.subtree!r} are on disk "
            f"under {base} (expected <ImageID>.jpg files)"
        )
    warnings = []
    if n_missing:
        warnings.append(f"{n_missing} labelled images are not on disk (skipped)")
    if n_ambiguous:
        warnings.append(f"{n_ambiguous} images carry labels on two branches of the subtree (dropped)")
    n = len(rows)
    return DatasetTable(
        paths=[str(r[0]) for r in rows],
        labels={"fine": [r[1] for r in rows], "coarse": [r[2] for r in rows]},
        ids=[relative_id(name, base, r[0]) for r in rows],
        sources=[name] * n,
        splits=[r[3] for r in rows],
        meta={"format": "openimages", "root": str(base), "subtree": root_id, "warnings": warnings,
              "not_on_disk": n_missing, "ambiguous": n_ambiguous},
    )
