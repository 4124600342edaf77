"""From the ``data`` config section to one validated, merged dataset.

``load_dataset`` builds every source's table through its adapter, maps the sources' labels onto one unified
taxonomy (when ``data.taxonomy`` names one), checks that every image decodes (unreadable files are skipped and
reported, never a crash mid-run), removes exact duplicates found by content hash, and encodes labels. What was
dropped and why goes into ``PreparedData.report`` (the run's ``data_report.json``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ofgr_core.config import DataConfig
from ofgr_core.data.base import DatasetTable, create_table
from ofgr_core.errors import DataError
from ofgr_core.hierarchy import Hierarchy

Progress = Callable[[int, int], None]

SIZE_BINS = (1, 2, 5, 10, 20, 50, 100, 200, 500)  # class-size histogram edges (images per class)
_LIST_LIMIT = 200  # report lists longer than this are cut (with a count) to keep data_report.json readable


@dataclass
class PreparedData:
    """A merged dataset ready for splitting.

    Attributes:
        table: one row per usable image.
        hierarchy: class names per level.
        labels: (N, L) int64 class ids, column 0 = fine.
        report: what was skipped or removed and why (written to ``data_report.json``).
    """

    table: DatasetTable
    hierarchy: Hierarchy
    labels: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------- checking
@dataclass(frozen=True)
class ImageCheck:
    """Outcome of reading one image file: its content hash, size, and why it is unusable (None if usable)."""

    reason: str | None
    digest: str = ""
    width: int = 0
    height: int = 0


def inspect_image(path: str) -> ImageCheck:
    """Read one file once: hash its bytes and fully decode them (catches truncated and non-image files)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return ImageCheck("missing file")
    except OSError as e:
        return ImageCheck(f"cannot read: {e.strerror or e}")
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            width, height = im.size
            if width < 1 or height < 1:
                return ImageCheck("empty image", digest)
            # decoding at reduced scale still reads every byte of a JPEG, so truncation is caught, ~4x faster
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
    except Exception as e:  # PIL raises many types for corrupt/truncated/non-image files
        return ImageCheck(f"{type(e).__name__}: {e}".splitlines()[0][:200], digest)
    return ImageCheck(None, digest, width, height)


def check_image(path: str) -> str | None:
    """Fully decode one image; return the reason it is unusable, or None."""
    return inspect_image(path).reason


class _CheckMemo:
    """Per-file check results kept across runs, keyed by path, size and mtime (a changed file is re-read)."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / "image_checks.json" if folder else None
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    @staticmethod
    def _stamp(path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f"{st.st_size}:{st.st_mtime_ns}"

    def get(self, path: str) -> ImageCheck | None:
        hit = self.entries.get(path)
        if hit is None or hit[0] != self._stamp(path):
            return None
        return ImageCheck(hit[1], hit[2], hit[3], hit[4])

    def put(self, path: str, check: ImageCheck) -> None:
        stamp = self._stamp(path)
        if stamp is not None:
            self.entries[path] = [stamp, check.reason, check.digest, check.width, check.height]
            self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            from ofgr_core.runs import atomic_write_text

            atomic_write_text(self.path, json.dumps(self.entries))
        except OSError:
            pass  # a read-only cache folder only costs a re-check next time


def check_images(paths: list[str], progress: Progress | None = None, workers: int | None = None,
                 memo_dir: Path | None = None) -> list[ImageCheck]:
    """Check every image (threads: file reads and PIL decoding release the GIL)."""
    memo = _CheckMemo(memo_dir)
    results: list[ImageCheck | None] = [memo.get(p) for p in paths]
    todo = [i for i, r in enumerate(results) if r is None]
    done = len(paths) - len(todo)
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = pool.map(inspect_image, [paths[i] for i in todo])
        for k, (i, res) in enumerate(zip(todo, checked, strict=True)):
            results[i] = res
            memo.put(paths[i], res)
            if progress is not None and (k + 1) % 500 == 0:
                progress(done + k + 1, len(paths))
    if progress is not None:
        progress(len(paths), len(paths))
    memo.save()
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------- merging
def _apply_taxonomy(table: DatasetTable, taxonomy: Any, policy: str) -> tuple[DatasetTable, dict[str, Any]]:
    """Relabel ``table`` onto the taxonomy's levels; unmapped rows raise or are dropped (``policy``)."""
    out: dict[str, list[str]] = {lv: [] for lv in taxonomy.levels}
    keep: list[int] = []
    unmapped: Counter[tuple[str, str]] = Counter()
    memo: dict[tuple[str, tuple[str, ...]], dict[str, str] | None] = {}
    own_levels = table.level_names
    for i in range(len(table)):
        row = tuple(table.labels[lv][i] for lv in own_levels)
        key = (table.sources[i], row)
        if key not in memo:
            memo[key] = taxonomy.place(table.sources[i], dict(zip(own_levels, row, strict=True)))
        placed = memo[key]
        if placed is None:
            unmapped[(table.sources[i], " / ".join(row))] += 1
            continue
        keep.append(i)
        for lv in taxonomy.levels:
            out[lv].append(placed[lv])
    info = {
        "labels": [{"source": s, "label": lab, "images": n} for (s, lab), n in sorted(unmapped.items())],
        "images": sum(unmapped.values()),
    }
    if unmapped and policy == "error":
        shown = "; ".join(f"{s}: {lab!r}" for (s, lab), _ in sorted(unmapped.items())[:8])
        more = "" if len(unmapped) <= 8 else f" and {len(unmapped) - 8} more"
        raise DataError(
            f"{len(unmapped)} source labels are not in taxonomy {taxonomy.name!r} ({taxonomy.path}): "
            f"{shown}{more}; "
            "add them (or synonyms) to the taxonomy, or set data.unmapped: drop"
        )
    sub = table.subset(keep)
    sub.labels = out
    return sub, info


