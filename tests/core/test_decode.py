"""Decoding files (``ofgr_core.data.decode``) gives PIL's pixels on every kind of file, fast or not.

The reference is ``Image.open(path).convert("RGB")``. The fast decoder (torchvision's libjpeg-turbo/libpng) is
used only where it is exact; everything else falls back to PIL. Batches of equal-sized images that the model's
resize/crop would leave as they are go straight into the batch (``SplitTransform.keeps``): still bit for bit what
the per-image transform gives on PIL's decode. On a CPU device extraction decodes in-process when loader workers
would compete with the tower's threads (``loader_workers``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ofgr_core.data import decode as D
from ofgr_core.data.loader import ImageBatchDataset, split_transform
from ofgr_core.embedding.embed import loader_workers


def _files(root: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, whether the fast decoder takes it)."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    tagged = base.convert("P")
    tagged.info["transparency"] = 0
    kinds: dict[str, tuple[Image.Image, str, dict[str, object], bool]] = {
        "jpeg 4:2:0": (base, "JPEG", {"quality": 90}, True),
        "jpeg 4:4:4": (base, "JPEG", {"quality": 90, "subsampling": 0}, True),
        "jpeg progressive": (base, "JPEG", {"quality": 80, "progressive": True}, True),
        "jpeg grayscale": (base.convert("L"), "JPEG", {}, False),
        "jpeg cmyk": (base.convert("CMYK"), "JPEG", {}, False),
        "png rgb": (base, "PNG", {}, True),
        "png rgba": (base.convert("RGBA"), "PNG", {}, False),
        "png gray": (base.convert("L"), "PNG", {}, False),
        "png gray+alpha": (base.convert("LA"), "PNG", {}, False),
        "png palette": (base.convert("P"), "PNG", {}, False),
        "png palette+transparency": (tagged, "PNG", {}, False),
        "png 1-bit": (base.convert("1"), "PNG", {}, False),
        "png 16-bit": (Image.fromarray(np.asarray(base)[..., 0].astype(np.uint16) * 257), "PNG", {}, False),
        "bmp": (base, "BMP", {}, False),
        "gif": (base, "GIF", {}, False),
    }
    out = {}
    for i, (name, (im, fmt, kw, fast)) in enumerate(kinds.items()):
        p = root / f"{i:02d}.{fmt.lower()}"
        im.save(p, format=fmt, **kw)
        out[name] = (p, fast)
    return out


def _pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_every_kind_of_file_decodes_to_pils_pixels(tmp_path: Path) -> None:
    assert D._fast_decoder() is not None  # this torchvision still has its decoder: the fast path is under test
    for name, (path, fast) in _files(tmp_path).items():
        chw = D.decode_chw(path)
        assert (chw is not None) == fast, name
        if chw is not None:
            assert chw.dtype == torch.uint8 and np.array_equal(chw.permute(1, 2, 0).numpy(), _pil(path)), name
        got = D.open_rgb(path)
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), _pil(path)), name


def test_jpegs_of_any_size_quality_and_subsampling_decode_to_pils_pixels(tmp_path: Path) -> None:
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("china.jpg")  # a real photograph (427 x 640), shipped with scikit-learn
    rng = np.random.default_rng(3)
    for i in range(60):
        h, w = (int(v) for v in rng.integers(1, 97, 2))  # odd sizes: the chroma upsampling's edges
        if i % 2:
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
            pixels = np.ascontiguousarray(photo[y : y + h, x : x + w])
        kw = {"quality": int(rng.integers(30, 100)), "subsampling": i % 3, "progressive": bool(i % 4 == 1)}
        if i % 5 == 0:
            kw["restart_marker_blocks"] = 2
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(pixels).save(path, **kw)
        chw = D.decode_chw(path)
        assert chw is not None and np.array_equal(chw.permute(1, 2, 0).numpy(), _pil(path)), (h, w, kw)


def test_without_the_fast_decoder_pil_decodes_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "_fast_decoder", lambda: None)
    for name, (path, _) in _files(tmp_path).items():
        assert D.decode_chw(path) is None, name
        assert np.array_equal(np.asarray(D.open_rgb(path)), _pil(path)), name


def test_truncated_and_foreign_files_go_to_pil_and_keep_its_errors(tmp_path: Path) -> None:
    files = _files(tmp_path)
    raw = files["jpeg 4:2:0"][0].read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(raw[: len(raw) // 2])
    assert D.decode_chw(half) is None
    with pytest.raises(OSError, match="truncated"):
        D.open_rgb(half)
    for cut in (1, 2, 3, 8, 64):  # a few bytes short: PIL accepts some such files, and then so must this
        short = tmp_path / f"short{cut}.jpg"
        short.write_bytes(raw[:-cut])
        try:
            expected = _pil(short)
        except OSError as e:
            with pytest.raises(OSError, match=str(e).split(" (")[0]):
                D.open_rgb(short)
        else:
            assert np.array_equal(np.asarray(D.open_rgb(short)), expected)
    text = tmp_path / "notes.jpg"
    text.write_bytes(b"not an image")
    assert D.decode_chw(text) is None and D.decode_chw(tmp_path / "absent.png") is None
    with pytest.raises(OSError):
        D.open_rgb(text)


def _reference(tf: T.Compose, paths: list[Path]) -> torch.Tensor:
    """The per-image transform on PIL's decode: what a batch must equal."""
    return torch.stack([tf(Image.fromarray(_pil(p))) for p in paths])


