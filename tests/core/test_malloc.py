"""``common.memory.keep_freed_memory``: the ``ofgr`` command's glibc malloc settings, their opt-outs, and the
free memory they keep handed back to the OS where a phase of the work ends (``release_freed_memory``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ofgr_core.common.memory as M

REPO = Path(__file__).resolve().parents[2]

# glibc's malloc and free through ctypes: blocks of exact sizes, outside Python's allocators
_LIBC = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
"""

_SCRIPT = _LIBC + """
import resource, sys
from ofgr_core.common.memory import keep_freed_memory, stop_keeping_freed_memory
applied = keep_freed_memory()
if "stop" in sys.argv:
    stop_keeping_freed_memory()
n = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MB): mapped anew every time by default
def once():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
once()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
once(); once()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""

# A phase allocates a block, something allocated after it outlives it, the phase frees it; the next phase needs a
# larger block. Resident memory (MiB) above the start: after the free, after release_freed_memory, during the next
# phase's block.
_PHASES = _LIBC + """
from ofgr_core.common.memory import keep_freed_memory, release_freed_memory
applied = keep_freed_memory()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 >> 20
def block(mib):
    p = libc.malloc(mib << 20)
    ctypes.memset(p, 1, mib << 20)
    return p
base = rss()
a = block(192)
live = block(4)  # after a in the heap, still in use
libc.free(a)
kept = rss() - base
release_freed_memory()
released = rss() - base
b = block(256)
print(applied, kept, released, rss() - base)
"""


def _run(script: str, env: dict[str, str], *args: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True,
                          cwd=REPO, env={**clean, "PYTHONPATH": str(REPO), **env}).stdout.split()


@pytest.mark.skipif(M._glibc() is None, reason="glibc's malloc only")
def test_large_blocks_are_reused_instead_of_mapped_anew() -> None:
    """Two 64 MB allocations after a first: ~32,000 page faults with glibc's defaults, next to none once the
    settings apply (the block is reused from the heap, where it stays free)."""
    applied, faults = _run(_SCRIPT, {})
    assert applied == "True" and int(faults) < 1000
    applied, faults = _run(_SCRIPT, {"OFGR_MALLOC": "system"})
    assert applied == "False" and int(faults) > 2 * 15_000
    applied, faults = _run(_SCRIPT, {}, "stop")  # applied, then glibc's defaults put back
    assert applied == "True" and int(faults) > 2 * 15_000


@pytest.mark.skipif(M._glibc() is None, reason="glibc's malloc only")
def test_a_phase_s_freed_memory_goes_back_to_the_os() -> None:
    """Kept, a freed 192 MiB block below a live one stays resident, and a 256 MiB block after it would be added to
    it (448 MiB resident instead of 256); released, it goes back to the OS and the next phase's block replaces it.
    With glibc's defaults the block was a mapping of its own, unmapped when freed: nothing to release."""
    applied, kept, released, during = _run(_PHASES, {})
    assert applied == "True" and int(kept) >= 180
    assert int(released) < 32 and int(during) < 256 + 32
    applied, kept, released, during = _run(_PHASES, {"OFGR_MALLOC": "system"})
    assert applied == "False" and int(kept) < 32 and int(during) < 256 + 32


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.trims: list[int] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.trims.append(pad)
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


@pytest.mark.parametrize("kept", [True, False])
@pytest.mark.parametrize("action, settings", [
    ("release_freed_memory", []),  # what was kept goes back; the settings stay
    ("stop_keeping_freed_memory", [(-4, 65536), (-1, 128 << 10)]),  # glibc's default values, then released
])
def test_release_and_stop_act_only_where_kept(monkeypatch: pytest.MonkeyPatch, kept: bool, action: str,
                                              settings: list[tuple[int, int]]) -> None:
    fake = _FakeLibc()
    monkeypatch.setattr(M, "_glibc", lambda: fake)
    monkeypatch.setattr(M, "_kept", kept)
    getattr(M, action)()
    assert fake.calls == (settings if kept else [])
    assert fake.trims == ([0] if kept else [])
    assert M.keeping_freed_memory() is (kept and action == "release_freed_memory")


