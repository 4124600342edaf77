"""What the JSON files of a run folder must look like before a reader uses them.

``metrics.json``, ``data_report.json`` and ``env.json`` are written by ofgr, but a run folder is a folder of
files: a tool, a crash or a person can leave anything in them (a string where a table was, a NaN literal, an
array nested 100 000 deep). Readers (``ofgr show``, ``runs``, ``report``, ``compare``, ``query``, the TUI) parse
them through :func:`read_run_json` and check them against the specs below with :func:`problem`, so a damaged
file is one line naming the file and the key (or a ``broken`` run with that reason), never a traceback.

A spec is a type (or tuple of types) the value must be, a ``dict`` of specs for the keys a reader uses (``"*"``
for every other key; keys not named are free), or a one-item ``list`` spec for every item. Numbers exclude
``bool``; ``Any`` accepts everything. Only what readers rely on is specified: new keys never break old readers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))
OPT_DICT = (dict, type(None))

_LEVEL: dict[str, Any] = {"*": OPT_NUM}  # recall@K, map@r, ...: numbers or null
_CI: dict[str, Any] = {"*": {"*": (list, type(None))}}  # ci95: level -> metric -> [low, high]
_SPLIT_BLOCK: dict[str, Any] = {
    "fine": _LEVEL, "coarse": _LEVEL, "super": _LEVEL,
    "ci95": _CI, "n_queries": OPT_NUM, "n_gallery": OPT_NUM, "n_skipped_queries": OPT_NUM,
    "per_class": {"*": {"*": OPT_NUM}}, "per_domain": {"*": {"*": OPT_NUM}},
    "index": dict, "embedding_health": {"*": OPT_NUM}, "text_to_image": OPT_DICT, "r_cap": dict,
}
METRICS: dict[str, Any] = {
    "schema_version": OPT_NUM, "run_id": OPT_STR, "name": OPT_STR,
    "model": dict, "data": dict, "train": dict, "fit": dict, "compute": dict, "memory_plan": dict,
    "timings": {"*": NUM}, "warnings": [str],
    "unseen": _SPLIT_BLOCK, "seen": _SPLIT_BLOCK,
}
DATA_REPORT: dict[str, Any] = {
    "warnings": [str], "unreadable": [dict], "summary": dict, "split": dict, "duplicates": dict, "cache": dict,
    "n_images": OPT_NUM, "n_images_found": OPT_NUM,
}
ENV: dict[str, Any] = {"packages": {"*": OPT_STR}, "command": (str, list, type(None)), "git_commit": OPT_STR}

MAX_DEPTH = 64  # run files nest a handful of levels; anything deeper is damage


def _type_name(spec: Any) -> str:
    if isinstance(spec, dict):
        return "an object"
    if isinstance(spec, list):
        return "a list"
    types = spec if isinstance(spec, tuple) else (spec,)
    names = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object",
             type(None): "null", bool: "true/false"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _is(value: Any, types: Any) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int to Python, never a number in a metrics file
    return isinstance(value, types)


def problem(obj: Any, spec: Any, where: str = "") -> str | None:
    """The first place where ``obj`` does not fit ``spec`` (``"unseen.fine.recall@1: expected a number,
    got str"``), or None."""
    stack: list[tuple[Any, Any, str, int]] = [(obj, spec, where, 0)]
    while stack:
        value, sp, at, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{at or '<root>'}: nested deeper than {MAX_DEPTH} levels"
        if sp is Any:
            continue
        if isinstance(sp, dict):
            if not isinstance(value, dict):
                return f"{at or '<root>'}: expected an object, got {type(value).__name__}"
            rest = sp.get("*")
            for key, item in value.items():
                sub = sp.get(key, rest)
                if sub is not None:
                    stack.append((item, sub, f"{at}.{key}" if at else str(key), depth + 1))
        elif isinstance(sp, list):
            if not isinstance(value, list):
                return f"{at or '<root>'}: expected a list, got {type(value).__name__}"
            stack.extend((item, sp[0], f"{at}[{i}]", depth + 1) for i, item in enumerate(value))
        elif not _is(value, sp):
            return f"{at or '<root>'}: expected {_type_name(sp)}, got {type(value).__name__}"
    return None


class _NonStandard(ValueError):
    pass


def _refuse(name: str) -> Any:
    raise _NonStandard(f"non-standard constant {name}")


def read_run_json(path: str | Path, spec: Any = Any) -> tuple[Any | None, str | None]:
    """``(document, None)``, ``(None, None)`` when the file does not exist, or ``(None, why)``.

    Run files are strict JSON (RFC 8259: NaN and infinities are written as null), so a ``NaN`` literal is
    damage; so is a document nested past Python's recursion limit, text that is not UTF-8, and a document
    that does not fit ``spec``. ``why`` names the file by its name and says what is wrong, in one line.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        return None, f"{p.name}: is a folder, not a file"
    except OSError as e:
        return None, f"{p.name}: unreadable ({e.strerror or e})"
    try:
        obj = json.loads(raw.decode("utf-8-sig"), parse_constant=_refuse)
    except UnicodeDecodeError:
        return None, f"{p.name}: not UTF-8 text"
    except _NonStandard as e:
        return None, f"{p.name}: not strict JSON ({e})"
    except json.JSONDecodeError as e:
        what = "empty" if not raw.strip() else f"truncated or invalid JSON ({e})"
        return None, f"{p.name}: {what}"
    except RecursionError:
        return None, f"{p.name}: nested too deeply to be a run file"
    bad = problem(obj, spec)
    if bad is not None:
        return None, f"{p.name}: unexpected content at {bad}"
    return obj, None


# ------------------------------------------------------------------------------------------------ events
def _spec_of(hint: Any) -> Any:
    """A spec from a type annotation of an event field (``float | None``, ``dict[str, float]``, ...)."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if hint is int:
        return NUM
    if hint is float:  # run files write NaN and infinities as null (strict JSON)
        return OPT_NUM
    if hint in (str, bool):
        return hint
    if hint is type(None):
        return type(None)
    if origin in (typing.Union, types.UnionType):
        parts = [_spec_of(a) for a in typing.get_args(hint)]
        if all(isinstance(p, (type, tuple)) for p in parts):
            flat: list[type] = []
            for p in parts:
                flat += list(p) if isinstance(p, tuple) else [p]
            return tuple(dict.fromkeys(flat))
        return Any
    if origin is dict:
        args = typing.get_args(hint)
        return {"*": _spec_of(args[1]) if len(args) == 2 else Any}
    if origin is list:
        args = typing.get_args(hint)
        return [_spec_of(args[0]) if args else Any]
    return Any


_EVENT_SPECS: dict[str, dict[str, Any]] = {}


def event_spec(event_type: str) -> dict[str, Any] | None:
    """The field spec of an event type, from its dataclass in ``ofgr_core.runs.events`` (None if unknown)."""
    if not _EVENT_SPECS:
        import dataclasses
        import typing

        from ofgr_core.runs.events import Event

        todo: list[type] = [Event]
        while todo:
            cls = todo.pop()
            todo += cls.__subclasses__()
            if not dataclasses.is_dataclass(cls):
                continue
            try:
                hints = typing.get_type_hints(cls)
            except Exception:  # noqa: BLE001  an annotation that cannot be resolved: that type goes unchecked
                continue
            name = str(getattr(cls, "type", ""))
            _EVENT_SPECS[name] = {f.name: _spec_of(hints.get(f.name, Any)) for f in dataclasses.fields(cls)}
    return _EVENT_SPECS.get(event_type)


def event_problem(obj: dict[str, Any]) -> str | None:
    """Whether a decoded ``events.jsonl`` line of a known type has fields of the wrong type (None if fine).

    Missing fields are allowed (older runs wrote fewer); present ones must have their declared types.
    """
    spec = event_spec(str(obj.get("type")))
    return None if spec is None else problem(obj, spec)
