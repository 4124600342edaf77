"""The probe's cases of issue 21 that ended in a traceback, under the wrong exit code, or silently wrong, kept as
regression tests; plus a hypothesis strategy per class (config text, run names, run files, weights files,
captions). ``tests/faults/probe_reliability.py`` sends the same inputs through the real CLI in subprocesses.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import FUZZ, TRIED, _one_line, _report
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ConfigError, ExitCode, OfgrError
from ofgr_core.config import load_config
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def _refused(r: Any, code: int, *names: str) -> str:
    """One ``error:`` line, the exit code, no traceback, and every name in the message."""
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    line = _error_line(r.output)
    for n in names:
        assert n in line, (n, line)
    return line


def _tiny(tmp_path: Path, data_root: Path, *extra: str) -> list[str]:
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / "runs"), "-q"]
    for o in [*tiny_overrides(data_root), "device=cpu", *extra]:
        args += ["--set", o]
    return args


def _copy(run: Path, runs_dir: Path, name: str = "r") -> Path:
    runs_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(run, runs_dir / name))


def _interrupted(d: Path) -> Path:
    """The run as if stopped before the end (resumable): no run_finished, no metrics.json."""
    events = [e for e in (d / "events.jsonl").read_text().splitlines() if json.loads(e)["type"] != "run_finished"]
    events.append(json.dumps({"type": "run_interrupted", "time": time.time(), "reason": "test"}))
    (d / "events.jsonl").write_text("\n".join(events) + "\n")
    (d / "metrics.json").unlink()
    return d


# ------------------------------------------------------------------------------------- config and names
def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 5\nname: a\ntrain:\n  lr: 0.01\n")
    with pytest.raises(ConfigError, match=r"line 4: duplicate key 'train' \(first on line 1\)"):
        load_config(p)
    p.write_text("train:\n  epochs: 5\n  epochs: 7\n")
    with pytest.raises(ConfigError, match="duplicate key 'epochs'"):
        load_config(p)
    p.write_text("base: &b {lr: 0.1}\ntrain:\n  <<: *b\n  lr: 0.2\n")  # a merge key overridden: allowed
    assert yaml.safe_load(p.read_text())["train"]["lr"] == 0.2
    with pytest.raises(ConfigError, match="unknown key"):  # (not a duplicate: the section is unknown)
        load_config(p)


@FUZZ
@given(st.lists(st.sampled_from(["train", "eval", "name", "seed", "data", "x"]), min_size=2, max_size=6),
       st.integers(0, 1000))
def test_a_repeated_key_is_never_dropped_silently(keys: list[str], value: int) -> None:
    TRIED["config text"] += 1
    text = "".join(f"{k}: {value}\n" for k in keys)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.yaml"
        p.write_text(text)
        try:
            load_config(p)
        except ConfigError as e:
            _one_line(e)
            if len(set(keys)) < len(keys):
                assert "duplicate key" in str(e)
        else:
            assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("name", ["\U0001d400" * 100, "\u6f22" * 100])
def test_run_folder_names_fit_in_255_bytes(tmp_path: Path, name: str) -> None:
    from ofgr_core.runs.folder import create_run_dir

    d = create_run_dir(tmp_path, name)
    assert len(d.name.encode()) <= 255 and d.is_dir()


@FUZZ
@given(st.text(min_size=1, max_size=100))
def test_any_legal_name_makes_a_folder(name: str) -> None:
    from ofgr_core.runs.folder import create_run_dir

    TRIED["run names"] += 1
    with tempfile.TemporaryDirectory() as d:
        run_dir = create_run_dir(d, name)
        assert run_dir.is_dir() and len(run_dir.name.encode("utf-8", "surrogateescape")) <= 255


def test_name_over_100_characters_is_one_line(tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", "--runs-dir", str(tmp_path), "--name", "n" * 101])
    _refused(r, ExitCode.CONFIG, "--name", "at most 100 characters")


def test_device_mps_without_mps_is_one_line(tmp_path: Path, tiny_data_root: Path) -> None:
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    _refused(runner.invoke(app, _tiny(tmp_path, tiny_data_root, "device=mps")), ExitCode.CONFIG, "device='mps'")


def test_ivf_pq_on_too_few_rows_names_the_setting(tmp_path: Path, tiny_data_root: Path) -> None:
    r = runner.invoke(app, _tiny(tmp_path, tiny_data_root, "eval.index.type=ivf_pq"))
    _refused(r, ExitCode.DATA, "eval.index.type=ivf_pq", "vectors")


@pytest.mark.parametrize("content", ["{not json", json.dumps({"classes": "x", "ids": [1, 2]}), "[1]"])
def test_split_reuse_of_a_garbage_file_is_one_line(tmp_path: Path, tiny_data_root: Path, content: str) -> None:
    (tmp_path / "split.json").write_text(content)
    r = runner.invoke(app, _tiny(tmp_path, tiny_data_root, f"split.reuse={tmp_path / 'split.json'}"))
    _refused(r, ExitCode.DATA, "split.json")


def test_synth_under_proc_is_one_line() -> None:
    r = runner.invoke(app, ["data", "synth", "/proc/ofgr-test/x", "--images-per-class", "2"])
    _refused(r, ExitCode.DISK, "/proc/ofgr-test", "cannot create the folder")


@pytest.mark.parametrize("args", [
    ["data", "hierarchy", "X", "--out", "t.yaml", "--per-class", "-1"],
    ["data", "hierarchy", "X", "--out", "t.yaml", "--seed", "-1"],
    ["data", "hierarchy", "X", "--out", "t.yaml", "--seed", "1180591620717411303424"],
    ["data", "synth", "X", "--seed", "-1"],
    ["data", "synth", "X", "--seed", "1180591620717411303424"],
    ["eval-embeddings", "e.npy", "l.csv", "--seed", "-1"],
    ["eval-embeddings", "e.npy", "l.csv", "--seed", "1180591620717411303424"],
    ["clip", "pretrain", "M", "--out", "O", "--seed", "4294967296"],
])
def test_out_of_range_options_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    r = runner.invoke(app, [a.replace("X", str(tmp_path / "x")) for a in args])
    assert r.exit_code == ExitCode.USAGE and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x").exists()  # refused before anything was written


def _emb_files(tmp_path: Path) -> tuple[Path, Path]:
    emb = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    np.savez(tmp_path / "e.npz", emb=emb)
    (tmp_path / "l.csv").write_text("id,fine\n" + "".join(f"i{i},f{i % 5}\n" for i in range(40)))
    return tmp_path / "e.npz", tmp_path / "l.csv"


def test_eval_embeddings_given_an_npz_is_one_line(tmp_path: Path) -> None:
    npz, labels = _emb_files(tmp_path)
    _refused(runner.invoke(app, ["eval-embeddings", str(npz), str(labels)]), ExitCode.DATA, "e.npz", ".npz archive")


# --------------------------------------------------------------------------------------------- data
def _manifest_with_links(root: Path, synth: Path, *, folder: bool) -> Path:
    d, outside = root / "ds", root / "outside"
    d.mkdir()
    outside.mkdir()
    rows = ["path,fine,coarse"]
    for i, img in enumerate(sorted(synth.rglob("*.png"))[:12]):
        shutil.copy(img, outside / f"{i}.png")
        if not folder:
            os.symlink(outside / f"{i}.png", d / f"{i}.png")
        rows.append(f"{'sub/' if folder else ''}{i}.png,f{i % 4},c{i % 2}")
    if folder:
        os.symlink(outside, d / "sub")
    (d / "manifest.csv").write_text("\n".join(rows) + "\n")
    return d


@pytest.mark.parametrize("folder", [False, True])
def test_symlinks_outside_the_manifest_folder_are_refused(tmp_path: Path, tiny_data_root: Path,
                                                          finished_run: Path, folder: bool) -> None:
    d = _manifest_with_links(tmp_path, tiny_data_root, folder=folder)
    _refused(runner.invoke(app, ["data", "inspect", str(d)]), ExitCode.DATA, "symbolic link", "outside")
    from ofgr_core.data.manifest import manifest_adapter

    assert len(manifest_adapter(str(d), links="follow")) == 12  # allowed when asked for (shared storage)


def test_symlinks_inside_the_manifest_folder_are_fine(tmp_path: Path, tiny_data_root: Path, finished_run: Path) -> None:
    from ofgr_core.data.manifest import manifest_adapter

    d = tmp_path / "ds"
    (d / "real").mkdir(parents=True)
    rows = ["path,fine,coarse"]
    for i, img in enumerate(sorted(tiny_data_root.rglob("*.png"))[:6]):
        shutil.copy(img, d / "real" / f"{i}.png")
        os.symlink(d / "real" / f"{i}.png", d / f"{i}.png")
        rows.append(f"{i}.png,f{i % 3},c{i % 2}")
    (d / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert len(manifest_adapter(str(d))) == 6


def test_inspect_prints_class_names_literally(tmp_path: Path, tiny_data_root: Path, finished_run: Path) -> None:
    names = ["[bold]x[/bold]", "Škoda Octavia", "[red]", "日本車", ":car:"]
    d = tmp_path / "ds"
    d.mkdir()
    rows = ["path,fine,coarse,domain"]
    for i, img in enumerate(sorted(tiny_data_root.rglob("*.png"))[:5]):
        shutil.copy(img, d / f"{i}.png")
        rows.append(f'{i}.png,"{names[i]}",c{i % 2},"{names[i]}"')
    (d / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    text = runner.invoke(app, ["data", "inspect", str(d)], env={"COLUMNS": "200"})
    as_json = runner.invoke(app, ["data", "inspect", str(d), "--json"])
    assert text.exit_code == 0 and as_json.exit_code == 0
    for n in names:
        assert n in text.stdout, n  # the domain table: markup and emoji codes as written
        assert n in as_json.stdout, n  # singleton classes: non-ASCII as written, not \\u escapes


# ------------------------------------------------------------------------------------------ run folders
RUN_FILE_DAMAGE = {
    "metrics_wrong_leaves": ("metrics.json", json.dumps({"unseen": {"fine": "high", "ci95": "x"}, "seen": ["a"],
                                                         "timings": {"a": "b"}, "model": 3, "data": "x"})),
    "metrics_deep": ("metrics.json", "[" * 100_000 + "]" * 100_000),
    "metrics_nan": ("metrics.json", '{"unseen": {"fine": {"recall@1": NaN}}}'),
    "data_report_wrong_leaves": ("data_report.json", json.dumps({"summary": "x", "split": [1], "unreadable": "y",
                                                                 "warnings": 5})),
    "data_report_deep": ("data_report.json", "[" * 100_000 + "]" * 100_000),
    "events_wrong_types": ("events.jsonl", "\n".join(["[1,2]", '"s"', "3", '{"type": 5}',
                                                      '{"type": "train_epoch", "epoch": "x", "loss": "y", "val": 3}',
                                                      "null"]) + "\n"),
}


@pytest.mark.parametrize("kind", sorted(RUN_FILE_DAMAGE))
def test_readers_of_a_damaged_run_never_trace(finished_run: Path, tmp_path: Path, kind: str) -> None:
    name, content = RUN_FILE_DAMAGE[kind]
    d = _copy(finished_run, tmp_path / "runs")
    (d / name).write_text(content)
    for args in (["show", str(d)], ["show", str(d), "--json"], ["runs", "--runs-dir", str(tmp_path / "runs")],
                 ["report", str(d), "-o", str(tmp_path / "rep"), "--no-tsne"]):
        r = runner.invoke(app, args)
        assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), \
            (args, repr(r.exception), r.output)
        assert r.exit_code in (0, ExitCode.DATA, ExitCode.NOT_FOUND), (args, r.output)
        if r.exit_code:
            _error_line(r.output)
    if name == "metrics.json":
        listed = json.loads(runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "runs"), "--json"]).stdout)
        assert listed[0]["status"] == "broken" and "metrics.json" in listed[0]["reason"]


def test_tui_results_of_a_damaged_run(finished_run: Path, tmp_path: Path) -> None:
    """The TUI's readers share the checks: a broken metrics.json is a reason on screen, not a crash."""
    from ofgr_core.runs.eventlog import read_events
    from ofgr_core.runs.validate import METRICS, read_run_json

    d = _copy(finished_run, tmp_path / "runs")
    (d / "metrics.json").write_text(RUN_FILE_DAMAGE["metrics_wrong_leaves"][1])
    obj, why = read_run_json(d / "metrics.json", METRICS)
    assert obj is None and why is not None and why.startswith("metrics.json: unexpected content at")
    (d / "events.jsonl").unlink()
    (d / "events.jsonl").mkdir()
    assert read_events(d) == []


