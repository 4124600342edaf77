"""What differs between runs: their resolved configs flattened to ``a.b.c`` keys, and the keys whose values
are not all equal. Runs are often all named ``demo``; this is what tells them apart. No Textual here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ofgr_core.runs.folder import RunFolder

MISSING = "—"
UNSET = ("None", MISSING)  # a key set to null and a key a family does not have both mean "not set"
# keys that differ between every pair of runs without telling anything about the experiment
IGNORED = ("name",)
# what a difference says about the experiment, most telling first: a key ranks by the first prefix it has
IMPORTANCE = (
    "model.kind", "model.name", "model.pretrained", "train.epochs", "loss", "model.head", "model.embed_dim",
    "train.lr", "train.optimizer", "data.sources", "split", "sampler", "data.image_size", "train.batch",
    "train", "model", "data", "seed", "eval", "device",
)  # fmt: skip


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": "3"}``; lists of mappings are indexed (``a[0].b``)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = json.dumps(obj) if isinstance(obj, (list, dict)) else str(obj)
    return out


def read_config(run_dir: Path) -> dict[str, Any]:
    from ofgr_core.common.errors import OfgrError
    from ofgr_core.common.textio import read_yaml_file

    try:  # bounded: a YAML bomb or a deeply nested config is refused, not expanded
        cfg = read_yaml_file(RunFolder(run_dir).config, what="config")
    except OfgrError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def differing(configs: list[dict[str, Any]], limit: int | None = None) -> list[tuple[str, list[str]]]:
    """Keys whose values differ across ``configs`` (a missing key counts as a value), in config order."""
    flat = [flatten(c) for c in configs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    out = [
        (k, [f.get(k, MISSING) for f in flat])
        for k in keys
        if k not in IGNORED and len({_norm(f.get(k, MISSING)) for f in flat}) > 1
    ]
    return out[:limit] if limit is not None else out


def _norm(value: str) -> str:
    return MISSING if value in UNSET else value


def importance(key: str) -> int:
    """The rank of a config key's difference (0: most telling); keys no prefix names come last."""
    for i, prefix in enumerate(IMPORTANCE):
        if key == prefix or key.startswith((prefix + ".", prefix + "[")):
            return i
    return len(IMPORTANCE)


def ranked(diffs: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """``diffs`` most telling first (``importance``), config order among equals."""
    return sorted(diffs, key=lambda kv: importance(kv[0]))


def overrides(run_dir: Path) -> list[str]:
    """The ``--set`` overrides a run was started with (``env.json``), or ``[]``."""
    from ofgr_core.runs.validate import read_run_json

    env, _ = read_run_json(RunFolder(run_dir).env)  # strict, bounded: None when damaged
    if not isinstance(env, dict):
        return []
    got = env.get("overrides")
    if got is None and isinstance(env.get("extra"), dict):
        got = env["extra"].get("overrides")
    return [str(o) for o in got] if isinstance(got, list) else []


def resolved_device(run_dir: Path) -> str | None:
    """The device a run trained on (``metrics.json`` train.device, e.g. ``cuda:0``), not the config's ``auto``."""
    from ofgr_core.runs.validate import read_run_json

    metrics, _ = read_run_json(RunFolder(run_dir).metrics, {"train": {"device": (str, type(None))}})
    train = metrics.get("train") if isinstance(metrics, dict) else None
    device = train.get("device") if isinstance(train, dict) else None
    return str(device) if device else None