def test_the_budget_is_read_after_the_kept_memory_is_released(monkeypatch: pytest.MonkeyPatch) -> None:
    """What malloc kept is handed back before free RAM is read, which then counts it; nothing is added on top."""
    order: list[str] = []
    monkeypatch.delenv(M.ENV_LIMIT, raising=False)
    monkeypatch.setattr(M, "release_freed_memory", lambda: order.append("release"))
    monkeypatch.setattr(M, "_meminfo_available", lambda: order.append("free RAM") or 1 << 30)
    monkeypatch.setattr(M, "_cgroup_headroom", lambda: 3 << 30)
    monkeypatch.setattr(M, "_address_space_headroom", lambda: None)
    b = M.host_budget()
    assert order == ["release", "free RAM"]
    assert b is not None and b.bytes == 1 << 30 and b.limited_by == "free RAM"
    monkeypatch.setenv(M.ENV_LIMIT, "512M")  # a cap set by hand stays the cap
    b = M.host_budget()
    assert b is not None and b.bytes == 512 << 20 and b.limited_by == M.ENV_LIMIT


@pytest.mark.parametrize("fails", [False, True])
def test_a_run_stage_releases_its_memory_when_it_ends(monkeypatch: pytest.MonkeyPatch, fails: bool) -> None:
    import ofgr_core.workflows.pipeline as pipeline

    released: list[str] = []
    events: list[Any] = []
    monkeypatch.setattr(pipeline, "release_freed_memory", lambda: released.append("release"))
    timings: dict[str, float] = {}
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext(), \
            pipeline._Stage("features", events.append, timings):
        assert released == []
        if fails:
            raise RuntimeError("boom")
    assert released == ["release"]
    assert ("features" in timings) is not fails


@pytest.mark.parametrize("headroom, device, stops", [
    (0.75, "cpu", True),  # the estimate fits, KEPT_PEAK_FACTOR times it does not: glibc's defaults for the run
    (1.25, "cpu", False),
    (0.75, "cuda", False),  # a GPU's memory: the host's allocator is not what the plan is about
])
def test_the_plan_keeps_freed_memory_only_where_memory_is_plentiful(
        monkeypatch: pytest.MonkeyPatch, headroom: float, device: str, stops: bool) -> None:
    import ofgr_core.train.memplan as memplan
    from ofgr_core.config import load_config
    from ofgr_core.models.factory import create_model_and_transforms

    cfg = load_config(REPO / "configs" / "demo.yaml", ["train.eval_batch_size=256"])
    model = create_model_and_transforms(cfg.model, image_size=64)[0]
    stopped: list[bool] = []
    monkeypatch.setattr(memplan, "keeping_freed_memory", lambda: True)
    monkeypatch.setattr(memplan, "stop_keeping_freed_memory", lambda: stopped.append(True))
    need = memplan.plan_run(cfg, model, device, image_size=64, trains_images=True, max_rows=4800,
                            budget=M.MemoryBudget(1 << 40, "test"))
    assert stopped == [] and need.train_bytes and need.eval_bytes and need.peak_bytes
    peak = need.peak_bytes  # the training step, and validation's embedding batch beside it
    assert peak > max(need.train_bytes, need.eval_bytes)
    plan = memplan.plan_run(cfg, model, device, image_size=64, trains_images=True, max_rows=4800,
                            budget=M.MemoryBudget(int(headroom * M.KEPT_PEAK_FACTOR * peak), "test"))
    assert plan.eval_batch == 256 and plan.peak_bytes == peak
    assert stopped == ([True] if stops else [])
    assert any("glibc's malloc keeps its defaults" in n for n in plan.notes) is stops
