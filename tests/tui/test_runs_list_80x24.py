"""The runs list, the launch dialog, help and the key bar as people use them at 80x24 over SSH (issue 19)."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, OptionList, Static

import rundirs
from ofgr_core.runs.state import RunInfo
from ofgr_tui.screens.help import HelpScreen
from ofgr_tui.screens.launch import LaunchDialog
from ofgr_tui.screens.live import LiveScreen
from ofgr_tui.screens.results import ResultsScreen
from ofgr_tui.screens.runs import RunsScreen, detail_text, fit_parts, plan_columns, run_label, short_ids
from tui_testing import make_app, wait_for


def _info(run_id: str, *, dataset: str = "synthetic", split: str = "random", model: str = "timm:resnet18") -> RunInfo:
    return RunInfo(run_id=run_id, path=Path("/runs") / run_id, status="finished", dataset=dataset, split=split,
                   model=model)  # fmt: skip


def test_two_runs_of_one_name_stay_apart_at_60_columns() -> None:
    runs = [_info("20261205-101003-clip_head"), _info("20261205-101047-clip_head")]
    cols = plan_columns(60, runs)
    run_w = next(c.width for c in cols if c.key == "run")
    short = short_ids(runs, run_w)
    labels = {run_label(r.run_id, run_w, short=short) for r in runs}
    assert len(labels) == 2, labels  # the time of day tells them apart (the date goes first)
    assert sum(c.width + 2 for c in cols) + 2 <= 60


def test_the_run_column_comes_first_and_constant_columns_go() -> None:
    runs = [_info("20261205-100907-cnn_finetune"), _info("20261205-101512-clip_head", model="clip:ViT-B-32")]
    cols = {c.key: c for c in plan_columns(80, runs)}
    assert cols["run"].width >= len("20261205-100907-cnn_finetune")  # whole ids at 80 columns
    assert "dataset" not in cols and "split" not in cols  # one value for every run: in the detail pane
    assert "unseen" in cols["r1"].label and "fine" in cols["r1"].label and "R@1" in cols["r1"].label
    differ = [_info("20261205-100907-a", dataset="cars"), _info("20261205-101512-b", split="cars196")]
    wide = {c.key for c in plan_columns(160, differ)}
    assert {"dataset", "split", "started"} <= wide
    for width in (60, 80, 120, 200):
        assert sum(c.width + 2 for c in plan_columns(width, runs)) + 2 <= width


def test_detail_lines_are_cut_between_words_only() -> None:
    out = fit_parts(["set", "alpha=1", "beta=2", "gamma=3"], 20, sep=" ")
    assert out == "set alpha=1 +2 more"
    info = _info("20261205-100907-x")
    info.metrics = {"unseen": {"fine": {"recall@1": 0.5}, "coarse": {"recall@1": 0.7}}}
    from rich.console import Console

    text = detail_text(info, 40, [])
    console = Console(width=40, record=True)
    console.print(text)
    shown = console.export_text()
    assert all(len(line) <= 40 for line in shown.splitlines())
    assert shown.split() == text.plain.split()  # wrapped between words: every word whole


async def test_enter_opens_results_of_finished_runs_and_the_live_view_of_others(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        ids = [r.run_id for r in screen.shown]
        screen.table.move_cursor(row=ids.index("20251127-111500-wide"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        screen.table.move_cursor(row=ids.index("20251127-121500-cars"))  # failed
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen))


async def test_esc_clears_the_filter_from_the_list_and_the_cursor_survives_no_match(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        ids = [r.run_id for r in screen.shown]
        screen.table.move_cursor(row=ids.index("20251127-111500-wide"))
        await pilot.pause()
        await pilot.press("slash", *"zzz")  # matches nothing
        await wait_for(pilot, lambda: screen.table.row_count == 0, timeout=5)
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.table.row_count == 4, timeout=5)
        assert screen.current_id == "20251127-111500-wide"  # not back at the top
        # a filter kept with enter, cleared by esc on the list itself
        await pilot.press("slash", *"fin", "enter")
        await wait_for(pilot, lambda: screen.table.row_count == 2 and screen.table.has_focus, timeout=5)
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.table.row_count == 4, timeout=5)
        assert screen.filter_text == "" and not screen.query_one("#runs-filter", Input).display


async def test_launch_dialog_at_80x24_shows_the_error_under_its_field(runs_dir: Path, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a_first.yaml").write_text("name: a\ndata:\n  sources:\n    - {type: stanford_cars, root: /nope}\n")
    (configs / "demo.yaml").write_text("name: demo\ntrain:\n  epochs: 1\n")
    app = make_app(runs_dir, configs)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchDialog))
        dialog = app.screen
        # the demo (its data is generated) is preselected, not the first config in the folder
        assert dialog.query_one("#config-path", Input).value.endswith("demo.yaml")
        assert dialog.query_one("#config-list", OptionList).highlighted == 1
        overrides = dialog.query_one("#overrides", Input)
        assert overrides.value == ""  # the placeholder is not a value
        overrides.focus()
        await pilot.press(*"train.epoch=2", "enter")
        error = dialog.query_one("#overrides-error", Static)
        await wait_for(pilot, lambda: "did you mean train.epochs" in str(error.render()))
        assert isinstance(app.screen, LaunchDialog)  # not launched
        # visible: inside the 80x24 screen, right under the overrides field
        assert error.display and error.region.height >= 1 and error.region.bottom <= 24
        assert error.region.y == overrides.region.bottom
        assert not dialog.query_one("#config-error", Static).display


async def test_help_lists_the_list_keys_and_the_key_bar_shows_every_key(runs_dir: Path) -> None:
    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        bar_text = " ".join(app.screen.query_one("KeyBar").render().plain.split("\n"))
        for key in ("enter", "space", "c", "n", "s", "u", "d", "/", "r", "e", "f", "l", "q", "?"):
            assert f" {key} " in f" {bar_text} ", key
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        from rich.console import Console

        console = Console(width=80, record=True)
        for static in app.screen.query(Static):
            console.print(static.content)
        text = console.export_text()
        for key, desc in (("j", "Down"), ("k", "Up"), ("g home", "First"), ("G end", "Last"), ("esc", "Clear"),
                          ("T", "Sort by start time"), ("A", "Sort by R@1")):  # fmt: skip
            assert f"{key} " in text and desc in text, (key, desc)


async def test_resume_toast_waits_for_the_resume_and_says_resumed(runs_dir: Path, tmp_path: Path) -> None:
    """The toast said "run … started" for a resume, before the resume had taken the run."""
    from ofgr_tui.messages import RunLaunched

    app = make_app(runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.scanned)
        run = runs_dir / "20251127-131500-long"
        app.post_message(RunLaunched(4242, run, resumed=True))
        await wait_for(pilot, lambda: any("resumed" in n.message for n in app._notifications))
        assert not any("started" in n.message for n in app._notifications)
        app.post_message(RunLaunched(4243, run, resumed=True, exit_code=2, error="already finished"))
        await wait_for(pilot, lambda: any("resume of" in n.message and "failed" in n.message
                                          for n in app._notifications))  # fmt: skip


def test_stop_note_names_the_stage(tmp_path: Path) -> None:
    import json

    from ofgr_tui.livestate import current_stage, stop_note

    d = rundirs.interrupted_run(tmp_path / "runs", "20251127-131500-long")
    with open(d / "events.jsonl", "a") as f:
        f.write("\n" + json.dumps(rundirs.stage("finished", "train", rundirs.T0 + 100, seconds=1.0)) + "\n")
        f.write(json.dumps(rundirs.stage("started", "evaluate", rundirs.T0 + 101)) + "\n")
    assert current_stage([json.loads(x) for x in (d / "events.jsonl").read_text().splitlines() if x.startswith("{")
                          and x.endswith("}")]) == "evaluate"  # fmt: skip
    note = stop_note(d)
    assert "is in evaluate" in note and "next block of queries" in note and "confidence intervals" in note
    (d / "env.json").write_text(json.dumps({"world_size": 2}))
    assert "under torchrun a stop takes effect during training only" in stop_note(d)
