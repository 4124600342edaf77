"""From the ``data`` config section to one validated, merged dataset.

``load_dataset`` builds every source's table through its adapter, merges them, checks the images can be
decoded (unreadable files are skipped and reported, never a crash mid-run) and encodes labels.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ofgr_core.config import DataConfig
from ofgr_core.data.base import DatasetTable, create_table
from ofgr_core.errors import DataError
from ofgr_core.hierarchy import Hierarchy

Progress = Callable[[int, int], None]


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


def check_image(path: str) -> str | None:
    """Fully decode one image; return the reason it is unusable, or None."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except FileNotFoundError:
        return "missing file"
    except Exception as e:  # PIL raises many types for corrupt/truncated/non-image files
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return None


def find_unreadable(paths: list[str], progress: Progress | None = None, workers: int = 4) -> dict[int, str]:
    """Indices of images that cannot be decoded, with the reason."""
    bad: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, reason in enumerate(pool.map(check_image, paths, chunksize=64)):
            if reason is not None:
                bad[i] = reason
            if progress is not None and (i + 1) % 500 == 0:
                progress(i + 1, len(paths))
    if progress is not None:
        progress(len(paths), len(paths))
    return bad


def load_dataset(cfg: DataConfig, *, progress: Progress | None = None) -> PreparedData:
    """Build, merge and validate every source of ``cfg``."""
    tables = [
        create_table(src.type, src.root, name=src.name, **src.options) for src in cfg.sources
    ]
    table = tables[0] if len(tables) == 1 else DatasetTable.concat(tables)
    if len(table) == 0:
        raise DataError("the dataset is empty: no images found in " + ", ".join(
            str(s.root or s.type) for s in cfg.sources))
    report: dict[str, Any] = {"n_images_found": len(table), "unreadable": [], "warnings": []}
    bad = find_unreadable(table.paths, progress)
    if bad:
        report["unreadable"] = [{"path": table.paths[i], "reason": r} for i, r in sorted(bad.items())]
        keep = np.array([i for i in range(len(table)) if i not in bad], dtype=np.int64)
        table = table.subset(keep)
    report["n_images"] = len(table)
    hierarchy = Hierarchy.from_labels(table.labels)
    labels = hierarchy.encode(table.labels)
    return PreparedData(table=table, hierarchy=hierarchy, labels=labels, report=report)
