"""One writer per run folder: a lock file holding the writer's pid, host and start time.

``ofgr run`` and ``ofgr resume`` hold :class:`RunLock` for the whole run, so two trainers can never share a
folder. A lock left by a process that died (SIGKILL, power loss) is *stale*: on the same host that is decided
by the pid (and the process start time, so a recycled pid is not taken for the writer); a stale lock is taken
over. A lock held on another host cannot be checked from here and is never taken over automatically.

Readers (``ofgr runs``, the TUI) never take the lock; they read it with :func:`read_lock` and ask
:func:`lock_alive`. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ofgr_core.common.errors import ConflictError, DataError, OfgrError

LOCK_FILE = "run.lock"  # in the run folder (docs/run-folder.md)
_GUARD_FILE = ".run.lock.guard"  # serialises taking the lock; held for milliseconds


class RunLockedError(ConflictError):
    """Another live process writes this run folder (exit code ``CONFLICT``, 9)."""


class LockUnreadableError(OfgrError):
    """The lock file exists but cannot be read as a lock."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds a run folder.

    Attributes:
        pid: The writer's process id.
        host: ``socket.gethostname()`` of the writer.
        started: When the lock was taken (seconds since the epoch).
        command: ``run`` or ``resume``.
        proc_start: The process start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or
            ``None`` where ``/proc`` is missing; tells a recycled pid from the writer.
        boot_id: The kernel boot id, so a lock from before a reboot is stale even if the pid is reused.
    """

    pid: int
    host: str
    started: float
    command: str = ""
    proc_start: int | None = None
    boot_id: str | None = None

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {when}"


def _proc_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces and parentheses: split after the last ')'
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def current_lock_info(command: str = "") -> LockInfo:
    pid = os.getpid()
    return LockInfo(pid=pid, host=socket.gethostname(), started=time.time(), command=command,
                    proc_start=_proc_start(pid), boot_id=_boot_id())  # fmt: skip


def read_lock(run_dir: str | os.PathLike[str]) -> LockInfo | None:
    """The lock of a run folder, or ``None`` when nobody holds it.

    Raises:
        LockUnreadableError: the file exists but is not a lock (names the file and what is wrong).
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LockUnreadableError(f"{path}: unreadable lock ({e.strerror or e})") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return LockInfo(
            pid=int(obj["pid"]),
            host=str(obj["host"]),
            started=float(obj["started"]),
            command=str(obj.get("command", "")),
            proc_start=int(obj["proc_start"]) if obj.get("proc_start") is not None else None,
            boot_id=str(obj["boot_id"]) if obj.get("boot_id") else None,
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise LockUnreadableError(f"{path}: not a valid lock ({type(e).__name__}: {e})") from None


def lock_alive(lock: LockInfo) -> bool | None:
    """``True``/``False`` for a lock held on this host; ``None`` when it is held on another host (unknown)."""
    if lock.host != socket.gethostname():
        return None
    if lock.boot_id and _boot_id() and lock.boot_id != _boot_id():
        return False  # taken before a reboot
    if not pid_alive(lock.pid):
        return False
    if lock.proc_start is not None:
        now_start = _proc_start(lock.pid)
        if now_start is not None and now_start != lock.proc_start:
            return False  # the pid now belongs to another process
    return True


def _write_lock(path: Path, info: LockInfo) -> None:
    from ofgr_core.common.atomic import atomic_write_text  # runs imports this module: import at call time

    atomic_write_text(path, json.dumps(asdict(info)) + "\n")


class RunLock:
    """Hold a run folder for one writer: ``with RunLock(run_dir, "resume"): ...``.

    Taking it is atomic: every taker serialises on a guard file (``flock``) for the few milliseconds it takes
    to check the current lock and write its own, so two processes that both find a stale lock cannot both
    take it. Released (the file removed, if it is still ours) on exit.
    """

    def __init__(self, run_dir: str | os.PathLike[str], command: str = "") -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self.info: LockInfo | None = None
        self.took_over: LockInfo | None = None

    def acquire(self) -> LockInfo:
        """Take the lock.

        Raises:
            RunLockedError: a live process (or one on another host) holds it; the message names it.
        """
        guard_path = self.run_dir / _GUARD_FILE
        try:
            guard = os.open(guard_path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:  # not another writer: a read-only or damaged folder (the guard is a folder, ...)
            from ofgr_core.common.diskspace import disk_error_from

            raise disk_error_from(e, "locking the run folder") or DataError(
                f"{guard_path}: cannot lock the run folder ({e.strerror or e})") from None
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                held = read_lock(self.run_dir)
            except LockUnreadableError:
                held = None  # a lock nobody can read protects nothing; ours replaces it
            if held is not None:
                alive = lock_alive(held)
                if alive is None:
                    raise RunLockedError(
                        f"run {self.run_dir.name} is locked by {held.describe()} (another host); if that run "
                        f"is gone, remove {self.path}"
                    )
                if alive:
                    raise RunLockedError(
                        f"run {self.run_dir.name} is already running ({held.describe()}); stop it first "
                        "(the TUI's s, or touch its stop file)"
                    )
                self.took_over = held
            info = current_lock_info(self.command)
            try:
                _write_lock(self.path, info)
            except OSError as e:  # run.lock is a folder, the run folder is read-only or full
                from ofgr_core.common.diskspace import disk_error_from
                from ofgr_core.common.errors import DiskError

                kind = DiskError if disk_error_from(e, "") is not None else DataError  # full or read-only: DISK
                raise kind(f"{self.path}: cannot write the run lock ({e.strerror or e}); remove {self.path.name} "
                           "if it is a folder") from None
            self.info = info
            return info
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(guard, fcntl.LOCK_UN)
            os.close(guard)

    def release(self) -> None:
        """Remove the lock if it is still ours (a forced takeover by hand is left alone)."""
        if self.info is None:
            return
        try:
            held = read_lock(self.run_dir)
        except LockUnreadableError:
            held = None
        if held is not None and held.pid == self.info.pid and held.started == self.info.started:
            with contextlib.suppress(OSError):
                self.path.unlink()
        # the guard file stays: unlinking it while another taker waits on it would let a third one in
        self.info = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_dict(lock: LockInfo | None) -> dict[str, Any] | None:
    return None if lock is None else asdict(lock)
