"""Side-by-side comparison of 2-4 runs: metric table with deltas, paired significance, cost per run.

Reads only run folders (docs/run-folder.md): ``metrics.json``, ``env.json``, ``split.json`` and the per-query
results ``eval/per_query_<split>.npz`` (arrays ``ids`` plus one per metric, e.g. ``fine_recall@1``).
Significance uses ``ofgr_core.metrics.paired_bootstrap_test`` and is only reported when both runs were
evaluated on the same queries; otherwise the reason is recorded in ``Comparison.notes``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofgr_core.errors import NotFoundError, OfgrError
from ofgr_core.runs import METRICS_FILE, RunFolder, read_json

SPLITS = ("unseen", "seen")
LEVELS = ("fine", "coarse")
MIN_RUNS, MAX_RUNS = 2, 4
_RECALL = re.compile(r"^recall@(\d+)$")


@dataclass(frozen=True)
class Significance:
    """Paired bootstrap test of ``run - baseline`` on the same queries."""

    delta: float
    ci: tuple[float, float]
    p_value: float
    n_queries: int


@dataclass(frozen=True)
class MetricRow:
    """One metric for every run. Index 0 of each tuple is the baseline run."""

    split: str
    level: str
    metric: str
    values: tuple[float | None, ...]
    ci: tuple[tuple[float, float] | None, ...]
    deltas: tuple[float | None, ...]  # values[i] - values[baseline]; None for the baseline itself
    tests: tuple[Significance | None, ...]


@dataclass(frozen=True)
class RunCost:
    """Training time and compute of one run, from ``metrics.json`` (and ``env.json`` for the device)."""

    run_id: str
    name: str
    model: str
    params: int | None
    epochs: int | None
    images_seen: int | None
    train_seconds: float | None
    total_seconds: float | None
    device: str | None

    @property
    def images_per_s(self) -> float | None:
        if not self.images_seen or not self.train_seconds:
            return None
        return self.images_seen / self.train_seconds


@dataclass(frozen=True)
class Comparison:
    run_ids: tuple[str, ...]
    costs: tuple[RunCost, ...]
    rows: tuple[MetricRow, ...]
    curves: dict[tuple[str, str], tuple[tuple[tuple[int, float], ...], ...]]  # (split, level) -> per run
    notes: tuple[str, ...] = field(default_factory=tuple)

    def row(self, split: str, level: str, metric: str) -> MetricRow | None:
        for r in self.rows:
            if (r.split, r.level, r.metric) == (split, level, metric):
                return r
        return None


def _metric_order(name: str) -> tuple[int, int, str]:
    m = _RECALL.match(name)
    if m:
        return (0, int(m.group(1)), name)
    return (1, 0, name)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _cost(run_dir: Path, metrics: dict[str, Any]) -> RunCost:
    model = metrics.get("model") or {}
    train = metrics.get("train") or {}
    timings = metrics.get("timings") or {}
    env = read_json(RunFolder(run_dir).env) or {}
    total = sum(v for v in (_num(t) for t in timings.values()) if v is not None) if timings else None
    device = env.get("gpu_name") or env.get("device") if isinstance(env, dict) else None
    return RunCost(
        run_id=run_dir.name,
        name=str(metrics.get("name") or run_dir.name),
        model=f"{model.get('kind', '')}:{model.get('name', '')}".strip(":"),
        params=int(model["params"]) if _num(model.get("params")) is not None else None,
        epochs=int(train["epochs"]) if _num(train.get("epochs")) is not None else None,
        images_seen=int(train["images_seen"]) if _num(train.get("images_seen")) is not None else None,
        train_seconds=_num(train.get("seconds")) or _num(timings.get("train")),
        total_seconds=total,
        device=str(device) if device else None,
    )


def _split_hash(run_dir: Path) -> str | None:
    try:
        return hashlib.sha256(RunFolder(run_dir).split.read_bytes()).hexdigest()
    except OSError:
        return None


def _per_query(run_dir: Path, split: str) -> dict[str, np.ndarray] | None:
    path = RunFolder(run_dir).per_query(split)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError):
        return None


def _aligned(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """Row indices into ``a`` and ``b`` that put the same query ids in the same order, or None."""
    ia, ib = a.get("ids"), b.get("ids")
    if ia is None or ib is None or len(ia) != len(ib):
        return None
    ia, ib = ia.astype(str), ib.astype(str)
    if np.array_equal(ia, ib):
        r = np.arange(len(ia))
        return r, r
    oa, ob = np.argsort(ia, kind="stable"), np.argsort(ib, kind="stable")
    if not np.array_equal(ia[oa], ib[ob]):
        return None
    return oa, ob


def compare_runs(
    run_dirs: list[str | os.PathLike[str]],
    *,
    baseline: int = 0,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Compare 2-4 finished runs against ``run_dirs[baseline]``.

    Raises:
        OfgrError: fewer than 2 or more than 4 runs.
        NotFoundError: a run has no ``metrics.json`` (not finished).
    """
    from ofgr_core.metrics import paired_bootstrap_test

    dirs = [Path(d) for d in run_dirs]
    if not MIN_RUNS <= len(dirs) <= MAX_RUNS:
        raise OfgrError(f"compare needs {MIN_RUNS} to {MAX_RUNS} runs, got {len(dirs)}")
    if not 0 <= baseline < len(dirs):
        raise OfgrError(f"baseline index {baseline} out of range for {len(dirs)} runs")
    dirs.insert(0, dirs.pop(baseline))
    all_metrics = []
    for d in dirs:
        m = read_json(RunFolder(d).metrics)
        if not isinstance(m, dict):
            raise NotFoundError(f"{d.name}: no {METRICS_FILE} (the run has not finished)")
        all_metrics.append(m)

    notes: list[str] = []
    hashes = [_split_hash(d) for d in dirs]
    rows: list[MetricRow] = []
    curves: dict[tuple[str, str], tuple[tuple[tuple[int, float], ...], ...]] = {}
    for split in SPLITS:
        sections = [m.get(split) if isinstance(m.get(split), dict) else None for m in all_metrics]
        if all(s is None for s in sections):
            continue
        per_query = [_per_query(d, split) for d in dirs]
        pairing: list[tuple[np.ndarray, np.ndarray] | None] = [None]
        for i in range(1, len(dirs)):
            why = None
            if hashes[0] and hashes[i] and hashes[0] != hashes[i]:
                why = "different splits"
            elif per_query[0] is None or per_query[i] is None:
                why = "no per-query results"
            pair = None if why else _aligned(per_query[0], per_query[i])  # type: ignore[arg-type]
            if why is None and pair is None:
                why = "different query sets"
            if why:
                notes.append(f"{split}: {dirs[i].name} vs {dirs[0].name}: {why}: significance unavailable")
            pairing.append(pair)
        for level in LEVELS:
            blocks = [(s or {}).get(level) or {} for s in sections]
            cis = [((s or {}).get("ci95") or {}).get(level) or {} for s in sections]
            names = sorted({k for b in blocks for k in b if _num(b[k]) is not None}, key=_metric_order)
            for metric in names:
                values = tuple(_num(b.get(metric)) for b in blocks)
                ci = tuple(_ci(c.get(metric)) for c in cis)
                deltas = tuple(
                    None if i == 0 or v is None or values[0] is None else v - values[0]
                    for i, v in enumerate(values)
                )
                tests: list[Significance | None] = [None]
                key = f"{level}_{metric}"
                for i in range(1, len(dirs)):
                    pair = pairing[i]
                    pq0, pqi = per_query[0], per_query[i]
                    if pair is None or pq0 is None or pqi is None or key not in pq0 or key not in pqi:
                        tests.append(None)
                        continue
                    a = np.asarray(pqi[key], dtype=np.float64)[pair[1]]
                    b = np.asarray(pq0[key], dtype=np.float64)[pair[0]]
                    try:
                        t = paired_bootstrap_test(a, b, n_resamples=n_resamples, seed=seed)
                    except ValueError:
                        tests.append(None)
                        continue
                    tests.append(Significance(t.delta, t.ci, t.p_value, t.n_queries))
                rows.append(MetricRow(split, level, metric, values, ci, deltas, tuple(tests)))
            curve = []
            for b in blocks:
                pts = sorted(
                    (int(m.group(1)), float(v))
                    for k, v in b.items()
                    if (m := _RECALL.match(k)) and _num(v) is not None
                )
                curve.append(tuple(pts))
            if any(curve):
                curves[(split, level)] = tuple(curve)
    return Comparison(
        run_ids=tuple(d.name for d in dirs),
        costs=tuple(_cost(d, m) for d, m in zip(dirs, all_metrics, strict=True)),
        rows=tuple(rows),
        curves=curves,
        notes=tuple(dict.fromkeys(notes)),
    )


def _ci(x: Any) -> tuple[float, float] | None:
    if isinstance(x, (list, tuple)) and len(x) == 2:
        lo, hi = _num(x[0]), _num(x[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None
