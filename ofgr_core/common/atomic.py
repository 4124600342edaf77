"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed over the target.

Readers never see a partial file: until the rename the old file (or none) is there, after it the whole new one.
Every writer in ofgr goes through here:

- ``atomic_write_text`` / ``atomic_write_json`` / ``atomic_write_bytes``: a whole document at once;
- ``atomic_save_npy``: one numpy array as ``.npy``;
- ``atomic_writer(path)``: a binary or text file object for writers that stream (CSV rows, ``np.save``);
- ``atomic_path(path)``: a temporary *path* for libraries that open the file themselves (``torch.save``,
  ``np.savez_compressed``, ``np.lib.format.open_memmap``, safetensors, FAISS). It keeps the target's
  suffix, because numpy appends ``.npy``/``.npz`` to names without one.

The result has the mode an ordinary ``open()`` gives (0666 minus the umask), not ``mkstemp``'s 0600, so
colleagues sharing a runs folder can read it. A failed write removes its temporary file and leaves the target
as it was. Temporary names start with ``.`` and contain ``.tmp`` (``is_atomic_temp``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, overload

from ofgr_core.common.textio import dumps_strict

if TYPE_CHECKING:  # numpy is imported by the one writer that needs it (the CLI starts without it)
    import numpy as np

TMP_MARK = ".tmp"


def is_atomic_temp(name: str) -> bool:
    """Whether a file name is one of ``atomic_*``'s temporary files (left behind only by a killed process)."""
    return name.startswith(".") and TMP_MARK in name


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_path(path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to ``path`` to write; on success it is fsynced and renamed over ``path``.

    The temporary file exists (empty, with the final mode) when the block starts; the writer may overwrite or
    truncate it. On an exception it is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=f"{TMP_MARK}{target.suffix}")
    try:
        # mkstemp makes 0600 files: give the result the mode an ordinary open() would (0666 minus the umask)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield Path(tmp)
        _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@overload
def atomic_writer(path: str | os.PathLike[str], mode: Literal["wb"] = "wb") -> contextlib.AbstractContextManager[
    IO[bytes]]: ...


@overload
def atomic_writer(path: str | os.PathLike[str], mode: Literal["w"], *, newline: str | None = None
                  ) -> contextlib.AbstractContextManager[IO[str]]: ...


def atomic_writer(path: str | os.PathLike[str], mode: str = "wb", *, newline: str | None = None
                  ) -> contextlib.AbstractContextManager[IO[Any]]:
    """A file object (``"wb"`` or ``"w"``, UTF-8) whose contents replace ``path`` when the block ends."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode {mode!r}: use 'w' or 'wb'")
    return _writer(path, mode, newline)


@contextlib.contextmanager
def _writer(path: str | os.PathLike[str], mode: str, newline: str | None) -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp:
        if mode == "w":
            with open(tmp, "w", encoding="utf-8", newline=newline) as f:
                yield f
        else:
            with open(tmp, "wb") as fb:
                yield fb


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Strict JSON (RFC 8259): NaN/Infinity become null, so any JSON reader can parse every run file."""
    atomic_write_text(path, dumps_strict(obj, indent=2) + "\n")


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray[Any, Any]) -> None:
    """``np.save`` of one array to ``path`` atomically."""
    import numpy as np

    with atomic_writer(path) as f:
        np.save(f, array)
