"""Pilot tests for run state, selection that follows the run, and the keyboard (issue 11)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from textual.widgets import Input, Static

import rundirs
from ofgr_core.runs.lock import RunLock
from ofgr_tui.screens.confirm import ConfirmDialog
from ofgr_tui.screens.live import LiveScreen
from ofgr_tui.screens.results import ResultsScreen
from ofgr_tui.screens.runs import RunsScreen
from ofgr_tui.widgets.keybar import KeyBar, fit_keys
from tui_testing import make_app, wait_for


def _select(screen: RunsScreen, run_id: str) -> None:
    keys = [r.run_id for r in screen.shown]
    screen.table.move_cursor(row=keys.index(run_id))


def _resumed_run(runs: Path, run_id: str, pid: int) -> Path:
    """Stopped once, then resumed by ``pid`` (this test process: alive) which has not ended yet."""
    d = rundirs.interrupted_run(runs, run_id, t0=rundirs.T0 + 20000)
    with open(d / "events.jsonl", "a") as f:
        f.write(json.dumps({"type": "run_interrupted", "time": rundirs.T0 + 20100, "reason": "stop"}) + "\n")
        f.write(json.dumps(rundirs.started(run_id, "long", rundirs.T0 + 20200, pid, host=rundirs.HOST)) + "\n")
    return d


async def test_resumed_run_shows_running_and_refuses_resume_and_delete(runs_dir: Path) -> None:
    d = _resumed_run(runs_dir, "20251127-160000-resumed", os.getpid())
    lock = RunLock(d, "resume")
    lock.acquire()  # the resume holds the run (this process plays the trainer)
    try:
        app = make_app(runs_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.scanned)
            screen = app.screen
            assert isinstance(screen, RunsScreen)
            _select(screen, d.name)
            await pilot.pause()
            assert screen.current is not None and screen.current.status == "running"
            await pilot.press("u")  # a second trainer in the same folder: refused
            await pilot.pause()
            assert any("is running" in n.message and "not resumed" in n.message for n in app._notifications)
            assert not app.launches
            await pilot.press("d")  # deleting a run that trains: refused, no dialog
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmDialog) and d.exists()
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))
            live = app.screen
            await wait_for(pilot, lambda: live.state.n_events > 0)
            assert live.status == "running"  # not "interrupted" from the first attempt's end event
    finally:
        lock.release()


async def test_selection_and_marks_follow_the_run_across_rescans(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        _select(screen, "20251127-101500-demo")
        await pilot.press("space")  # marks without moving
        assert screen.current_id == "20251127-101500-demo"
        _select(screen, "20251127-111500-wide")
        await pilot.pause()
        row_before = screen.table.cursor_row
        # a newer run appears above: rows shift down by one, the cursor must stay on "wide"
        rundirs.failed_run(runs_dir, "20251127-171500-newer", t0=rundirs.T0 + 25000)
        await wait_for(pilot, lambda: screen.table.row_count == 5)
        await pilot.pause()
        assert screen.current_id == "20251127-111500-wide"
        assert screen.table.cursor_row == row_before + 1
        assert [p.name for p in screen.marked] == ["20251127-101500-demo"]
        assert str(screen.table.get_cell("20251127-101500-demo", "status")).startswith("●")
        assert not str(screen.table.get_cell("20251127-111500-wide", "status")).startswith("●")


async def test_vim_keys_home_end_filter_and_sort(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        ids = [r.run_id for r in screen.shown]
        await pilot.press("j", "j")
        await wait_for(pilot, lambda: screen.current_id == ids[2], timeout=5)
        await pilot.press("k")
        await wait_for(pilot, lambda: screen.current_id == ids[1], timeout=5)
        await pilot.press("G")
        await wait_for(pilot, lambda: screen.current_id == ids[-1], timeout=5)
        await pilot.press("g")
        await wait_for(pilot, lambda: screen.current_id == ids[0], timeout=5)
        await pilot.press("end")
        await wait_for(pilot, lambda: screen.current_id == ids[-1], timeout=5)
        await pilot.press("home")
        await wait_for(pilot, lambda: screen.current_id == ids[0], timeout=5)
        # / filters; typed letters go to the box, not to the screen's keys (r = results, e = t-SNE)
        await pilot.press("slash", *"wide")
        assert isinstance(app.screen, RunsScreen)
        await wait_for(pilot, lambda: screen.table.row_count == 1, timeout=5)
        assert [r.run_id for r in screen.shown] == ["20251127-111500-wide"]
        await pilot.press("escape")  # clears the filter
        await wait_for(pilot, lambda: screen.table.row_count == 4, timeout=5)
        assert not screen.query_one("#runs-filter", Input).display
        # sort by R@1 (best first), then again: ascending
        await pilot.press("A")
        assert [r.run_id for r in screen.shown][:2] == ["20251127-111500-wide", "20251127-101500-demo"]
        await pilot.press("A")
        assert [r.run_id for r in screen.shown][-2:] == ["20251127-101500-demo", "20251127-111500-wide"]


async def test_down_from_the_filter_moves_the_list(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await pilot.press("slash", "f", "i")  # matches "finished" twice
        assert screen.table.row_count == 2 and screen.current_id == screen.shown[0].run_id
        await pilot.press("down")
        assert screen.table.has_focus and screen.current_id == screen.shown[1].run_id


def test_fit_keys_keeps_help_and_fits() -> None:
    items = [(k, "Description") for k in "abcdefghijklmnop"]
    for width in (30, 60, 80, 120):
        text = fit_keys(items, width)
        assert text.cell_len <= width and text.plain.rstrip().endswith("? Help")


async def test_footer_at_80_columns_keeps_help_and_resume(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        bar = app.screen.query_one(KeyBar)
        lines = bar.render().plain.split("\n")
        assert len(lines) == 2 and all(len(line) <= 80 for line in lines)
        assert lines[-1].rstrip().endswith("? Help")
        text = " ".join(lines)
        # every key of the screen is in sight (the second line holds those the first had no room for)
        for item in ("enter Open", "u Resume", "space Mark", "r Results", "e t-SNE", "f Query", "q Quit"):
            assert item in text, item
        assert bar.region.y == 22 and bar.region.height == 2 and bar.region.width == 80  # the last two rows


async def test_missing_runs_dir_says_so(tmp_path: Path) -> None:
    app = make_app(tmp_path / "nope")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        text = str(app.screen.query_one("#run-detail", Static).render())
        assert "does not exist" in text and "nope" in text


async def test_broken_run_folders_are_listed_with_why(runs_dir: Path) -> None:
    d = rundirs.finished_run(runs_dir, "20251127-181500-trunc", t0=rundirs.T0 + 30000)
    (d / "metrics.json").write_text('{"unseen": {"fine"')
    e = runs_dir / "20251127-191500-empty"
    e.mkdir()
    (e / "config.yaml").write_text("name: empty\n")
    (e / "events.jsonl").write_text("")
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        status = {r.run_id: r.status for r in screen.runs}
        assert status["20251127-181500-trunc"] == "broken" and status["20251127-191500-empty"] == "stale"
        _select(screen, "20251127-181500-trunc")
        await pilot.pause()
        assert "metrics.json: truncated" in str(screen.query_one("#run-detail", Static).render())
        await pilot.press("r")  # results of the truncated run: broken, with why (not "has not finished")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ResultsScreen")
        summary = str(app.screen.query_one("#results-summary", Static).render())
        assert "broken" in summary and "truncated" in summary
        await pilot.press("escape")
        _select(screen, "20251127-191500-empty")
        await pilot.press("s")  # an empty log is not a running run: no stop offered
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmDialog)
        assert any("not running" in n.message for n in app._notifications)


async def test_idle_rescans_touch_no_cells(runs_dir: Path) -> None:
    """The idle list's memory grew with every rescan: each rewrote the status cells, and every rewrite
    adds entries to the table's render caches. Unchanged runs must cause no cell update at all."""
    app = make_app(runs_dir, scan_interval=0.02)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await pilot.pause(0.3)
        updates: list[object] = []
        original = screen.table.update_cell
        screen.table.update_cell = lambda *a, **k: (updates.append(a), original(*a, **k))[1]  # type: ignore[method-assign]
        scans: list[int] = []
        orig_scan = app._cache.scan
        app._cache.scan = lambda *a: (scans.append(1), orig_scan(*a))[1]  # type: ignore[method-assign]
        await wait_for(pilot, lambda: len(scans) >= 20)
        await pilot.pause(0.1)
        assert updates == []


async def test_keys_typed_quickly_apply_in_order(runs_dir: Path) -> None:
    """``G enter`` sent in one burst (a fast typist, tmux send-keys) opens the last run, not the first (a
    finished one: its results)."""
    from textual import events

    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        last = screen.shown[-1].run_id
        for key, char in (("G", "G"), ("enter", "\r")):
            app.post_message(events.Key(key, char))
        await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen))
        assert app.screen.run_dir.name == last
        await pilot.pause(0.3)  # let the screen finish mounting before the app is torn down


async def test_the_list_is_drawn_after_the_first_scan(runs_dir: Path) -> None:
    """With the app's own 2 s rescan the table once stayed blank (a loading overlay left it no region)."""
    app = make_app(runs_dir, scan_interval=2.0, tail_interval=1.0, gpu_interval=2.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        await pilot.pause(0.5)
        table = app.screen.table
        assert table.row_count == 4 and table.region.height > 4 and table.has_focus
