"""Class-disjoint open-set splits, query/gallery protocols, and the checks that keep them honest.

Fine classes are divided into ``train`` (seen, used for training), ``val`` (seen-side classes held out of
training for model selection; never unseen ones) and ``unseen`` (never touched until the final evaluation).
Images of the training classes are further divided into training images and a ``seen`` test set, so seen-class
retrieval is measured on images the model did not train on.

Protocols (``split.protocol``):

* ``random``: a seeded fraction of fine classes is unseen, stratified by coarse class so every coarse class
  with at least two fine classes has fine classes on both sides;
* ``cars196``: Stanford Cars classes 1-98 are seen, 99-196 unseen (the standard open-set benchmark);
* ``file``: explicit ``seen``/``unseen`` (optional ``val``) class lists (``split.file`` or ``split.unseen``);
* ``manifest``: the manifest's ``split`` column (``train``, ``val``, ``seen``, ``unseen``/``test``,
  ``query``, ``gallery``), which must itself be class-disjoint.

Query/gallery protocols (``split.query``): ``leave_one_out`` (every image queries all others of its part),
``files`` (explicit query and gallery lists), ``cross_domain`` (queries from ``split.query_domain``, gallery
from the other domains) and ``manifest`` (rows marked ``query``/``gallery``). Queries without a positive in
their gallery cannot be scored and are excluded and counted.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.common.textio import read_text, read_yaml_file
from ofgr_core.config import SplitConfig
from ofgr_core.data.base import DatasetTable
from ofgr_core.data.labels import COARSE_ONLY, Hierarchy

PARTS = ("train", "val", "seen", "unseen")
CARS196_SEEN_MAX = 98  # Stanford Cars class ids 1..98 are seen, 99..196 unseen

# manifest split values -> role; "test" is the usual name of held-out classes in other tools
_MANIFEST_ROLES = {"train": "train", "val": "val", "seen": "seen", "unseen": "unseen", "test": "unseen",
                   "query": "unseen", "gallery": "unseen"}


@dataclass
class Split:
    """Row indices (into the dataset table) and fine class names of each part, plus the query protocol.

    Attributes:
        indices: part -> sorted row indices.
        classes: ``train``/``val``/``unseen`` -> fine class names.
        protocol: the class split protocol that produced it.
        seed: the seed used.
        query: the query/gallery protocol (see :meth:`query_gallery`).
        query_ids: ``files``/``manifest`` protocols: ids of query images.
        gallery_ids: ``files``/``manifest`` protocols: ids of gallery images (empty = the whole part).
        query_domain: ``cross_domain``: the domain queries come from.
        report: what the split removed or excluded and why (merged into the data report).
    """

    indices: dict[str, np.ndarray]
    classes: dict[str, list[str]]
    protocol: str
    seed: int
    query: str = "leave_one_out"
    query_ids: list[str] = field(default_factory=list)
    gallery_ids: list[str] = field(default_factory=list)
    query_domain: str | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def query_gallery(self, part: str, table: DatasetTable) -> tuple[np.ndarray, np.ndarray]:
        """Boolean query and gallery masks over ``indices[part]`` for the query protocol.

        A query must have at least one image of its fine class in the gallery besides itself; queries that do
        not are left out of the query mask (counted by :meth:`excluded_queries`). Coarse-only images (no fine
        label) are never queries; they stay in the gallery, where they can only match at the coarse level.
        """
        q, g = self._raw_masks(part, table)
        idx = self.indices[part]
        if len(idx) == 0:
            return q, g
        fine = [table.labels["fine"][i] for i in idx]
        q = q & np.fromiter((bool(f) for f in fine), dtype=bool, count=len(fine))
        classes, inverse = np.unique(np.asarray(fine, dtype=object), return_inverse=True)
        # positives of a query: gallery images of its class, minus itself when it is in the gallery too
        in_gallery = np.bincount(inverse[g], minlength=len(classes))
        positives = in_gallery[inverse] - (q & g).astype(np.int64)
        return q & (positives > 0), g

    def excluded_queries(self, part: str, table: DatasetTable) -> int:
        """Queries of the protocol that have no positive in their gallery (e.g. a class with one image)."""
        q, _ = self._raw_masks(part, table)
        q2, _ = self.query_gallery(part, table)
        return int(q.sum() - q2.sum())

    def _raw_masks(self, part: str, table: DatasetTable) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices[part]
        n = len(idx)
        if self.query == "leave_one_out":
            return np.ones(n, dtype=bool), np.ones(n, dtype=bool)
        if self.query == "cross_domain":
            dom = np.asarray([table.domains[i] for i in idx], dtype=object)
            q = dom == self.query_domain
            return q, ~q
        ids = [table.ids[i] for i in idx]
        qset = set(self.query_ids)
        q = np.fromiter((i in qset for i in ids), dtype=bool, count=n)
        if self.gallery_ids:
            gset = set(self.gallery_ids)
            g = np.fromiter((i in gset for i in ids), dtype=bool, count=n)
        else:
            g = np.ones(n, dtype=bool)
        if part == "seen" and not q.any():
            # explicit lists usually name unseen images only; seen classes fall back to leave-one-out
            return np.ones(n, dtype=bool), np.ones(n, dtype=bool)
        return q, g

    def to_json(self, table: DatasetTable) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "seed": self.seed,
            "query": self.query,
            "query_domain": self.query_domain,
            "classes": self.classes,
            "ids": {p: [table.ids[i] for i in self.indices[p]] for p in PARTS},
            "query_ids": self.query_ids,
            "gallery_ids": self.gallery_ids,
            "counts": {p: int(len(self.indices[p])) for p in PARTS},
            "report": self.report,
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
        return cls(
            indices,
            {k: list(v) for k, v in obj["classes"].items()},
            obj["protocol"],
            int(obj["seed"]),
            query=obj.get("query", "leave_one_out"),
            query_ids=list(obj.get("query_ids", [])),
            gallery_ids=list(obj.get("gallery_ids", [])),
            query_domain=obj.get("query_domain"),
            report=dict(obj.get("report", {})),
        )


def _split_doc_problem(obj: Any) -> str | None:
    """What is wrong with a split.json document (None when it has the shape ``Split.to_json`` writes)."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for key, kind in (("ids", dict), ("classes", dict), ("protocol", str)):
        if not isinstance(obj.get(key), kind):
            return f"{key!r} must be a {'mapping' if kind is dict else 'string'}, got {type(obj.get(key)).__name__}"
    seed = obj.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f"'seed' must be an integer, got {type(seed).__name__}"
    for key in ("ids", "classes"):
        for part, values in obj[key].items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                return f"{key}.{part} must be a list of strings"
    for key in ("query_ids", "gallery_ids"):
        values = obj.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return f"{key!r} must be a list of strings"
    if not isinstance(obj.get("report", {}), dict):
        return "'report' must be a mapping"
    if not isinstance(obj.get("query", "leave_one_out"), str):
        return "'query' must be a string"
    return None


