"""The query panel: ↓ from the filter, failed queries clear results, short paths, no torch in the TUI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from textual.widgets import DataTable, Input, OptionList, Static

from ofgr_tui.screens.query import QueryScreen, display_paths
from ofgr_tui.screens.runs import RunsScreen
from tui_testing import make_app, wait_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


async def _open_query(app, pilot) -> QueryScreen:  # noqa: ANN001
    await wait_for(pilot, lambda: app.scanned)
    screen = app.screen
    assert isinstance(screen, RunsScreen)
    screen.table.move_cursor(row=[r.run_id for r in screen.shown].index("20251127-101500-demo"))
    await pilot.press("f")
    await wait_for(pilot, lambda: isinstance(app.screen, QueryScreen))
    q = app.screen
    await wait_for(pilot, lambda: len(q.items) == 60)
    return q


async def test_down_from_the_item_filter_moves_the_list(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        q = await _open_query(app, pilot)
        await pilot.press("ctrl+g")  # the item tab, focus in its filter
        box = q.query_one("#item-filter", Input)
        await wait_for(pilot, lambda: box.has_focus)
        await pilot.press(*"fine_2")
        ol = q.query_one("#item-list", OptionList)
        assert ol.option_count == 10
        await pilot.press("down", "down", "down")
        assert ol.highlighted == 2 and box.has_focus  # the list moved, typing still goes to the filter
        await pilot.press("up")
        assert ol.highlighted == 1
        picked = ol.get_option_at_index(1).id
        await pilot.press("enter")
        await wait_for(pilot, lambda: q.result is not None, timeout=90)
        assert q.result.query == f"item {picked}"


async def test_failed_query_clears_the_previous_results(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        q = await _open_query(app, pilot)
        q.search(item_id="unseen-2-0")
        await wait_for(pilot, lambda: q.result is not None, timeout=90)
        table = q.query_one("#query-results", DataTable)
        assert table.row_count == 10
        # paths are shown relative to the working directory (the fixture's are), not made absolute
        assert str(table.get_cell("1", "path")).startswith("img/unseen/")
        q.search(item_id="no-such-item")
        status = q.query_one("#query-status", Static)
        await wait_for(pilot, lambda: "not in" in str(status.render()), timeout=30)
        assert table.row_count == 0 and q.result is None


def test_display_paths_keep_the_part_that_differs(tmp_path: Path) -> None:
    base = "/data/cars/train"
    paths = [f"{base}/bmw_m3/0001.jpg", f"{base}/audi_a4/0002.jpg"]
    assert display_paths(paths, cwd="/home/u") == ["…/bmw_m3/0001.jpg", "…/audi_a4/0002.jpg"]
    inside = [str(tmp_path / "img" / "a.png"), str(tmp_path / "img" / "b.png")]
    assert display_paths(inside, cwd=str(tmp_path)) == [os.path.join("img", "a.png"), os.path.join("img", "b.png")]


def test_an_image_query_loads_no_torch_into_the_tui(runs_dir: Path, tmp_path: Path) -> None:
    """Run in a fresh interpreter: this test session may have imported torch already."""
    from PIL import Image

    image = tmp_path / "query.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    script = f"""
import asyncio, json, sys
sys.path.insert(0, {str(HERE)!r})
from pathlib import Path
from tui_testing import make_app, wait_for
from ofgr_tui.screens.query import QueryScreen
from textual.widgets import Static

async def main():
    app = make_app(Path({str(runs_dir)!r}))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        s = app.screen
        s.table.move_cursor(row=[r.run_id for r in s.shown].index("20251127-101500-demo"))
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, QueryScreen))
        q = app.screen
        q.search(image_path={str(image)!r})
        status = q.query_one("#query-status", Static)
        await wait_for(pilot, lambda: "searching" not in str(status.render()), timeout=120)
        worker_pid = app.query_client.pid
        print(json.dumps({{"status": str(status.render()), "worker": worker_pid,
                           "torch": "torch" in sys.modules, "faiss": "faiss" in sys.modules}}))

asyncio.run(main())
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # the hand-written run has no checkpoint: the worker loaded the engine and said so in one line
    assert "checkpoint" in got["status"], got
    assert got["worker"] is not None and got["worker"] != os.getpid()
    assert got["torch"] is False and got["faiss"] is False


async def test_text_box_queries_a_clip_run_and_explains_other_runs(
    runs_dir: Path, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    import rundirs

    monkeypatch.setenv("OFGR_CACHE", str(tmp_path / "cache"))  # the worker's feature cache, not ~/.cache
    clip = rundirs.clip_run(runs_dir, "20251127-210000-clip", tmp_path / "img")
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        screen.table.move_cursor(row=[r.run_id for r in screen.shown].index(clip.name))
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, QueryScreen))
        q = app.screen
        assert q.supports_text is None  # not asked before the text tab opens (it loads model code)
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: q.supports_text is not None, timeout=120)
        assert q.supports_text is True  # asked of ofgr_core.retrieval.query.run_supports_text, in the worker
        await pilot.press(*"a red car", "enter")
        await wait_for(pilot, lambda: q.result is not None, timeout=180)
        assert q.result.query == "text 'a red car'"
        table = q.query_one("#query-results", DataTable)
        assert table.row_count == 10 and str(table.get_cell("1", "f c")) == "· ·"  # a text query has no hit marks
        await pilot.press("escape", "escape")
        # a timm run: the box says so before anything is loaded, and a text query is refused with why
        screen.table.move_cursor(row=[r.run_id for r in screen.shown].index("20251127-101500-demo"))
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, QueryScreen) and app.screen is not q)
        q2 = app.screen
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: q2.supports_text is not None, timeout=60)
        assert q2.supports_text is False
        assert "no text encoder" in q2.query_one("#query-text", Input).placeholder
        await pilot.press(*"a red car", "enter")
        await pilot.pause()
        assert "text queries need a CLIP run" in str(q2.query_one("#query-status", Static).render())


def test_words_are_told_apart_from_paths(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from ofgr_tui.screens.query import looks_like_text

    monkeypatch.chdir(tmp_path)
    assert looks_like_text("red pickup with roof rack")
    for path in ("img/red pickup.png", "red pickup.jpg", "~/cars/red pickup", "car.png", "pickup"):
        assert not looks_like_text(path), path
    (tmp_path / "my cars").mkdir()
    assert not looks_like_text("my cars")  # a folder of that name: the engine says what is wrong with it


async def test_words_in_the_path_box_point_to_the_text_tab(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        q = await _open_query(app, pilot)
        await pilot.press("ctrl+p")
        box = q.query_one("#query-path", Input)
        await wait_for(pilot, lambda: box.has_focus)
        await pilot.press(*"red pickup with roof rack", "enter")
        status = q.query_one("#query-status", Static)
        await wait_for(pilot, lambda: "ctrl+t" in str(status.render()), timeout=30)
        assert "'red pickup with roof rack' is not an image file" in str(status.render()) and q.result is None
