"""Live view: a legend beside the curves in their colours, a log that wraps and follows, a plain GPU note."""

from __future__ import annotations

from pathlib import Path

from rich.color import Color
from rich.text import Text
from textual.widgets import Static

from ofgr_tui.screens.live import LiveScreen
from ofgr_tui.screens.runs import RunsScreen
from ofgr_tui.widgets.event_log import EventLog
from ofgr_tui.widgets.gpu_panel import GpuPanel
from ofgr_tui.widgets.plots import CurvePlot
from tui_testing import make_app, wait_for

FRAME = set(" │─┌┐└┘┬┴├┤┼0123456789.-+eabcdfghijklmnopqrstuvwxyz():,")


async def _open_live(app, pilot, run_id: str = "20251127-101500-demo") -> LiveScreen:  # noqa: ANN001
    await wait_for(pilot, lambda: app.scanned)
    screen = app.screen
    assert isinstance(screen, RunsScreen)
    screen.table.move_cursor(row=[r.run_id for r in screen.shown].index(run_id))
    await pilot.press("l")  # enter opens a finished run's results; l its live view
    await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen) and app.screen.state.terminal is not None)
    await pilot.pause()
    return app.screen


async def test_curve_legend_is_beside_the_plot_in_the_curve_colours(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        live = await _open_live(app, pilot)
        plot = live.query_one("#main-plot", CurvePlot)
        text = plot.render()
        assert isinstance(text, Text)
        styles = [text.get_style_at_offset(app.console, i) for i, ch in enumerate(text.plain) if ch not in FRAME]
        drawn = {s.color.number for s in styles if s.color is not None}
        legend = live.query_one("#main-legend", Static).content
        assert isinstance(legend, Text) and {"loss", "arcface", "htriplet"} <= set(legend.plain.split())
        legend_colours = {Color.parse(str(span.style)).number for span in legend.spans}
        assert drawn == legend_colours
        assert "loss" not in text.plain.replace("loss (p: next plot)", "")  # no legend text over the curves


async def test_event_log_wraps_long_lines_at_80_columns(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        live = await _open_live(app, pilot, "20251127-121500-cars")
        log = live.query_one(EventLog)
        assert log.wrap and all(line.cell_length <= log.scrollable_content_region.width for line in log.lines)
        # it follows the newest line, also after a resize
        await pilot.resize_terminal(60, 24)
        await pilot.pause(0.3)
        assert log.scroll_y == log.max_scroll_y


async def test_gpu_panel_says_no_gpu_in_plain_words(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        live = await _open_live(app, pilot)
        panel = live.query_one(GpuPanel)
        await wait_for(pilot, lambda: panel.snapshot is not None)
        from rich.console import Console

        console = Console(width=40, record=True)
        console.print(panel.render())
        text = console.export_text()
        assert text.startswith("No GPU found: runs here train on the CPU")
        assert "NVML" in text  # the technical reason stays available, after the plain one
