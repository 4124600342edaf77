"""User text that looks like Rich markup is printed literally by every command, on every output and error path.

``[/red]``, ``[/x]`` and ``[bold]`` used to raise ``MarkupError`` in the error printer or in ``ofgr runs`` (for the
whole shared runs folder), and ``[train]`` vanished from messages.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ExitCode

runner = CliRunner()
MARKUP = ["[/red]", "[/x]", "[bold]", "[train]", "[link=file:///etc]x[/link]"]


def _invoke(args: list[str]) -> tuple[int, str]:
    r = runner.invoke(app, args, env={"COLUMNS": "400"})  # wide: table cells are not wrapped
    out = r.output + (r.stderr if r.stderr_bytes is not None else "")
    assert "MarkupError" not in out and "Traceback" not in out, out
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"{args}: {type(r.exception).__name__}: {r.exception}")
    return r.exit_code, " ".join(out.split())


def _hostile_run(finished_run: Path, runs_dir: Path, text: str) -> Path:
    """A copy of a real run whose name, model, source name and error are ``text``."""
    run_dir = runs_dir / f"run-{abs(hash(text)) % 10**6}"
    shutil.copytree(finished_run, run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["name"] = text
    cfg["model"]["name"] = text
    cfg["data"]["sources"][0]["name"] = text
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"type": "log", "time": 2e9, "message": text, "level": "warning"}) + "\n")
        f.write(json.dumps({"type": "run_failed", "time": 2e9 + 1, "error": f"boom {text}"}) + "\n")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["timings"][text] = 1.0
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.mark.parametrize("text", MARKUP)
def test_runs_and_show_print_markup_literally(finished_run: Path, tmp_path: Path, text: str) -> None:
    runs_dir = tmp_path / "runs"
    run_dir = _hostile_run(finished_run, runs_dir, text)
    code, out = _invoke(["runs", "--runs-dir", str(runs_dir)])
    assert code == 0 and run_dir.name in out
    code, out = _invoke(["show", run_dir.name, "--runs-dir", str(runs_dir)])
    assert code == 0 and f"boom {text}" in out and "R@1" in out
    code, out = _invoke(["show", text, "--runs-dir", str(runs_dir)])
    assert code == ExitCode.NOT_FOUND and text in out
    code, out = _invoke(["resume", text, "--runs-dir", str(runs_dir)])
    assert code == ExitCode.NOT_FOUND and text in out
    code, out = _invoke(["query", run_dir.name, "--id", text, "--runs-dir", str(runs_dir)])
    assert code == ExitCode.NOT_FOUND and text in out
    code, out = _invoke(["index", "build", run_dir.name, "--split", text, "--runs-dir", str(runs_dir)])
    assert code == ExitCode.CONFIG and text in out


@pytest.mark.parametrize("text", MARKUP)
def test_config_errors_print_markup_literally(tmp_path: Path, text: str) -> None:
    code, out = _invoke(["run", "--runs-dir", str(tmp_path / "r"), "--set", f"train.optimizer='{text}'"])
    assert code == ExitCode.CONFIG and text in out
    code, out = _invoke(["run", "--runs-dir", str(tmp_path / "r"), "--set", f"{text}=1"])
    assert code == ExitCode.CONFIG and text in out
    cfg = tmp_path / f"{text.replace('/', '_')}.yaml"
    code, out = _invoke(["run", str(cfg), "--runs-dir", str(tmp_path / "r")])
    assert code == ExitCode.CONFIG and cfg.name in out
    code, out = _invoke(["data", "inspect", str(tmp_path / text.replace("/", "_"))])
    assert code != 0 and text.replace("/", "_") in out


@pytest.mark.parametrize("text", MARKUP)
def test_eval_embeddings_prints_class_and_split_names_literally(tmp_path: Path, text: str) -> None:
    rng = np.random.default_rng(0)
    n = 24
    np.save(tmp_path / "e.npy", rng.standard_normal((n, 8)).astype(np.float32))
    rows = ["id,fine,coarse,split"] + [
        f"i{i},{text}{i % 4},c{i % 2},{text if i % 2 else 'unseen'}" for i in range(n)
    ]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    code, out = _invoke(["eval-embeddings", str(tmp_path / "e.npy"), str(tmp_path / "l.csv"), "--bootstrap", "0"])
    assert code == 0 and f"{text}:" in out  # the split named after the markup is a table title
    (tmp_path / "bad.csv").write_text(f"id,{text}\n")
    code, out = _invoke(["eval-embeddings", str(tmp_path / "e.npy"), str(tmp_path / "bad.csv")])
    assert code == ExitCode.DATA and text in out


def test_training_log_messages_keep_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Log and interrupt messages holding ``[train]``-like text reach the terminal intact (they used to vanish)."""
    import io

    from rich.console import Console

    from ofgr_core.cli import run_cmd
    from ofgr_core.runs.events import Log, RunInterrupted

    buf = io.StringIO()
    monkeypatch.setattr(run_cmd, "err", Console(file=buf, width=200))
    with run_cmd.EventPrinter(quiet=False) as printer:
        for text in MARKUP:
            printer(Log(f"split {text} warn", level="warning"))
            printer(RunInterrupted(reason=f"sig {text}"))
    printed = buf.getvalue()
    for text in MARKUP:
        assert f"split {text} warn" in printed and f"sig {text}" in printed


@pytest.mark.parametrize("text", ["[/red]", "[bold]"])
def test_compare_report_bench_models_print_markup_literally(finished_run: Path, tmp_path: Path, text: str) -> None:
    runs_dir = tmp_path / "runs"
    a = _hostile_run(finished_run, runs_dir, text)
    b = runs_dir / "plain"
    shutil.copytree(finished_run, b)
    code, out = _invoke(["compare", str(a), str(b), "--runs-dir", str(runs_dir)])
    assert code == 0, out
    code, out = _invoke(["compare", text, str(b), "--runs-dir", str(runs_dir)])
    assert code == ExitCode.NOT_FOUND and text in out
    code, out = _invoke(["report", str(a), "--runs-dir", str(runs_dir), "--output", str(tmp_path / "rep")])
    assert code in (0, ExitCode.DATA, ExitCode.NOT_FOUND), out
    code, out = _invoke(["bench", str(tmp_path / f"{text}.yaml"), "--runs-dir", str(runs_dir)])
    assert code in (ExitCode.CONFIG, ExitCode.NOT_FOUND) and text in out
    code, out = _invoke(["models", text])
    assert code in (0, ExitCode.USAGE, ExitCode.NOT_FOUND, ExitCode.CONFIG), out
