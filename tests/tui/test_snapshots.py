"""Snapshots of the main screens at 80x24 and 120x40 (update with `pytest --snapshot-update`, then look).

Deterministic: fixed run ids, times (TZ=UTC, injected clock), data, t-SNE cache, GPU readings, and a fixed
folder path because the runs screen shows it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

import rundirs
from ofgr_tui.screens.compare import CompareScreen
from ofgr_tui.screens.embeddings import EmbeddingsScreen
from ofgr_tui.screens.launch import LaunchDialog
from ofgr_tui.screens.live import LiveScreen
from ofgr_tui.screens.query import QueryScreen
from ofgr_tui.screens.results import ResultsScreen
from ofgr_tui.screens.runs import RunsScreen
from tui_testing import fake_gpus, make_app, wait_for

SIZES = [(80, 24), (120, 40)]


@pytest.fixture(scope="module")
def snap_runs() -> Path:
    root = Path(tempfile.gettempdir()) / "ofgr-tui-snapshots"
    shutil.rmtree(root, ignore_errors=True)
    runs = root / "runs"
    rundirs.finished_run(runs, "20251127-101500-demo", r1=0.5, embeddings=True, per_query=True)
    rundirs.finished_run(
        runs, "20251127-111500-r50", r1=0.62, t0=rundirs.T0 + 3600, model="resnet50", per_query=True, seed=1
    )
    rundirs.failed_run(runs, "20251127-121500-cars", t0=rundirs.T0 + 7200)
    rundirs.interrupted_run(runs, "20251127-131500-long", t0=rundirs.T0 + 10800, partial_last_line=True)
    rundirs.clip_run(runs, "20251127-210000-clip", root / "img")
    configs = root / "configs"
    configs.mkdir()
    (configs / "clip_vitb32_head.yaml").write_text("name: clip\nmodel: {kind: clip, name: ViT-B-32}\n")
    (configs / "demo.yaml").write_text("name: demo\ntrain:\n  epochs: 1\n")
    return runs


def app_for(runs: Path):  # noqa: ANN201
    # no periodic rescans while the picture is taken
    return make_app(runs, gpu_probe=fake_gpus, scan_interval=3600, gpu_interval=3600, tail_interval=3600)


def select(run_id: str):  # noqa: ANN201
    async def go(pilot) -> None:  # noqa: ANN001
        await wait_for(pilot, lambda: pilot.app.scanned)
        screen = pilot.app.screen
        assert isinstance(screen, RunsScreen)
        screen.table.move_cursor(row=[r.run_id for r in screen.runs].index(run_id))
        await pilot.pause(0.2)  # the detail line follows the cursor: let it render on a busy machine
        await pilot.pause()

    return go


@pytest.mark.parametrize("size", SIZES)
def test_runs_screen(snap_compare, snap_runs: Path, size: tuple[int, int]) -> None:  # noqa: ANN001
    assert snap_compare(app_for(snap_runs), terminal_size=size, run_before=select("20251127-111500-r50"))


@pytest.mark.parametrize("size", SIZES)
def test_live_screen(snap_compare, snap_runs: Path, size: tuple[int, int]) -> None:  # noqa: ANN001
    async def go(pilot) -> None:  # noqa: ANN001
        await select("20251127-101500-demo")(pilot)
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, LiveScreen))
        live = pilot.app.screen
        await wait_for(pilot, lambda: live.state.terminal is not None and live.query_one("#gpu").snapshot)
        await pilot.pause()

    assert snap_compare(app_for(snap_runs), terminal_size=size, run_before=go)


@pytest.mark.parametrize("size", SIZES)
def test_results_screen(snap_compare, snap_runs: Path, size: tuple[int, int]) -> None:  # noqa: ANN001
    async def go(pilot) -> None:  # noqa: ANN001
        await select("20251127-101500-demo")(pilot)
        await pilot.press("r")
        await pilot.pause()

    assert snap_compare(app_for(snap_runs), terminal_size=size, run_before=go)


@pytest.mark.parametrize("size", SIZES)
def test_compare_screen(snap_compare, snap_runs: Path, size: tuple[int, int]) -> None:  # noqa: ANN001
    async def go(pilot) -> None:  # noqa: ANN001
        await select("20251127-101500-demo")(pilot)
        await pilot.press("space")
        await select("20251127-111500-r50")(pilot)
        await pilot.press("space", "c")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, CompareScreen))
        await wait_for(pilot, lambda: pilot.app.screen.comparison is not None, timeout=20)
        await pilot.pause(0.3)  # the header, tables and plot are filled in one handler: let layout settle
        await pilot.pause()

    assert snap_compare(app_for(snap_runs), terminal_size=size, run_before=go)


@pytest.mark.parametrize("size", SIZES)
def test_embeddings_screen(snap_compare, snap_runs: Path, size: tuple[int, int]) -> None:  # noqa: ANN001
    async def go(pilot) -> None:  # noqa: ANN001
        await select("20251127-101500-demo")(pilot)
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, EmbeddingsScreen))
        await wait_for(pilot, lambda: pilot.app.screen.result is not None)
        await pilot.pause()

    assert snap_compare(app_for(snap_runs), terminal_size=size, run_before=go)


def test_launch_dialog_with_an_error(snap_compare, snap_runs: Path) -> None:  # noqa: ANN001
    """80x24: the validation error shows under the overrides field; the demo config is preselected."""

    async def go(pilot) -> None:  # noqa: ANN001
        await wait_for(pilot, lambda: pilot.app.scanned)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, LaunchDialog))
        pilot.app.screen.query_one("#overrides").focus()
        await pilot.press(*"train.epoch=2", "enter")
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#overrides-error").display)
        await pilot.pause()

    app = make_app(snap_runs, snap_runs.parent / "configs", gpu_probe=fake_gpus, scan_interval=3600,
                   gpu_interval=3600, tail_interval=3600)  # fmt: skip
    assert snap_compare(app, terminal_size=(80, 24), run_before=go)


def test_results_of_a_clip_run_with_text_to_image(snap_compare, snap_runs: Path) -> None:  # noqa: ANN001
    """80x24, scrolled to the text->image block (t)."""

    async def go(pilot) -> None:  # noqa: ANN001
        await select("20251127-210000-clip")(pilot)
        await pilot.press("enter")  # a finished run: its results
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, ResultsScreen))
        await pilot.pause()
        await pilot.press("t")
        await pilot.pause(0.2)

    assert snap_compare(app_for(snap_runs), terminal_size=(80, 24), run_before=go)


def test_query_with_results(snap_compare, snap_runs: Path) -> None:  # noqa: ANN001
    """80x24 after an item search: the picker folded away, paths visible, thumbnails off by default."""

    async def go(pilot) -> None:  # noqa: ANN001
        await select("20251127-101500-demo")(pilot)
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, QueryScreen))
        q = pilot.app.screen
        await wait_for(pilot, lambda: len(q.items) == 60)
        await pilot.press("ctrl+g", *"unseen-2-0", "enter")
        await wait_for(pilot, lambda: q.result is not None, timeout=90)
        await pilot.pause(0.2)

    assert snap_compare(app_for(snap_runs), terminal_size=(80, 24), run_before=go)
