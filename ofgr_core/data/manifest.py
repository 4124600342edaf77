"""Generic manifest CSV: one row per image, one column per hierarchy level.

Columns: ``path`` (relative to the manifest's folder), ``fine``, ``coarse``, optional ``super`` (or any level
names given in ``options.levels``), and optional ``domain``, ``split``, ``caption``, ``group``. Other columns
are ignored (listed in the table's metadata). A path that resolves outside the manifest's folder is refused,
lexically (``..``, absolute paths) and through symbolic links (a linked file or folder whose target lies
outside); ``options.links: follow`` allows links to shared storage.
An empty ``fine`` with a non-empty coarse label is a *coarse-only* image (see ``docs/hierarchy.md``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ofgr_core.common.errors import DataError
from ofgr_core.common.textio import read_text
from ofgr_core.data.base import ADAPTERS, DatasetTable
from ofgr_core.data.common import Options, parse_options, require_root, safe_join

OPTIONAL_COLUMNS = ("domain", "split", "caption", "group")
DEFAULT_FILE = "manifest.csv"


class ManifestOptions(Options):
    file: str = DEFAULT_FILE  # used when root is a folder
    levels: list[str] | None = None  # level columns, finest first; default: fine, coarse (+ super if present)
    missing: Literal["error", "skip"] = "error"  # rows whose image file does not exist
    delimiter: str | None = None  # default: tab for .tsv, else comma
    links: Literal["inside", "follow"] = "inside"  # symbolic links must resolve inside the manifest's folder


def manifest_path(root: str | os.PathLike[str] | None, file: str = DEFAULT_FILE) -> Path:
    path = require_root(root, "manifest")
    return path / file if path.is_dir() else path


@dataclass
class _Rows:
    """A manifest's rows as read: relative paths, their line numbers, labels and optional columns."""

    header: list[str]
    levels: list[str]
    rels: list[str]
    lines: list[int]
    labels: dict[str, list[str]]
    extra: dict[str, list[str]]
    canon: dict[str, str]  # one shared string per distinct value


