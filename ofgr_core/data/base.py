"""The in-memory dataset table every adapter produces and every later stage consumes.

An adapter turns a source on disk (Stanford Cars devkit, an image folder, a manifest CSV, the synthetic world, ...)
into a :class:`DatasetTable`: one row per image, with labels at every hierarchy level as strings. Merging,
taxonomy mapping, de-duplication and splitting all work on tables; only the loader opens image files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ofgr_core.common.registry import Registry

LEVELS = ("fine", "coarse")  # level 0 = finest; an optional third level "super" may follow


@dataclass
class DatasetTable:
    """Columnar image table.

    Attributes:
        paths: absolute image paths.
        labels: level name -> label per image, finest level first (``fine``, ``coarse``, optional ``super``).
        ids: unique, stable item ids (``<source>:<relative path>``), used for self-match exclusion and splits.
        sources: the source name each image came from.
        domains: optional domain value per image ("" when absent), for cross-domain protocols.
        captions: optional caption per image ("" when absent).
        splits: optional split value given by the source ("" when absent): ``train``/``test``/``query``/...
        groups: optional group id per image ("" when absent): images of one photo/sequence.
        meta: free-form per-table metadata (source formats, report entries).
    """

    paths: list[str]
    labels: dict[str, list[str]]
    ids: list[str]
    sources: list[str]
    domains: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.paths)
        for name in ("domains", "captions", "splits", "groups"):
            col = getattr(self, name)
            if not col:
                setattr(self, name, [""] * n)
        for name, col in {
            "ids": self.ids,
            "sources": self.sources,
            "domains": self.domains,
            "captions": self.captions,
            "splits": self.splits,
            "groups": self.groups,
            **{f"labels[{k}]": v for k, v in self.labels.items()},
        }.items():
            if len(col) != n:
                raise ValueError(f"DatasetTable column {name} has {len(col)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def level_names(self) -> list[str]:
        return list(self.labels)

    def subset(self, index: np.ndarray | list[int]) -> DatasetTable:
        idx = np.asarray(index, dtype=np.int64)

        def take(col: list[str]) -> list[str]:
            return [col[i] for i in idx]

        return replace(
            self,
            paths=take(self.paths),
            labels={k: take(v) for k, v in self.labels.items()},
            ids=take(self.ids),
            sources=take(self.sources),
            domains=take(self.domains),
            captions=take(self.captions),
            splits=take(self.splits),
            groups=take(self.groups),
            meta=dict(self.meta),
        )

    @staticmethod
    def concat(tables: list[DatasetTable]) -> DatasetTable:
        if not tables:
            raise ValueError("nothing to concatenate")
        levels = tables[0].level_names
        for t in tables[1:]:
            if t.level_names != levels:
                raise ValueError(f"cannot merge tables with levels {levels} and {t.level_names}")
        cat: Callable[[str], list[str]] = lambda name: [x for t in tables for x in getattr(t, name)]  # noqa: E731
        return DatasetTable(
            paths=cat("paths"),
            labels={lv: [x for t in tables for x in t.labels[lv]] for lv in levels},
            ids=cat("ids"),
            sources=cat("sources"),
            domains=cat("domains"),
            captions=cat("captions"),
            splits=cat("splits"),
            groups=cat("groups"),
            meta={"parts": [t.meta for t in tables]},
        )

    def to_rows(self) -> list[dict[str, str]]:
        rows = []
        for i in range(len(self)):
            row = {"id": self.ids[i], "path": self.paths[i]}
            row.update({lv: self.labels[lv][i] for lv in self.labels})
            row.update(
                source=self.sources[i],
                domain=self.domains[i],
                caption=self.captions[i],
                split=self.splits[i],
                group=self.groups[i],
            )
            rows.append(row)
        return rows


# An adapter factory: (root, name, **options) -> DatasetTable. Options are validated by the adapter.
ADAPTERS: Registry[DatasetTable] = Registry("dataset type")


def create_table(type: str, root: str | None, name: str | None = None, **options: Any) -> DatasetTable:
    """Build the table of one source via the adapter registered under ``type`` (importing any module of
    ``ofgr_core.data`` runs the package's ``__init__``, which registers the built-in adapters)."""
    return ADAPTERS.create(type, root=root, name=name, **options)
