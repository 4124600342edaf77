"""``ofgr data synth`` through the real Typer app."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ofgr_core.cli.app import app
from ofgr_core.common.errors import ExitCode
from ofgr_core.data import synthetic

ARGS = ["--num-coarse", "6", "--fine-per-coarse", "8", "--images-per-class", "2", "--size", "32"]


def test_synth_writes_world_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "world"
    res = CliRunner().invoke(app, ["data", "synth", str(out), "--seed", "5", *ARGS, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["images"] == 96 and summary["coarse_classes"] == 6 and summary["fine_classes"] == 48
    assert summary["options"]["seed"] == 5
    assert (out / synthetic.MANIFEST).is_file() and (out / synthetic.SPEC_FILE).is_file()
    assert len(list((out / "images").rglob("*.png"))) == 96


def test_synth_plain_summary_and_reuse(tmp_path: Path) -> None:
    out = tmp_path / "world"
    runner = CliRunner()
    first = runner.invoke(app, ["data", "synth", str(out), *ARGS])
    assert first.exit_code == 0, first.output
    assert "96 images" in first.stdout and "48 fine" in first.stdout
    stamp = (out / synthetic.MANIFEST).stat().st_mtime_ns
    second = runner.invoke(app, ["data", "synth", str(out), *ARGS])
    assert second.exit_code == 0
    assert (out / synthetic.MANIFEST).stat().st_mtime_ns == stamp


def test_synth_bad_option_is_one_line_config_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "w"), "--num-coarse", "99"])
    assert res.exit_code == ExitCode.CONFIG
    assert "num_coarse" in res.output and "Traceback" not in res.output


def test_synth_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    res = CliRunner().invoke(app, ["data", "synth", str(tmp_path), *ARGS])
    assert res.exit_code == ExitCode.DATA
    assert (tmp_path / "keep.txt").exists()