def merge_tables(tables: list[DatasetTable], taxonomy_ref: str | None, unmapped: str = "error"
                 ) -> tuple[DatasetTable, dict[str, Any]]:
    """One table from several sources, on the taxonomy's levels when one is given.

    Returns:
        The merged table and a report fragment (taxonomy name/version, unmapped labels).
    """
    info: dict[str, Any] = {}
    class_ids: dict[str, int] = {}
    if taxonomy_ref:
        from ofgr_core.data.taxonomy import load_taxonomy

        taxonomy = load_taxonomy(taxonomy_ref)
        info["taxonomy"] = {"name": taxonomy.name, "version": taxonomy.version, "path": taxonomy.path,
                            "levels": list(taxonomy.levels)}
        mapped, dropped = [], {"labels": [], "images": 0}
        for t in tables:
            m, d = _apply_taxonomy(t, taxonomy, unmapped)
            mapped.append(m)
            dropped["labels"] += d["labels"]
            dropped["images"] += d["images"]
            for name, cid in t.meta.get("class_ids", {}).items():
                class_ids.setdefault(taxonomy.canonical(name), cid)
        if dropped["images"]:
            info["unmapped"] = dropped
        tables = [t for t in mapped if len(t)]
        if not tables:
            raise DataError(f"no image could be placed in taxonomy {taxonomy.name!r}; check data.taxonomy")
    else:
        levels = tables[0].level_names
        for t in tables[1:]:
            if t.level_names != levels:
                raise DataError(
                    f"sources have different label levels ({levels} vs {t.level_names}); "
                    "set data.taxonomy to map them onto one hierarchy"
                )
        for t in tables:
            for name, cid in t.meta.get("class_ids", {}).items():
                class_ids.setdefault(name, cid)
    merged = tables[0] if len(tables) == 1 else DatasetTable.concat(tables)
    merged.meta = {
        "sources": {t.sources[0]: t.meta for t in tables if len(t)},
        **({"class_ids": class_ids} if class_ids else {}),
    }
    return merged, info


