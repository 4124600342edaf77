"""Every ``ExitCode`` is what some real command returns in its situation (one test per code), and every code is
documented in docs/reliability.md."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ofgr_core.losses as losses_pkg
from ofgr_core.cli import app
from ofgr_core.common.errors import ExitCode
from ofgr_core.runs.eventlog import read_events
from ofgr_core.workflows import pipeline
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


def _tiny_run_args(tmp_path: Path, data_root: Path, *extra: str) -> list[str]:
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / "runs"), "-q"]
    for o in [*tiny_overrides(data_root), "device=cpu", *extra]:
        args += ["--set", o]
    return args


def test_ok(tmp_path: Path) -> None:
    assert runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)]).exit_code == ExitCode.OK


def test_failure_is_an_unexpected_bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("a bug")

    monkeypatch.setattr("ofgr_core.cli.run_cmd.iter_runs", bug)
    r = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)])
    assert r.exit_code == ExitCode.FAILURE and isinstance(r.exception, RuntimeError)


@pytest.mark.parametrize("args", [["show"], ["eval-embeddings", "a.npy", "b.csv", "--k", "0"],
                                  ["eval-embeddings", "a.npy", "b.csv", "--index", "bogus"]])
def test_usage(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == ExitCode.USAGE


def test_config(tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", "--runs-dir", str(tmp_path), "--set", "train.lr=.inf"])
    assert r.exit_code == ExitCode.CONFIG and "train.lr" in r.output


def test_data(tmp_path: Path) -> None:
    emb = np.ones((10, 4), np.float32)
    emb[2] = np.nan
    np.save(tmp_path / "e.npy", emb)
    (tmp_path / "l.csv").write_text("id,fine\n" + "".join(f"i{i},f{i % 2}\n" for i in range(10)))
    r = runner.invoke(app, ["eval-embeddings", str(tmp_path / "e.npy"), str(tmp_path / "l.csv")])
    assert r.exit_code == ExitCode.DATA


@pytest.mark.parametrize("ref", ["no-such-run", "", "latest"])
def test_not_found(tmp_path: Path, ref: str) -> None:
    assert runner.invoke(app, ["show", ref, "--runs-dir", str(tmp_path)]).exit_code == ExitCode.NOT_FOUND


def test_dependency(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import shutil
    import sys

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    r = runner.invoke(app, ["tui"])
    assert r.exit_code == ExitCode.DEPENDENCY and "ofgr-tui" in r.output


def test_numeric(tmp_path: Path, tiny_data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = losses_pkg.create_loss

    def create_loss(*a, **k):  # noqa: ANN002, ANN003, ANN202
        module = original(*a, **k)
        forward = module.forward
        module.forward = lambda emb, labels: (lambda t, p: (t * torch.tensor(float("inf")), p))(
            *forward(emb, labels))
        return module

    monkeypatch.setattr(losses_pkg, "create_loss", create_loss)
    r = runner.invoke(app, _tiny_run_args(tmp_path, tiny_data_root))
    assert r.exit_code == ExitCode.NUMERIC and "epoch 1 step 1" in r.output, r.output


def test_disk(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("")
    assert runner.invoke(app, ["run", "--runs-dir", str(tmp_path / "runs")]).exit_code == ExitCode.DISK


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)])
def test_signals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int, code: ExitCode) -> None:
    """The signal arrives before training (so it interrupts at once); test_signals.py covers mid-training."""

    def run_pipeline(cfg, run_dir, emit, **kw):  # noqa: ANN001, ANN003, ANN202
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("signal not handled")

    monkeypatch.setattr(pipeline, "run_pipeline", run_pipeline)
    r = runner.invoke(app, ["run", "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert r.exit_code == code, r.output
    (run_dir,) = list((tmp_path / "runs").iterdir())
    last = read_events(run_dir)[-1]
    assert last["type"] == "run_interrupted" and signal.Signals(sig).name in last["reason"]


def test_every_code_is_documented() -> None:
    doc = (REPO / "docs" / "reliability.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} | `{code.name}`" in doc, code
