"""Compare: a header that says what differs between the runs, and the device they really ran on."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from ofgr_tui.rundiff import differing
from ofgr_tui.screens.compare import CompareScreen
from ofgr_tui.screens.runs import RunsScreen
from tui_testing import make_app, wait_for


def test_differing_keys() -> None:
    a = {"name": "demo", "train": {"epochs": 3, "lr": 0.1}, "data": {"sources": [{"type": "synthetic"}]}}
    b = {"name": "demo", "train": {"epochs": 5, "lr": 0.1}, "data": {"sources": [{"type": "cars"}]}, "x": 1}
    assert differing([a, b]) == [
        ("train.epochs", ["3", "5"]),
        ("data.sources[0].type", ["synthetic", "cars"]),
        ("x", ["—", "1"]),
    ]


async def test_compare_header_shows_differences_and_resolved_device(runs_dir: Path) -> None:
    env = runs_dir / "20251127-111500-wide" / "env.json"
    env.write_text(json.dumps({"device": "auto", "overrides": ["model.name=resnet50", "seed=1"]}))
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        for run_id in ("20251127-101500-demo", "20251127-111500-wide"):
            screen.table.move_cursor(row=[r.run_id for r in screen.shown].index(run_id))
            await pilot.press("space")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        cmp = app.screen
        await wait_for(pilot, lambda: cmp.comparison is not None, timeout=30)
        await pilot.pause()
        console = Console(width=120, record=True)
        console.print(cmp.query_one("#compare-diff", Static).content)
        folded = console.export_text()
        # folded: one line naming the difference; the --set lines wait for d
        assert "what differs" in folded and "model.name resnet18 | resnet50" in folded
        assert "--set" not in folded and len(folded.strip().splitlines()) == 1
        await pilot.press("d")
        await pilot.pause()
        console = Console(width=120, record=True)
        console.print(cmp.query_one("#compare-diff", Static).content)
        text = console.export_text()
        assert "what differs" in text and "model.name" in text and "resnet50" in text
        assert "--set" in text and "seed=1" in text
        costs = cmp.query_one("#cost-table", DataTable)
        last = len(costs.columns) - 1
        assert [str(costs.get_cell_at(Coordinate(i, last))) for i in range(2)] == ["cuda:0", "cuda:0"]


async def test_compare_puts_a_cnn_and_a_clip_run_side_by_side_with_text_rows(runs_dir: Path, tmp_path: Path) -> None:
    import rundirs

    clip = rundirs.clip_run(runs_dir, "20251127-210000-clip", tmp_path / "img")
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        for run_id in ("20251127-101500-demo", clip.name):
            screen.table.move_cursor(row=[r.run_id for r in screen.shown].index(run_id))
            await pilot.press("space")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        cmp = app.screen
        await wait_for(pilot, lambda: cmp.comparison is not None, timeout=30)
        text_rows = [r for r in cmp.comparison.rows if r.mode == "text"]
        assert text_rows, "no text->image rows"
        r1 = next(r for r in text_rows if r.split == "unseen" and r.level == "fine" and r.metric == "recall@1")
        assert r1.values == (None, 0.21)  # the CNN has no text tower: no value, not a zero
        table = cmp.query_one("#compare-table", DataTable)
        labels = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        section = next(i for i, label in enumerate(labels) if label.startswith("text→image"))
        assert labels[section + 1].strip() == "unseen fine R@1"
        # ] jumps to the next section: from the image rows to the text->image rows
        table.move_cursor(row=1)
        await pilot.press("right_square_bracket")
        assert table.cursor_row == section + 1


def test_a_compare_reply_round_trips_and_a_foreign_pickle_is_refused(runs_dir: Path, tmp_path: Path) -> None:
    """The worker's reply decodes to the very Comparison it encoded; a reply naming any other global (here
    ``os.system``) is refused before anything runs."""
    import base64
    import os
    import pickle

    import pytest

    from ofgr_core.reports.compare import Comparison, compare_runs
    from ofgr_tui.worker import _compare, decode_comparison

    dirs = [str(runs_dir / "20251127-111500-wide"), str(runs_dir / sorted(
        p.name for p in runs_dir.iterdir() if p.is_dir() and p.name != "20251127-111500-wide")[0])]
    decoded = decode_comparison(_compare({"run_dirs": dirs, "baseline": 0}, lambda _: None))
    assert isinstance(decoded, Comparison) and decoded == compare_runs(dirs, baseline=0)

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        decode_comparison(base64.b64encode(pickle.dumps(Payload())).decode("ascii"))
    assert not marker.exists()