# ------------------------------------------------------------------------------------------------ dedup
def find_duplicates(table: DatasetTable, digests: list[str]) -> tuple[list[int], dict[str, Any]]:
    """Rows to drop so each image content appears once.

    Copies with one fine label keep their first row. Copies that disagree on the fine label are all dropped:
    the image cannot be both classes, and if the classes fall on both sides of the seen/unseen boundary the
    copy would leak an unseen image into training.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(digests):
        groups[d].append(i)
    fine = table.labels["fine"]
    drop: list[int] = []
    same, conflict = [], []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        entry = {"ids": [table.ids[i] for i in rows], "fine": sorted({fine[i] for i in rows}),
                 "sources": sorted({table.sources[i] for i in rows})}
        if len({fine[i] for i in rows}) == 1:
            drop.extend(rows[1:])
            same.append(entry)
        else:
            drop.extend(rows)
            conflict.append(entry)
    info = {
        "groups": len(same) + len(conflict),
        "removed": len(drop),
        "cross_source": sum(len(e["sources"]) > 1 for e in same + conflict),
        "conflicting_labels": _cut(conflict),
        "same_label": _cut(same),
    }
    return sorted(drop), info


def _cut(items: list[Any]) -> list[Any]:
    if len(items) <= _LIST_LIMIT:
        return items
    return [*items[:_LIST_LIMIT], f"... {len(items) - _LIST_LIMIT} more"]


# -------------------------------------------------------------------------------------------- summaries
def class_size_histogram(counts: list[int] | np.ndarray) -> dict[str, int]:
    """Number of classes per size bin (``"1"``, ``"2-4"``, ..., ``"500+"``)."""
    out: dict[str, int] = {}
    counts = np.asarray(counts)
    for lo, hi in zip(SIZE_BINS, (*SIZE_BINS[1:], None), strict=True):
        label = f"{lo}+" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}")
        out[label] = int(((counts >= lo) & (counts < hi if hi else True)).sum())
    return out


def describe(table: DatasetTable) -> dict[str, Any]:
    """Counts per level, per split/source/domain, and the fine class-size histogram."""

    def per(column: list[str]) -> dict[str, dict[str, int]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, v in enumerate(column):
            groups[v or "(none)"].append(i)
        return {
            k: {"images": len(rows), "fine_classes": len({table.labels["fine"][i] for i in rows} - {""})}
            for k, rows in sorted(groups.items())
        }

    fine_counts = Counter(f for f in table.labels["fine"] if f)
    out: dict[str, Any] = {
        "images": len(table),
        "levels": {lv: len(set(v) - {""}) for lv, v in table.labels.items()},
        "per_source": per(table.sources),
        "class_size_histogram": class_size_histogram(list(fine_counts.values())),
        "singleton_classes": sorted(c for c, n in fine_counts.items() if n == 1)[:_LIST_LIMIT],
    }
    n_coarse_only = len(table) - sum(fine_counts.values())
    if n_coarse_only:
        out["coarse_only_images"] = n_coarse_only
    if any(table.splits):
        out["per_split"] = per(table.splits)
    if any(table.domains):
        out["per_domain"] = per(table.domains)
    if fine_counts:
        sizes = np.array(list(fine_counts.values()))
        out["images_per_fine_class"] = {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                        "max": int(sizes.max())}
    return out


# ----------------------------------------------------------------------------------------------- loading
def build_tables(cfg: DataConfig) -> list[DatasetTable]:
    """Every source's table, through its adapter; source names must be unique (they prefix item ids)."""
    tables, names = [], Counter()
    for src in cfg.sources:
        t = create_table(src.type, src.root, name=src.name, **src.options)
        if len(t) == 0:
            raise DataError(f"data source {src.name or src.type} ({src.root}) has no images")
        names[t.sources[0]] += 1
        tables.append(t)
    dup = [n for n, k in names.items() if k > 1]
    if dup:
        raise DataError(f"two data sources are named {dup[0]!r}; give each a distinct data.sources[].name")
    return tables


