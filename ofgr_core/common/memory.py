"""How much memory this process may still allocate: free RAM, a cgroup limit, an address-space limit, or a GPU.

The memory plan (``ofgr_core.train.memplan``) compares its estimate of a run's peak with this budget before the
run starts. Every limit that applies is read and the smallest one wins, named, so a refusal can say what bound
it (``ulimit -v`` under a batch scheduler, a container's cgroup, free GPU memory). ``OFGR_MEMORY_LIMIT`` caps
the budget by hand (bytes, or with a K/M/G/T suffix), e.g. to leave room for other jobs on a shared machine.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ofgr_core.common.errors import ConfigError

ENV_LIMIT = "OFGR_MEMORY_LIMIT"
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


def host_budget() -> MemoryBudget | None:
    """What this process may still allocate in RAM; None when no figure can be read (not Linux)."""
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
