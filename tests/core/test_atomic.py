"""``ofgr_core.common.atomic``: whole files or nothing, fsynced, with the mode an ordinary open() gives."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from ofgr_core.common import atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_every_writer_gives_open_s_mode_and_leaves_no_temporary(tmp_path, umask_022):
    atomic.atomic_write_text(tmp_path / "a.txt", "héllo")
    atomic.atomic_write_json(tmp_path / "b.json", {"x": float("nan")})
    atomic.atomic_save_npy(tmp_path / "c.npy", np.arange(3))
    with atomic.atomic_writer(tmp_path / "d.csv", "w", newline="") as f:
        f.write("a,b\r\n")
    with atomic.atomic_path(tmp_path / "e.npz") as tmp:
        np.savez(tmp, x=np.ones(2))  # numpy keeps a name that already ends in .npz
    with open(tmp_path / "plain", "w"):
        pass
    for name in ("a.txt", "b.json", "c.npy", "d.csv", "e.npz"):
        assert _mode(tmp_path / name) == _mode(tmp_path / "plain") == 0o644
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.json").read_text() == '{\n  "x": null\n}\n'
    assert np.load(tmp_path / "c.npy").tolist() == [0, 1, 2]
    assert (tmp_path / "d.csv").read_bytes() == b"a,b\r\n"
    assert np.load(tmp_path / "e.npz")["x"].tolist() == [1.0, 1.0]
    assert not [p.name for p in tmp_path.iterdir() if atomic.is_atomic_temp(p.name)]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "m.json"
    atomic.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.atomic_writer(target) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_the_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    order: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    atomic.atomic_write_bytes(tmp_path / "x", b"data")
    assert order == ["fsync", "replace"]