def test_batches_take_the_fast_path_where_resize_and_crop_keep_the_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    norm = T.Normalize((0.48, 0.45, 0.40), (0.26, 0.26, 0.27))
    keep = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(), norm])
    resize = T.Compose([T.Resize(24), T.CenterCrop(24), T.ToTensor(), norm])
    flip = T.Compose([T.RandomHorizontalFlip(p=1.0), T.ToTensor(), norm])
    split = {name: split_transform(tf) for name, tf in (("keep", keep), ("resize", resize), ("flip", flip))}
    assert split["keep"] is not None and split["keep"].keeps(32, 32)
    assert split["resize"] is not None and not split["resize"].keeps(32, 32)
    assert split["flip"] is not None and not split["flip"].keeps(32, 32)  # only Resize/CenterCrop are trusted
    assert not split["keep"].keeps(32, 40)
    labels = np.zeros((6, 1), np.int64)
    for tf in (keep, resize, flip):
        ds = ImageBatchDataset([str(p) for p in paths], labels, tf, cache=None)
        assert torch.equal(ds[list(range(6))][0], _reference(tf, paths))
    # a batch with one file the fast decoder leaves to PIL goes the per-image way, with the same result
    gray = tmp_path / "gray.jpg"
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(gray)
    mixed = [*paths[:3], gray]
    ds = ImageBatchDataset([str(p) for p in mixed], labels[:4], keep, cache=None)
    assert torch.equal(ds[[0, 1, 2, 3]][0], _reference(keep, mixed))


def test_batches_of_fast_decodes_skip_the_per_image_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    tf = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor()])
    ds = ImageBatchDataset(paths, np.zeros((4, 1), np.int64), tf, cache=None)
    monkeypatch.setattr(ds.images, "load_or_black", lambda i: pytest.fail("decoded through PIL"))
    assert ds[[0, 1, 2, 3]][0].shape == (4, 3, 16, 16)
    # a file gone since the listing (read_bytes raises): that image is black and recorded, the others decode
    Path(paths[2]).unlink()
    ds = ImageBatchDataset(paths, np.zeros((4, 1), np.int64), tf, cache=None)
    x = ds[[0, 1, 2, 3]][0]
    assert ds.failures == [paths[2]] and int(x[2].count_nonzero()) == 0 and int(x[1].count_nonzero()) > 0


def test_cpu_extraction_decodes_in_process_when_workers_would_take_the_towers_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert loader_workers(4, torch.device("cpu")) == 0
    assert loader_workers(4, torch.device("cuda")) == 4
    assert loader_workers(0, torch.device("cuda")) == 0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert loader_workers(4, torch.device("cpu")) == 4
    assert loader_workers(5, torch.device("cpu")) == 0


@pytest.mark.parametrize("size", [0, 1, 10_000, 3_000_001])
def test_read_bytes_is_the_files_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    got = D.read_bytes(p)
    assert isinstance(got, bytearray) and bytes(got) == p.read_bytes()
    if size:  # writable: torch takes it without a copy or a warning (the test runs with warnings as errors too)
        assert torch.frombuffer(got, dtype=torch.uint8).numel() == size
    monkeypatch.delattr("os.readv", raising=False)  # not POSIX: the portable read
    assert D.read_bytes(p) == got


def test_read_bytes_of_a_file_that_shrank_and_of_what_is_no_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    p = tmp_path / "f.bin"
    p.write_bytes(b"\xff\xd8\xff" + b"x" * 97)
    real = os.fstat
    monkeypatch.setattr("os.fstat", lambda fd: os.stat_result((0, 0, 0, 0, 0, 0, real(fd).st_size + 50, 0, 0, 0)))
    assert bytes(D.read_bytes(p)) == p.read_bytes()  # stated 150 bytes, read 100: the 100
    monkeypatch.setattr("os.fstat", real)
    for missing in (tmp_path / "absent.jpg", tmp_path):  # no file; a folder
        with pytest.raises(OSError):
            D.read_bytes(missing)
        assert D.decode_chw(missing) is None  # then PIL opens it and names the error
