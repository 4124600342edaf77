"""Work that outlives a screen (t-SNE, reports) runs in the job worker; what the views show (issue 19)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text
from textual.widgets import DataTable, Static

import rundirs
from ofgr_core.reports.tsne import TsneResult
from ofgr_tui.rundiff import differing, ranked
from ofgr_tui.screens.embeddings import OTHER_COLOR, EmbeddingsScreen, group_points
from ofgr_tui.screens.query import find_itself
from ofgr_tui.screens.results import ResultsScreen
from ofgr_tui.screens.runs import RunsScreen
from ofgr_tui.widgets.plots import ScatterPlot
from ofgr_tui.worker_client import WorkerClient, WorkerFailed
from tui_testing import make_app, wait_for


class FakeJobs:
    """Stands in for the job worker: a t-SNE that reports progress and waits until released."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        self.release = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self.pid = None

    def ask(self, request: dict[str, Any], on_progress: Any = None) -> Any:
        self.requests.append(request)
        if on_progress is not None:
            on_progress({"done": 250, "total": 1000})
        assert self.release.wait(30)
        return self.result

    def close(self) -> None:
        pass


def _tsne_reply(n_fine: int = 3, per: int = 10) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    fine = [f"fine_{i}" for i in range(n_fine) for _ in range(per)]
    return {"xy": rng.normal(size=(len(fine), 2)).tolist(), "ids": [str(i) for i in range(len(fine))],
            "fine": fine, "coarse": [f"coarse_{int(f.split('_')[1]) % 2}" for f in fine],
            "split": ["seen" if i % 3 else "unseen" for i in range(len(fine))], "n_total": len(fine),
            "note": None, "cached": False, "cache_path": "/tmp/x.npz"}  # fmt: skip


async def test_tsne_keeps_computing_when_the_screen_is_left(runs_dir: Path) -> None:
    fake = FakeJobs(_tsne_reply())
    app = make_app(runs_dir)
    app.job_client = fake  # type: ignore[assignment]  # the worker process, without scikit-learn's minute
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        screen.table.move_cursor(row=[r.run_id for r in screen.shown].index("20251127-101500-demo"))
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EmbeddingsScreen))
        info = app.screen.query_one("#tsne-info", Static)
        await wait_for(pilot, lambda: "iteration 250/1000" in str(info.render()))
        await pilot.press("escape")  # leave while it computes
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.press("e")  # come back: the same job, still running, its progress on screen
        await wait_for(pilot, lambda: isinstance(app.screen, EmbeddingsScreen))
        emb = app.screen
        await wait_for(pilot, lambda: "iteration 250/1000" in str(emb.query_one("#tsne-info", Static).render()))
        assert len(fake.requests) == 1
        fake.release.set()
        await wait_for(pilot, lambda: emb.result is not None)
        assert len(emb.result) == 30 and len(fake.requests) == 1


def test_fine_colours_are_ones_the_legend_names() -> None:
    n = 42
    fine = [f"class_{i:02d}" for i in range(n) for _ in range(3)]
    r = TsneResult(xy=np.zeros((len(fine), 2), np.float32), ids=[str(i) for i in range(len(fine))], fine=fine,
                   coarse=["c"] * len(fine), split=["unseen"] * len(fine), n_total=len(fine), note=None,
                   cached=True, cache_path=Path("/x"))  # fmt: skip
    groups, legend = group_points(r, "fine", max_colors=12)
    assert len(legend) == 12 and legend[-1][0] == f"other ({n - 11} classes)" and legend[-1][1] == OTHER_COLOR
    colours = [c for _, c, _ in legend]
    assert len(set(colours)) == 12  # one colour, one class (or "other")
    assert {g.color for g in groups} == set(colours)
    assert sum(count for _, _, count in legend) == len(fine)


def test_markers_do_not_depend_on_the_colouring() -> None:
    """Seen and unseen points share cells; which marker shows must not change with the colour mode."""
    rng = np.random.default_rng(1)
    n = 400
    fine = [f"f{i % 20}" for i in range(n)]
    r = TsneResult(xy=rng.integers(0, 12, size=(n, 2)).astype(np.float32), ids=[str(i) for i in range(n)],
                   fine=fine, coarse=[f"c{i % 4}" for i in range(n)], split=["seen" if i % 2 else "unseen"
                                                                            for i in range(n)],
                   n_total=n, note=None, cached=True, cache_path=Path("/x"))  # fmt: skip

    def last_marker_per_cell(by: str) -> dict[tuple[float, float], str]:
        groups, _ = group_points(r, by)
        out: dict[tuple[float, float], str] = {}
        for g in groups:  # drawn in this order: later groups cover earlier ones
            for x, y in zip(g.xs, g.ys, strict=True):
                out[(x, y)] = g.split
        return out

    assert last_marker_per_cell("coarse") == last_marker_per_cell("fine")


