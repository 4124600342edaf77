"""``ofgr data inspect``: format detection, the human report, and ``--json`` as the only stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from datafix import corrupt, make_manifest_world, stanford_devkit
from typer.testing import CliRunner

from ofgr_core.cli import app

runner = CliRunner()


def test_inspect_stanford_devkit_json(tmp_path: Path) -> None:
    root = stanford_devkit(tmp_path / "cars", {1: (2, 1), 2: (2, 1), 3: (2, 1)})
    corrupt(root / "cars_train" / "00001.jpg")
    res = runner.invoke(app, ["data", "inspect", str(root), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)  # stdout is exactly one JSON document
    assert rep["detected"]["layout"] == "Stanford Cars (devkit)"
    assert rep["images"] == 8 and rep["images_found"] == 9
    assert rep["classes_per_level"] == {"fine": 3, "coarse": 2}
    assert rep["per_split"]["test"]["images"] == 3
    assert [Path(u["path"]).name for u in rep["unreadable"]] == ["00001.jpg"]


def test_inspect_config_reports_merged_data_and_split(tmp_path: Path) -> None:
    make_manifest_world(tmp_path / "m", {"sedan": ["a", "b", "c"], "suv": ["d", "e", "f"]}, per_class=3,
                        domains=["day", "night"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"sources": [{"type": "manifest", "root": str(tmp_path / "m")}],
                                            "taxonomy": "vehicles"},
                                   "split": {"val_fraction": 0}}))
    res = runner.invoke(app, ["data", "inspect", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["classes_per_level"] == {"fine": 6, "coarse": 2, "super": 1}
    assert rep["open_set_split"]["classes"]["unseen"] == 4  # 2 of 3 per coarse class
    assert set(rep["per_domain"]) == {"day", "night"}
    human = runner.invoke(app, ["data", "inspect", str(tmp_path / "m")])
    assert human.exit_code == 0 and "found manifest CSV" in human.stdout


def test_inspect_unknown_layout_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "empty")])
    assert res.exit_code == 4
    assert "no known dataset layout" in res.output


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, ofgr_core.cli.data_cmd; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prepare_checks_and_fills_the_cache(tmp_path: Path) -> None:
    make_manifest_world(tmp_path / "m", {"c": ["a", "b"], "d": ["e"]}, per_class=4)
    corrupt(tmp_path / "m" / "images" / "c" / "a" / "0.png")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"sources": [{"type": "manifest", "root": str(tmp_path / "m")}],
                                            "cache": True, "image_size": 16,
                                            "cache_dir": str(tmp_path / "cache")}}))
    res = runner.invoke(app, ["data", "prepare", str(cfg), "--json", "--workers", "2"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["images"] == 11 and rep["unreadable"] == 1 and rep["cached"] == 11
    assert (tmp_path / "cache" / "image_checks.bin").is_file()
    plain = runner.invoke(app, ["data", "prepare", str(cfg)])
    assert plain.exit_code == 0 and "11 images ready" in plain.stdout
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({"data": {"sources": [{"type": "manifest", "root": str(tmp_path / "m")}],
                                            "cache": False}}))
    bad = runner.invoke(app, ["data", "prepare", str(off)])
    assert bad.exit_code != 0 and "data.cache is off" in bad.output
