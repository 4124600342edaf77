"""Vehicle-10: one folder per class (bicycle, boat, bus, car, helicopter, minibus, motorcycle, taxi, train,
truck), optionally inside ``train``/``test`` folders.

Fine = the class folder; coarse = its vehicle family from the shipped ``vehicle10`` taxonomy (or
``options.taxonomy``). A class folder the taxonomy does not know is an error naming it.
"""

from __future__ import annotations

from typing import Any

from ofgr_core.common.errors import DataError
from ofgr_core.data.base import ADAPTERS, DatasetTable
from ofgr_core.data.common import Options, parse_options, relative_id, require_root
from ofgr_core.data.imagefolder import detect_split_dirs, scan
from ofgr_core.data.taxonomy import load_taxonomy

CLASSES = ("bicycle", "boat", "bus", "car", "helicopter", "minibus", "motorcycle", "taxi", "train", "truck")


class Vehicle10Options(Options):
    taxonomy: str = "vehicle10"  # maps the class folders to coarse families
    split_dirs: bool | None = None  # None: detect train/test top folders


@ADAPTERS.register("vehicle10")
def vehicle10_adapter(root: str | None = None, name: str | None = None, **options: Any) -> DatasetTable:
    """Adapter: the Vehicle-10 folder layout."""
    opts = parse_options(Vehicle10Options, options, "vehicle10")
    base = require_root(root, "vehicle10")
    name = name or "vehicle10"
    split_dirs = detect_split_dirs(base) if opts.split_dirs is None else opts.split_dirs
    rows, depth = scan(base, split_dirs, f"vehicle10 {base}")
    if depth != 1:
        raise DataError(f"vehicle10 {base}: expected <class>/<image> (optionally under train/test), "
                        f"found images {depth} folders deep; use type: imagefolder for nested folders")
    taxonomy = load_taxonomy(opts.taxonomy)
    fine, coarse, unknown = [], [], set()
    for _, parts, _ in rows:
        placed = taxonomy.place(name, {"fine": parts[0]})
        if placed is None:
            unknown.add(parts[0])
            continue
        fine.append(parts[0])
        coarse.append(placed["coarse"])
    if unknown:
        raise DataError(
            f"vehicle10 {base}: class folder(s) {', '.join(sorted(unknown))} are not in taxonomy "
            f"{opts.taxonomy!r} (known: {', '.join(CLASSES)}); rename them or give options.taxonomy"
        )
    n = len(rows)
    return DatasetTable(
        paths=[str(p) for _, _, p in rows],
        labels={"fine": fine, "coarse": coarse},
        ids=[relative_id(name, base, p) for _, _, p in rows],
        sources=[name] * n,
        splits=[s for s, _, _ in rows],
        meta={"format": "vehicle10", "root": str(base), "taxonomy": f"{taxonomy.name} v{taxonomy.version}"},
    )
