"""Embeddings stream to a .npy file batch by batch: same rows as the in-memory path, float16 option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datafix import write_image

from ofgr_core.embedding.embed import embed_paths, embed_to_file


class Tiny(torch.nn.Module):
    embed_dim = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 6 * 6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def to_tensor(im) -> torch.Tensor:  # noqa: ANN001
    return torch.from_numpy(np.asarray(im.convert("RGB").resize((6, 6)), dtype=np.float32)).permute(2, 0, 1)


def test_streamed_file_equals_in_memory(tmp_path: Path) -> None:
    paths = [str(write_image(tmp_path / f"{i}.png", i)) for i in range(23)]
    model, dev = Tiny(), torch.device("cpu")
    ref = embed_paths(model, paths, to_tensor, dev, batch_size=5)
    seen: list[int] = []
    mm = embed_paths(model, paths, to_tensor, dev, batch_size=5, out=tmp_path / "e" / "x.npy",
                     progress=lambda d, n: seen.append(d))
    assert isinstance(mm, np.memmap) and mm.dtype == np.float32
    assert np.array_equal(np.asarray(mm), ref) and seen == [5, 10, 15, 20, 23]
    assert np.array_equal(np.load(tmp_path / "e" / "x.npy"), ref)
    assert [p.name for p in (tmp_path / "e").iterdir()] == ["x.npy"]  # no temporary left behind
    half = embed_to_file(model, paths, to_tensor, dev, tmp_path / "h.npy", dtype=np.float16, batch_size=7)
    assert half.dtype == np.float16 and np.abs(half.astype(np.float32) - ref).max() < 1e-3
    empty = embed_to_file(model, [], to_tensor, dev, tmp_path / "z.npy")
    assert empty.shape == (0, 8)


def test_interrupted_stream_leaves_the_old_file(tmp_path: Path) -> None:
    paths = [str(write_image(tmp_path / f"{i}.png", i)) for i in range(12)]
    model, dev = Tiny(), torch.device("cpu")
    target = tmp_path / "x.npy"
    np.save(target, np.zeros((2, 8), np.float32))

    def boom(done: int, total: int) -> None:
        if done > 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_to_file(model, paths, to_tensor, dev, target, batch_size=4, progress=boom)
    assert np.load(target).shape == (2, 8) and sorted(p.name for p in tmp_path.glob("*.npy*")) == ["x.npy"]
