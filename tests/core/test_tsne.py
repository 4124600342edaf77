"""t-SNE of stored embeddings: labels kept in order, subsample note, per-run cache, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ofgr_core.common.errors import NotFoundError
from ofgr_core.reports.tsne import compute_tsne
from ofgr_core.runs.folder import RunFolder


def write_split(run: Path, split: str, n_classes: int, per_class: int, dim: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = RunFolder(run)
    folder.embeddings_dir.mkdir(parents=True, exist_ok=True)
    centers = rng.normal(size=(n_classes, dim)) * 5
    x = np.concatenate([centers[c] + rng.normal(size=(per_class, dim)) for c in range(n_classes)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(folder.embeddings_npy(split), x.astype(np.float32))
    rows = [
        f"{split}{c}_{j},p/{c}/{j}.png,{split}_f{c},c{c % 2}"
        for c in range(n_classes)
        for j in range(per_class)
    ]
    folder.embeddings_csv(split).write_text("id,path,fine,coarse\n" + "\n".join(rows) + "\n")


def test_projects_both_splits_and_caches(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_split(run, "seen", 3, 10)
    write_split(run, "unseen", 3, 10, seed=1)
    r = compute_tsne(run, "all", max_points=2000)
    assert r.xy.shape == (60, 2) and r.xy.dtype == np.float32 and np.isfinite(r.xy).all()
    assert r.split[:30] == ["seen"] * 30 and r.split[30:] == ["unseen"] * 30
    assert r.fine[0] == "seen_f0" and r.coarse[-1] == "c0" and r.ids[30] == "unseen0_0"
    assert r.note is None and not r.cached
    assert r.cache_path == run / "cache" / "tsne_all_60.npz" and r.cache_path.exists()
    again = compute_tsne(run, "all")
    assert again.cached and np.array_equal(again.xy, r.xy)
    # embeddings rewritten (e.g. a resumed run re-embedded): the cache is not trusted
    write_split(run, "seen", 3, 10, seed=5)
    assert not compute_tsne(run, "all").cached


def test_subsamples_large_sets_with_a_note(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_split(run, "unseen", 4, 30)
    r = compute_tsne(run, "unseen", max_points=50, seed=3)
    assert len(r) == 50 and r.n_total == 120
    assert r.note == "showing 50 of 120 points (uniform random subsample, seed 3)"
    assert r.cache_path.name == "tsne_unseen_50.npz"
    assert compute_tsne(run, "unseen", max_points=50, seed=3).ids == r.ids  # same subsample from the cache


def test_missing_embeddings_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="has not reached the embed stage"):
        compute_tsne(tmp_path, "all")
    (tmp_path / "metrics.json").write_text("{}")  # finished, but nothing was stored
    with pytest.raises(NotFoundError, match=r"no stored embeddings \(.*finished without storing them"):
        compute_tsne(tmp_path, "all")


def test_progress_events_and_the_same_projection_with_or_without_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_split(run, "seen", 3, 10)
    events = []
    with_progress = compute_tsne(run, "seen", use_cache=False, on_event=events.append)
    plain = compute_tsne(run, "seen", use_cache=False)
    np.testing.assert_array_equal(with_progress.xy, plain.xy)  # reporting does not change the optimisation
    types = [e.type for e in events]
    assert types[0] == "stage_started" and types[-1] == "stage_finished"
    done = [e.done for e in events if e.type == "stage_progress"]
    assert len(done) >= 10 and done == sorted(done) and done[-1] <= events[0].total == 1000
    # a cache hit computes nothing and reports nothing
    compute_tsne(run, "seen")
    events.clear()
    assert compute_tsne(run, "seen", on_event=events.append).cached and events == []
