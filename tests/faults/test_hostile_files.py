"""Hostile YAML and text files: refused fast with one line naming the file; nothing expands or hangs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ConfigError, ExitCode
from ofgr_core.config import load_config

runner = CliRunner()

LAUGHS = "".join(
    f"        {chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)
BOMB = (
    "data:\n  sources:\n    - type: synthetic\n      options:\n"
    "        a: &a [x, x, x, x, x, x, x, x, x]\n" + LAUGHS
)


def test_billion_laughs_in_config_is_refused_fast(tmp_path: Path) -> None:
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert time.perf_counter() - t0 < 2.0
    assert str(p) in str(e.value) and "\n" not in str(e.value) and "refused" in str(e.value)


def test_billion_laughs_through_the_cli_and_set(tmp_path: Path) -> None:
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    r = runner.invoke(app, ["run", str(p), "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == ExitCode.CONFIG and "refused" in r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    value = "{a: &a [x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)) + "}"
    with pytest.raises(ConfigError, match="refused"):
        load_config(None, [f"data.sources.0.options={value}"])


@pytest.mark.parametrize(
    "doc,what",
    [("a: &a [*a]\n", "refers to itself"), ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nested")],
)
def test_recursive_and_deep_yaml_refused(tmp_path: Path, doc: str, what: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(doc)
    with pytest.raises(ConfigError, match=what) as e:
        load_config(p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "data,ok",
    [
        ("name: café\n".encode("latin-1"), False),
        ("\ufeffname: café\n".encode(), True),
        ("name: café\n".encode("utf-16"), True),
        (b"name: a\x00b\n", False),
    ],
)
def test_config_encodings(tmp_path: Path, data: bytes, ok: bool) -> None:
    p = tmp_path / "enc.yaml"
    p.write_bytes(data)
    if ok:
        assert load_config(p).name == "café"
    else:
        with pytest.raises(ConfigError) as e:
            load_config(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
