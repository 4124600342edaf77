"""Memory of the idle runs list over many rescans (issue 11: it grew with every rescan).

Runs the TUI headless on a few hand-written run folders with a fast rescan (``--interval``), samples the
process RSS every ``--every`` seconds and prints the growth per 1000 rescans. Not a test: timings and RSS are
noisy on a shared machine: measure on an idle one.

    PYTHONPATH=. python benchmarks/tui_idle_memory.py --seconds 40
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "tui"))

import rundirs  # noqa: E402
from tui_testing import make_app, wait_for  # noqa: E402


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def measure(runs: Path, seconds: float, every: float, interval: float) -> None:
    app = make_app(runs, scan_interval=interval, clock=time.time)
    scans = [0]
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        original = app._cache.scan
        app._cache.scan = lambda *a: (scans.__setitem__(0, scans[0] + 1), original(*a))[1]  # type: ignore[method-assign]
        await pilot.pause(2)
        gc.collect()
        r0, s0, t0, c0 = rss_mb(), scans[0], time.time(), time.process_time()
        while time.time() - t0 < seconds:
            await pilot.pause(every)
            gc.collect()
            print(f"{time.time() - t0:5.0f} s  {scans[0] - s0:6d} rescans  RSS {rss_mb():6.1f} MB "
                  f"({rss_mb() - r0:+.1f})", flush=True)
        cpu, wall = time.process_time() - c0, time.time() - t0
        n = max(1, scans[0] - s0)
        print(f"growth: {1000 * (rss_mb() - r0) / n:+.2f} MB per 1000 rescans ({n} rescans)")
        # the whole app's CPU time over the rescans (redraws included): with rescans due every `interval`
        # seconds, rescans / wall shows whether they keep pace
        print(f"CPU: {1000 * cpu / n:.2f} ms per rescan, {100 * cpu / wall:.0f} % of one core "
              f"({n / wall:.1f} rescans/s, one due every {interval * 1000:.0f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--every", type=float, default=10)
    ap.add_argument("--interval", type=float, default=0.02, help="rescan interval (the app's default is 2 s)")
    args = ap.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="ofgr-idle-")) / "runs"
    rundirs.finished_run(runs, "20251127-101500-demo", r1=0.5)
    rundirs.finished_run(runs, "20251127-111500-r50", r1=0.62, t0=rundirs.T0 + 3600, model="resnet50")
    rundirs.failed_run(runs, "20251127-121500-cars", t0=rundirs.T0 + 7200)
    rundirs.interrupted_run(runs, "20251127-131500-long", t0=rundirs.T0 + 10800)
    asyncio.run(measure(runs, args.seconds, args.every, args.interval))


if __name__ == "__main__":
    main()