def read_split(path: str | Path, table: DatasetTable) -> Split:
    """A split saved by :func:`save_split` (``split.json``), checked before use: a file that is not JSON, or
    JSON of another shape, is one ``DataError`` naming the file and the key."""
    from ofgr_core.common.textio import read_json_file

    obj = read_json_file(path, what="split file")
    problem = _split_doc_problem(obj)
    if problem is not None:
        raise DataError(f"{path}: not a split saved by ofgr ({problem})")
    return Split.from_json(obj, table)


# ------------------------------------------------------------------------------------------ class splits
def _stratified_class_split(
    hierarchy: Hierarchy, fine_ids: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split fine classes per coarse class so each coarse class with >= 2 fine classes lands on both sides."""
    n_fine = hierarchy.num_classes(0)
    parents = np.asarray(hierarchy.parents[0]) if hierarchy.parents else np.zeros(n_fine, int)
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


def _class_ids(hierarchy: Hierarchy, names: list[str], what: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(hierarchy.classes[0])}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise DataError(f"{what}: {len(unknown)} fine classes are not in the dataset (first: {unknown[0]!r})")
    return np.array(sorted({index[n] for n in names}), dtype=np.int64)


def _cars196(table: DatasetTable, hierarchy: Hierarchy) -> tuple[np.ndarray, np.ndarray]:
    ids = table.meta.get("class_ids")
    if not ids:
        raise DataError("split.protocol=cars196 needs a stanford_cars source (class ids 1-196); "
                        "use protocol: random for other data")
    names = hierarchy.classes[0]
    other = [c for c in names if c not in ids]
    if other:
        raise DataError(f"split.protocol=cars196: {len(other)} fine classes are not Stanford Cars classes "
                        f"(first: {other[0]!r}); cars196 applies to Stanford Cars alone")
    seen = np.array([i for i, c in enumerate(names) if ids[c] <= CARS196_SEEN_MAX], dtype=np.int64)
    unseen = np.array([i for i, c in enumerate(names) if ids[c] > CARS196_SEEN_MAX], dtype=np.int64)
    return unseen, seen


def _read_class_lists(path: str) -> dict[str, list[str]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"split.file: {p} not found")
    obj = read_yaml_file(p, error=ConfigError, what="split file")  # YAML is a superset of JSON
    if not isinstance(obj, dict) or "unseen" not in obj:
        raise ConfigError(f"split.file: {p} must map 'unseen' (and 'seen', optional 'val') to class lists")
    extra = set(obj) - {"seen", "unseen", "val"}
    if extra:
        raise ConfigError(f"split.file: {p}: unknown key(s) {sorted(extra)} (valid: seen, unseen, val)")
    return {k: [str(c) for c in (obj.get(k) or [])] for k in ("seen", "unseen", "val")}


def _from_manifest(table: DatasetTable, hierarchy: Hierarchy, labels: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, unseen) class ids from the manifest's per-image split column."""
    if not any(table.splits):
        raise DataError("split.protocol=manifest: the dataset has no split column; add one or use random")
    roles: dict[int, set[str]] = {}
    bad = sorted({s for s in table.splits if s not in _MANIFEST_ROLES})
    if bad:
        raise DataError(f"split.protocol=manifest: unknown split value(s) {bad} "
                        f"(valid: {', '.join(_MANIFEST_ROLES)})")
    for c, s in zip(labels[:, 0], table.splits, strict=True):
        if c == COARSE_ONLY:
            continue  # placed by split.coarse_only, not by the manifest
        role = _MANIFEST_ROLES[s]
        roles.setdefault(int(c), set()).add("train" if role == "seen" else role)
    names = hierarchy.classes[0]
    mixed = [names[c] for c, r in roles.items() if len(r) > 1]
    if mixed:
        raise DataError(f"split.protocol=manifest: {len(mixed)} fine classes have images in more than one of "
                        f"train/val/unseen (first: {mixed[0]!r}); the split column must be class-disjoint")
    def pick(role: str) -> np.ndarray:
        return np.array(sorted(c for c, r in roles.items() if role in r), dtype=np.int64)

    return pick("train"), pick("val"), pick("unseen")


# ----------------------------------------------------------------------------------------- query lists
def _read_id_list(path: str, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"split.{what}: {p} not found")
    text = read_text(p, error=ConfigError, what=f"split.{what} list")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if "id" in header or "path" in header:  # a CSV with a header; plain lists hold one id or path per line
        key = "id" if "id" in header else "path"
        return [r[key].strip() for r in csv.DictReader(lines)]
    if "," in (lines[0] if lines else ""):
        raise ConfigError(f"split.{what}: {p}: a CSV list needs an 'id' or 'path' column")
    return lines


def _resolve_ids(entries: list[str], table: DatasetTable, what: str) -> list[str]:
    """Item ids for entries given as ids, absolute paths, or paths relative to a source root."""
    by_id = set(table.ids)
    by_path = {os.path.normpath(p): i for p, i in zip(table.paths, table.ids, strict=True)}
    by_suffix: dict[str, str] = {}
    for i in table.ids:
        by_suffix.setdefault(i.split(":", 1)[-1], i)
    out: list[str] = []
    unknown: list[str] = []
    for e in entries:
        hit = e if e in by_id else by_path.get(os.path.normpath(e)) or by_suffix.get(Path(e).as_posix())
        (out if hit else unknown).append(hit or e)
    if unknown:
        raise DataError(f"split.{what}: {len(unknown)} entries match no image (first: {unknown[0]!r})")
    return out


# ------------------------------------------------------------------------------------------------- make
def make_split(
    table: DatasetTable, hierarchy: Hierarchy, labels: np.ndarray, cfg: SplitConfig, seed: int,
    *, ks: list[int] | None = None,
) -> Split:
    """Resolve the open-set split described by ``cfg``.

    Args:
        table: the dataset.
        hierarchy: its class names.
        labels: (N, L) encoded labels, column 0 = fine.
        cfg: the ``split`` config section.
        seed: the run's seed (``cfg.seed`` overrides it).
        ks: evaluation cut-offs; when given, K larger than a gallery is warned about.

    Raises:
        DataError: the split is impossible or leaks (see :func:`check_split`).
    """
    seed = cfg.seed if cfg.seed is not None else seed
    if cfg.reuse:
        path = Path(cfg.reuse)
        path = path / "split.json" if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"split.reuse: {path} not found (give a run folder or a split.json)")
        split = read_split(path, table)
        split.report.setdefault("reused_from", str(path))
        check_split(split, labels, table=table, ks=ks)
        return split
    rng = np.random.default_rng(seed)
    all_fine = np.arange(hierarchy.num_classes(0))
    val: np.ndarray | None = None
    report: dict[str, Any] = {"warnings": []}
    if cfg.protocol == "random":
        unseen, seen = _stratified_class_split(hierarchy, all_fine, cfg.unseen_fraction, rng)
    elif cfg.protocol == "cars196":
        unseen, seen = _cars196(table, hierarchy)
    elif cfg.protocol == "file":
        if cfg.file:
            lists = _read_class_lists(cfg.file)
        elif cfg.unseen:
            lists = {"unseen": list(cfg.unseen), "seen": [], "val": []}
        else:
            raise ConfigError("split.protocol=file needs split.file (class lists) or split.unseen (a list)")
        unseen = _class_ids(hierarchy, lists["unseen"], "split.file unseen")
        if lists["seen"]:
            seen = _class_ids(hierarchy, lists["seen"], "split.file seen")
        else:  # only the unseen list given: every other class is seen
            seen = np.setdiff1d(all_fine, unseen)
        if lists["val"]:
            val = _class_ids(hierarchy, lists["val"], "split.file val")
            seen = np.setdiff1d(seen, val)
        both = np.intersect1d(seen, unseen)
        if len(both):
            raise DataError(f"split.file: {len(both)} classes are both seen and unseen "
                            f"(first: {hierarchy.classes[0][both[0]]!r})")
        used = [seen, unseen] + ([val] if val is not None else [])
        unlisted = np.setdiff1d(all_fine, np.concatenate(used))
        if len(unlisted):
            report["warnings"].append(f"{len(unlisted)} fine classes are in no list and are not used")
    elif cfg.protocol == "manifest":
        seen, val, unseen = _from_manifest(table, hierarchy, labels)
    else:  # pragma: no cover - the config schema restricts the values
        raise ConfigError(f"split.protocol={cfg.protocol!r} is unknown")
    if val is None:
        val, train = (
            _stratified_class_split(hierarchy, seen, cfg.val_fraction, rng) if cfg.val_fraction > 0
            else (np.array([], np.int64), seen)
        )
    else:
        train = seen
    split = _finish(table, hierarchy, labels, train, val, unseen, cfg, seed, rng, report)
    _remove_hash_leaks(split, table)
    check_split(split, labels, table=table, ks=ks)
    table_report = table.meta.get("report")
    if isinstance(table_report, dict):
        table_report["split"] = split.report
    return split


