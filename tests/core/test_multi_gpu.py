"""Multi-GPU FAISS paths through a fake faiss that reports 4 GPUs (no GPU here): shard vs replicate reaches
the cloner, the memory plan is announced before building, and the same config on CPU runs with a note."""

from __future__ import annotations

import types
from typing import Any

import faiss
import numpy as np
import pytest

from ofgr_core.config import EvalConfig, IndexConfig
from ofgr_core.retrieval import index as index_mod
from ofgr_core.retrieval.evaluate import run_split


class FakeGpuFaiss(types.ModuleType):
    """The real faiss, plus GPU entry points that record their calls and keep the index on CPU."""

    def __init__(self, n_gpus: int = 4) -> None:
        super().__init__("faiss")
        self.n = n_gpus
        self.cloned: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(faiss, name)

    def get_num_gpus(self) -> int:
        return self.n

    class StandardGpuResources:
        pass

    class GpuClonerOptions:
        useFloat16 = True

    class GpuMultipleClonerOptions:
        shard = False
        common_ivf_quantizer = False
        useFloat16 = True

    def index_cpu_to_gpu(self, res: Any, dev: int, index: Any, co: Any) -> Any:
        self.cloned.append({"n_gpus": 1, "float16": co.useFloat16})
        return index

    def index_cpu_to_all_gpus(self, index: Any, co: Any) -> Any:
        self.cloned.append({"n_gpus": self.n, "shard": co.shard, "float16": co.useFloat16,
                            "common_quantizer": co.common_ivf_quantizer})
        return index

    def knn_gpu(self, res: Any, xq: np.ndarray, xb: np.ndarray, k: int, metric: Any = None) -> Any:
        return faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)


def _x(n: int = 400, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 20, n)
    x = rng.normal(size=(20, d))[fine] + rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), fine


@pytest.mark.parametrize("mode", ["shard", "replicate"])
def test_multi_gpu_mode_reaches_the_cloner_and_memory_is_announced(monkeypatch: pytest.MonkeyPatch,
                                                                   mode: str) -> None:
    fake = FakeGpuFaiss(4)
    monkeypatch.setattr(index_mod, "import_faiss", lambda: fake)
    x, _ = _x()
    notes: list[str] = []
    cfg = IndexConfig(type="ivf_flat", nlist=8, device="gpu", multi_gpu=mode)
    idx = index_mod.build_index(x, cfg, note=notes.append)
    assert fake.cloned == [{"n_gpus": 4, "shard": mode == "shard", "float16": False, "common_quantizer": True}]
    plan = index_mod.gpu_plan(len(x), x.shape[1], cfg, 4)
    total = len(x) * 16 * 4 + len(x) * 8 + 8 * 16 * 4
    assert plan["bytes_total"] == total
    assert plan["bytes_per_gpu"] == (total if mode == "replicate" else (total - 8 * 16 * 4) // 4 + 8 * 16 * 4)
    assert len(notes) == 1 and f"{mode} over 4 GPUs" in notes[0] and "per GPU" in notes[0]
    assert idx.device == "gpu" and idx.params["n_gpus"] == 4 and idx.params["multi_gpu"] == mode


def test_note_comes_before_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGpuFaiss(2)
    monkeypatch.setattr(index_mod, "import_faiss", lambda: fake)
    seen: list[int] = []
    index_mod.build_index(_x()[0], IndexConfig(type="flat", device="gpu"),
                          note=lambda m: seen.append(len(fake.cloned)))
    assert seen == [0] and len(fake.cloned) == 1  # announced while nothing was on the GPUs yet


def test_gpu_evaluation_paths_equal_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    x, fine = _x()
    ref = run_split(x, fine, cfg=EvalConfig(bootstrap=0, index={"device": "cpu"})).block
    for n_gpus in (1, 4):
        fake = FakeGpuFaiss(n_gpus)
        monkeypatch.setattr(index_mod, "import_faiss", lambda fake=fake: fake)
        got = run_split(x, fine, cfg=EvalConfig(bootstrap=0, index={"device": "gpu", "multi_gpu": "replicate"}))
        assert got.block["fine"] == ref["fine"]
        assert got.block["index"]["device"] == "gpu"
        if n_gpus == 4:
            assert fake.cloned[-1]["shard"] is False


def test_same_config_on_cpu_runs_with_a_one_line_note() -> None:
    if index_mod.num_gpus():
        pytest.skip("this machine has a GPU")
    x, fine = _x()
    notes: list[str] = []
    cfg = EvalConfig(bootstrap=0, index={"type": "ivf_flat", "nlist": 8, "multi_gpu": "shard",
                                         "exact_check": 0})
    res = run_split(x, fine, cfg=cfg, note=notes.append)
    assert res.block["index"]["device"] == "cpu"
    assert len(notes) == 1 and "multi_gpu=shard: no GPU here" in notes[0] and "\n" not in notes[0]