@FUZZ
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["unseen", "seen", "fine", "coarse", "recall@1", "ci95", "timings",
                                         "model", "data", "warnings", "per_class", "n_queries", "x"]), c, max_size=4),
                    max_leaves=12),
       st.sampled_from(["metrics.json", "data_report.json", "env.json", "split.json"]))
def test_any_json_in_a_run_file_is_read_or_refused(finished_run_copy: Path, doc: Any, name: str) -> None:
    TRIED["run files"] += 1
    (finished_run_copy / name).write_text(json.dumps(doc))
    from ofgr_core.cli.run_cmd import _metrics_tables
    from ofgr_core.runs.state import load_run

    info = load_run(finished_run_copy)
    if info.metrics is not None:
        try:  # validated: it renders, or it is one line naming the file
            _metrics_tables(info.metrics, finished_run_copy / "metrics.json", "t")
        except OfgrError as e:
            _one_line(e)
    r = runner.invoke(app, ["show", str(finished_run_copy)])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)


@pytest.fixture(scope="module")
def finished_run_copy(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(finished_run, tmp_path_factory.mktemp("fuzzruns"))


@pytest.mark.parametrize("damage", ["garbage_csv", "object_npy"])
@pytest.mark.parametrize("command", ["query", "suspects"])
def test_readers_of_damaged_embeddings(finished_run: Path, tmp_path: Path, damage: str, command: str) -> None:
    d = _copy(finished_run, tmp_path / "runs")
    first_id = (d / "embeddings" / "unseen.csv").read_text().splitlines()[1].split(",")[0]
    if damage == "garbage_csv":
        (d / "embeddings" / "unseen.csv").write_bytes(b"\xff\xfe\xfd garbage \x00\x81\n" * 20)
    else:
        np.save(d / "embeddings" / "unseen.npy", np.array([[{"a": 1}] * 4] * 3, dtype=object), allow_pickle=True)
    args = ["query", str(d), "--id", first_id] if command == "query" else ["data", "suspects", str(d)]
    _refused(runner.invoke(app, args), ExitCode.DATA, "unseen")


def test_query_searches_despite_a_damaged_saved_index(finished_run: Path, tmp_path: Path) -> None:
    d = _copy(finished_run, tmp_path / "runs")
    assert runner.invoke(app, ["index", "build", str(d)]).exit_code == 0
    for f in (d / "index").rglob("*"):
        if f.is_file():
            f.write_bytes(os.urandom(max(64, f.stat().st_size)))
    first_id = (d / "embeddings" / "unseen.csv").read_text().splitlines()[1].split(",")[0]
    r = runner.invoke(app, ["query", str(d), "--id", first_id, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"]  # an exact index built from the embeddings answered


def _foreign_checkpoints(d: Path) -> None:
    import torch

    for f in (d / "checkpoints").glob("*.pt"):
        torch.save({"weights": {"w": torch.ones(2)}, "epoch": "x"}, f)


def test_foreign_checkpoints_are_one_line(finished_run: Path, tmp_path: Path, tiny_data_root: Path) -> None:
    d = _copy(finished_run, tmp_path / "runs")
    _foreign_checkpoints(d)
    img = str(next(iter(sorted(tiny_data_root.rglob("*.png")))))
    _refused(runner.invoke(app, ["query", str(d), "--image", img]), ExitCode.DATA, "best.pt", "not an ofgr checkpoint")
    _refused(runner.invoke(app, ["resume", str(_interrupted(d)), "-q"]), ExitCode.DATA, "last.pt", "'model'")


@pytest.mark.parametrize("target", ["metrics.json", "stop", "run.lock", ".run.lock.guard"])
def test_resume_with_a_folder_where_a_file_goes_is_one_line(finished_run: Path, tmp_path: Path, target: str) -> None:
    d = _interrupted(_copy(finished_run, tmp_path / "runs"))
    if (d / target).is_file():
        (d / target).unlink()
    (d / target).mkdir()
    r = runner.invoke(app, ["resume", str(d), "-q"])
    assert r.exit_code in (ExitCode.DATA, ExitCode.DISK), r.output
    _error_line(r.output)
    assert target in r.output


@pytest.fixture()
def live_holder(finished_run: Path, tmp_path: Path):  # noqa: ANN201
    """A run whose lock is held by a live process (a sleeping child)."""
    from ofgr_core.runs.lock import LOCK_FILE, LockInfo, _boot_id, _proc_start, lock_dict

    d = _interrupted(_copy(finished_run, tmp_path / "runs"))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    info = LockInfo(pid=child.pid, host=socket.gethostname(), started=time.time(), command="run",
                    proc_start=_proc_start(child.pid), boot_id=_boot_id())
    (d / LOCK_FILE).write_text(json.dumps(lock_dict(info)))
    yield d, child
    child.kill()
    child.wait()


@pytest.mark.parametrize("stopped", [False, True])
def test_resume_conflicts_have_their_own_exit_code(live_holder: Any, stopped: bool) -> None:
    import signal

    d, child = live_holder
    if stopped:
        os.kill(child.pid, signal.SIGSTOP)
    r = runner.invoke(app, ["resume", str(d), "-q"])
    _refused(r, ExitCode.CONFLICT, "already running")
    assert ExitCode.CONFLICT != ExitCode.FAILURE


def test_compare_refuses_broken_runs(finished_run: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    good = _copy(finished_run, runs, "good")
    bad = []
    for i, damage in enumerate((lambda d: (d / "events.jsonl").write_bytes(b"\x00\xff garbage\n"),
                                lambda d: (d / "config.yaml").write_text("- 1\n- 2\n"),
                                lambda d: (d / "run.lock").write_text("{not a lock"),
                                lambda d: (d / "metrics.json").write_text('{"unseen": {"fine": "high"}}'))):
        b = _copy(finished_run, runs, f"bad{i}")
        damage(b)
        bad.append(b)
    r = runner.invoke(app, ["compare", str(good), *map(str, bad), "--runs-dir", str(runs)])
    _refused(r, ExitCode.DATA, "bad0")


@pytest.mark.parametrize("how", ["random", "object"])
def test_compare_refuses_damaged_per_query_files(finished_run: Path, tmp_path: Path, how: str) -> None:
    runs = tmp_path / "runs"
    good, d = _copy(finished_run, runs, "good"), _copy(finished_run, runs, "r")
    f = d / "eval" / "per_query_unseen.npz"
    if how == "random":
        f.write_bytes(os.urandom(f.stat().st_size))
    else:
        np.savez(f, ids=np.array([{"a": 1}] * 3, dtype=object), **{"fine_recall@1": np.ones((3, 2))})
    _refused(runner.invoke(app, ["compare", str(good), str(d)]), ExitCode.DATA, "per_query_unseen.npz")


# ------------------------------------------------------------------------------------------------ weights
def _tiny_clip_local_dir(d: Path, safetensors: bytes | None = None, config: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8},
                         "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}},
           "preprocess_cfg": {}}
    (d / "open_clip_config.json").write_text(config if config is not None else json.dumps(cfg))
    (d / "open_clip_model.safetensors").write_bytes(safetensors if safetensors is not None else b"")
    return d


@pytest.mark.parametrize("safetensors,config", [
    (b"", None), (os.urandom(3000), None), ((1 << 40).to_bytes(8, "little") + b"{}", None),
    ((8).to_bytes(8, "little"), None), (b"", "[" * 100_000 + "]" * 100_000), (b"", '{"model_cfg": {"embed_dim": NaN}}'),
    (b"", '{"model_cfg": ["x"], "preprocess_cfg": 3}'),
])
def test_damaged_local_dir_weights_are_one_line(tmp_path: Path, safetensors: bytes, config: str | None) -> None:
    from ofgr_core.models.clip.config import ClipModelConfig
    from ofgr_core.models.factory import create_model

    d = _tiny_clip_local_dir(tmp_path / "ck", safetensors, config)
    with pytest.raises(ConfigError) as e:
        create_model(ClipModelConfig(name="ofgr-tiny-clip", pretrained=f"local-dir:{d}", head="none"))
    _one_line(e.value)
    assert "model.pretrained" in str(e.value)


def _crafted_pickle(target: Path) -> bytes:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(target), "w"))

    return pickle.dumps({"state_dict": Evil()})


@pytest.mark.parametrize("kind", ["random", "pickle"])
@pytest.mark.parametrize("family", ["timm", "clip"])
def test_damaged_pretrained_files_are_one_line(tmp_path: Path, kind: str, family: str) -> None:
    from ofgr_core.models.clip.config import ClipModelConfig
    from ofgr_core.models.factory import create_model
    from ofgr_core.models.timm.config import TimmModelConfig

    w = tmp_path / "w.pth"
    w.write_bytes(os.urandom(5000) if kind == "random" else _crafted_pickle(tmp_path / "PWNED"))
    cfg = (TimmModelConfig(name="test_resnet", pretrained=str(w)) if family == "timm"
           else ClipModelConfig(name="ofgr-tiny-clip", pretrained=str(w), head="none"))
    with pytest.raises(OfgrError) as e:
        create_model(cfg)
    _one_line(e.value)
    assert "w.pth" in str(e.value) and not (tmp_path / "PWNED").exists()


@FUZZ
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=50)).map(
                     lambda t: struct.pack("<Q", t[0]) + t[1]),
                 st.dictionaries(st.text(max_size=4), st.fixed_dictionaries({
                     "dtype": st.sampled_from(["F32", "F16", "X", 3]),
                     "shape": st.lists(st.integers(-2, 4), max_size=3),
                     "data_offsets": st.lists(st.integers(-5, 100), max_size=3)}), max_size=3).map(
                     lambda h: struct.pack("<Q", len(json.dumps(h))) + json.dumps(h).encode() + bytes(64))))