def read_manifest(
    path: Path, *, name: str = "manifest", levels: list[str] | None = None, missing: str = "error",
    delimiter: str | None = None, links: str = "inside",
) -> DatasetTable:
    """Read a manifest CSV into a :class:`DatasetTable` (see the module docstring for the columns)."""
    if not path.is_file():
        raise DataError(f"manifest {path} not found")
    base = path.parent
    delim = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    rows = _read_rows(path, delim, levels)
    n_rows = len(rows.rels)
    if not n_rows:
        raise DataError(f"manifest {path} has no rows")
    paths, ids, keep, absent_files = _locate_images(path, base, name, rows, missing, links)
    labels, extra = rows.labels, rows.extra
    if len(keep) < n_rows:
        labels = {lv: [v[k] for k in keep] for lv, v in labels.items()}
        extra = {c: [v[k] for k in keep] for c, v in extra.items()}
    if not paths:
        raise DataError(f"manifest {path}: none of its {n_rows} images exist")
    ignored = [c for c in rows.header if c not in ("path", *rows.levels, *OPTIONAL_COLUMNS)]
    n = len(paths)
    canon = rows.canon
    return DatasetTable(
        paths=paths,
        labels=labels,
        ids=ids,
        sources=[name] * n,
        domains=extra["domain"],
        captions=extra["caption"],
        splits=[canon.setdefault(s.lower(), s.lower()) for s in extra["split"]],
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


def _read_rows(path: Path, delim: str, levels: list[str] | None) -> _Rows:
    """Parses the header and every non-blank row; a missing column or an empty label is a DataError."""
    text = read_text(path, what="manifest")  # UTF-8 (BOM optional) or UTF-16/32 with BOM, else one line
    with io.StringIO(text, newline="") as f:
        reader = _csv_rows(csv.reader(f, delimiter=delim), path)
        header = [h.strip() for h in next(reader, [])]
        if levels is None:
            levels = ["fine", "coarse"] + (["super"] if "super" in header else [])
        need = ["path", *levels]
        absent = [c for c in need if c not in header]
        if absent:
            raise DataError(
                f"manifest {path}: missing column(s) {', '.join(absent)} (found: {', '.join(header) or 'none'}); "
                "a manifest needs path, fine, coarse"
            )
        col = {h: i for i, h in enumerate(header)}  # a repeated name: the last column wins, as in DictReader
        level_cols = [col[lv] for lv in levels]
        extra_cols = [col.get(c) for c in OPTIONAL_COLUMNS]
        path_col = col["path"]
        # streamed row by row; label and optional values are shared strings (a million rows repeat a few
        # thousand class names), so the table holds one object per distinct value, not per row
        canon: dict[str, str] = {}
        rels: list[str] = []
        lines: list[int] = []
        labels: dict[str, list[str]] = {lv: [] for lv in levels}
        extra: dict[str, list[str]] = {c: [] for c in OPTIONAL_COLUMNS}
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            if not row:
                continue  # DictReader skips blank lines too
            width = len(row)
            rel = row[path_col].strip() if path_col < width else ""
            for k, (lv, c) in enumerate(zip(levels, level_cols, strict=True)):
                value = row[c].strip() if c < width else ""
                if not value and not (k == 0 and lv == "fine"):  # an empty fine label = coarse-only image
                    raise DataError(f"manifest {path} line {line}: empty {lv!r} label for {rel!r}")
                labels[lv].append(canon.setdefault(value, value))
            for column, ci in zip(OPTIONAL_COLUMNS, extra_cols, strict=True):
                value = row[ci].strip() if ci is not None and ci < width else ""
                extra[column].append(canon.setdefault(value, value))
            rels.append(rel)
            lines.append(line)
    return _Rows(header, levels, rels, lines, labels, extra, canon)


def _locate_images(path: Path, base: Path, name: str, rows: _Rows, missing: str, links: str = "inside"
                   ) -> tuple[list[str], list[str], list[int], list[str]]:
    """``(paths, ids, kept row positions, missing files)``: each row's image resolved under ``base``.

    A missing image is a DataError unless ``missing == "skip"``; a file listed twice is always one; a symbolic
    link resolving outside ``base`` is one unless ``links == "follow"``.
    """
    base_abs = os.path.abspath(base)
    rels, lines = rows.rels, rows.lines
    fulls = [_resolve(base_abs, base, rel, f"manifest {path} line {line}")
             for rel, line in zip(rels, lines, strict=True)]
    exists, linked = _files_exist(fulls)
    if links == "inside":
        _refuse_links_outside(base_abs, fulls, linked, rels, lines, path)
    paths: list[str] = []
    ids: list[str] = []
    keep: list[int] = []
    absent_files: list[str] = []
    seen_ids: dict[str, int] = {}
    prefix = f"{name}:"
    for k, full in enumerate(fulls):
        if not exists[k]:
            if missing == "error":
                raise DataError(
                    f"manifest {path} line {lines[k]}: image {rels[k]!r} not found at {full} "
                    "(set options.missing: skip to drop such rows)"
                )
            absent_files.append(rels[k])
            continue
        rel_posix = full[len(base_abs) + 1 :] if full.startswith(base_abs + os.sep) else os.path.relpath(
            full, base_abs)
        item_id = prefix + rel_posix.replace(os.sep, "/")
        if item_id in seen_ids:
            raise DataError(
                f"manifest {path} line {lines[k]}: {rels[k]!r} is listed twice (first on line {seen_ids[item_id]})")
        seen_ids[item_id] = lines[k]
        paths.append(full)
        ids.append(item_id)
        keep.append(k)
    return paths, ids, keep, absent_files


def _csv_rows(reader: Iterable[list[str]], path: Path) -> Iterator[list[str]]:
    """The reader's rows; a malformed CSV becomes a one-line DataError naming the file."""
    try:
        yield from reader
    except csv.Error as e:
        raise DataError(f"manifest {path}: malformed CSV ({e})") from None


def _resolve(base_abs: str, base: Path, rel: str, what: str) -> str:
    """``safe_join`` as a string, with a quick path for a plain relative path (no ``.``/``..`` parts)."""
    if (rel and rel[0] not in "/\\." and "\\" not in rel and "//" not in rel and "/." not in rel
            and ":" not in rel[1:2]):
        return f"{base_abs}{os.sep}{rel}"
    return str(safe_join(base, rel, what))


def _files_exist(paths: list[str]) -> tuple[list[bool], set[str]]:
    """Whether each path is an existing file, listing each folder once instead of one stat per file; and which
    of the paths are symbolic links (free from the same listing)."""
    by_dir: dict[str, set[str]] = {}
    links: set[str] = set()
    out = []
    for p in paths:
        folder, fname = os.path.split(p)
        names = by_dir.get(folder)
        if names is None:
            names = set()
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        if e.is_file():  # follows symlinks, as Path.is_file
                            names.add(e.name)
                            if e.is_symlink():
                                links.add(os.path.join(folder, e.name))
            except OSError:
                pass
            by_dir[folder] = names
        out.append(fname in names)
    return out, links


def _refuse_links_outside(base_abs: str, fulls: list[str], linked: set[str], rels: list[str], lines: list[int],
                          manifest: Path) -> None:
    """A file, or a folder on its way, that is a symbolic link resolving outside the manifest's folder is
    refused (docs/data.md): a manifest describes the files beside it. Folders are resolved once each."""
    root = os.path.realpath(base_abs)
    inside: dict[str, bool] = {}

    def within(target: str) -> bool:
        return target == root or target.startswith(root + os.sep)

    for k, full in enumerate(fulls):
        folder = os.path.dirname(full)
        ok = inside.get(folder)
        if ok is None:
            ok = inside[folder] = within(os.path.realpath(folder))
        target = os.path.realpath(full) if (not ok or full in linked) else None
        if target is not None and not within(target):
            raise DataError(
                f"manifest {manifest} line {lines[k]}: {rels[k]!r} is a symbolic link to {target}, outside the "
                f"manifest's folder {root}; refused (copy the file in, or set options.links: follow for shared "
                "storage)"
            )


@ADAPTERS.register("manifest")
def manifest_adapter(root: str | None = None, name: str | None = None, **options: Any) -> DatasetTable:
    """Adapter: a manifest CSV file, or a folder holding ``manifest.csv`` (``options.file``)."""
    opts = parse_options(ManifestOptions, options, "manifest")
    return read_manifest(
        manifest_path(root, opts.file), name=name or "manifest", levels=opts.levels, missing=opts.missing,
        delimiter=opts.delimiter, links=opts.links,
    )
