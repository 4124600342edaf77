"""Pilot-driven tests of every screen against hand-written run folders, asserting on state and messages."""

from __future__ import annotations

import sys
from pathlib import Path

from textual.widgets import DataTable, Input, Static

import rundirs
from ofgr_tui.messages import CompareRuns, OpenRun, RunsScanned
from ofgr_tui.screens.compare import CompareScreen
from ofgr_tui.screens.confirm import ConfirmDialog
from ofgr_tui.screens.embeddings import EmbeddingsScreen
from ofgr_tui.screens.help import HelpScreen
from ofgr_tui.screens.launch import LaunchDialog
from ofgr_tui.screens.live import LiveScreen
from ofgr_tui.screens.query import QueryScreen
from ofgr_tui.screens.results import ResultsScreen
from ofgr_tui.screens.runs import RunsScreen
from ofgr_tui.widgets.gpu_panel import GpuPanel
from tui_testing import fake_gpus, make_app, wait_for


def _select(screen: RunsScreen, run_id: str) -> None:
    keys = [r.run_id for r in screen.runs]
    screen.table.move_cursor(row=keys.index(run_id))


async def test_runs_screen_lists_every_run_with_status(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        status = {r.run_id: r.status for r in screen.runs}
        assert status == {
            "20251127-131500-long": "stale",  # killed: no end event, its process is gone
            "20251127-121500-cars": "failed",
            "20251127-111500-wide": "finished",
            "20251127-101500-demo": "finished",
        }
        assert screen.table.row_count == 4
        assert screen.runs[2].recall_at_1_unseen == 0.62
        # a run that appears later (e.g. started by hand in another shell) shows up on the next scan
        rundirs.failed_run(runs_dir, "20251127-141500-new", t0=rundirs.T0 + 14400)
        await wait_for(pilot, lambda: screen.table.row_count == 5)
        assert screen.runs[0].run_id == "20251127-141500-new"


async def test_runs_scan_messages_replace_each_other() -> None:
    a, b = RunsScanned([]), RunsScanned([])
    assert b.can_replace(a)


async def test_enter_opens_live_view_and_escape_returns(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    opened: list[OpenRun] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        app.screen.app_message_log = opened  # type: ignore[attr-defined]
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))
        live = app.screen
        assert isinstance(live, LiveScreen)
        assert live.run_dir.name == "20251127-131500-long"
        # the interrupted run's file ends in a partial line: the 7 complete steps are read, nothing breaks
        await wait_for(pilot, lambda: len(live.state.loss) == 7)
        assert live.status == "stale"
        assert live.state.epochs == 3  # from config.yaml before any epoch finished
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_live_screen_follows_a_run_being_written(runs_dir: Path) -> None:
    live_run = rundirs.LiveRun(runs_dir, "20251127-151500-live", epochs=2, spe=10, interval=0.03).start()
    app = make_app(runs_dir, gpu_probe=fake_gpus)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.scanned)
            screen = app.screen
            assert isinstance(screen, RunsScreen)
            assert screen.runs[0].status == "running"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))
            live = app.screen
            assert isinstance(live, LiveScreen)
            await wait_for(pilot, lambda: len(live.state.loss) >= 5)
            # every complete line is folded in order; no half line was ever taken as an event
            assert live.state.steps_x == sorted(live.state.steps_x)
            assert set(live.state.components) == {"arcface", "htriplet"}
            assert live.status == "running"
            gpu = live.query_one(GpuPanel)
            await wait_for(pilot, lambda: gpu.snapshot is not None)
            assert len(gpu.snapshot.gpus) == 2  # type: ignore[union-attr]
            # clean stop: confirm, the stop file appears, the run acknowledges with run_interrupted
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.press("y")
            assert (live_run.dir / "stop").exists()
            await wait_for(pilot, lambda: live.state.terminal is not None)
            assert live.status == "interrupted"
            assert live.state.terminal["reason"] == "stop"  # type: ignore[index]
    finally:
        live_run.finish()


async def test_results_screen_tables(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        _select(app.screen, "20251127-111500-wide")  # type: ignore[arg-type]
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen))
        res = app.screen
        table = res.query_one("#recall-table", DataTable)
        assert [str(c.label) for c in table.columns.values()][1:] == [
            "unseen fine", "unseen coarse", "seen fine", "seen coarse",
        ]  # fmt: skip
        assert list(table.rows)[0].value == "recall@1"
        assert "62.0" in str(table.get_row_at(0)[1]) and "±2.0" in str(table.get_row_at(0)[1])
        best = res.query_one("#best-classes", DataTable)
        worst = res.query_one("#worst-classes", DataTable)
        assert best.get_row_at(0)[0] == "class_08" and worst.get_row_at(0)[0] == "class_00"
        # switching view of the same run replaces the screen instead of stacking
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))
        assert len(app.screen_stack) == 2  # runs + one view


async def test_results_of_an_unfinished_run_explains(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen))
        assert app.screen.metrics is None  # type: ignore[attr-defined]
        # the selected run was killed: the panel says so instead of "has not finished"
        assert "stopped without an end event" in str(app.screen.query_one("#results-summary", Static).render())


