"""The t-SNE screen: what the legend says is what the points show, readable on the theme, one projection."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from ofgr_tui.screens.embeddings import MIN_CONTRAST, EmbeddingsScreen, contrast, rgb_of
from ofgr_tui.screens.query import QueryScreen
from ofgr_tui.screens.runs import RunsScreen
from ofgr_tui.widgets.plots import ScatterPlot
from tui_testing import make_app, wait_for

MARKER_CHARS = "•x"


def _rendered_point_colours(plot: ScatterPlot, console) -> set[int]:  # noqa: ANN001
    """The 256-colour index of every marker character in the plot as rendered."""
    text = plot.render()
    assert isinstance(text, Text)
    out: set[int] = set()
    for i, ch in enumerate(text.plain):
        if ch in MARKER_CHARS:
            color = text.get_style_at_offset(console, i).color
            assert color is not None and color.number is not None, f"point {ch!r} has no palette colour"
            out.add(color.number)
    return out


def _legend_colours(legend: Static) -> list[tuple[int, int, int]]:
    """The colour of each legend swatch (``██``) as rendered, in RGB."""
    content = legend.render()
    out = []
    for span in content.spans:  # type: ignore[union-attr]
        fg = getattr(span.style, "foreground", None)
        if fg is not None and content.plain[span.start : span.end] == "██ ":  # type: ignore[union-attr]
            out.append((fg.r, fg.g, fg.b))
    return out


async def _open_tsne(app, pilot) -> EmbeddingsScreen:  # noqa: ANN001
    await wait_for(pilot, lambda: app.scanned)
    screen = app.screen
    assert isinstance(screen, RunsScreen)
    screen.table.move_cursor(row=[r.run_id for r in screen.shown].index("20251127-101500-demo"))
    await pilot.press("e")
    await wait_for(pilot, lambda: isinstance(app.screen, EmbeddingsScreen) and app.screen.result is not None)
    await pilot.pause()
    return app.screen


async def test_legend_colours_are_the_rendered_point_colours(runs_dir: Path) -> None:
    for theme in ("textual-dark", "textual-light"):
        app = make_app(runs_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            app.theme = theme
            emb = await _open_tsne(app, pilot)
            for colour_by in ("coarse", "fine"):
                if emb.color_by != colour_by:
                    await pilot.press("c")
                    await pilot.pause()
                points = _rendered_point_colours(emb.query_one(ScatterPlot), app.console)
                legend = _legend_colours(emb.query_one("#tsne-legend", Static))
                n_classes = 3 if colour_by == "coarse" else 12
                assert len(legend) == min(n_classes, 12)
                # every colour drawn is in the legend, every legend colour is drawn
                assert {rgb_of(c) for c in points} == set(legend), (theme, colour_by, points, legend)
                # and none is (nearly) the background the points are drawn on
                bg = emb.query_one(ScatterPlot).background_rgb()
                assert bg is not None
                assert all(contrast(rgb_of(c), bg) >= MIN_CONTRAST for c in points), (theme, bg, points)


async def test_split_key_filters_the_one_projection(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        emb = await _open_tsne(app, pilot)
        result = emb.result
        assert result is not None and set(result.split) == {"seen", "unseen"}
        all_points = {
            (round(x, 4), round(y, 4))
            for g in emb.query_one(ScatterPlot).groups
            for x, y in zip(g[2], g[3], strict=True)
        }
        await pilot.press("s")  # -> unseen
        assert emb.split == "unseen" and emb.result is result  # nothing recomputed
        groups = emb.query_one(ScatterPlot).groups
        unseen_points = {(round(x, 4), round(y, 4)) for g in groups for x, y in zip(g[2], g[3], strict=True)}
        assert len(unseen_points) == 60 and unseen_points < all_points  # the same places, a subset
        assert all(g[4] == "x" for g in groups)  # only the unseen marker
        assert "60 points of 120" in str(emb.query_one("#tsne-info", Static).render())
        await pilot.press("f")  # query from the t-SNE screen
        await wait_for(pilot, lambda: isinstance(app.screen, QueryScreen))
