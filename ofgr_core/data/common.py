"""Helpers shared by the dataset adapters: strict options, image discovery, safe paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ofgr_core.common.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

OptionsT = TypeVar("OptionsT", bound=BaseModel)


class Options(BaseModel):
    """Base of every adapter's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def parse_options(model: type[OptionsT], options: dict[str, Any], adapter: str) -> OptionsT:
    """Validate ``options`` for ``adapter``; the error names the bad key and lists the valid ones."""
    try:
        return model.model_validate(options)
    except ValidationError as e:
        msgs = []
        for item in e.errors():
            key = ".".join(str(p) for p in item["loc"])
            if item["type"] == "extra_forbidden":
                msgs.append(f"unknown key {key!r} (valid: {', '.join(model.model_fields)})")
            else:
                msgs.append(f"{key}: {item['msg'].lower()}, got {item.get('input')!r}")
        raise ConfigError(f"data.sources[type={adapter}].options: " + "; ".join(msgs)) from None


def require_root(root: str | os.PathLike[str] | None, adapter: str) -> Path:
    """The source root as a Path; a clear error when it is unset or missing."""
    if root is None:
        raise ConfigError(f"data.sources[type={adapter}].root is required")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{adapter}: dataset root {path} does not exist; check data.sources[].root")
    return path


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    with os.scandir(folder) as it:
        return sorted(
            Path(e.path) for e in it if e.is_file() and not e.name.startswith(".") and is_image(e.name)
        )


def list_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder``, sorted by name (hidden ones skipped)."""
    with os.scandir(folder) as it:
        return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))


def walk_images(root: Path) -> list[Path]:
    """Every image under ``root`` (recursive, hidden folders such as caches skipped), sorted."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image(f))
    return sorted(out)


def safe_join(root: Path, relative: str, what: str) -> Path:
    """``root / relative``, refusing absolute paths and ``..`` that lead outside ``root``.

    The check is lexical (symlinks inside the dataset may point elsewhere on purpose, e.g. shared storage);
    what it refuses is a manifest that names files outside the dataset it describes.
    """
    rel = relative.strip()
    if not rel:
        raise DataError(f"{what}: empty path")
    if os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        raise DataError(f"{what}: absolute path {rel!r} refused; paths must be relative to the dataset root")
    root_abs = os.path.abspath(root)
    full = os.path.normpath(os.path.join(root_abs, rel))
    if os.path.commonpath([root_abs, full]) != root_abs:
        raise DataError(f"{what}: path {rel!r} resolves outside the dataset root {root_abs}; refused")
    return Path(full)


def relative_id(source: str, root: Path, path: Path) -> str:
    """Stable item id ``<source>:<path relative to root>`` with forward slashes."""
    return f"{source}:{Path(os.path.relpath(path, root)).as_posix()}"

def worker_start_method() -> str:
    """``fork`` where available, as torch's DataLoader workers: children only read files and decode them,
    and unlike ``spawn``/``forkserver`` a fork does not re-run the caller's script (a notebook or a script
    without a ``__main__`` guard would otherwise start the whole job again in every worker)."""
    import multiprocessing as mp

    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"
