"""How much memory this process may still allocate: free RAM, a cgroup limit, an address-space limit, or a GPU.

The memory plan (``ofgr_core.train.memplan``) compares its estimate of a run's peak with this budget before the
run starts. Every limit that applies is read and the smallest one wins, named, so a refusal can say what bound
it (``ulimit -v`` under a batch scheduler, a container's cgroup, free GPU memory). ``OFGR_MEMORY_LIMIT`` caps
the budget by hand (bytes, or with a K/M/G/T suffix), e.g. to leave room for other jobs on a shared machine.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ofgr_core.common.errors import ConfigError

ENV_LIMIT = "OFGR_MEMORY_LIMIT"
ENV_MALLOC = "OFGR_MALLOC"  # "system": leave glibc's malloc as it is (keep_freed_memory)
# Free space at the top of glibc's heap that stays mapped under keep_freed_memory: above what a CPU forward pass
# frees and takes again every batch (the demo CLIP tower, EfficientNet-Lite0 at 96 px on 256 images: ~700 MiB; at
# 256 MiB it still took ~170,000 page faults a batch, at 1 GiB none, and its extraction ran 1.5x faster;
# docs/benchmarks.md). It is held for one stage of a run at most: each stage releases what it leaves
# (release_freed_memory). mallopt takes an int: at most 2 GiB - 1.
KEEP_TRIM_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt's parameters (malloc.h)
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 << 10, 65536  # glibc's defaults for them
# A phase's peak memory under keep_freed_memory, over the memory plan's estimate of it, that the plan allows for
# before it keeps the setting. Measured (docs/benchmarks.md), feature extraction in batches of 256: the demo CLIP
# run's (EfficientNet-Lite0 at 96 px, estimate 675 MiB) grew the process by 1.51-2.04x its estimate with freed
# memory kept, 1.12-1.34x with glibc's defaults; ViT-B/32's at 224 px (estimate 597 MiB) 1.76-2.29x kept, 1.05x
# with the defaults; training (the steps, then validation's embedding batches beside what they held: the plan's
# peak estimate) 1.18x kept and 0.89x with the defaults for the demo CNN, 1.11-1.55x and 0.73-1.04x fine-tuning
# ResNet-50 and EfficientNet-B0 at 64 and 224 px in batches of 32. Blocks freed below live ones stay resident, and
# a larger block cannot reuse them. 3 leaves ~30 % over the largest measured.
KEPT_PEAK_FACTOR = 3.0
_kept = False  # keep_freed_memory applied in this process
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes that may still be allocated, and which limit decided it (``"free RAM"``, ``"ulimit -v"``, ...)."""

    bytes: int
    limited_by: str

    def describe(self) -> str:
        return f"{gib(self.bytes)} available ({self.limited_by})"


def gib(n: float) -> str:
    """A byte count for a message: ``1.3 GiB``, ``820 MiB``."""
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def parse_size(text: str, origin: str = ENV_LIMIT) -> int:
    """``"6G"``, ``"512m"``, ``"1048576"`` -> bytes; anything else is a one-line ``ConfigError``."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise ConfigError(f"{origin}={text!r}: expected a size such as 6G, 512M or 1048576 (bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> int | None:
    """The cgroup's memory limit minus its current use (v2, else v1); None without a limit."""
    for limit_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, used = _read_int(limit_file), _read_int(used_file)
        if limit is not None and used is not None and limit < 1 << 60:  # v1 writes "no limit" as ~2^63
            return max(0, limit - used)
    return None


