"""Versioned taxonomy files: one unified coarse -> fine hierarchy for labels that come from many sources.

A taxonomy YAML names its levels (finest first), the tree of unified nodes above the fine level, synonyms,
and optional explicit label -> node maps. Fine classes are usually not enumerated (Stanford Cars alone has
196): a source row is placed under the unified node that one of its own labels names, after normalisation
and synonyms. See ``docs/data.md`` for the file format.

Example (levels ``[fine, coarse, super]``)::

    name: vehicles
    version: 1
    levels: [fine, coarse, super]
    tree:
      car: [sedan, suv, pickup]
      bus: [bus, minibus]
    synonyms:
      pickup: [pick-up truck, crew cab]
    fine:                    # source fine label -> unified node one level up
      taxi: car
    sources:                 # per-source overrides: source name -> {label: node}
      my_folder: {lorry: truck}
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ofgr_core.common.errors import ConfigError
from ofgr_core.common.textio import load_yaml, read_text

SHIPPED = ("vehicles", "stanford_cars", "vehicle10")
TAXONOMY_DIR = Path(__file__).parent / "taxonomies"  # shipped as package data

_PUNCT = re.compile(r"[\s\-_/\\.,;:'\"`()\[\]{}&+]+")


def normalize(label: str) -> str:
    """Comparison key of a label: NFKC, casefolded, punctuation and runs of whitespace become one space.

    ``"Pick-up  Truck"``, ``"pick_up truck"`` and ``"PICK UP TRUCK"`` all become ``"pick up truck"``.
    """
    text = unicodedata.normalize("NFKC", str(label)).casefold()
    return _PUNCT.sub(" ", text).strip()


class _TaxonomyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int
    description: str = ""
    levels: list[str]
    tree: dict[str, Any] | list[str]
    synonyms: dict[str, list[str]] = {}
    fine: dict[str, str] = {}
    sources: dict[str, dict[str, str]] = {}

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[str]) -> list[str]:
        if len(v) < 2 or v[0] != "fine" or len(set(v)) != len(v):
            raise ValueError("must list two or more distinct level names, finest first, starting with 'fine'")
        return v


@dataclass
class Taxonomy:
    """A loaded taxonomy.

    Attributes:
        name: taxonomy name from the file.
        version: file version; recorded in the data report so results name the taxonomy they used.
        levels: unified level names, finest first.
        parents: per level above fine (index 1..), node name -> parent node name (None at the top level).
        path: where it was loaded from.
    """

    name: str
    version: int
    levels: tuple[str, ...]
    parents: dict[int, dict[str, str | None]]
    path: str = ""
    _alias: dict[str, str] = field(default_factory=dict, repr=False)  # normalised alias -> canonical name
    _nodes: dict[str, list[tuple[int, str]]] = field(default_factory=dict, repr=False)
    _fine_map: dict[str, str] = field(default_factory=dict, repr=False)
    _source_maps: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------------------- lookup
    def canonical(self, label: str) -> str:
        """The canonical spelling of ``label`` if it or a synonym is known, else ``label`` unchanged."""
        return self._alias.get(normalize(label), label)

    def nodes_named(self, label: str) -> list[tuple[int, str]]:
        """Unified nodes (level, name) that ``label`` names after normalisation and synonyms."""
        return self._nodes.get(normalize(self.canonical(label)), [])

    def ancestors(self, level: int, node: str) -> dict[str, str]:
        """``{level name: node}`` for ``node`` at ``level`` and every level above it."""
        out = {}
        current: str | None = node
        for lvl in range(level, len(self.levels)):
            if current is None:
                break
            out[self.levels[lvl]] = current
            current = self.parents[lvl][current]
        return out

    def place(self, source: str, labels: dict[str, str]) -> dict[str, str] | None:
        """Unified labels at every level for one source row, or None if it cannot be placed.

        Args:
            source: the source's name (for per-source overrides in ``sources:``).
            labels: the row's own labels, finest level first (``fine`` first).

        Returns:
            ``{level: label}`` for every taxonomy level; ``fine`` keeps the row's fine label (its synonym's
            canonical name if it has one), the others are unified nodes.
        """
        values = list(labels.values())
        fine = values[0]
        explicit = self._source_maps.get(source, {})
        best: tuple[int, int, int, str] | None = None  # (not explicit, level, source label position, node)
        for pos, label in enumerate(values):
            key = normalize(label)
            target = explicit.get(key) or (self._fine_map.get(key) if pos == 0 else None)
            candidates = self.nodes_named(target) if target else self.nodes_named(label)
            for lvl, node in candidates:
                # explicit maps win over name matches; otherwise the lowest (most specific) level wins,
                # and among equals the finest source label
                rank = (0 if target else 1, lvl, pos, node)
                if best is None or rank < best:
                    best = rank
        if best is None:
            return None
        _, level, _, node = best
        if level != 1:
            return None  # only an ancestor is known: no coarse node for this row
        out = {"fine": self.canonical(fine)}
        out.update(self.ancestors(level, node))
        return out


def _walk_tree(node: Any, depth: int, levels: tuple[str, ...], parent: str | None,
               parents: dict[int, dict[str, str | None]], where: str) -> None:
    """Fill ``parents`` from the nested ``tree:`` value; ``depth`` counts levels from the top."""
    level = len(levels) - 1 - depth
    if level < 1:
        raise ConfigError(f"{where}: tree is deeper than the levels {list(levels)} allow")
    items: list[tuple[str, Any]]
    if isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(str(k), None) for k in node]
    else:
        raise ConfigError(f"{where}: tree entries must be mappings or lists, got {node!r}")
    for name, children in items:
        if name in parents[level] and parents[level][name] != parent:
            raise ConfigError(f"{where}: node {name!r} at level {levels[level]!r} has two parents")
        parents[level][name] = parent
        if children is not None:
            _walk_tree(children, depth + 1, levels, name, parents, where)
        elif level != 1:
            raise ConfigError(
                f"{where}: node {name!r} at level {levels[level]!r} has no children; the tree must reach "
                f"level {levels[1]!r}"
            )


def parse_taxonomy(data: dict[str, Any], where: str = "taxonomy") -> Taxonomy:
    """Build a :class:`Taxonomy` from a parsed YAML mapping; errors name ``where`` and the key."""
    try:
        spec = _TaxonomyFile.model_validate(data)
    except ValidationError as e:
        item = e.errors()[0]
        loc = ".".join(str(p) for p in item["loc"]) or "<root>"
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"].lower()
        raise ConfigError(f"{where}: {loc}: {msg}") from None
    levels = tuple(spec.levels)
    parents: dict[int, dict[str, str | None]] = {lvl: {} for lvl in range(1, len(levels))}
    _walk_tree(spec.tree, 0, levels, None, parents, where)
    tax = Taxonomy(spec.name, spec.version, levels, parents, path=where)

    for lvl, names in parents.items():
        for name in names:
            tax._nodes.setdefault(normalize(name), []).append((lvl, name))
            tax._alias.setdefault(normalize(name), name)
    for canonical, aliases in spec.synonyms.items():
        for alias in aliases:
            key = normalize(alias)
            other = tax._alias.get(key)
            if other is not None and other != canonical and normalize(other) == key:
                continue  # an alias equal to a node's own name: the node wins
            if other is not None and other != canonical:
                raise ConfigError(f"{where}: synonym {alias!r} is given for both {other!r} and {canonical!r}")
            tax._alias[key] = canonical
        tax._alias.setdefault(normalize(canonical), canonical)

    def check_node(node: str, key: str) -> str:
        if not tax.nodes_named(node):
            raise ConfigError(f"{where}: {key}: {node!r} is not a node of the tree")
        return node

    tax._fine_map = {normalize(k): check_node(v, f"fine.{k}") for k, v in spec.fine.items()}
    tax._source_maps = {
        src: {normalize(k): check_node(v, f"sources.{src}.{k}") for k, v in m.items()}
        for src, m in spec.sources.items()
    }
    return tax


def load_taxonomy(ref: str | os.PathLike[str]) -> Taxonomy:
    """Load a taxonomy by file path or by shipped name (``vehicles``, ``stanford_cars``, ``vehicle10``)."""
    path = Path(ref)
    if str(ref) in SHIPPED:
        text = (TAXONOMY_DIR / f"{ref}.yaml").read_text()
        where = f"taxonomy {ref!r} (shipped)"
    elif path.is_file():
        text = read_text(path, error=ConfigError, what="taxonomy")
        where = str(path)
    else:
        raise ConfigError(
            f"data.taxonomy: {str(ref)!r} is neither a file nor a shipped taxonomy ({', '.join(SHIPPED)})"
        )
    data = load_yaml(text, where, error=ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    return parse_taxonomy(data, where)


def shipped_fine_map(name: str) -> dict[str, str]:
    """The exact ``fine:`` map of a shipped taxonomy (source label -> node), keys unnormalised."""
    text = (TAXONOMY_DIR / f"{name}.yaml").read_text()
    return dict(yaml.safe_load(text).get("fine", {}))
