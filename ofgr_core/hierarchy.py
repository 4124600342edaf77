"""Label hierarchy: string labels per level -> (N, L) integer arrays, level 0 = finest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ofgr_core.errors import DataError


@dataclass(frozen=True)
class Hierarchy:
    """Class names per level and the parent of each class at the next level up.

    Attributes:
        level_names: e.g. ("fine", "coarse"), finest first.
        classes: per level, the sorted class names; a class's integer id is its position.
        parents: per level except the last, ``parents[l][c]`` is the id at level ``l+1`` of class ``c``.
    """

    level_names: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]
    parents: tuple[tuple[int, ...], ...]

    @classmethod
    def from_labels(cls, labels: dict[str, list[str]]) -> Hierarchy:
        """Build from per-level string columns; each fine class must have exactly one parent."""
        names = tuple(labels)
        classes = tuple(tuple(sorted(set(labels[lv]))) for lv in names)
        parents = []
        for lvl in range(len(names) - 1):
            child, parent = labels[names[lvl]], labels[names[lvl + 1]]
            pid = {c: i for i, c in enumerate(classes[lvl + 1])}
            seen: dict[str, str] = {}
            for c, p in zip(child, parent, strict=True):
                if seen.setdefault(c, p) != p:
                    raise DataError(
                        f"{names[lvl]} class {c!r} has two {names[lvl + 1]} parents ({seen[c]!r} and {p!r}); "
                        "fix the taxonomy so every class has one parent"
                    )
            parents.append(tuple(pid[seen[c]] for c in classes[lvl]))
        return cls(names, classes, tuple(parents))

    def encode(self, labels: dict[str, list[str]]) -> np.ndarray:
        """String columns -> (N, L) int64 array in this hierarchy's ids (unknown names raise DataError)."""
        cols = []
        for lvl, lv in enumerate(self.level_names):
            index = {c: i for i, c in enumerate(self.classes[lvl])}
            try:
                cols.append(np.fromiter((index[x] for x in labels[lv]), dtype=np.int64, count=len(labels[lv])))
            except KeyError as e:
                raise DataError(f"{lv} label {e.args[0]!r} is not in the hierarchy") from None
        return np.stack(cols, axis=1)

    def num_classes(self, level: int = 0) -> int:
        return len(self.classes[level])