def _finish(
    table: DatasetTable,
    hierarchy: Hierarchy,
    labels: np.ndarray,
    train_cls: np.ndarray,
    val_cls: np.ndarray,
    unseen_cls: np.ndarray,
    cfg: SplitConfig,
    seed: int,
    rng: np.random.Generator,
    report: dict[str, Any],
) -> Split:
    fine = labels[:, 0]
    in_train = np.isin(fine, train_cls)
    if cfg.protocol == "manifest":
        # the manifest says which seen-class images are test images
        marked = np.array([s == "seen" for s in table.splits])
        train_rows, seen_rows = np.flatnonzero(in_train & ~marked), np.flatnonzero(in_train & marked)
    else:
        # seen test images: the source's own test split when a class has one, else a per-class fraction
        given = np.array([s in ("test", "query", "gallery") for s in table.splits])
        train_list, seen_list = [], []
        # rows of each class from one stable sort (ascending within a class), not one scan per class: a
        # million images in 100k classes would otherwise cost 10^11 comparisons
        order = np.argsort(fine, kind="stable")
        bounds = np.searchsorted(fine[order], train_cls, side="left"), np.searchsorted(
            fine[order], train_cls, side="right")
        for lo, hi in zip(*bounds, strict=True):
            rows = order[lo:hi]
            if given[rows].any() and (~given[rows]).any():
                seen_list.extend(rows[given[rows]])
                train_list.extend(rows[~given[rows]])
                continue
            rows = rows[rng.permutation(len(rows))]
            # at least two test images per class, or no seen query would have a positive to find
            n_test = max(2, round(len(rows) * cfg.seen_test_fraction)) if len(rows) >= 5 else 0
            n_test = n_test if cfg.seen_test_fraction > 0 else 0
            seen_list.extend(rows[:n_test])
            train_list.extend(rows[n_test:])
        train_rows, seen_rows = np.array(train_list, np.int64), np.array(seen_list, np.int64)
    names = hierarchy.classes[0]
    unseen_rows = np.flatnonzero(np.isin(fine, unseen_cls))
    coarse_only = np.flatnonzero(fine == COARSE_ONLY)
    if len(coarse_only):
        # their fine class is unknown, so they cannot be placed by class: they train with the coarse terms,
        # or serve as coarse-level gallery items of the unseen part (never both: that would leak them)
        if cfg.coarse_only == "train":
            train_rows = np.concatenate([train_rows, coarse_only])
        else:
            unseen_rows = np.sort(np.concatenate([unseen_rows, coarse_only]))
        report["coarse_only"] = {"images": int(len(coarse_only)), "placed_in": cfg.coarse_only}
    split = Split(
        indices={
            "train": np.sort(train_rows).astype(np.int64),
            "val": np.flatnonzero(np.isin(fine, val_cls)),
            "seen": np.sort(seen_rows).astype(np.int64),
            "unseen": unseen_rows,
        },
        classes={
            "train": [names[c] for c in train_cls],
            "val": [names[c] for c in val_cls],
            "unseen": [names[c] for c in unseen_cls],
        },
        protocol=cfg.protocol,
        seed=seed,
        query=cfg.query,
        query_domain=cfg.query_domain,
        report=report,
    )
    _set_query_protocol(split, table, cfg)
    return split