async def test_results_show_a_clip_runs_text_to_image_block(runs_dir: Path, tmp_path: Path) -> None:
    clip = rundirs.clip_run(runs_dir, "20251127-210000-clip", tmp_path / "img")
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        await app.push_screen(ResultsScreen(clip))
        await pilot.pause()
        res = app.screen
        t2i = res.query_one("#t2i-table", DataTable)
        assert res.query_one("#t2i").display and t2i.row_count == 2  # recall@1 and map@r: no recall@5 stored
        assert "21.0" in str(t2i.get_row_at(0)[1])  # unseen fine recall@1 of the text queries
        await pilot.press("t")  # jumps there (at 80x24 it is below the fold)
        await pilot.pause()
        assert res.query_one("#t2i").region.y < 24
        await pilot.press("escape")
        await app.push_screen(ResultsScreen(runs_dir / "20251127-101500-demo"))
        await pilot.pause()
        assert not app.screen.query_one("#t2i").display  # a CNN run: no such block


def test_differences_rank_by_importance_and_unset_is_not_a_difference() -> None:
    a = {"model": {"kind": "timm", "layer_decay": None, "name": "resnet18"}, "eval": {"k": 1}, "train": {"epochs": 12}}
    b = {"model": {"kind": "timm", "name": "resnet50"}, "eval": {"k": 2}, "train": {"epochs": 30}}
    keys = [k for k, _ in ranked(differing([a, b]))]
    assert keys == ["model.name", "train.epochs", "eval.k"]  # layer_decay None vs absent: not a difference


def test_a_path_query_finds_its_own_copy(tmp_path: Path) -> None:
    from types import SimpleNamespace

    img = tmp_path / "q.png"
    img.write_bytes(b"\x89PNG fake bytes")
    copy = tmp_path / "gallery" / "q.png"
    copy.parent.mkdir()
    shutil.copy(img, copy)
    other = tmp_path / "gallery" / "o.png"
    other.write_bytes(b"\x89PNG other bytes")
    hits = [SimpleNamespace(path=str(other), score=0.999), SimpleNamespace(path=str(copy), score=1.0)]
    assert find_itself(str(img), hits) == 1
    assert find_itself(str(img), hits[:1]) is None


def test_worker_client_reports_a_dead_worker_and_leaves_no_log_file(tmp_path: Path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("ofgr-tui-*.log"))
    client = WorkerClient(python=shutil.which("false") or "/bin/false", name="query worker")
    try:
        client.ask({"op": "supports_text", "run_dir": str(tmp_path)})
    except WorkerFailed as e:
        assert "query worker process exited" in str(e)
    else:
        raise AssertionError("a dead worker must raise")
    finally:
        client.close()
    assert set(Path(tempfile.gettempdir()).glob("ofgr-tui-*.log")) == before


def test_worker_answers_with_progress_then_one_reply(tmp_path: Path) -> None:
    import io
    import json

    from ofgr_tui.worker import serve

    rundirs.finished_run(tmp_path / "runs", "20251127-101500-demo", embeddings=True)
    run = tmp_path / "runs" / "20251127-101500-demo"
    out = io.StringIO()
    serve(io.StringIO(json.dumps({"op": "tsne", "run_dir": str(run)}) + "\n" + '{"op": "nope"}\n'), out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(replies[0]["ok"]["xy"]) == 120 and replies[0]["ok"]["cached"] is True  # the fixture's cache
    assert "unknown op" in replies[1]["error"]


def test_plot_legend_keeps_each_runs_colour() -> None:
    from ofgr_tui.widgets.plots import PALETTE, CurvePlot

    plot = CurvePlot()
    plot.set_series({"A run-a": ([], []), "B run-b": ([1.0, 2.0], [3.0, 4.0])})  # A has no curve
    legend = plot.legend()
    assert isinstance(legend, Text) and "B run-b" in legend.plain and "A run-a" not in legend.plain
    assert str(legend.spans[0].style) == PALETTE[1]  # B keeps B's colour


async def test_scatter_marker_counts_match_between_colour_modes(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        await app.push_screen(EmbeddingsScreen(runs_dir / "20251127-101500-demo"))
        emb = app.screen
        assert isinstance(emb, EmbeddingsScreen)
        await wait_for(pilot, lambda: emb.result is not None, timeout=60)
        counts = []
        for _ in range(2):
            await pilot.pause()
            text = emb.query_one(ScatterPlot).render()
            assert isinstance(text, Text)
            counts.append((text.plain.count("•"), text.plain.count("x")))
            await pilot.press("c")
        assert counts[0] == counts[1], counts
