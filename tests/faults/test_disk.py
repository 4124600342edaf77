"""A full or unwritable disk: a one-line error with the bytes needed before writing; no SIGBUS from the pixel
cache; the last good checkpoint survives; ``run_failed`` is recorded even when the disk is full."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common import diskspace
from ofgr_core.common.errors import DiskError, ExitCode
from ofgr_core.runs.checkpoint import load_checkpoint, save_checkpoint
from ofgr_core.runs.eventlog import EventWriter, read_events
from ofgr_core.runs.events import Log, RunFailed
from ofgr_core.runs.folder import EVENTS_FILE
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


def _cache(tmp_path: Path, n: int = 4):
    from ofgr_core.data.cache import ImageCache

    return ImageCache([f"/img/{i}.jpg" for i in range(n)], [(64, 48)] * n, [f"h{i}" for i in range(n)],
                      tmp_path / "cache", image_size=32)


def test_pixel_cache_is_preallocated_not_sparse(tmp_path: Path) -> None:
    c = _cache(tmp_path, 64)
    st = c.data_path.stat()
    assert st.st_size > 0 and st.st_blocks * 512 >= st.st_size


def test_pixel_cache_refuses_up_front_when_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diskspace, "free_bytes", lambda p: 1000)
    with pytest.raises(DiskError) as e:
        _cache(tmp_path)
    assert "image cache" in str(e.value) and "bytes) needed" in str(e.value) and "\n" not in str(e.value)


def test_pixel_cache_enospc_from_fallocate_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diskspace.os, "posix_fallocate", full)
    with pytest.raises(DiskError, match="cannot reserve"):
        _cache(tmp_path)
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_checkpoint_needs_free_space_and_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(10)}, "epoch": 0})
    monkeypatch.setattr(diskspace, "free_bytes", lambda p: 4096)
    with pytest.raises(DiskError) as e:
        save_checkpoint(path, {"model": {"w": torch.ones(1 << 20)}, "epoch": 1})
    msg = str(e.value)
    assert "checkpoint last.pt" in msg and "bytes) needed" in msg and "\n" not in msg
    assert load_checkpoint(path)["epoch"] == 0


class _FullDisk:
    """``EventWriter._raw_write`` that fails with ENOSPC while the reserve file exists (it holds the space)."""

    def __init__(self, writer: EventWriter, always: bool = False) -> None:
        self.writer, self.always = writer, always
        self.original = writer._raw_write

    def __call__(self, data: bytes) -> None:
        if self.always or (self.writer._reserve is not None and self.writer._reserve.exists()):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.original(data)


def test_run_failed_is_written_when_the_disk_is_full(tmp_path: Path) -> None:
    w = EventWriter(tmp_path / "events.jsonl")
    assert w._reserve is not None and w._reserve.stat().st_size == EventWriter.RESERVE_BYTES
    w._raw_write = _FullDisk(w)  # type: ignore[method-assign]
    with pytest.raises(DiskError, match="cannot append"):
        w.write(Log("progress"))
    w.write(RunFailed(error="OSError: [Errno 28] No space left on device"))
    w.close()
    events = read_events(tmp_path)
    assert events[-1]["type"] == "run_failed" and "Errno 28" in events[-1]["error"]
    assert not list(tmp_path.glob(".*.reserve"))


def test_last_resort_is_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = EventWriter(tmp_path / "events.jsonl")
    w._raw_write = _FullDisk(w, always=True)  # type: ignore[method-assign]
    w.write(RunFailed(error="disk full"))
    w.close()
    err = capsys.readouterr().err
    assert "cannot write" in err and '"run_failed"' in err


def test_enospc_during_training_fails_the_run_with_one_line_and_keeps_the_checkpoint(
    tmp_path: Path, tiny_data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saves = {"n": 0}
    real_save = torch.save

    def save(obj, f, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        saves["n"] += 1
        if saves["n"] > 2:  # epoch 1 wrote last.pt and best.pt; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / "runs"), "-q"]
    for o in tiny_overrides(tiny_data_root) + ["train.epochs=2", "device=cpu"]:
        args += ["--set", o]
    r = runner.invoke(app, args)
    assert r.exit_code == ExitCode.DISK, r.output
    assert "No space left on device" in r.output and "Traceback" not in r.output
    (run_dir,) = list((tmp_path / "runs").iterdir())
    lines = (run_dir / EVENTS_FILE).read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["type"] == "run_failed" and "No space left" in last["error"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 0


def test_runs_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "runs"
    f.write_text("")
    r = runner.invoke(app, ["run", "--runs-dir", str(f)])
    assert r.exit_code == ExitCode.DISK and "folder" in r.output