def _set_query_protocol(split: Split, table: DatasetTable, cfg: SplitConfig) -> None:
    unseen_rows = split.indices["unseen"]
    if cfg.query == "cross_domain":
        domains = sorted({table.domains[i] for i in unseen_rows} - {""})
        if len(domains) < 2:
            raise DataError("split.query=cross_domain needs a domain column with at least two values among "
                            f"unseen images (found: {domains or 'none'})")
        if cfg.query_domain not in domains:
            raise ConfigError(f"split.query_domain: {cfg.query_domain!r} is not a domain of unseen images "
                              f"(domains: {', '.join(domains)})")
    elif cfg.query == "files":
        if not cfg.query_file:
            raise ConfigError("split.query=files needs split.query_file (and optionally split.gallery_file)")
        split.query_ids = _resolve_ids(_read_id_list(cfg.query_file, "query_file"), table, "query_file")
        if cfg.gallery_file:
            split.gallery_ids = _resolve_ids(_read_id_list(cfg.gallery_file, "gallery_file"), table,
                                             "gallery_file")
    elif cfg.query == "manifest":
        split.query_ids = [table.ids[i] for i in unseen_rows if table.splits[i] == "query"]
        split.gallery_ids = [table.ids[i] for i in unseen_rows if table.splits[i] == "gallery"]
        if not split.query_ids:
            raise DataError("split.query=manifest: no unseen image has split value 'query'")


