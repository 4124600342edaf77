"""FAISS index building, search, persistence and device selection."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

import ofgr_core.retrieval.index as index_mod
from ofgr_core.common.errors import ConfigError, DependencyError, NotFoundError
from ofgr_core.config import IndexConfig
from ofgr_core.retrieval.index import build_index, exact_searcher, load_index, resolve_device, set_search_params


def blobs(n: int, d: int, n_centres: int, seed: int = 0, noise: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, d))
    x = centres[rng.integers(0, n_centres, size=n)] + noise * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(q: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q.astype(np.float64) @ x.astype(np.float64).T), axis=1, kind="stable")[:, :k]


def test_flat_matches_brute_force_and_returns_item_ids() -> None:
    x = blobs(500, 16, 10)
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    idx = build_index(x, IndexConfig(type="flat"), ids=ids)
    assert idx.device == "cpu" and idx.ntotal == 500
    scores, got = idx.search(x[:50], 5, batch_size=16)
    ref = brute_force(x[:50], x, 5)
    np.testing.assert_array_equal(got, ids[ref])
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_exact_searcher_equals_index_flat_ip_without_copy(tmp_path) -> None:
    x = blobs(400, 8, 5, seed=1)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    s = exact_searcher(mm, device="cpu")
    assert s.vectors is mm  # the gallery is searched in place
    d1, r1 = s.search_rows(x[:64], 10)
    d2, r2 = build_index(x, IndexConfig(type="flat")).search_rows(x[:64], 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6)


def test_k_beyond_index_size_pads_with_minus_one() -> None:
    x = blobs(5, 4, 2)
    _, ids = build_index(x).search(x, 8)
    assert (ids[:, 5:] == -1).all() and (ids[:, :5] >= 0).all()


@pytest.mark.parametrize(
    ("kind", "extra", "floor"),
    [
        ("ivf_flat", {"nprobe": 8}, 0.95),
        ("hnsw", {"ef_search": 64}, 0.95),
        # 8 five-bit codes per 32-d vector: lossy by design (and 5 bits keep PQ training fast)
        ("ivf_pq", {"nprobe": 8, "pq_m": 8, "pq_nbits": 5}, 0.3),
        # exact re-ranking of 10 * k PQ candidates recovers the exact top-k
        ("ivf_pq", {"nprobe": 16, "pq_m": 8, "pq_nbits": 5, "refine_k_factor": 10}, 0.95),
    ],
)
def test_approximate_recall_vs_exact_on_clustered_data(kind: str, extra: dict, floor: float) -> None:
    x = blobs(8000, 32, 50, seed=2)
    q = x[:300]
    exact = build_index(x).search_rows(q, 10)[1]
    approx = build_index(x, IndexConfig(type=kind, **extra)).search_rows(q, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= floor, recall


@pytest.mark.parametrize(
    ("kind", "refine"), [("flat", 0), ("ivf_flat", 0), ("ivf_pq", 0), ("ivf_pq", 4), ("hnsw", 0)]
)
def test_save_load_round_trip(tmp_path, kind: str, refine: int) -> None:
    x = blobs(3000, 32, 20, seed=3)
    ids = np.arange(3000, dtype=np.int64)[::-1].copy()
    cfg = IndexConfig(type=kind, pq_m=8, pq_nbits=4, nprobe=4, ef_search=32, refine_k_factor=refine)
    idx = build_index(x, cfg, ids=ids)
    before = idx.search(x[:100], 10)
    idx.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["type"] == kind and meta["dim"] == 32 and meta["n"] == 3000 and meta["device"] == "cpu"
    loaded = load_index(tmp_path / "ix")
    assert loaded.type == kind and loaded.params == idx.params
    after = loaded.search(x[:100], 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], rtol=1e-6)


def test_search_params_change_the_operating_point() -> None:
    x = blobs(8000, 32, 40, seed=4)
    idx = build_index(x, IndexConfig(type="ivf_flat", nprobe=1))
    exact = build_index(x).search_rows(x[:200], 10)[1]

    def recall() -> float:
        approx = idx.search_rows(x[:200], 10)[1]
        return float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)]))

    low = recall()
    set_search_params(idx, nprobe=idx.params["nlist"])  # every list: exact
    assert idx.params["nprobe"] == idx.params["nlist"]
    assert recall() == 1.0 > low


def test_bad_parameters_are_config_errors() -> None:
    x = blobs(1000, 30, 5)
    with pytest.raises(ConfigError, match="pq_m"):
        build_index(x, IndexConfig(type="ivf_pq", pq_m=16))
    with pytest.raises(ConfigError, match="nlist"):
        build_index(x[:10], IndexConfig(type="ivf_flat", nlist=50))


def test_missing_index_folder(tmp_path) -> None:
    with pytest.raises(NotFoundError, match="index build"):
        load_index(tmp_path)


def test_missing_faiss_names_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(DependencyError, match=r"ofgr\[cpu\].*ofgr\[gpu\]"):
        build_index(np.zeros((2, 2), np.float32))


def test_cpu_without_gpus_never_touches_gpu_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    def boom(*a, **k):
        raise AssertionError("GPU function called without GPUs")

    monkeypatch.setattr(index_mod, "num_gpus", lambda: 0)
    for name in ("index_cpu_to_all_gpus", "index_cpu_to_gpu", "StandardGpuResources"):
        monkeypatch.setattr(faiss, name, boom, raising=False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="no GPU"):
        resolve_device("gpu")
    assert build_index(blobs(100, 8, 2), IndexConfig(device="auto")).device == "cpu"
    assert exact_searcher(blobs(100, 8, 2)).device == "cpu"


def test_several_gpus_shard_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """With N > 1 GPUs the CPU index goes through index_cpu_to_all_gpus with sharding on."""
    import faiss

    calls: list = []

    def fake_all_gpus(index, co=None, ngpu=-1):
        calls.append(co)
        return index  # stands in for the sharded GPU index

    monkeypatch.setattr(index_mod, "num_gpus", lambda: 4)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", lambda: types.SimpleNamespace(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_all_gpus, raising=False)
    idx = build_index(blobs(200, 8, 2), IndexConfig(type="ivf_flat", device="auto"))
    assert idx.device == "gpu" and idx.n_gpus == 4 and idx.info()["n_gpus"] == 4
    assert calls and calls[0].shard is True and calls[0].common_ivf_quantizer is True
    # HNSW has no GPU implementation in faiss: it stays on CPU and says so
    assert build_index(blobs(200, 8, 2), IndexConfig(type="hnsw", device="auto")).device == "cpu"
