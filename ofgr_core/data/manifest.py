"""Generic manifest CSV: one row per image, one column per hierarchy level.

Columns: ``path`` (relative to the manifest's folder), ``fine``, ``coarse``, optional ``super`` (or any level
names given in ``options.levels``), and optional ``domain``, ``split``, ``caption``, ``group``. Other columns
are ignored (listed in the table's metadata). A path that resolves outside the manifest's folder is refused.
An empty ``fine`` with a non-empty coarse label is a *coarse-only* image (see ``docs/hierarchy.md``).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Literal

from ofgr_core.data.base import ADAPTERS, DatasetTable
from ofgr_core.data.common import Options, parse_options, require_root, safe_join
from ofgr_core.errors import DataError
from ofgr_core.textio import read_text

OPTIONAL_COLUMNS = ("domain", "split", "caption", "group")
DEFAULT_FILE = "manifest.csv"


class ManifestOptions(Options):
    file: str = DEFAULT_FILE  # used when root is a folder
    levels: list[str] | None = None  # level columns, finest first; default: fine, coarse (+ super if present)
    missing: Literal["error", "skip"] = "error"  # rows whose image file does not exist
    delimiter: str | None = None  # default: tab for .tsv, else comma


def manifest_path(root: str | os.PathLike[str] | None, file: str = DEFAULT_FILE) -> Path:
    path = require_root(root, "manifest")
    return path / file if path.is_dir() else path


def read_manifest(
    path: Path, *, name: str = "manifest", levels: list[str] | None = None, missing: str = "error",
    delimiter: str | None = None,
) -> DatasetTable:
    """Read a manifest CSV into a :class:`DatasetTable` (see the module docstring for the columns)."""
    if not path.is_file():
        raise DataError(f"manifest {path} not found")
    base = path.parent
    delim = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    text = read_text(path, what="manifest")  # UTF-8 (BOM optional) or UTF-16/32 with BOM, else one line
    try:
        with io.StringIO(text, newline="") as f:
            reader = csv.DictReader(f, delimiter=delim)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = list(reader)
    except csv.Error as e:
        raise DataError(f"manifest {path}: malformed CSV ({e})") from None
    if levels is None:
        levels = ["fine", "coarse"] + (["super"] if "super" in header else [])
    need = ["path", *levels]
    absent = [c for c in need if c not in header]
    if absent:
        raise DataError(
            f"manifest {path}: missing column(s) {', '.join(absent)} (found: {', '.join(header) or 'none'}); "
            "a manifest needs path, fine, coarse"
        )
    if not rows:
        raise DataError(f"manifest {path} has no rows")

    paths: list[str] = []
    ids: list[str] = []
    labels: dict[str, list[str]] = {lv: [] for lv in levels}
    extra: dict[str, list[str]] = {c: [] for c in OPTIONAL_COLUMNS}
    absent_files: list[str] = []
    seen_ids: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        rel = (row.get("path") or "").strip()
        full = safe_join(base, rel, f"manifest {path} line {line}")
        for lv in levels[1:] if levels[0] == "fine" else levels:  # an empty fine label = coarse-only image
            if not (row.get(lv) or "").strip():
                raise DataError(f"manifest {path} line {line}: empty {lv!r} label for {rel!r}")
        if not full.is_file():
            if missing == "error":
                raise DataError(
                    f"manifest {path} line {line}: image {rel!r} not found at {full} "
                    "(set options.missing: skip to drop such rows)"
                )
            absent_files.append(rel)
            continue
        item_id = f"{name}:{Path(os.path.relpath(full, base)).as_posix()}"
        if item_id in seen_ids:
            raise DataError(
                f"manifest {path} line {line}: {rel!r} is listed twice (first on line {seen_ids[item_id]})")
        seen_ids[item_id] = line
        paths.append(str(full))
        ids.append(item_id)
        for lv in levels:
            labels[lv].append(row[lv].strip())
        for c in OPTIONAL_COLUMNS:
            extra[c].append((row.get(c) or "").strip())
    if not paths:
        raise DataError(f"manifest {path}: none of its {len(rows)} images exist")
    ignored = [c for c in header if c not in (*need, *OPTIONAL_COLUMNS)]
    n = len(paths)
    return DatasetTable(
        paths=paths,
        labels=labels,
        ids=ids,
        sources=[name] * n,
        domains=extra["domain"],
        captions=extra["caption"],
        splits=[s.lower() for s in extra["split"]],
        groups=extra["group"],
        meta={
            "format": "manifest",
            "root": str(base),
            "file": str(path),
            "ignored_columns": ignored,
            "missing_files": absent_files,
            "warnings": [f"{len(absent_files)} manifest rows skipped: image missing"] if absent_files else [],
        },
    )


@ADAPTERS.register("manifest")
def manifest_adapter(root: str | None = None, name: str | None = None, **options: Any) -> DatasetTable:
    """Adapter: a manifest CSV file, or a folder holding ``manifest.csv`` (``options.file``)."""
    opts = parse_options(ManifestOptions, options, "manifest")
    return read_manifest(
        manifest_path(root, opts.file), name=name or "manifest", levels=opts.levels, missing=opts.missing,
        delimiter=opts.delimiter,
    )
