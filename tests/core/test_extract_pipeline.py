"""The batched extraction data path gives exactly what the per-image path gives.

Workers decode into one uint8 array per batch and convert/normalise the whole batch at once
(``ImageBatchDataset``, ``split_transform``); content hashes are computed on threads (``file_digests``);
finished chunks are appended to the feature cache on a writer thread (``extract_features``). Each is checked
against the reference path: ``ImageDataset`` + the default DataLoader (one image at a time), ``file_digest``
per file, and the features computed without a cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import ofgr_core.data.loader as loader_mod
from ofgr_core.data.loader import ImageBatchDataset, ImageDataset, split_transform
from ofgr_core.embedding import features as F
from ofgr_core.embedding.embed import loader_workers
from ofgr_core.embedding.features import FeatureStore, extract_features, file_digest, file_digests
from ofgr_core.models.base import TowerOnly
from ofgr_core.models.clip.config import ClipModelConfig
from ofgr_core.models.factory import create_model_and_transforms
from ofgr_core.models.timm.config import TimmModelConfig


def _mixed_images(root: Path, n: int = 23, seed: int = 0) -> list[str]:
    """JPEG and PNG files of several sizes and modes (RGB, RGBA, L, P), one corrupt file."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = [(40, 40), (31, 57), (90, 20), (12, 12), (64, 80)][i % 5]
        px = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(px)
        mode = ["RGB", "RGBA", "L", "P", "RGB"][(i // 5) % 5]
        im = im.convert(mode) if mode != "P" else im.quantize(16)
        p = root / f"{i:03d}.{'jpg' if mode in ('RGB', 'L') and i % 2 else 'png'}"
        im.save(p)
        paths.append(str(p))
    Path(paths[min(7, n - 1)]).write_bytes(b"not an image")  # unreadable: a black image, a recorded failure
    return paths


def _transforms() -> dict[str, Any]:
    _, _, clip_tf = create_model_and_transforms(
        ClipModelConfig(name="ofgr-tiny-clip", pretrained=None, head="none"), image_size=32)
    _, _, timm_tf = create_model_and_transforms(TimmModelConfig(name="test_resnet", freeze="all", head="none"),
                                                image_size=32)
    return {"clip": clip_tf, "timm": timm_tf}


@pytest.mark.parametrize("family", ["clip", "timm"])
def test_batches_equal_the_per_image_transform(tmp_path: Path, family: str) -> None:
    tf = _transforms()[family]
    assert split_transform(tf) is not None  # the models' eval preprocessing is batched, not the fallback
    paths = _mixed_images(tmp_path)
    labels = np.arange(len(paths))[:, None] % 3
    ref_ds = ImageDataset(paths, labels, tf, cache=None)
    ref = torch.stack([ref_ds[i][0] for i in range(len(paths))])
    ds = ImageBatchDataset(paths, labels, tf, cache=None)
    got = torch.cat([ds[list(range(a, min(a + 6, len(paths))))][0] for a in range(0, len(paths), 6)])
    assert got.dtype == ref.dtype and torch.equal(got, ref)  # bit for bit
    images, lab, rows = ds[[3, 1, 7]]
    assert torch.equal(lab, torch.as_tensor(labels[[3, 1, 7]])) and rows.tolist() == [3, 1, 7]
    assert ds.failures == [paths[7]] * 2 and ref_ds.failures == [paths[7]]


def test_decode_threads_give_the_same_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch read and decoded on several threads (``decode_threads``) equals the one-thread batch: same pixels,
    same order, the same fallbacks to PIL and the same recorded failure."""
    import ofgr_core.data.loader as loader_mod

    spread: list[int] = []
    real = loader_mod.map_slices
    monkeypatch.setattr(loader_mod, "map_slices", lambda f, xs, threads: spread.append(threads) or real(f, xs, threads))
    tf = _transforms()["clip"]
    paths = _mixed_images(tmp_path, n=75)  # RGB/RGBA/L/P, JPEG and PNG, one unreadable file
    labels = np.zeros((75, 1), np.int64)
    one = ImageBatchDataset(paths, labels, tf, cache=None)
    many = ImageBatchDataset(paths, labels, tf, cache=None, decode_threads=3)
    rows = list(range(74, -1, -1))  # out of order: the result follows the rows asked for
    a, b = one[rows], many[rows]
    assert spread == [1, 2]  # 75 rows: two threads of at least 32 (not three)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and a[2].tolist() == rows
    assert one.failures == many.failures == [paths[7]]
    same = [p for i, p in enumerate(paths) if i % 5 == 0]  # 40 x 40 RGB/RGBA/L/P: the whole batch one size
    tf_same = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor()])
    x = ImageBatchDataset(same * 5, np.zeros((75, 1), np.int64), tf_same, cache=None, decode_threads=2)[list(range(75))]
    ref = ImageDataset(same * 5, np.zeros((75, 1), np.int64), tf_same, cache=None)
    assert torch.equal(x[0], torch.stack([ref[i][0] for i in range(75)]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_conversion_is_torchvisions_bit_for_bit(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SplitTransform.batch_chw`` (numpy, in groups, either layout) gives exactly the values of
    torchvision's ``to_tensor`` + ``Normalize`` image by image, in the default float dtype, with 3-value,
    1-value or no normalisation, for pixels given as one tensor or as per-image tensors of any strides."""
    rng = np.random.default_rng(3)
    hwc = rng.integers(0, 256, (70, 9, 11, 3), dtype=np.uint8)
    monkeypatch.setattr(loader_mod, "CONVERT_BYTES", 16 * 3 * 9 * 11 * 4)  # groups of 16 (8 in float64) and a part
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        for norm in (T.Normalize((0.481, 0.458, 0.408), (0.269, 0.261, 0.276)), T.Normalize((0.5,), (0.25,)), None):
            tf = T.Compose([T.Resize(9), T.CenterCrop((9, 11)), T.ToTensor(), *([norm] if norm else [])])
            split = split_transform(tf)
            assert split is not None
            ref = torch.stack([norm(T.functional.to_tensor(im)) if norm else T.functional.to_tensor(im) for im in hwc])
            assert ref.dtype == dtype
            as_decoded = [torch.from_numpy(im).permute(2, 0, 1) for im in hwc]  # CHW views of HWC memory
            for channels_last in (False, True):
                for got in (split.batch(hwc, channels_last=channels_last),
                            split.batch_chw(as_decoded, channels_last=channels_last),
                            split.batch_chw([x.contiguous() for x in as_decoded], channels_last=channels_last)):
                    assert got.dtype == dtype and torch.equal(got, ref)
                    layout = torch.channels_last if channels_last else torch.contiguous_format
                    assert got.is_contiguous(memory_format=layout)
        assert split.batch_chw([], channels_last=True).shape == (0, 3, 0, 0)
    finally:
        torch.set_default_dtype(old)


def test_extraction_batches_come_channels_last(tmp_path: Path) -> None:
    """Channels-last batches (what ``iter_embed(channels_last=True)`` asks for, above) hold the same values as the
    contiguous ones, converted straight into the tower's layout (no copy into it after)."""
    tf = _transforms()["clip"]
    paths = _mixed_images(tmp_path, n=40)
    same = [p for i, p in enumerate(paths) if i % 5 == 0] * 10  # one size: the fast path
    labels = np.zeros((len(same), 1), np.int64)
    a = ImageBatchDataset(same, labels, tf, cache=None, decode_threads=2)[list(range(len(same)))][0]
    b = ImageBatchDataset(same, labels, tf, cache=None, decode_threads=2, channels_last=True)[list(range(len(same)))][0]
    assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
    assert torch.equal(a, b)


def test_in_process_extraction_decodes_on_the_towers_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without loader processes the batches are decoded between forward passes on ``torch.get_num_threads()``
    threads; each loader process decodes on one."""
    import ofgr_core.embedding.embed as embed_mod

    made: list[tuple[int, bool]] = []

    class Spy(ImageBatchDataset):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append((kwargs["decode_threads"], kwargs["channels_last"]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(embed_mod, "ImageBatchDataset", Spy)
    monkeypatch.setattr(embed_mod, "loader_workers", lambda requested, device: requested)
    tower, tf = TowerOnly(_tiny_tower()[0]), _transforms()["clip"]
    for workers in (0, 2):
        list(embed_mod.iter_embed(tower, [], tf, torch.device("cpu"), num_workers=workers, channels_last=workers > 0))
    assert made == [(torch.get_num_threads(), False), (1, True)]  # and the batches come in the tower's layout


def test_transforms_that_cannot_be_batched_run_per_image(tmp_path: Path) -> None:
    paths = _mixed_images(tmp_path, n=6)
    norm = T.Normalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    for tf in (lambda im: T.functional.to_tensor(im.resize((8, 8))),  # a plain callable
               T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(), T.Normalize((0.5,), (0.2,), inplace=True)]),
               T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(), norm, T.RandomErasing(p=0.0)])):
        assert split_transform(tf) is None
        ds = ImageBatchDataset(paths, np.zeros((6, 1), np.int64), tf, cache=None)
        ref = ImageDataset(paths, np.zeros((6, 1), np.int64), tf, cache=None)
        assert torch.equal(ds[list(range(6))][0], torch.stack([ref[i][0] for i in range(6)]))
    # no crop: images of other aspect ratios come out in other sizes; such a batch falls back to the
    # per-image transform (whose stacking then fails as the default collate's would), equal sizes batch
    tf = T.Compose([T.Resize(10), T.ToTensor(), norm])
    assert split_transform(tf) is not None
    ds = ImageBatchDataset(paths, np.zeros((6, 1), np.int64), tf, cache=None)
    ref = ImageDataset(paths, np.zeros((6, 1), np.int64), tf, cache=None)
    assert torch.equal(ds[[0, 5]][0], torch.stack([ref[0][0], ref[5][0]]))  # both 40 x 40 -> 10 x 10
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        ds[[0, 1]]


def _tiny_tower() -> Any:
    torch.manual_seed(0)
    model, _, tf = create_model_and_transforms(
        ClipModelConfig(name="ofgr-tiny-clip", pretrained=None, head="none"), image_size=32)
    return model.eval(), tf


@pytest.mark.parametrize("workers", [0, 1])
def test_extracted_features_equal_the_per_image_path(tmp_path: Path, workers: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if workers:  # one tower thread leaves a core to a loader process (ofgr_core.embedding.embed.loader_workers)
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        assert loader_workers(workers, torch.device("cpu")) == workers
    try:
        _extract_and_compare(tmp_path, workers)
    finally:
        if workers:
            torch.set_num_threads(threads)


def _extract_and_compare(tmp_path: Path, workers: int) -> None:
    model, tf = _tiny_tower()
    paths = _mixed_images(tmp_path / "img", n=29)
    # reference: the per-image dataset, the default DataLoader, the same batches through the same tower
    loader = torch.utils.data.DataLoader(ImageDataset(paths, np.zeros((29, 1), np.int64), tf, cache=None),
                                         batch_size=8)
    with torch.no_grad():
        ref = torch.cat([TowerOnly(model)(x) for x, _, _ in loader]).numpy()
    store = FeatureStore(tmp_path / "cache", model.feature_key(), model.feature_dim)
    seen: list[int] = []
    feats, stats = extract_features(model, paths, tf, "cpu", store=store, batch_size=8, chunk=5,
                                    num_workers=workers, progress=lambda d, n: seen.append(d))
    assert stats == {"hits": 0, "computed": 29} and np.array_equal(feats, ref)
    assert seen == [0, 8, 16, 24, 29]
    uncached, _ = extract_features(model, paths, tf, "cpu", batch_size=8, num_workers=workers)
    assert np.array_equal(uncached, ref)
    again, stats = extract_features(model, paths, tf, "cpu", store=FeatureStore(
        tmp_path / "cache", model.feature_key(), model.feature_dim), batch_size=8)
    assert stats == {"hits": 29, "computed": 0} and np.array_equal(again, ref)


def test_chunks_are_written_in_order_while_the_next_computes(tmp_path: Path) -> None:
    """``_fill`` cuts the batch stream into chunks (batches straddling them), one pending write at a time."""
    rows = np.arange(23 * 4, dtype=np.float32).reshape(23, 4)
    batches = [(a, rows[a : a + 3]) for a in range(0, 23, 3)]
    written: list[tuple[list[str], np.ndarray]] = []

    class Store:
        def append(self, digests: list[str], feats: np.ndarray) -> None:
            written.append((digests, feats.copy()))

    digests = [f"h{i}" for i in range(23)]
    F._fill(Store(), iter(batches), digests, 4, chunk=5, progress=None)  # type: ignore[arg-type]  # a stand-in store
    assert [len(d) for d, _ in written] == [5, 5, 5, 5, 3]
    assert sum((d for d, _ in written), []) == digests
    assert np.array_equal(np.concatenate([f for _, f in written]), rows)

    class Failing(Store):
        def append(self, digests: list[str], feats: np.ndarray) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        F._fill(Failing(), iter(batches), digests, 4, chunk=5, progress=None)  # type: ignore[arg-type]


def test_bulk_hashes_equal_one_by_one(tmp_path: Path) -> None:
    paths = []
    for i in range(700):  # enough for several hashing threads
        p = tmp_path / f"{i}.bin"
        p.write_bytes(bytes([i % 256]) * (3000 + i))
        paths.append(str(p))
    assert file_digests(paths, threads=3) == [file_digest(p) for p in paths]
    assert file_digests(paths[:5]) == [file_digest(p) for p in paths[:5]]
    kept_digests, kept = F._digests_keeping(paths, budget=40_000)  # the bytes of ~12 files, read on two threads
    assert kept_digests == file_digests(paths)
    held = sum(len(v) for v in kept.values())
    assert 40_000 - 4000 < held <= 40_000 and all(bytes(kept[p]) == Path(p).read_bytes() for p in kept)
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):  # file_digest's error names the folder
        F._digests_keeping([*paths[:3], str(tmp_path)], budget=1 << 20)


@pytest.mark.parametrize("budget", ["all", "some", "none"])
def test_standalone_extraction_reads_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    budget: str) -> None:
    """Without content hashes given, in-process extraction decodes the files from the bytes its hash pass read
    (up to ``PREFETCH_BYTES``): each file is opened once, the rest twice; the features are the same either way,
    and files already in the cache are not decoded."""
    import os

    rng = np.random.default_rng(5)
    paths = []
    for i in range(40):
        p = tmp_path / "img" / f"{i:02d}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    sizes = [Path(p).stat().st_size for p in paths]
    limit = {"all": 1 << 30, "some": sum(sizes[:15]), "none": 0}[budget]
    kept = 40 if budget == "all" else 15 if budget == "some" else 0
    monkeypatch.setattr(F, "PREFETCH_BYTES", limit)
    model, tf = _tiny_tower()
    ref, _ = extract_features(model, paths, tf, "cpu", batch_size=8)  # no store: no hash pass
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    store = FeatureStore(tmp_path / "cache", model.feature_key(), model.feature_dim)
    feats, stats = extract_features(model, paths, tf, "cpu", store=store, batch_size=8)
    assert stats == {"hits": 0, "computed": 40} and np.array_equal(feats, ref)
    counts = [opened.count(p) for p in paths]
    assert counts == [1] * kept + [2] * (40 - kept)
    # half of them cached: only the other half are decoded (from the hash pass's bytes)
    store2 = FeatureStore(tmp_path / "cache2", model.feature_key(), model.feature_dim)
    extract_features(model, paths[::2], tf, "cpu", store=store2, digests=file_digests(paths[::2]), batch_size=8)
    opened.clear()
    feats, stats = extract_features(model, paths, tf, "cpu", store=store2, batch_size=8)
    assert stats == {"hits": 20, "computed": 20} and np.array_equal(feats, ref)
    assert [opened.count(p) for p in paths] == [1 if i % 2 == 0 or i < kept else 2 for i in range(40)]
