"""Data preparation at scale: the process-pool check equals the per-file reference, the memo resumes an
interrupted check, vectorised de-duplication equals the naive grouping, the manifest fast path keeps its
refusals."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from datafix import corrupt, write_image

from ofgr_core.data import dataset as ds
from ofgr_core.data.base import DatasetTable


def _images(root: Path, n: int) -> list[str]:
    paths = [str(write_image(root / f"{i % 7}" / f"{i}.png", i, size=(12, 9))) for i in range(n)]
    corrupt(Path(paths[3]), "truncate")
    corrupt(Path(paths[10]), "text")
    shutil.copy(paths[5], paths[6])  # same content twice
    paths.append(str(root / "missing.png"))
    return paths


def test_process_pool_check_equals_per_file_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _images(tmp_path / "img", 40)
    monkeypatch.setattr(ds, "PROCESS_MIN", 1)
    monkeypatch.setattr(ds, "_CHUNK", 3)
    got = ds.check_images(paths, workers=2)  # worker processes
    threads = ds.check_images(paths, workers=1)  # thread pool
    for i, p in enumerate(paths):
        ref = ds.inspect_image(p)
        assert got[i] == ref and threads[i] == ref
    assert sorted(got.reasons) == [3, 10, 40] and got.reasons[40] == "missing file"
    assert got.hexdigest(5) == got.hexdigest(6) != got.hexdigest(7)


def test_memo_resumes_an_interrupted_check_and_rereads_changed_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _images(tmp_path / "img", 60)
    memo = tmp_path / "memo"
    monkeypatch.setattr(ds, "_CHUNK", 5)
    calls: list[str] = []
    real = ds._inspect

    def counting(path: str):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(ds, "_inspect", counting)

    def stop_midway(done: int, total: int) -> None:
        if done >= 30:
            raise KeyboardInterrupt

    monkeypatch.setattr(ds, "_PROGRESS_EVERY_S", 0.0)  # every chunk reported
    with pytest.raises(KeyboardInterrupt):
        ds.check_images(paths, stop_midway, workers=1, memo_dir=memo)
    first = len(set(calls))
    assert 30 <= first < len(paths)
    calls.clear()
    full = ds.check_images(paths, workers=1, memo_dir=memo)
    # only files never checked (plus the missing one, which has no stamp) are read again
    assert len(set(calls)) <= len(paths) - 30 + 1
    assert all(full[i] == ds.inspect_image(p) for i, p in enumerate(paths))
    calls.clear()
    again = ds.check_images(paths, workers=1, memo_dir=memo)
    assert calls == [paths[-1]]  # everything from the memo, bad files included, except the missing file
    assert again.reasons == full.reasons and np.array_equal(again.digests, full.digests)
    write_image(Path(paths[0]), 999, size=(20, 20))
    os.utime(paths[0], ns=(1, 1))
    calls.clear()
    changed = ds.check_images(paths, workers=1, memo_dir=memo)
    assert calls == [paths[0], paths[-1]] and changed[0].width == 20


def test_memo_ignores_a_torn_last_record(tmp_path: Path) -> None:
    paths = _images(tmp_path / "img", 12)
    memo = tmp_path / "memo"
    ds.check_images(paths, workers=1, memo_dir=memo)
    with open(memo / ds.MEMO_FILE, "ab") as f:
        f.write(b"\x01" * 7)  # a crash mid-write
    again = ds.check_images(paths, workers=1, memo_dir=memo)
    assert all(again[i] == ds.inspect_image(p) for i, p in enumerate(paths))


def test_vectorised_duplicates_equal_naive_grouping() -> None:
    rng = np.random.default_rng(0)
    n = 500
    pool = [os.urandom(16) for _ in range(300)]
    raw = [pool[k] for k in rng.integers(0, len(pool), n)]
    fine = [f"f{k}" for k in rng.integers(0, 3, n)]
    table = DatasetTable(paths=[f"/p/{i}" for i in range(n)], labels={"fine": fine, "coarse": ["c"] * n},
                         ids=[f"s:{i}" for i in range(n)], sources=["s"] * n)
    drop_hex, info_hex = ds.find_duplicates(table, [d.hex() for d in raw])
    drop_arr, info_arr = ds.find_duplicates(table, np.frombuffer(b"".join(raw), np.uint8).reshape(n, 16))
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, d in enumerate(raw):
        groups[d].append(i)
    naive: list[int] = []
    for rows in groups.values():
        if len(rows) > 1:
            naive += rows[1:] if len({fine[i] for i in rows}) == 1 else rows
    assert drop_hex == drop_arr == sorted(naive)
    assert info_hex == info_arr and info_hex["groups"] == sum(len(r) > 1 for r in groups.values())


def test_manifest_fast_path_equals_naive_reading(tmp_path: Path) -> None:
    import csv

    from ofgr_core.common.errors import DataError
    from ofgr_core.data.common import safe_join
    from ofgr_core.data.manifest import read_manifest

    root = tmp_path / "m"
    for i in range(6):
        write_image(root / "img" / f"{i}.png", i)
    (root / "img" / "link.png").symlink_to(root / "img" / "0.png")
    (root / "img" / "folder.png").mkdir()  # a folder named like an image is not a file
    rows = ["img/0.png", "img/./1.png", "img//2.png", "img/sub/../3.png", " img/4.png ", "img/link.png",
            "img/absent.png", "img/folder.png", "img\\5.png"]
    (root / "manifest.csv").write_text("path,fine,coarse,split\n" + "".join(
        f"{r},f{i % 2},c,{'Test' if i % 3 else 'train'}\n" for i, r in enumerate(rows)))
    t = read_manifest(root / "manifest.csv", missing="skip")
    naive_paths, naive_ids = [], []
    with (root / "manifest.csv").open() as f:
        for row in csv.DictReader(f):
            full = safe_join(root, row["path"], "x")
            if full.is_file():
                naive_paths.append(str(full))
                naive_ids.append(f"manifest:{Path(os.path.relpath(full, root)).as_posix()}")
    assert t.paths == naive_paths and t.ids == naive_ids
    assert t.meta["missing_files"] == ["img/absent.png", "img/folder.png", "img\\5.png"]
    assert t.splits == ["train", "test", "test", "train", "test", "test"]
    assert t.labels["fine"][0] is t.labels["fine"][2]  # one shared object per distinct value
    for bad, msg in (("../x.png", "outside the dataset root"), ("/etc/passwd", "absolute path")):
        (root / "bad.csv").write_text(f"path,fine,coarse\nimg/0.png,a,b\n{bad},a,b\n")
        with pytest.raises(DataError, match=f"line 3: .*{msg}"):
            read_manifest(root / "bad.csv")


def test_rate_meter_measures_from_the_first_report(monkeypatch: pytest.MonkeyPatch) -> None:
    from ofgr_core.runs import events

    clock = iter([100.0, 110.0, 120.0])
    monkeypatch.setattr(events.time, "monotonic", lambda: next(clock))
    meter = events.RateMeter()
    assert meter(500, 2000) == (None, None)  # 500 answered from the memo at once: not a rate
    assert meter(1000, 2000) == (50.0, 20.0)
    rate, eta = meter(1500, None)
    assert rate == 50.0 and eta is None


def test_cache_warm_in_processes_equals_lazy_fill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ofgr_core.data import cache as cache_mod
    from ofgr_core.data.cache import ImageCache

    paths = [str(write_image(tmp_path / "img" / f"{i}.png", i, size=(30 + i % 5, 20))) for i in range(24)]
    sizes = [(30 + i % 5, 20) for i in range(24)]
    hashes = [ds.inspect_image(p).digest for p in paths]
    lazy = ImageCache(paths, sizes, hashes, tmp_path / "a", 16)
    expected = [np.asarray(lazy.get(p)) for p in paths]
    monkeypatch.setattr(cache_mod, "_WARM_CHUNK", 5)
    warm = ImageCache(paths, sizes, hashes, tmp_path / "b", 16)
    warm.get(paths[7])  # one slot already filled: skipped, not redone
    seen: list[int] = []
    warm.warm(progress=lambda done, total: seen.append(done), workers=2)
    assert warm.filled == 24 and seen[-1] == 24
    fresh = ImageCache(paths, sizes, hashes, tmp_path / "b", 16)  # reopened: pixels are on disk
    for p, ref in zip(paths, expected, strict=True):
        assert np.array_equal(np.asarray(fresh.get(p)), ref)
