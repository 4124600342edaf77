"""Free-space checks and preallocation, so that a full disk is a one-line error before work starts.

Writing into a memory map whose blocks the filesystem cannot provide kills the process with SIGBUS (no message,
exit 135); files that will be memory-mapped are therefore preallocated with ``posix_fallocate``, which fails
with ``ENOSPC`` up front instead.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import IO

from ofgr_core.common.errors import DiskError

# Kept free beyond what a write needs: the run's events and final messages must still fit.
MARGIN = 8 << 20

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes for unprivileged writes on the filesystem holding ``path`` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def ensure_free(path: str | os.PathLike[str], needed: int, what: str) -> None:
    """Raise :class:`DiskError` unless ``needed`` bytes (plus a margin) are free where ``path`` will be written."""
    free = free_bytes(path)
    if free is not None and free < needed + MARGIN:
        raise DiskError(
            f"{what}: {human(needed)} ({needed} bytes) needed in {Path(path).parent if Path(path).suffix else path}, "
            f"only {human(free)} free; free some space or choose another folder"
        )


def preallocate(f: IO[bytes], size: int, path: str | os.PathLike[str], what: str) -> None:
    """Give an open file ``size`` bytes of real blocks (never a sparse hole that a memory map could SIGBUS on)."""
    try:
        os.posix_fallocate(f.fileno(), 0, max(1, size))
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL) or not hasattr(os, "posix_fallocate"):
            f.truncate(size)  # a filesystem without fallocate: fall back to the old sparse file
            return
        if e.errno in DISK_ERRNOS:
            raise DiskError(f"{what}: cannot reserve {human(size)} ({size} bytes) for {path}: "
                            f"{os.strerror(e.errno)}; free some space or set another folder") from None
        raise


def disk_error_from(e: OSError, doing: str) -> DiskError | None:
    """The one-line :class:`DiskError` for an ``OSError`` caused by a full or read-only disk, else None."""
    if e.errno in DISK_ERRNOS or e.errno in (errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        where = f" {e.filename}" if e.filename else ""
        hint = " (a file is where a folder is expected)" if e.errno in (errno.ENOTDIR, errno.EEXIST) else ""
        hint = " (a folder is where a file is expected; remove it)" if e.errno == errno.EISDIR else hint
        return DiskError(f"{doing}:{where}: {os.strerror(e.errno) if e.errno else e}{hint}")
    return None


def make_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create the folder ``path`` (and its parents) or raise one :class:`DiskError` line naming it and why
    (a read-only or full disk, a file in the way, a place no folder can be made such as ``/proc``)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(p) else ""
        raise DiskError(f"{what} {p}: cannot create the folder: {why}{where}") from None
    return p
