"""Class-disjoint open-set splits.

Fine classes are divided into ``train`` (seen, used for training), ``val`` (seen-side classes held out of
training for model selection) and ``unseen`` (never touched until the final evaluation). Images of the
training classes are further divided into training images and a ``seen`` test set, so seen-class retrieval is
measured on images the model did not train on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofgr_core.config import SplitConfig
from ofgr_core.data.base import DatasetTable
from ofgr_core.errors import DataError
from ofgr_core.hierarchy import Hierarchy

PARTS = ("train", "val", "seen", "unseen")


@dataclass
class Split:
    """Row indices (into the dataset table) and fine class names of each part."""

    indices: dict[str, np.ndarray]
    classes: dict[str, list[str]]
    protocol: str
    seed: int

    def query_gallery(self, part: str, table: DatasetTable) -> tuple[np.ndarray, np.ndarray]:
        """Boolean query and gallery masks over ``indices[part]`` for the query protocol.

        The default protocol is leave-one-out: every image is a query and the gallery is every other image.
        """
        n = len(self.indices[part])
        return np.ones(n, dtype=bool), np.ones(n, dtype=bool)

    def to_json(self, table: DatasetTable) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "seed": self.seed,
            "classes": self.classes,
            "ids": {p: [table.ids[i] for i in self.indices[p]] for p in PARTS},
            "counts": {p: int(len(self.indices[p])) for p in PARTS},
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], table: DatasetTable) -> Split:
        row = {id_: i for i, id_ in enumerate(table.ids)}
        indices = {}
        for p in PARTS:
            ids = obj["ids"].get(p, [])
            missing = [i for i in ids if i not in row]
            if missing:
                raise DataError(
                    f"reused split: {len(missing)} {p} image ids are not in this dataset "
                    f"(first: {missing[0]!r}); the datasets differ"
                )
            indices[p] = np.array([row[i] for i in ids], dtype=np.int64)
        return cls(indices, {k: list(v) for k, v in obj["classes"].items()}, obj["protocol"], int(obj["seed"]))


def _stratified_class_split(
    hierarchy: Hierarchy, fine_ids: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split fine classes per coarse class so each coarse class with >= 2 fine classes lands on both sides."""
    parents = np.asarray(hierarchy.parents[0]) if hierarchy.parents else np.zeros(hierarchy.num_classes(0), int)
    held, kept = [], []
    for coarse in np.unique(parents[fine_ids]):
        members = fine_ids[parents[fine_ids] == coarse]
        members = members[rng.permutation(len(members))]
        if len(members) >= 2:
            n = int(round(fraction * len(members)))
            n = min(max(n, 1), len(members) - 1)
        else:
            n = int(rng.random() < fraction)
        held.extend(members[:n])
        kept.extend(members[n:])
    return np.sort(np.array(held, dtype=np.int64)), np.sort(np.array(kept, dtype=np.int64))


def make_split(
    table: DatasetTable, hierarchy: Hierarchy, labels: np.ndarray, cfg: SplitConfig, seed: int
) -> Split:
    """Resolve the open-set split described by ``cfg``."""
    seed = cfg.seed if cfg.seed is not None else seed
    if cfg.reuse:
        path = Path(cfg.reuse)
        path = path / "split.json" if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"split.reuse: {path} not found (give a run folder or a split.json)")
        return Split.from_json(json.loads(path.read_text()), table)
    rng = np.random.default_rng(seed)
    all_fine = np.arange(hierarchy.num_classes(0))
    if cfg.protocol == "random":
        unseen, seen = _stratified_class_split(hierarchy, all_fine, cfg.unseen_fraction, rng)
    else:
        raise DataError(f"split.protocol={cfg.protocol!r} is not available yet")
    val, train = (
        _stratified_class_split(hierarchy, seen, cfg.val_fraction, rng) if cfg.val_fraction > 0
        else (np.array([], np.int64), seen)
    )
    return _finish(table, hierarchy, labels, train, val, unseen, cfg.protocol, seed, rng)


def _finish(
    table: DatasetTable,
    hierarchy: Hierarchy,
    labels: np.ndarray,
    train_cls: np.ndarray,
    val_cls: np.ndarray,
    unseen_cls: np.ndarray,
    protocol: str,
    seed: int,
    rng: np.random.Generator,
    seen_test_fraction: float = 0.2,
) -> Split:
    fine = labels[:, 0]
    in_train = np.isin(fine, train_cls)
    # seen test images: the source's own test split when it has one, else a per-class fraction
    given = np.array([s in ("test", "query", "gallery") for s in table.splits])
    train_rows, seen_rows = [], []
    for c in train_cls:
        rows = np.flatnonzero(in_train & (fine == c))
        if given[rows].any() and (~given[rows]).any():
            seen_rows.extend(rows[given[rows]])
            train_rows.extend(rows[~given[rows]])
            continue
        rows = rows[rng.permutation(len(rows))]
        n_test = int(len(rows) * seen_test_fraction) if len(rows) >= 5 else 0
        seen_rows.extend(rows[:n_test])
        train_rows.extend(rows[n_test:])
    names = hierarchy.classes[0]
    split = Split(
        indices={
            "train": np.sort(np.array(train_rows, dtype=np.int64)),
            "val": np.flatnonzero(np.isin(fine, val_cls)),
            "seen": np.sort(np.array(seen_rows, dtype=np.int64)),
            "unseen": np.flatnonzero(np.isin(fine, unseen_cls)),
        },
        classes={
            "train": [names[c] for c in train_cls],
            "val": [names[c] for c in val_cls],
            "unseen": [names[c] for c in unseen_cls],
        },
        protocol=protocol,
        seed=seed,
    )
    check_split(split, labels)
    return split


def check_split(split: Split, labels: np.ndarray) -> None:
    """Refuse splits that leak unseen classes into training or leave nothing to evaluate."""
    fine = labels[:, 0]
    leaked = np.intersect1d(fine[split.indices["train"]], fine[split.indices["unseen"]])
    if len(leaked):
        raise DataError(f"split leaks {len(leaked)} unseen fine classes into training")
    if len(split.indices["train"]) == 0:
        raise DataError("split has no training images; lower split.unseen_fraction or add data")
    _, counts = np.unique(fine[split.indices["unseen"]], return_counts=True)
    if (counts >= 2).sum() == 0:
        raise DataError(
            "split has zero usable unseen queries (every unseen class needs >= 2 images); "
            "add images or raise split.unseen_fraction"
        )


def save_split(split: Split, table: DatasetTable, path: str | os.PathLike[str]) -> None:
    from ofgr_core.runs import atomic_write_json

    atomic_write_json(path, split.to_json(table))
