"""Reading user and run files safely: text in common encodings, YAML with bounded expansion, JSON strictly.

Every function raises a one-line :class:`~ofgr_core.common.errors.OfgrError` naming the file (``origin``) instead of a
``UnicodeDecodeError``, a ``RecursionError`` or a parser traceback.
"""

from __future__ import annotations

import codecs
import json
import math
import os
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ofgr_core.common.errors import ConfigError, DataError, OfgrError

# A YAML document may expand (aliases counted every time they are used) to at most this many nodes:
# generous for any config or taxonomy, and a "billion laughs" document is refused in milliseconds.
MAX_YAML_NODES = 200_000
MAX_YAML_DEPTH = 200

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its BOM starts with UTF-16 LE's
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes, origin: str, *, error: type[OfgrError] = DataError) -> str:
    """UTF-8 (with or without BOM), or UTF-16/UTF-32 with a BOM; anything else is a one-line error."""
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise error(
            f"{origin}: not {encoding.upper().replace('-SIG', '')} text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    if "\x00" in text:
        raise error(f"{origin}: contains NUL bytes (a binary or corrupted file, not text)")
    return text


def read_text(path: str | os.PathLike[str], *, error: type[OfgrError] = DataError, what: str = "file") -> str:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{p}: is a folder, expected a {what}") from None
    except OSError as e:
        raise error(f"{p}: cannot read {what} ({e.strerror or type(e).__name__})") from None
    return decode_text(data, str(p), error=error)


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses documents whose aliases expand past ``MAX_YAML_NODES`` nodes, and mappings
    that repeat a key (PyYAML keeps the last one and drops the first without a word)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        _check_duplicate_keys(self, node)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    pass


def _check_duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node) -> None:
    """Refuse a mapping whose explicit keys repeat (merge keys ``<<`` may be overridden: that is their use)."""
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        try:
            line = first.get(key)
        except TypeError:  # an unhashable key: the constructor reports it
            continue
        if line is None:
            first[key] = key_node.start_mark.line + 1
        else:
            raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first on line {line}); "
                                "YAML would silently keep only the last one: merge the two")


def _check_expansion(root: yaml.Node) -> None:
    """Size of the document with every alias expanded, computed without expanding (memoised per node)."""
    size: dict[int, int] = {}
    visiting: set[int] = set()
    # iterative post-order walk: documents may nest deeper than Python's recursion limit
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        if id(node) in size:
            continue
        if depth > MAX_YAML_DEPTH:
            raise _TooLarge(f"nested deeper than {MAX_YAML_DEPTH} levels")
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for kv in node.value for n in kv]
        if not done:
            if id(node) in visiting:
                raise _TooLarge("refers to itself through an alias")
            visiting.add(id(node))
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in children if id(c) not in size)
            continue
        total = 1 + sum(size.get(id(c), 1) for c in children)
        if total > MAX_YAML_NODES:
            raise _TooLarge(f"expands to more than {MAX_YAML_NODES} nodes through aliases")
        size[id(node)] = total
        visiting.discard(id(node))


class _TooLarge(Exception):
    pass


def load_yaml(text: str, origin: str, *, error: type[OfgrError] = ConfigError) -> Any:
    """``yaml.safe_load`` with alias expansion and depth bounded; errors are one line naming ``origin``."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506  (a SafeLoader subclass)
    except _TooLarge as e:
        raise error(f"{origin}: refused: the YAML {e} (anchors/aliases used as a 'billion laughs' bomb?)") from None
    except _DuplicateKey as e:
        raise error(f"{origin}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{origin}:{where}: invalid YAML ({problem})") from None
    except RecursionError:
        raise error(f"{origin}: refused: the YAML is nested too deeply") from None


def read_yaml_file(path: str | os.PathLike[str], *, error: type[OfgrError] = ConfigError, what: str = "file") -> Any:
    return load_yaml(read_text(path, error=error, what=what), str(path), error=error)


def read_json_file(path: str | os.PathLike[str], *, error: type[OfgrError] = DataError, what: str = "file") -> Any:
    """Strict JSON (no NaN/Infinity literals) from a file in any encoding ``decode_text`` accepts."""
    text = read_text(path, error=error, what=what)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, _NonStandard) as e:
        raise error(f"{path}: invalid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: invalid JSON (nested too deeply)") from None


class _NonStandard(ValueError):
    pass


def _refuse_constant(name: str) -> NoReturn:
    raise _NonStandard(f"non-standard constant {name}")


def json_safe(obj: object) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts: non-finite floats become None.

    Numpy scalars and arrays become Python numbers and lists; paths become strings.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars/arrays, torch tensors
        return json_safe(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def dumps_strict(obj: object, **kwargs: Any) -> str:
    """``json.dumps`` that always produces valid JSON (RFC 8259): NaN/Inf are written as null."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
