"""Weight files checked before a library parses them: a damaged or hostile file is one ``ConfigError`` line that
names ``model.pretrained`` and the file, never a traceback from deep inside safetensors, open_clip or pickle.

- ``.safetensors``: the 8-byte header length, the JSON header (strict, bounded) and every tensor's dtype,
  shape and byte range are checked against the file's size before anything is read or mapped (an empty file, a
  header that claims 2^40 bytes, random bytes).
- ``open_clip_config.json`` of a ``local-dir:`` folder: strict JSON (no NaN), bounded depth, ``model_cfg`` with
  a positive integer ``embed_dim`` and ``vision_cfg``/``text_cfg`` objects.

Pickled checkpoints are read with ``torch.load(weights_only=True)`` by their loaders; nothing here unpickles.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from ofgr_core.common.errors import ConfigError

MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError(f"model.pretrained: {str(path)!r} is not a usable weights file ({why})")


def _strict_json(text: str | bytes, path: Path, what: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard constant {name}")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise _bad(path, f"its {what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(path, f"its {what} is not valid JSON: {str(e).splitlines()[0][:100]}") from None


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Raise a one-line ``ConfigError`` unless ``path`` is a well-formed safetensors file.

    Checks only the header and the byte ranges it declares; the tensors are read later by safetensors.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(p, "empty or shorter than a safetensors header" if size else "empty file")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise _bad(p, f"its header claims {n} bytes, the file has {size}")
            header_bytes = f.read(n)
    except OSError as e:
        raise _bad(p, e.strerror or type(e).__name__) from None
    header = _strict_json(header_bytes, p, "header")
    if not isinstance(header, dict):
        raise _bad(p, "its header is not a JSON object")
    data = size - 8 - n
    ranges: list[tuple[int, int]] = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict):
            raise _bad(p, f"tensor {name!r}: not an object")
        dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if dtype not in _DTYPE_BYTES:
            raise _bad(p, f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise _bad(p, f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            raise _bad(p, f"tensor {name!r}: byte range {offsets!r} outside the file's {data} data bytes")
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise _bad(p, f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} {dtype}")
        ranges.append((offsets[0], offsets[1]))
    end = 0
    for start, stop in sorted(ranges):  # safetensors' own rule: the tensors tile the data, no gap, no overlap
        if start != end:
            raise _bad(p, f"tensor data is not contiguous at byte {end}")
        end = stop
    if end != data:
        raise _bad(p, f"{data - end} bytes after the last tensor")


def read_open_clip_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``open_clip_config.json`` of a ``local-dir:`` folder, checked (see the module docstring)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise _bad(p, e.strerror or type(e).__name__) from None
    cfg = _strict_json(raw, p, "config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        raise ConfigError(f"model.pretrained: {str(p)!r} is not an open_clip config (needs a model_cfg object)")
    model_cfg = cfg["model_cfg"]
    embed = model_cfg.get("embed_dim")
    if not isinstance(embed, int) or isinstance(embed, bool) or embed < 1:
        raise ConfigError(f"model.pretrained: {str(p)!r}: model_cfg.embed_dim must be a positive integer, "
                          f"got {embed!r}")
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(model_cfg.get(key), dict):
            raise ConfigError(f"model.pretrained: {str(p)!r}: model_cfg.{key} must be an object")
    for key in ("preprocess_cfg", "ofgr"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise ConfigError(f"model.pretrained: {str(p)!r}: {key} must be an object")
    return cfg