def _vm_size() -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmSize:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _address_space_headroom() -> int | None:
    """``ulimit -v`` minus the address space this process already maps; None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    used = _vm_size()
    return max(0, soft - used) if used is not None else soft


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
    except (ValueError, OSError):  # not glibc (musl, macOS)
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - glibc under another name
        return None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse: large blocks come from its heap instead of a mapping of
    their own (``M_MMAP_MAX`` 0), and up to ``KEEP_TRIM_BYTES`` free at the heap's top stay mapped
    (``M_TRIM_THRESHOLD``). A CPU forward pass otherwise maps, zeroes and unmaps its largest activations every
    batch (~22,000 page faults a 256-image batch of the tiny CLIP tower; ``benchmarks/bench_malloc.py``: with
    this, ~1, and the tower alone and the extraction pipeline ran ~1.3-1.4x faster). What a phase of the work
    leaves free is handed back to the OS when it ends (``release_freed_memory``): a freed block below a live one
    would otherwise stay resident, and a later, larger block would be added to it instead of replacing it.

    The ``ofgr`` command calls it when it starts (``ofgr_core.cli.main``); a program importing the library keeps
    its own allocator settings. It does nothing off glibc, with ``OFGR_MALLOC=system``, or where the environment
    already tunes glibc's malloc (``MALLOC_*_`` variables or ``GLIBC_TUNABLES``). Returns whether it applied.
    """
    if os.environ.get(ENV_MALLOC, "").strip().lower() == "system":
        return False
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ) or \
            "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = _glibc()
    if libc is None:
        return False
    global _kept
    _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_BYTES))
    return _kept


def keeping_freed_memory() -> bool:
    """Whether ``keep_freed_memory`` applies in this process now."""
    return _kept


def stop_keeping_freed_memory() -> None:
    """Put glibc's default values back for the rest of this process: large blocks get mappings of their own again
    and free memory at the heap's top goes back to the OS above 128 KiB; what was kept is released. (glibc's
    sliding mmap threshold stays fixed at its 128 KiB start: any ``mallopt`` of these settings turns it off.) The
    memory plan calls it where memory is short (``KEPT_PEAK_FACTOR``)."""
    global _kept
    libc = _glibc() if _kept else None
    if libc is None:
        return
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    release_freed_memory()
    _kept = False


def release_freed_memory() -> None:
    """Hand the pages ``keep_freed_memory`` holds free back to the OS (glibc's ``malloc_trim``), wherever they lie
    in the heap; nothing when it was not applied in this process. Called where a phase of the work ends (a run's
    stages, ``ofgr_core.workflows.pipeline``) and before the memory budget is read: reuse within a phase is what
    it is for, and memory kept across phases is memory the next phase may not be able to reuse (a larger block
    does not fit a smaller hole). Costs a walk of the free lists, then one page fault per page reused.
    """
    libc = _glibc() if _kept else None
    if libc is not None:
        libc.malloc_trim(0)


def host_budget() -> MemoryBudget | None:
    """What this process may still allocate in RAM; None when no figure can be read (not Linux). Memory its
    allocator kept free is handed back first (``release_freed_memory``), so free RAM and a cgroup's usage count
    it as available."""
    release_freed_memory()
    limits: list[tuple[int, str]] = []
    for value, name in ((_meminfo_available(), "free RAM"), (_cgroup_headroom(), "cgroup memory limit"),
                        (_address_space_headroom(), "address-space limit, ulimit -v")):
        if value is not None:
            limits.append((value, name))
    env = os.environ.get(ENV_LIMIT)
    if env:
        limits.append((parse_size(env), ENV_LIMIT))
    if not limits:
        return None
    value, name = min(limits)
    return MemoryBudget(value, name)


def device_budget(device: Any) -> MemoryBudget | None:
    """Free memory of a CUDA device (``torch.cuda.mem_get_info``), the host budget for the CPU; None if unknown.

    ``OFGR_MEMORY_LIMIT`` caps either.
    """
    kind = getattr(device, "type", str(device))
    if kind != "cuda":
        return host_budget() if kind == "cpu" else None
    import torch

    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):
        return None
    budget = MemoryBudget(int(free), f"free memory on {device}")
    env = os.environ.get(ENV_LIMIT)
    if env and parse_size(env) < budget.bytes:
        budget = MemoryBudget(parse_size(env), ENV_LIMIT)
    return budget
