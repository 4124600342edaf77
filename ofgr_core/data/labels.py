"""Label hierarchy: string labels per level -> (N, L) integer arrays, level 0 = finest.

A row whose fine label is empty (``""``) is *coarse-only*: its class is known at the coarser levels but not at
the fine one. It is encoded with fine id :data:`COARSE_ONLY` (-1); the fine level's classes never include it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ofgr_core.common.errors import DataError

COARSE_ONLY = -1  # fine id of a row whose fine label is missing ("")


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
        """Build from per-level string columns; each fine class must have exactly one parent.

        Empty fine labels (coarse-only rows) are not a class; only the fine level may have them.
        """
        names = tuple(labels)
        for lv in names[1:]:
            if any(not x for x in labels[lv]):
                raise DataError(f"{sum(not x for x in labels[lv])} rows have an empty {lv!r} label; only the "
                                "fine label may be missing (a coarse-only image)")
        classes = tuple(tuple(sorted(set(labels[lv]) - {""})) for lv in names)
        parents = []
        for lvl in range(len(names) - 1):
            child, parent = labels[names[lvl]], labels[names[lvl + 1]]
            pid = {c: i for i, c in enumerate(classes[lvl + 1])}
            seen: dict[str, str] = {}
            for c, p in zip(child, parent, strict=True):
                if not c:
                    continue
                if seen.setdefault(c, p) != p:
                    raise DataError(
                        f"{names[lvl]} class {c!r} has two {names[lvl + 1]} parents ({seen[c]!r} and {p!r}); "
                        "fix the taxonomy so every class has one parent"
                    )
            parents.append(tuple(pid[seen[c]] for c in classes[lvl]))
        return cls(names, classes, tuple(parents))

    def encode(self, labels: dict[str, list[str]]) -> np.ndarray:
        """String columns -> (N, L) int64 array in this hierarchy's ids (unknown names raise DataError).

        An empty fine label becomes :data:`COARSE_ONLY`.
        """
        cols = []
        for lvl, lv in enumerate(self.level_names):
            index = {c: i for i, c in enumerate(self.classes[lvl])}
            if lvl == 0:
                index[""] = COARSE_ONLY
            try:
                cols.append(np.fromiter((index[x] for x in labels[lv]), dtype=np.int64, count=len(labels[lv])))
            except KeyError as e:
                raise DataError(f"{lv} label {e.args[0]!r} is not in the hierarchy") from None
        return np.stack(cols, axis=1)

    def num_classes(self, level: int = 0) -> int:
        return len(self.classes[level])


def training_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous training ids for the rows of a training set, as losses and samplers need them.

    Args:
        labels: ``(N, L)`` hierarchy ids of the training rows (fine :data:`COARSE_ONLY` allowed).

    Returns:
        ``(fine_classes, train_labels)``: the sorted hierarchy fine ids present (ArcFace's classes are their
        positions) and an ``(N, 2)`` array: column 0 the position of each row's fine class in
        ``fine_classes`` (:data:`COARSE_ONLY` kept), column 1 the coarse id (0 for single-level labels).
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    fine = labels[:, 0]
    known = fine != COARSE_ONLY
    classes = np.unique(fine[known])
    dense = np.where(known, np.searchsorted(classes, fine), COARSE_ONLY).astype(np.int64)
    coarse = labels[:, 1] if labels.shape[1] > 1 else np.zeros(len(fine), dtype=np.int64)
    return classes, np.stack([dense, coarse.astype(np.int64)], axis=1)
