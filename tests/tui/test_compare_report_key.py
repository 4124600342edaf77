"""The compare screen's report key writes the same folder as ``ofgr report`` for the runs on screen."""

from __future__ import annotations

from pathlib import Path

from ofgr_tui.screens.compare import CompareScreen
from tui_testing import make_app, wait_for


async def test_w_writes_the_report_for_the_runs_on_screen(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    runs = [runs_dir / "20251127-101500-demo", runs_dir / "20251127-111500-wide"]
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = CompareScreen(runs)
        await app.push_screen(screen)
        await wait_for(pilot, lambda: screen.comparison is not None, timeout=20)
        await pilot.press("w")
        reports = runs_dir.parent / "reports"
        await wait_for(pilot, lambda: any(reports.glob("*/report.md")), timeout=60)
    (md,) = reports.glob("*/report.md")
    text = md.read_text()
    assert all(r.name in text for r in runs) and "## Comparison" in text
