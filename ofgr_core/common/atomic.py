"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed over the target."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ofgr_core.common.textio import dumps_strict


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temp file in the same folder and ``os.replace``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files: give the result the mode an ordinary open() would (0666 minus the umask),
        # so colleagues sharing a runs folder can read metrics.json
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    # strict JSON (RFC 8259): NaN/Infinity become null, so any JSON reader can parse every run file
    atomic_write_text(path, dumps_strict(obj, indent=2) + "\n")