def _remove_hash_leaks(split: Split, table: DatasetTable) -> None:
    """Drop training-side copies of images whose exact content is also evaluated (dedup off or partial)."""
    hashes: dict[str, str] = table.meta.get("content_hash") or {}
    if not hashes:
        return

    def digests(part: str) -> set[str]:
        return {hashes.get(table.ids[i], "") for i in split.indices[part]} - {""}

    removed: dict[str, list[str]] = {}
    for held, parts in (("unseen", ("train", "val", "seen")), ("seen", ("train",))):
        bad = digests(held)
        for part in parts:
            idx = split.indices[part]
            leak = np.array([hashes.get(table.ids[i], "") in bad for i in idx], dtype=bool)
            if leak.any():
                removed.setdefault(part, []).extend(table.ids[i] for i in idx[leak])
                split.indices[part] = idx[~leak]
    if removed:
        split.report["leakage_removed"] = removed
        split.report["warnings"] = [*split.report.get("warnings", []), "removed "
                                    + ", ".join(f"{len(v)} {k}" for k, v in removed.items())
                                    + " images identical to evaluation images (leakage)"]


# ------------------------------------------------------------------------------------------------ check
def check_split(split: Split, labels: np.ndarray, *, table: DatasetTable | None = None,
                ks: list[int] | None = None) -> list[str]:
    """Refuse splits that leak or leave nothing to evaluate; return (and record) warnings.

    Raises:
        DataError: unseen classes in the training data, identical images on both sides of the boundary, no
            training images, or zero usable unseen queries.
    """
    fine = labels[:, 0]
    for part in ("train", "val"):
        leaked = np.setdiff1d(np.intersect1d(fine[split.indices[part]], fine[split.indices["unseen"]]),
                              [COARSE_ONLY])
        if len(leaked):
            raise DataError(f"split leaks {len(leaked)} unseen fine classes into {part}")
    if not np.any(fine[split.indices["train"]] != COARSE_ONLY):
        raise DataError("split has no training images; lower split.unseen_fraction or add data")
    warnings: list[str] = []
    if table is None:
        unseen_fine = fine[split.indices["unseen"]]
        _, counts = np.unique(unseen_fine[unseen_fine != COARSE_ONLY], return_counts=True)
        usable = int(counts[counts >= 2].sum())
    else:
        hashes = table.meta.get("content_hash") or {}
        if hashes:
            train_side = {hashes.get(table.ids[i]) for p in ("train", "val") for i in split.indices[p]}
            leak = [table.ids[i] for i in split.indices["unseen"] if hashes.get(table.ids[i]) in train_side]
            if leak:
                raise DataError(f"split leaks {len(leak)} unseen images into training by content "
                                f"(first: {leak[0]!r})")
        q, _ = split.query_gallery("unseen", table)
        usable = int(q.sum())
        excluded = {p: split.excluded_queries(p, table) for p in ("unseen", "seen") if len(split.indices[p])}
        split.report["excluded_queries"] = excluded
        for p, n in excluded.items():
            if n:
                warnings.append(f"{n} {p} queries have no other image of their class in the gallery "
                                "(e.g. classes with one image) and are not scored")
        if ks:
            for p in ("unseen", "seen"):
                if not len(split.indices[p]):
                    continue
                _, g = split.query_gallery(p, table)
                n_gallery = int(g.sum())
                if max(ks) >= n_gallery:
                    warnings.append(f"eval.ks: K={max(ks)} is not smaller than the {p} gallery "
                                    f"({n_gallery} images); Recall@{max(ks)} is meaningless there")
    if usable == 0:
        raise DataError(
            "split has zero usable unseen queries (every unseen class needs >= 2 images, and each query a "
            "positive in its gallery); add images, raise split.unseen_fraction or change split.query"
        )
    split.report["warnings"] = list(dict.fromkeys([*split.report.get("warnings", []), *warnings]))
    split.report["usable_unseen_queries"] = usable
    return warnings


def save_split(split: Split, table: DatasetTable, path: str | os.PathLike[str]) -> None:
    from ofgr_core.common.atomic import atomic_write_json

    atomic_write_json(path, split.to_json(table))
