"""Generic image folder: nested folders are hierarchy levels, ``root/<coarse>/<fine>/<image>`` at any depth.

Level names default by depth (1: ``fine``; 2: ``coarse/fine``; 3: ``super/coarse/fine``) and can be named in
``options.levels`` (outermost folder first). With ``options.split_dirs`` (or automatically when every top
folder is ``train``/``val``/``test``) the outermost folder is the source's split.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from ofgr_core.common.errors import DataError
from ofgr_core.data.base import ADAPTERS, DatasetTable
from ofgr_core.data.common import Options, list_dirs, parse_options, relative_id, require_root, walk_images

SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
              "test": "test", "testing": "test"}


class ImageFolderOptions(Options):
    levels: list[str] | None = None  # outermost folder first, e.g. [coarse, fine]
    split_dirs: bool | None = None  # None: detect train/val/test top folders
    coarse: str | None = None  # flat folders only: the coarse label of every class (default: source name)


def detect_split_dirs(root: Path) -> bool:
    """True when every top-level folder is a split name (``train``, ``val``, ``test``, ...)."""
    dirs = list_dirs(root)
    return bool(dirs) and all(d.name.lower() in SPLIT_DIRS for d in dirs)


def scan(root: Path, split_dirs: bool, what: str) -> tuple[list[tuple[str, tuple[str, ...], Path]], int]:
    """Images under ``root`` as ``(split, folder parts, path)`` and the common folder depth.

    Raises:
        DataError: no images, images at different depths, or a class folder without images.
    """
    images = walk_images(root)
    if not images:
        raise DataError(f"{what}: no images under {root}")
    rows = []
    for p in images:
        parts = Path(os.path.relpath(p, root)).parts[:-1]
        split = ""
        if split_dirs:
            if not parts or parts[0].lower() not in SPLIT_DIRS:
                raise DataError(f"{what}: {p} is not inside a train/val/test folder")
            split, parts = SPLIT_DIRS[parts[0].lower()], parts[1:]
        rows.append((split, parts, p))
    depths = {len(parts) for _, parts, _ in rows}
    if 0 in depths:
        loose = next(p for _, parts, p in rows if not parts)
        raise DataError(f"{what}: image {loose} is not inside a class folder")
    if len(depths) > 1:
        d0 = min(depths)
        deeper = next(p for _, parts, p in rows if len(parts) != d0)
        raise DataError(
            f"{what}: images sit at different folder depths {sorted(depths)} (e.g. {deeper}); "
            "every image must be root/<level>/.../<class>/<image>"
        )
    depth = depths.pop()
    # a class folder at the leaf depth with no images is almost always a failed copy: say which one
    leaf_dirs = {p.parent for _, _, p in rows}
    tops = list_dirs(root) if not split_dirs else [d for s in list_dirs(root) for d in list_dirs(s)]
    frontier = tops
    for _ in range(depth - 1):
        frontier = [d for f in frontier for d in list_dirs(f)]
    empty = [d for d in frontier if d not in leaf_dirs]
    if empty:
        raise DataError(
            f"{what}: {len(empty)} class folder(s) contain no images: "
            + ", ".join(str(d) for d in empty[:5]) + ("" if len(empty) <= 5 else ", ...")
        )
    return rows, depth


def default_levels(depth: int) -> list[str]:
    """Level names for ``depth`` nested folders, outermost first."""
    named = ["super", "coarse", "fine"][-depth:] if depth <= 3 else ["super", "coarse", "fine"]
    return [f"level{depth - i}" for i in range(depth - 3)] + named


def _qualified(parts_per_row: list[tuple[str, ...]], level: int) -> list[str]:
    """Folder name at ``level``; names reused under different parents get their parent path as prefix."""
    parents: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for parts in parts_per_row:
        parents[parts[level]].add(parts[:level])
    return [
        parts[level] if len(parents[parts[level]]) == 1 else "/".join(parts[: level + 1])
        for parts in parts_per_row
    ]


def read_image_folder(root: Path, *, name: str, levels: list[str] | None = None,
                      split_dirs: bool | None = None, coarse: str | None = None) -> DatasetTable:
    """Read a nested image folder into a :class:`DatasetTable`."""
    what = f"image folder {name}"
    if split_dirs is None:
        split_dirs = detect_split_dirs(root)
    rows, depth = scan(root, split_dirs, what)
    names = levels or default_levels(depth)
    if len(names) != depth:
        raise DataError(
            f"{what}: options.levels has {len(names)} names ({names}) but images are {depth} folder(s) deep"
        )
    if names[-1] != "fine" or len(set(names)) != len(names):
        raise DataError(f"{what}: options.levels must be distinct names ending with 'fine' (got {names})")
    parts_per_row = [parts for _, parts, _ in rows]
    labels = {lv: _qualified(parts_per_row, i) for i, lv in reversed(list(enumerate(names)))}
    warnings = []
    if depth == 1:
        # a flat folder says nothing about coarse classes; keep the table two-level so every stage works
        labels["coarse"] = [coarse or name] * len(rows)
        if coarse is None:
            warnings.append(
                f"{what} is flat: every class gets coarse label {name!r}; set data.taxonomy or nest folders"
            )
    n = len(rows)
    return DatasetTable(
        paths=[str(p) for _, _, p in rows],
        labels=labels,
        ids=[relative_id(name, root, p) for _, _, p in rows],
        sources=[name] * n,
        splits=[s for s, _, _ in rows],
        meta={"format": "imagefolder", "root": str(root), "levels": names, "warnings": warnings},
    )


@ADAPTERS.register("imagefolder")
def imagefolder_adapter(root: str | None = None, name: str | None = None, **options: Any) -> DatasetTable:
    """Adapter: nested image folders (see the module docstring)."""
    opts = parse_options(ImageFolderOptions, options, "imagefolder")
    return read_image_folder(
        require_root(root, "imagefolder"), name=name or "imagefolder", levels=opts.levels,
        split_dirs=opts.split_dirs, coarse=opts.coarse,
    )