async def test_compare_marks_two_runs_and_tests_significance(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    posted: list[CompareRuns] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        orig = screen.post_message
        screen.post_message = lambda m: (posted.append(m) if isinstance(m, CompareRuns) else None, orig(m))[1]  # type: ignore[method-assign]
        _select(screen, "20251127-101500-demo")
        await pilot.press("space")
        _select(screen, "20251127-111500-wide")
        await pilot.press("space")
        assert [p.name for p in screen.marked] == ["20251127-101500-demo", "20251127-111500-wide"]
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        cmp_screen = app.screen
        assert isinstance(cmp_screen, CompareScreen)
        assert [d.name for d in posted[0].run_dirs] == ["20251127-101500-demo", "20251127-111500-wide"]
        await wait_for(pilot, lambda: cmp_screen.comparison is not None, timeout=20)
        c = cmp_screen.comparison
        assert c is not None
        row = c.row("unseen", "fine", "recall@1")
        assert row is not None and abs(row.deltas[1] - 0.12) < 1e-9  # type: ignore[operator]
        assert row.tests[1] is not None  # per-query results present: paired test ran
        # every row, under one header row per section (image->image, coarse-first, ...)
        assert cmp_screen.query_one("#compare-table", DataTable).row_count == len(c.rows) + len(cmp_screen.sections)
        await pilot.press("b")  # rotate the baseline: recomputed against the other run
        await wait_for(pilot, lambda: cmp_screen.comparison is not c, timeout=20)
        assert cmp_screen.comparison.run_ids[0] == "20251127-111500-wide"  # type: ignore[union-attr]


async def test_compare_refuses_unfinished_runs(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        await pilot.press("space", "j", "space", "c")  # the stale and the failed run
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        assert any("not finished" in n.message for n in app._notifications)


async def test_embeddings_screen_computes_caches_and_recolours(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        _select(app.screen, "20251127-101500-demo")  # type: ignore[arg-type]
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EmbeddingsScreen))
        emb = app.screen
        assert isinstance(emb, EmbeddingsScreen)
        await wait_for(pilot, lambda: emb.result is not None, timeout=30)
        assert len(emb.result) == 120 and set(emb.result.split) == {"seen", "unseen"}  # type: ignore[union-attr]
        assert emb.result.cached  # type: ignore[union-attr]  # (computing it is tested in tests/core)
        assert emb.color_by == "coarse"
        await pilot.press("c")
        assert emb.color_by == "fine"


async def test_worker_failure_is_reported_not_fatal(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        await pilot.press("e")  # the interrupted run has no stored embeddings
        assert isinstance(app.screen, EmbeddingsScreen)
        info = app.screen.query_one("#tsne-info", Static)
        await wait_for(pilot, lambda: "embed stage" in str(info.render()), timeout=60)  # the worker's one line
        assert app.is_running


async def test_query_screen_item_and_text_errors(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        _select(app.screen, "20251127-101500-demo")  # type: ignore[arg-type]
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, QueryScreen))
        q = app.screen
        assert isinstance(q, QueryScreen)
        await wait_for(pilot, lambda: len(q.items) == 60)
        q.search(item_id="unseen-2-0")
        await wait_for(pilot, lambda: q.result is not None, timeout=90)  # the first query starts the worker
        table = q.query_one("#query-results", DataTable)
        assert table.row_count == 10
        assert q.result.results[0].fine == "unseen_fine_2"  # tight synthetic clusters: top hit is a hit
        # text on a non-CLIP run: the engine's one-line error shows in the panel
        q.query_one("#query-text", Input).value = "a red car"
        q.search(text="a red car")
        await wait_for(
            pilot, lambda: "text encoder" in str(q.query_one("#query-status", Static).render()), timeout=90
        )


async def test_delete_asks_first_and_refuses_running(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        _select(app.screen, "20251127-121500-cars")  # type: ignore[arg-type]
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("n")
        assert (runs_dir / "20251127-121500-cars").exists()
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await wait_for(pilot, lambda: not (runs_dir / "20251127-121500-cars").exists())
        await wait_for(pilot, lambda: app.screen.table.row_count == 3)  # type: ignore[attr-defined]


async def test_help_lists_keys(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_launch_dialog_validates_then_starts_a_detached_run(
    runs_dir: Path, configs_dir: Path, tmp_path: Path
) -> None:
    # a stand-in for `python -m ofgr_core.cli run ...`: creates a run folder like the real one, then exits
    fake = tmp_path / "fake_python"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, socket, sys, time\n"
        "args = sys.argv; runs = args[args.index('--runs-dir') + 1]\n"
        "d = os.path.join(runs, '20251127-161500-demo'); os.makedirs(d)\n"
        "open(os.path.join(d, 'config.yaml'), 'w').write('name: demo\\n')\n"
        "ev = dict(type='run_started', time=time.time(), run_id='x', name='demo', pid=os.getpid(),\n"
        "          host=socket.gethostname())\n"
        "open(os.path.join(d, 'events.jsonl'), 'w').write(json.dumps(ev) + '\\n')\n"
        "open(os.path.join(runs, 'argv.json'), 'w').write(json.dumps(args[1:]))\n"
        "time.sleep(1)\n"
    )
    fake.chmod(0o755)
    app = make_app(runs_dir, configs_dir, python=str(fake))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchDialog))
        dialog = app.screen
        path = dialog.query_one("#config-path", Input)
        path.value = str(configs_dir / "bad.yaml")
        await pilot.press("ctrl+s")
        error = dialog.query_one("#config-error", Static)
        assert "epochz" in str(error.render()) and error.display  # caught before launching, under its field
        path.value = str(configs_dir / "demo.yaml")
        dialog.query_one("#overrides", Input).value = "train.epochs=2 seed=3"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        await wait_for(pilot, lambda: any("161500-demo" in r.run_id for r in app.runs), timeout=15)
        screen = app.screen
        await wait_for(
            pilot, lambda: screen.current is not None and screen.current.run_id.endswith("161500-demo")
        )
        import json

        argv = json.loads((runs_dir / "argv.json").read_text())
        assert argv[:3] == ["-m", "ofgr_core.cli", "run"]
        assert argv[argv.index("--set") + 1] == "train.epochs=2" and "seed=3" in argv
        assert (runs_dir / ".launch").is_dir()  # output goes to a log file, never to our terminal