def test_any_safetensors_bytes_are_checked_or_refused(data: bytes) -> None:
    from ofgr_core.models.weights import check_safetensors

    TRIED["weights files"] += 1
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "w.safetensors"
        p.write_bytes(data)
        try:
            check_safetensors(p)
        except ConfigError as e:
            _one_line(e)
            return
        from safetensors.numpy import load_file  # what passed the check must load

        load_file(str(p))


# ----------------------------------------------------------------------------------------- captions, disk
def _caption_manifest(root: Path, synth: Path, caption: str) -> Path:
    d = root / "caps"
    d.mkdir(parents=True, exist_ok=True)
    rows = ["path,caption"]
    for i, p in enumerate(sorted(synth.rglob("*.png"))[:3]):
        shutil.copy(p, d / f"{i}.png")
        rows.append(f'{i}.png,"{caption if i == 0 else f"a car number {i}"}"')
    (d / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return d / "manifest.csv"


@pytest.mark.parametrize("caption,text", [("a red\x00car", "NUL"), ("a" * 300_000, "field larger than field limit")])
def test_bad_captions_are_one_line(tmp_path: Path, tiny_data_root: Path, finished_run: Path, caption: str,
                                   text: str) -> None:
    m = _caption_manifest(tmp_path, tiny_data_root, caption)
    r = runner.invoke(app, ["clip", "pretrain", str(m), "--out", str(tmp_path / "o"), "--epochs", "1", "-q"])
    _refused(r, ExitCode.DATA, "manifest", text)


@FUZZ
@given(st.text(max_size=40) | st.sampled_from(["\x00", "a\x00b", "\ufeff", "\r\n", '"', "a" * 140_000]))
def test_any_caption_is_read_or_refused(caption: str) -> None:
    from ofgr_core.common.errors import DataError
    from ofgr_core.models.clip.pretrain import read_captions

    TRIED["captions"] += 1
    with tempfile.TemporaryDirectory() as d:
        for i in range(2):
            (Path(d) / f"{i}.png").write_bytes(b"x")
        text = caption.replace('"', '""')
        (Path(d) / "manifest.csv").write_text(f'path,caption\n0.png,"{text}"\n1.png,a car\n', encoding="utf-8",
                                              errors="surrogatepass")
        try:
            _, captions, _ = read_captions(d)
        except DataError as e:
            _one_line(e)
            return
        assert "\x00" not in "".join(captions)


def test_clip_pretrain_onto_a_full_disk_is_exit_8(tmp_path: Path, tiny_data_root: Path, finished_run: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ofgr_core.common import diskspace

    m = _caption_manifest(tmp_path, tiny_data_root, "a red car")
    monkeypatch.setattr(diskspace, "free_bytes", lambda p: 4096)
    r = runner.invoke(app, ["clip", "pretrain", str(m), "--out", str(tmp_path / "o"), "--epochs", "1", "-q"])
    _refused(r, ExitCode.DISK, "--out", "CLIP checkpoint")


def test_clip_checkpoint_write_hitting_enospc_is_exit_8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills during the write (after the free-space check): safetensors' own error, still exit 8."""
    import safetensors.torch

    from ofgr_core.common.errors import DiskError
    from ofgr_core.models.clip.encoder import load_open_clip, save_local_dir

    def full(*a: Any, **k: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    model, _ = load_open_clip("ofgr-tiny-clip", None)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(DiskError, match="no space left"):
        save_local_dir(model, tmp_path / "o", arch="ofgr-tiny-clip")
    assert not any((tmp_path / "o").iterdir())


def test_report_issue21_fuzz() -> None:
    for name in ("config text", "run names", "run files", "weights files", "captions"):
        _report(name)
