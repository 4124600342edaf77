"""Comparing runs: deltas against the baseline, paired significance only on identical queries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ofgr_core.common.errors import NotFoundError, OfgrError
from ofgr_core.reports.compare import compare_runs
from ofgr_core.runs.folder import RunFolder


def make_run(root: Path, name: str, r1: float, *, hits: np.ndarray | None = None, split: str = "A",
             ids: np.ndarray | None = None) -> Path:  # fmt: skip
    d = root / name
    d.mkdir(parents=True)
    metrics = {
        "name": name,
        "model": {"kind": "timm", "name": "resnet18", "params": 1000},
        "train": {"epochs": 2, "seconds": 100.0, "images_seen": 5000},
        "timings": {"train": 100.0, "embed": 10.0},
        "unseen": {
            "fine": {"recall@1": r1, "recall@4": r1 + 0.1, "map@r": r1 / 2},
            "coarse": {"recall@1": r1 + 0.2},
            "ci95": {"fine": {"recall@1": [r1 - 0.05, r1 + 0.05]}},
        },
    }
    folder = RunFolder(d)
    folder.metrics.write_text(json.dumps(metrics))
    folder.split.write_text(json.dumps({"split": split}))
    if hits is not None:
        folder.eval_dir.mkdir()
        ids = np.array([f"q{i}" for i in range(len(hits))]) if ids is None else ids
        np.savez(
            folder.per_query("unseen"), ids=ids, **{"fine_recall@1": hits, "fine_map@r": hits / 2}
        )
    return d


def test_deltas_curves_costs_and_significance(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a_hits = (rng.random(400) < 0.4).astype(float)
    b_hits = np.maximum(a_hits, rng.random(400) < 0.3)  # b is never worse, often better: significant
    a = make_run(tmp_path, "a", float(a_hits.mean()), hits=a_hits)
    b = make_run(tmp_path, "b", float(b_hits.mean()), hits=b_hits)
    c = compare_runs([a, b], n_resamples=500)
    assert c.run_ids == ("a", "b")
    row = c.row("unseen", "fine", "recall@1")
    assert row is not None
    assert row.deltas[0] is None and row.deltas[1] == pytest.approx(b_hits.mean() - a_hits.mean())
    assert row.ci[0] == pytest.approx((a_hits.mean() - 0.05, a_hits.mean() + 0.05))
    t = row.tests[1]
    assert (
        t is not None and t.delta == pytest.approx(row.deltas[1]) and t.p_value < 0.01 and t.n_queries == 400
    )
    assert [r.metric for r in c.rows if r.level == "fine"] == ["recall@1", "recall@4", "map@r"]
    assert c.row("unseen", "coarse", "recall@1").tests[1] is None  # type: ignore[union-attr]  # no per-query array
    assert c.curves[("unseen", "fine")][1] == (
        (1, pytest.approx(b_hits.mean())),
        (4, pytest.approx(b_hits.mean() + 0.1)),
    )
    assert (
        c.costs[0].train_seconds == 100.0
        and c.costs[0].total_seconds == 110.0
        and c.costs[0].images_per_s == 50.0
    )
    assert c.notes == ()


def test_queries_are_aligned_by_id(tmp_path: Path) -> None:
    hits = np.array([1.0, 0.0, 1.0, 0.0] * 25)
    ids = np.array([f"q{i}" for i in range(100)])
    a = make_run(tmp_path, "a", 0.5, hits=hits, ids=ids)
    order = np.arange(100)[::-1]
    b = make_run(tmp_path, "b", 0.5, hits=hits[order], ids=ids[order])  # same results, other order
    t = compare_runs([a, b], n_resamples=200).row("unseen", "fine", "recall@1").tests[1]  # type: ignore[union-attr]
    assert t is not None and t.delta == 0.0 and t.p_value == 1.0


def test_no_significance_without_per_query_or_on_different_splits(tmp_path: Path) -> None:
    hits = np.ones(50)
    a = make_run(tmp_path, "a", 0.5, hits=hits)
    b = make_run(tmp_path, "b", 0.6)  # no per-query results
    c = make_run(tmp_path, "c", 0.7, hits=hits, split="B")
    cmp = compare_runs([a, b, c], n_resamples=100)
    row = cmp.row("unseen", "fine", "recall@1")
    assert row is not None and row.tests == (None, None, None)
    assert row.deltas[2] == pytest.approx(0.2)
    assert "image→image unseen: b vs a: no per-query results: significance unavailable" in cmp.notes
    assert "image→image unseen: c vs a: different splits: significance unavailable" in cmp.notes
    assert cmp.split_mismatch == ("c",)
    # baseline other than the first
    assert compare_runs([a, b], baseline=1, n_resamples=50).run_ids == ("b", "a")


def test_rejects_bad_input(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", 0.5)
    with pytest.raises(OfgrError, match="2 to 8 runs"):
        compare_runs([a])
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(NotFoundError, match="has not finished"):
        compare_runs([a, tmp_path / "unfinished"])


def test_text_to_image_rows_when_present(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", 0.5)
    b = make_run(tmp_path, "b", 0.6)
    m = json.loads((b / "metrics.json").read_text())
    m["unseen"]["text_to_image"] = {"fine": {"recall@1": 0.3, "map@r": 0.2}, "coarse": {"recall@1": 0.7}}
    (b / "metrics.json").write_text(json.dumps(m))
    c = compare_runs([a, b], n_resamples=100)
    row = c.row("unseen", "fine", "recall@1", mode="text")
    assert row is not None and row.values == (None, 0.3) and row.deltas == (None, None)
    assert c.modes == ("image", "text")
    assert any("text→image unseen: b vs a: not evaluated in both runs" in n for n in c.notes)
    # absent everywhere: no text rows at all
    assert compare_runs([a, a.parent / "a"], n_resamples=100).modes == ("image",)


def test_holm_family_and_survival(tmp_path: Path) -> None:
    from ofgr_core.retrieval.metrics import holm_adjust

    rng = np.random.default_rng(1)
    a_hits = (rng.random(500) < 0.3).astype(float)
    b_hits = np.maximum(a_hits, rng.random(500) < 0.5)  # far better
    c_hits = a_hits.copy()
    c_hits[:3] = 1 - c_hits[:3]  # nearly identical
    runs_ = [make_run(tmp_path, n, float(h.mean()), hits=h) for n, h in (("a", a_hits), ("b", b_hits),
                                                                          ("c", c_hits))]
    cmp = compare_runs(runs_, n_resamples=2000)
    tb = cmp.row("unseen", "fine", "recall@1").tests[1]  # type: ignore[union-attr]
    tc = cmp.row("unseen", "fine", "recall@1").tests[2]  # type: ignore[union-attr]
    # family: R@1 and MAP@R of the fine level (the only per-query arrays) for 2 runs
    assert cmp.family_size == 4
    assert tb is not None and tb.survives and tb.p_adjusted is not None and tb.p_adjusted >= tb.p_value
    assert tc is not None and not tc.survives
    fam = [cmp.row("unseen", "fine", m).tests[i] for m in ("recall@1", "map@r") for i in (1, 2)]  # type: ignore[union-attr]
    expected = holm_adjust([t.p_value for t in fam])  # type: ignore[union-attr]
    assert [t.p_adjusted for t in fam] == pytest.approx(expected)  # type: ignore[union-attr]
    # R@4 has no per-query array here: no test, no adjustment
    assert cmp.row("unseen", "fine", "recall@4").tests == (None, None, None)  # type: ignore[union-attr]


def test_holm_adjust_against_naive() -> None:
    from ofgr_core.retrieval.metrics import holm_adjust

    p = [0.01, 0.04, 0.03, 0.005]
    # naive: sort, multiply by (m - rank), running max, cap at 1
    order = sorted(range(4), key=lambda i: p[i])
    running, naive = 0.0, [0.0] * 4
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * p[i]))
        naive[i] = running
    assert holm_adjust(p) == pytest.approx(naive)
    assert holm_adjust([]) == []


def test_batched_paired_tests_equal_single() -> None:
    from ofgr_core.retrieval.metrics import paired_bootstrap_test, paired_bootstrap_tests

    rng = np.random.default_rng(3)
    a = {"x": rng.random(120), "y": (rng.random(120) < 0.4).astype(float)}
    b = {"x": rng.random(120), "y": (rng.random(120) < 0.5).astype(float)}
    batched = paired_bootstrap_tests(a, b, n_resamples=700, seed=5)
    for k in a:
        single = paired_bootstrap_test(a[k], b[k], n_resamples=700, seed=5)
        assert batched[k].delta == pytest.approx(single.delta)
        assert batched[k].ci == pytest.approx(single.ci)
        assert batched[k].p_value == pytest.approx(single.p_value)


def test_cost_ratios(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", 0.5)
    b = make_run(tmp_path, "b", 0.5)
    m = json.loads((b / "metrics.json").read_text())
    m["train"]["seconds"] = 25.0
    m["compute"] = {"gpu_hours": 0.5, "trainable_params": 10}
    (b / "metrics.json").write_text(json.dumps(m))
    c = compare_runs([a, b], n_resamples=100)
    fit = next(r for r in c.ratios if r.quantity == "fit wall time")
    assert fit.less and fit.factor == pytest.approx(4.0)
    assert fit.sentence({"b": "B", "a": "A"}) == "B used 4.00x less fit wall time than A"
    # GPU-hours only known for b: no ratio claimed
    assert not any(r.quantity == "GPU-hours" for r in c.ratios)


def test_text_to_image_per_space_layout_uses_the_free_text_space(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", 0.5)
    b = make_run(tmp_path, "b", 0.6)
    for d, (raw, head) in ((a, (0.2, 0.4)), (b, (0.3, 0.1))):
        m = json.loads((d / "metrics.json").read_text())
        m["unseen"]["text_to_image"] = {
            "raw": {"fine": {"recall@1": raw}, "coarse": {"recall@1": raw + 0.1}},
            "head": {"fine": {"recall@1": head}, "coarse": {"recall@1": head + 0.1}},
            "space_for_free_text": "head" if d is a else "raw",
        }
        (d / "metrics.json").write_text(json.dumps(m))
    row = compare_runs([a, b], n_resamples=100).row("unseen", "fine", "recall@1", mode="text")
    assert row is not None and row.values == (0.4, 0.3)


def test_training_flops_prefer_the_compute_estimate(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", 0.5)
    b = make_run(tmp_path, "b", 0.5)
    for d, frac_flops in ((a, 3e15), (b, 1.02e15)):
        m = json.loads((d / "metrics.json").read_text())
        m["train"]["train_pflops"] = 3.0  # 3x forward for both: what the pipeline's train block says
        m["compute"] = {"train_flops": frac_flops}
        (d / "metrics.json").write_text(json.dumps(m))
    c = compare_runs([a, b], n_resamples=100)
    assert c.costs[1].train_pflops == pytest.approx(1.02)
    r = next(x for x in c.ratios if x.quantity == "training compute (FLOPs)")
    assert r.less and r.factor == pytest.approx(3 / 1.02)
