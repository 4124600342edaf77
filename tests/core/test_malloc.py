"""``common.memory.keep_freed_memory``: the ``ofgr`` command's glibc malloc settings, their opt-outs, and the
free memory they keep counted as available."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ofgr_core.common.memory as M

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import ctypes, resource, sys
from ofgr_core.common.memory import keep_freed_memory, malloc_free_bytes
applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
n = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MB): mapped anew every time by default
def once():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
once()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
once(); once()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, malloc_free_bytes())
"""


def _run(env: dict[str, str]) -> tuple[bool, int, int]:
    clean = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, cwd=REPO,
                         env={**clean, "PYTHONPATH": str(REPO), **env}).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(M._glibc() is None, reason="glibc's malloc only")
def test_large_blocks_are_reused_instead_of_mapped_anew() -> None:
    """Two 64 MB allocations after a first: ~32,000 page faults with glibc's defaults, next to none once the
    settings apply (the block is reused from the heap, where it stays free and is counted by malloc_free_bytes)."""
    applied, faults, free = _run({})
    assert applied and faults < 1000 and free >= 64 << 20
    applied, faults, free = _run({"OFGR_MALLOC": "system"})
    assert not applied and faults > 2 * 15_000


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


@pytest.mark.parametrize("env, applies", [
    ({}, True),
    ({"OFGR_MALLOC": "system"}, False),
    ({"OFGR_MALLOC": " System "}, False),
    ({"MALLOC_TRIM_THRESHOLD_": "1000"}, False),  # the user tunes glibc's malloc: left alone
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}, False),
    ({"GLIBC_TUNABLES": "glibc.rtld.nns=2"}, True),
])
def test_settings_and_opt_outs(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], applies: bool) -> None:
    for k in [k for k in os.environ if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "OFGR_MALLOC")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fake = _FakeLibc()
    monkeypatch.setattr(M, "_glibc", lambda: fake)
    assert M.keep_freed_memory() is applies
    assert fake.calls == ([(-4, 0), (-1, M.KEEP_TRIM_BYTES)] if applies else [])
    monkeypatch.setattr(M, "_glibc", lambda: None)  # not glibc
    assert M.keep_freed_memory() is False


def test_the_ofgr_command_applies_them_before_its_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import ofgr_core.cli as cli

    order: list[str] = []
    monkeypatch.setattr(M, "keep_freed_memory", lambda: order.append("malloc") or True)
    monkeypatch.setattr(cli, "app", lambda: order.append("app"))
    cli.main()
    assert order == ["malloc", "app"]


def test_free_memory_malloc_holds_counts_as_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(M.ENV_LIMIT, raising=False)
    monkeypatch.setattr(M, "_meminfo_available", lambda: 1 << 30)
    monkeypatch.setattr(M, "_cgroup_headroom", lambda: 3 << 30)
    monkeypatch.setattr(M, "_address_space_headroom", lambda: None)
    monkeypatch.setattr(M, "malloc_free_bytes", lambda: 512 << 20)
    b = M.host_budget()
    assert b is not None and b.bytes == (1 << 30) + (512 << 20) and b.limited_by == "free RAM"
    monkeypatch.setenv(M.ENV_LIMIT, "1G")  # a cap set by hand stays the cap
    b = M.host_budget()
    assert b is not None and b.bytes == 1 << 30 and b.limited_by == M.ENV_LIMIT


def test_malloc_free_bytes_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M, "_glibc", lambda: None)
    assert M.malloc_free_bytes() == 0
    fake: Any = object()  # a C library without mallinfo2 (glibc < 2.33)
    monkeypatch.setattr(M, "_glibc", lambda: fake)
    assert M.malloc_free_bytes() == 0
