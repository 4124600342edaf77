"""t-SNE of a run's stored embeddings, subsampled for large sets and cached per run.

Reads ``RUN/embeddings/<split>.npy`` + ``<split>.csv`` (docs/run-folder.md) and writes
``RUN/cache/tsne_<split>_<n>.npz``. scikit-learn is imported only when a projection is actually computed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofgr_core.common.atomic import atomic_writer
from ofgr_core.common.errors import DataError, NotFoundError
from ofgr_core.runs.events import Event, StageFinished, StageProgress, StageStarted
from ofgr_core.runs.folder import RunFolder

OnEvent = Callable[[Event], None]
STAGE = "tsne"

SPLITS = ("seen", "unseen")
DEFAULT_MAX_POINTS = 2000
CACHE_VERSION = 1


@dataclass(frozen=True)
class TsneResult:
    """A 2-D projection: one row of ``xy`` per shown item, with its labels and split.

    Attributes:
        xy: (n, 2) float32 coordinates.
        ids, fine, coarse, split: per-point labels (``split`` is ``seen`` or ``unseen``).
        n_total: items available before subsampling.
        note: a human-readable note when the set was subsampled (else ``None``).
        cached: whether the projection came from the cache.
        cache_path: where it is (or would be) cached.
    """

    xy: np.ndarray
    ids: list[str]
    fine: list[str]
    coarse: list[str]
    split: list[str]
    n_total: int
    note: str | None
    cached: bool
    cache_path: Path

    def __len__(self) -> int:
        return len(self.ids)


def _read_labels(csv_path: Path, n: int) -> dict[str, list[str]]:
    from ofgr_core.embedding.stored import load_embedding_rows

    rows = load_embedding_rows(csv_path, n, required=()) if csv_path.is_file() else []
    if not rows:  # labels unknown: still plot the points
        return {"id": [str(i) for i in range(n)], "fine": ["?"] * n, "coarse": ["?"] * n}
    return {key: [str(r.get(key, "") or "?") for r in rows] for key in ("id", "fine", "coarse")}


def available_splits(run_dir: str | os.PathLike[str]) -> list[str]:
    folder = RunFolder(run_dir)
    return [s for s in SPLITS if folder.embeddings_npy(s).is_file()]


def _splits_for(run_dir: Path, split: str) -> list[str]:
    if split == "all":
        splits = available_splits(run_dir)
    elif split in SPLITS:
        splits = [split] if RunFolder(run_dir).embeddings_npy(split).is_file() else []
    else:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} or 'all', got {split!r}")
    if not splits:
        which = "" if split == "all" else f" of the {split} split"
        why = (
            "the run finished without storing them"
            if RunFolder(run_dir).metrics.is_file()
            else "the run has not reached the embed stage"
        )
        raise NotFoundError(f"{run_dir.name}: no stored embeddings{which} (embeddings/<split>.npy); {why}")
    return splits


def _signature(paths: list[Path]) -> str:
    # Invalidates the cache when the embeddings are rewritten (e.g. a resumed run re-embeds).
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)


def compute_tsne(
    run_dir: str | os.PathLike[str],
    split: str = "all",
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = 0,
    perplexity: float = 30.0,
    use_cache: bool = True,
    on_event: OnEvent | None = None,
) -> TsneResult:
    """Project a run's stored embeddings to 2-D with t-SNE.

    Args:
        run_dir: The run folder.
        split: ``seen``, ``unseen`` or ``all`` (both, so seen and unseen can be told apart).
        max_points: Larger sets are subsampled uniformly at random (with ``seed``) to this many points.
        seed: Seeds both the subsample and t-SNE, so a cached and a fresh projection agree.
        perplexity: t-SNE perplexity; lowered automatically for tiny sets.
        use_cache: Read and write ``RUN/cache/tsne_<split>_<n>.npz``.
        on_event: Receives ``stage_started``/``stage_progress``/``stage_finished`` events of stage ``tsne``
            while a projection is computed (``done``/``total`` are optimisation iterations), so a front end
            can show progress; nothing is emitted for a cache hit.

    Raises:
        NotFoundError: the run has no stored embeddings for ``split``.
        DataError: the embeddings are malformed or too few to project.
    """

    run_dir = Path(run_dir)
    splits = _splits_for(run_dir, split)
    npy = [RunFolder(run_dir).embeddings_npy(s) for s in splits]
    sig = _signature(npy)

    arrays, labels, split_of = _load_stored(run_dir, splits, npy)
    n_total = sum(len(a) for a in arrays)
    n = min(n_total, max_points)
    if n < n_total:
        idx = np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))
        note = f"showing {n:,} of {n_total:,} points (uniform random subsample, seed {seed})"
    else:
        idx = np.arange(n_total)
        note = None

    cache_path = RunFolder(run_dir).cache_dir / f"tsne_{split}_{n}.npz"
    xy = _load_cache(cache_path, sig, idx, seed) if use_cache else None
    cached = xy is not None
    if xy is None:
        x = np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays])[idx]
        t0 = time.perf_counter()
        emit = on_event or (lambda _e: None)
        emit(StageStarted(stage=STAGE, total=TSNE_ITERATIONS))
        xy = _project(x, seed=seed, perplexity=perplexity, on_event=emit)
        emit(StageFinished(stage=STAGE, seconds=time.perf_counter() - t0))
        if use_cache:
            _save_cache(cache_path, xy=xy, idx=idx, sig=sig, seed=seed)

    pick = idx.tolist()
    return TsneResult(
        xy=xy,
        ids=[labels["id"][i] for i in pick],
        fine=[labels["fine"][i] for i in pick],
        coarse=[labels["coarse"][i] for i in pick],
        split=[split_of[i] for i in pick],
        n_total=n_total,
        note=note,
        cached=cached,
        cache_path=cache_path,
    )


def _load_stored(run_dir: Path, splits: list[str], npy: list[Path]
                 ) -> tuple[list[np.ndarray], dict[str, list[str]], list[str]]:
    """The splits' embeddings (memory-mapped), their id/fine/coarse labels and each row's split.

    Raises:
        DataError: unreadable or non-2-D embeddings, dimensions that differ, or fewer than 5 rows in all.
    """
    arrays: list[np.ndarray] = []
    labels: dict[str, list[str]] = {"id": [], "fine": [], "coarse": []}
    split_of: list[str] = []
    from ofgr_core.embedding.stored import load_embeddings

    for s, path in zip(splits, npy, strict=True):
        x = load_embeddings(path)  # an .npz, pickles, another rank or dtype: one line naming the file
        arrays.append(x)
        for key, values in _read_labels(path.with_suffix(".csv"), len(x)).items():
            labels[key].extend(values)
        split_of.extend([s] * len(x))
    if len({a.shape[1] for a in arrays}) > 1:
        raise DataError(f"{run_dir.name}: stored embeddings differ in dimension across splits")
    n_total = sum(len(a) for a in arrays)
    if n_total < 5:
        raise DataError(f"{run_dir.name}: only {n_total} stored embeddings, too few for t-SNE")
    return arrays, labels, split_of


TSNE_ITERATIONS = 1000  # scikit-learn's default max_iter, set explicitly so progress has a known total


def _project(x: np.ndarray, *, seed: int, perplexity: float, on_event: OnEvent | None = None) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(x)
    if x.shape[1] > 50 and n > 50:  # the usual PCA-50 step: same neighbourhoods, much faster
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                max_iter=TSNE_ITERATIONS)  # fmt: skip
    with _iteration_progress(on_event):
        xy: np.ndarray = tsne.fit_transform(x).astype(np.float32)
        return xy


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _iteration_progress(on_event: OnEvent | None, every: int = 10) -> Iterator[None]:
    """Report t-SNE optimisation iterations while ``fit_transform`` runs.

    scikit-learn has no progress callback; its optimiser calls the objective once per iteration, so the
    objective is wrapped for the duration (``_gradient_descent`` is looked up at call time). Without that
    private function (another scikit-learn version) the projection simply runs without progress.
    """
    try:
        from sklearn.manifold import _t_sne
    except ImportError:  # pragma: no cover
        _t_sne = None
    original = getattr(_t_sne, "_gradient_descent", None)
    if on_event is None or original is None:
        yield
        return

    # scikit-learn's private optimiser is untyped: its arguments and results pass through as they are
    def gradient_descent(objective: Callable[..., Any], p0: Any, it: int, max_iter: int, *args: Any,
                         **kwargs: Any) -> Any:
        count = it

        def counted(*a: Any, **kw: Any) -> Any:
            nonlocal count
            count += 1
            if count % every == 0:
                on_event(StageProgress(stage=STAGE, done=min(count, TSNE_ITERATIONS), total=TSNE_ITERATIONS))
            return objective(*a, **kw)

        return original(counted, p0, it, max_iter, *args, **kwargs)

    with _PATCH_LOCK:  # one patched projection at a time
        _t_sne._gradient_descent = gradient_descent
        try:
            yield
        finally:
            _t_sne._gradient_descent = original


def _load_cache(path: Path, sig: str, idx: np.ndarray, seed: int) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            ok = (
                int(z["version"]) == CACHE_VERSION
                and str(z["sig"]) == sig
                and int(z["seed"]) == seed
                and np.array_equal(z["idx"], idx)
            )
            return np.asarray(z["xy"], dtype=np.float32) if ok else None
    except (OSError, KeyError, ValueError):
        return None


def _save_cache(path: Path, *, xy: np.ndarray, idx: np.ndarray, sig: str, seed: int) -> None:
    try:
        with atomic_writer(path) as f:
            np.savez(f, xy=xy, idx=idx, sig=np.array(sig), seed=np.array(seed), version=CACHE_VERSION)
    except OSError:
        pass  # a read-only run folder still gets its projection, just not cached