def load_dataset(cfg: DataConfig, *, progress: Progress | None = None, check: bool = True) -> PreparedData:
    """Build, merge, check and de-duplicate every source of ``cfg``.

    Args:
        cfg: the ``data`` config section.
        progress: called with (images checked, total).
        check: decode every image (always on for training; ``ofgr data inspect`` may skip it).

    Raises:
        DataError: a source is missing or empty, labels are unmapped (policy ``error``), or nothing usable
            is left.
    """
    table, merge_info = merge_tables(build_tables(cfg), cfg.taxonomy, cfg.unmapped)
    if len(table) == 0:
        raise DataError("the dataset is empty: no images found in "
                        + ", ".join(str(s.root or s.type) for s in cfg.sources))
    report: dict[str, Any] = {"n_images_found": len(table), **merge_info, "unreadable": [], "warnings": []}
    for name, meta in table.meta["sources"].items():
        report["warnings"] += [f"{name}: {w}" for w in meta.get("warnings", [])]
    if merge_info.get("unmapped"):
        report["warnings"].append(f"{merge_info['unmapped']['images']} images with unmapped labels dropped "
                                  "(data.unmapped: drop)")

    cache_dir = None
    if cfg.cache:
        from ofgr_core.data.cache import default_cache_dir

        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir(
            [s.root for s in cfg.sources])
    checks = (check_images(table.paths, progress, memo_dir=cache_dir) if check
              else [ImageCheck(None) for _ in table.paths])
    bad = [i for i, c in enumerate(checks) if c.reason is not None]
    if bad:
        report["unreadable"] = [{"path": table.paths[i], "id": table.ids[i], "reason": checks[i].reason}
                                for i in bad]
        report["warnings"].append(f"{len(bad)} of {len(table)} images are unreadable and were skipped")
    drop = set(bad)
    if check:
        dup_rows, dup_info = find_duplicates(
            table.subset([i for i in range(len(table)) if i not in drop]),
            [c.digest for i, c in enumerate(checks) if i not in drop],
        )
        kept_rows = [i for i in range(len(table)) if i not in drop]
        dup_info["removed_ids"] = _cut([table.ids[kept_rows[j]] for j in dup_rows])
        if cfg.dedup:
            drop.update(kept_rows[j] for j in dup_rows)
        else:
            dup_info["removed"] = 0
            if dup_info["groups"]:
                report["warnings"].append(
                    f"{dup_info['groups']} groups of identical images kept (data.dedup: false); copies that "
                    "straddle the seen/unseen boundary are removed from training by the split check")
        report["duplicates"] = dup_info
    coarse_only = [i for i in range(len(table)) if not table.labels["fine"][i] and i not in drop]
    if coarse_only:
        report["coarse_only"] = {"images": len(coarse_only), "policy": cfg.coarse_only}
        if cfg.coarse_only == "drop":
            drop.update(coarse_only)
            report["warnings"].append(f"{len(coarse_only)} coarse-only images (no fine label) dropped "
                                      "(data.coarse_only: drop)")
    keep = [i for i in range(len(table)) if i not in drop]
    hashes = {table.ids[i]: checks[i].digest for i in keep if checks[i].digest}
    sizes = [(checks[i].width, checks[i].height) for i in keep]
    table = table.subset(keep)
    if len(table) == 0:
        raise DataError("no usable images left after skipping unreadable files (see data_report.json)")
    table.meta["content_hash"] = hashes
    # the split stage adds its leakage findings here, so keep the report reachable from the table
    table.meta["report"] = report

    fine_classes = set(table.labels["fine"]) - {""}
    report["n_images"] = len(table)
    report["summary"] = describe(table)
    hierarchy = Hierarchy.from_labels(table.labels)
    labels = hierarchy.encode(table.labels)
    if len(fine_classes) < 2:
        report["warnings"].append(f"only {len(fine_classes)} fine class: retrieval needs at least 2")

    if cfg.cache and cfg.image_size and check and cache_dir is not None:
        from ofgr_core.data.cache import ImageCache, register

        try:
            cache = ImageCache(table.paths, sizes, [hashes.get(i, "") for i in table.ids], cache_dir,
                               cfg.image_size)
            register(cache)
            report["cache"] = {"path": str(cache.data_path), "short_side": cache.side}
        except OSError as e:  # no space or read-only: decoding from the files still works
            report["warnings"].append(f"image cache disabled: {e}")
    return PreparedData(table=table, hierarchy=hierarchy, labels=labels, report=report)


# ---------------------------------------------------------------------------------------------- detection
def detect_source(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Guess the format of a dataset at ``path``.

    Returns:
        ``{"type": adapter name, "root": path, "options": {...}, "layout": description}``.

    Raises:
        DataError: nothing recognisable is there.
    """
    from ofgr_core.data.imagefolder import detect_split_dirs
    from ofgr_core.data.openimages import detect_files
    from ofgr_core.data.stanford_cars import detect_layout
    from ofgr_core.data.vehicle10 import CLASSES

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist")
    if p.is_file():
        if p.suffix.lower() in (".csv", ".tsv"):
            return {"type": "manifest", "root": str(p), "options": {}, "layout": "manifest CSV"}
        raise DataError(f"{p}: a file must be a manifest CSV (or a config YAML for `ofgr data inspect`)")
    layout = detect_layout(p)
    if layout:
        return {"type": "stanford_cars", "root": str(p), "options": {}, "layout": f"Stanford Cars ({layout})"}
    oi = detect_files(p)
    if oi["labels"] and oi["descriptions"] and oi["hierarchy"]:
        return {"type": "openimages", "root": str(p), "options": {}, "layout": "OpenImages label CSVs"}
    if (p / "synth.json").is_file() and (p / "manifest.csv").is_file():
        return {"type": "manifest", "root": str(p / "manifest.csv"), "options": {},
                "layout": "manifest CSV (synthetic world)"}
    if (p / "manifest.csv").is_file():
        return {"type": "manifest", "root": str(p / "manifest.csv"), "options": {}, "layout": "manifest CSV"}
    base = p
    split_dirs = detect_split_dirs(p)
    if split_dirs:
        base = next(d for d in sorted(p.iterdir()) if d.is_dir() and not d.name.startswith("."))
    classes = {d.name.lower() for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if classes and classes <= set(CLASSES) and len(classes) >= 3:
        return {"type": "vehicle10", "root": str(p), "options": {}, "layout": "Vehicle-10 class folders"}
    if classes:
        return {"type": "imagefolder", "root": str(p), "options": {},
                "layout": "nested image folders" + (" with train/val/test" if split_dirs else "")}
    raise DataError(
        f"{p}: no known dataset layout (Stanford Cars devkit/CSV, OpenImages CSVs, manifest.csv, folders)"
    )
