"""End to end through the real `ofgr run`: launch from the TUI, follow it live, read its results.

One tiny run on synthetic data (about 40 s on 2 CPU cores): it checks that the TUI reads what the real
pipeline writes, not only our hand-written folders.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input

from ofgr_tui.screens.launch import LaunchDialog
from ofgr_tui.screens.live import LiveScreen
from ofgr_tui.screens.query import QueryScreen
from ofgr_tui.screens.results import ResultsScreen
from ofgr_tui.screens.runs import RunsScreen
from tui_testing import make_app, wait_for

REPO = Path(__file__).resolve().parents[2]
TINY = (
    "train.epochs=1 data.sources.0.root={root} data.sources.0.options.images_per_class=4 "
    "data.sources.0.options.num_coarse=2 data.sources.0.options.fine_per_coarse=4 "
    "data.sources.0.options.image_size=32 data.image_size=32 model.embed_dim=32 eval.bootstrap=20 "
    "sampler.fine_per_coarse=2 sampler.k=2"
)


@pytest.mark.slow
async def test_launch_a_real_run_from_the_tui_and_follow_it(tmp_path: Path) -> None:
    if not (REPO / "configs" / "demo.yaml").is_file():
        pytest.skip("configs/demo.yaml not in this checkout")
    runs = tmp_path / "runs"
    runs.mkdir()
    app = make_app(runs, REPO / "configs", clock=time.time, scan_interval=0.5, tail_interval=0.3)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchDialog))
        app.screen.query_one("#config-path", Input).value = str(REPO / "configs" / "demo.yaml")
        app.screen.query_one("#overrides", Input).value = TINY.format(root=tmp_path / "synth")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await wait_for(pilot, lambda: screen.current is not None, timeout=30)
        run = screen.current
        assert run is not None and run.status == "running"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))
        live = app.screen
        assert isinstance(live, LiveScreen)
        await wait_for(pilot, lambda: live.state.terminal is not None, timeout=150)
        assert live.status == "finished", live.state.terminal
        assert live.state.loss and "arcface" in live.state.components
        assert all(live.state.stages[s].state == "done" for s in ("data", "split", "train", "embed"))
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen))
        res = app.screen
        assert isinstance(res, ResultsScreen) and res.metrics is not None
        assert res.query_one("#recall-table", DataTable).get_row_at(0)[0] == "recall@1"
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, QueryScreen))
        q = app.screen
        assert isinstance(q, QueryScreen)
        await wait_for(pilot, lambda: len(q.items) > 0)
        q.search(item_id=q.items[0]["id"])
        await wait_for(pilot, lambda: q.result is not None, timeout=60)
        assert q.query_one("#query-results", DataTable).row_count > 0
        assert q.result.results[0].hit_fine is not None
