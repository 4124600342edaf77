"""Side-by-side comparison of runs: metric table with deltas, paired significance, cost per run.

Reads only run folders (docs/run-folder.md): ``metrics.json``, ``env.json``, ``split.json`` and the per-query
results ``eval/per_query_<split>.npz`` (arrays ``ids`` plus one per metric, e.g. ``fine_recall@1``).
Text->image rows come from a split's ``text_to_image`` block in metrics.json (CLIP runs), with per-query
arrays from ``eval/per_query_<split>_text_to_image.npz`` when present; coarse-first rows from
``ofgr_core.retrieval.coarse_first`` (computed from the stored embeddings, cached in ``eval/``).

Significance uses a paired bootstrap (``ofgr_core.retrieval.metrics.paired_bootstrap_tests``) and is only reported when
both runs were evaluated on the same queries; otherwise the reason is recorded in ``Comparison.notes``.
Multiple comparisons: the headline tests (R@1 and MAP@R, every split, level and retrieval mode, every run
against the baseline) form one family corrected with Holm-Bonferroni at ``alpha``; a difference "survives"
when its Holm-adjusted p-value is below ``alpha``. Other rows show unadjusted p-values only.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ofgr_core.common.errors import DataError, NotFoundError, OfgrError
from ofgr_core.runs.folder import METRICS_FILE, RunFolder
from ofgr_core.runs.state import read_json

if TYPE_CHECKING:
    from ofgr_core.retrieval.metrics import PairedTest

SPLITS = ("unseen", "seen")
LEVELS = ("fine", "coarse")
MODES = ("image", "text", "coarse-first")
MODE_LABELS = {"image": "image→image", "text": "text→image", "coarse-first": "coarse-first"}
MIN_RUNS, MAX_RUNS = 2, 8
RCWF = "right_coarse_wrong_fine@1"
HEADLINE = ("recall@1", "map@r")
ALPHA = 0.05
CORRECTION = "holm"
_RECALL = re.compile(r"^recall@(\d+)$")


@dataclass(frozen=True)
class Significance:
    """Paired bootstrap test of ``run - baseline`` on the same queries.

    ``p_adjusted``/``survives`` are set for the headline tests (the Holm-Bonferroni family), else None.
    """

    delta: float
    ci: tuple[float, float]
    p_value: float
    n_queries: int
    p_adjusted: float | None = None
    survives: bool | None = None


@dataclass(frozen=True)
class MetricRow:
    """One metric for every run. Index 0 of each tuple is the baseline run."""

    split: str
    level: str  # fine | coarse | both (right-coarse-wrong-fine)
    metric: str
    values: tuple[float | None, ...]
    ci: tuple[tuple[float, float] | None, ...]
    deltas: tuple[float | None, ...]  # values[i] - values[baseline]; None for the baseline itself
    tests: tuple[Significance | None, ...]
    mode: str = "image"  # image (image->image, flat) | text (text->image) | coarse-first

    @property
    def lower_is_better(self) -> bool:
        return self.metric == RCWF

    @property
    def label(self) -> str:
        """Short row label, e.g. ``unseen fine R@1`` (``coarse-first`` / ``text`` rows say so)."""
        m = _RECALL.match(self.metric)
        name = f"R@{m.group(1)}" if m else {"map@r": "MAP@R", RCWF: "RCWF@1"}.get(self.metric, self.metric)
        level = "" if self.level == "both" else f" {self.level}"
        return f"{self.split}{level} {name}"


@dataclass(frozen=True)
class RunCost:
    """Training time and compute of one run, from ``metrics.json`` (``compute`` block when present)."""

    run_id: str
    name: str
    model: str
    params: int | None
    epochs: int | None
    images_seen: int | None
    train_seconds: float | None
    total_seconds: float | None
    device: str | None
    trainable_params: int | None = None
    gpu_hours: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    train_pflops: float | None = None
    dataset: str | None = None

    @property
    def images_per_s(self) -> float | None:
        if not self.images_seen or not self.train_seconds:
            return None
        return self.images_seen / self.train_seconds


@dataclass(frozen=True)
class Ratio:
    """A measured cost ratio of one run against the baseline (``factor`` >= 1, ``less`` says which way)."""

    quantity: str
    run_id: str
    baseline_id: str
    value: float
    baseline_value: float

    @property
    def less(self) -> bool:
        return self.value < self.baseline_value

    @property
    def factor(self) -> float:
        hi, lo = max(self.value, self.baseline_value), min(self.value, self.baseline_value)
        return hi / lo

    def sentence(self, names: dict[str, str] | None = None) -> str:
        names = names or {}
        a, b = names.get(self.run_id, self.run_id), names.get(self.baseline_id, self.baseline_id)
        if math.isclose(self.value, self.baseline_value, rel_tol=1e-9):
            return f"{a} used the same {self.quantity} as {b}"
        return f"{a} used {self.factor:.2f}x {'less' if self.less else 'more'} {self.quantity} than {b}"


RATIO_QUANTITIES: tuple[tuple[str, str], ...] = (
    ("fit wall time", "train_seconds"),
    ("GPU-hours", "gpu_hours"),
    ("training compute (FLOPs)", "train_pflops"),
    ("trainable parameters", "trainable_params"),
    ("total wall time", "total_seconds"),
    ("peak GPU memory", "peak_gpu_mb"),
)


@dataclass(frozen=True)
class Comparison:
    run_ids: tuple[str, ...]
    costs: tuple[RunCost, ...]
    rows: tuple[MetricRow, ...]
    # (split, level) -> per run ((K, recall), ...) for image->image; (split, level, mode) for the other modes
    curves: dict[tuple[str, ...], tuple[tuple[tuple[int, float], ...], ...]]
    notes: tuple[str, ...] = field(default_factory=tuple)
    split_mismatch: tuple[str, ...] = ()  # runs evaluated on another split than the baseline: no paired tests
    ratios: tuple[Ratio, ...] = ()
    n_resamples: int = 0
    alpha: float = ALPHA
    correction: str = CORRECTION
    family_size: int = 0

    def row(self, split: str, level: str, metric: str, mode: str = "image") -> MetricRow | None:
        for r in self.rows:
            if (r.split, r.level, r.metric, r.mode) == (split, level, metric, mode):
                return r
        return None

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m for m in MODES if any(r.mode == m for r in self.rows))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything the table, the CSV and the markdown show."""
        return {
            "runs": [asdict(c) | {"images_per_s": c.images_per_s} for c in self.costs],
            "baseline": self.run_ids[0],
            "significance": {
                "test": "paired bootstrap over queries (two-sided)",
                "n_resamples": self.n_resamples,
                "correction": f"{self.correction} over the {self.family_size} headline tests "
                f"({', '.join(HEADLINE)} x split x level x mode x run)",
                "alpha": self.alpha,
            },
            "split_mismatch": list(self.split_mismatch),
            "rows": [
                {
                    "mode": r.mode,
                    "split": r.split,
                    "level": r.level,
                    "metric": r.metric,
                    "runs": [
                        {
                            "run_id": rid,
                            "value": r.values[i],
                            "ci95": _as_list(r.ci[i]),
                            "delta": r.deltas[i],
                            "test": _test_dict(r.tests[i]),
                        }
                        for i, rid in enumerate(self.run_ids)
                    ],
                }
                for r in self.rows
            ],
            "ratios": [asdict(x) | {"factor": x.factor, "less": x.less, "sentence": x.sentence()}
                       for x in self.ratios],
            "notes": list(self.notes),
        }

    def records(self) -> list[dict[str, Any]]:
        """One flat record per (row, run), for CSV."""
        out = []
        for r in self.rows:
            for i, rid in enumerate(self.run_ids):
                t = r.tests[i]
                ci = r.ci[i]
                out.append({
                    "mode": r.mode, "split": r.split, "level": r.level, "metric": r.metric, "run_id": rid,
                    "baseline": i == 0, "value": r.values[i],
                    "ci95_low": ci[0] if ci else None, "ci95_high": ci[1] if ci else None,
                    "delta": r.deltas[i],
                    "delta_ci_low": t.ci[0] if t else None, "delta_ci_high": t.ci[1] if t else None,
                    "p_value": t.p_value if t else None,
                    "p_holm": t.p_adjusted if t else None,
                    "survives_holm": t.survives if t else None,
                    "n_queries": t.n_queries if t else None,
                })
        return out


def _test_dict(t: Significance | None) -> dict[str, Any] | None:
    return None if t is None else asdict(t) | {"ci": list(t.ci)}


def _as_list(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else list(ci)


def _metric_order(name: str) -> tuple[int, int, str]:
    m = _RECALL.match(name)
    if m:
        return (0, int(m.group(1)), name)
    return (1 if name == "map@r" else 2, 0, name)


def _table_metric(name: str, ks: Sequence[int] | None = None) -> bool:
    m = _RECALL.match(name)
    if m:
        return ks is None or int(m.group(1)) in ks
    return name == "map@r"


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _int(x: Any) -> int | None:
    v = _num(x)
    return int(v) if v is not None else None


def _cost(run_dir: Path, metrics: dict[str, Any]) -> RunCost:
    model = metrics.get("model") or {}
    train = metrics.get("train") or {}
    timings = metrics.get("timings") or {}
    raw_comp, raw_env = metrics.get("compute"), read_json(RunFolder(run_dir).env)
    comp: dict[str, Any] = raw_comp if isinstance(raw_comp, dict) else {}
    env: dict[str, Any] = raw_env if isinstance(raw_env, dict) else {}
    total = sum(v for v in (_num(t) for t in timings.values()) if v is not None) if timings else None
    device = comp.get("gpu_name") or comp.get("device")
    if not device:
        device = env.get("gpu_name") or train.get("device") or env.get("device")
    # the compute block's estimate counts the backward pass through the trainable share only (a frozen tower
    # with a head costs ~1x forward, not 3x); train.train_pflops (3x forward) is the fallback for older runs
    flops = _num(comp.get("train_flops"))
    pflops = flops / 1e15 if flops is not None else _num(train.get("train_pflops"))
    return RunCost(
        run_id=run_dir.name,
        name=str(metrics.get("name") or run_dir.name),
        model=f"{model.get('kind', '')}:{model.get('name', '')}".strip(":"),
        params=_int(model.get("params")) if _int(comp.get("params")) is None else _int(comp.get("params")),
        epochs=_int(train.get("epochs")),
        images_seen=_int(train.get("images_seen")),
        train_seconds=_num(train.get("seconds")) or _num(timings.get("train")),
        total_seconds=_num(comp.get("wall_seconds")) or total,
        device=str(device) if device else None,
        trainable_params=_int(comp.get("trainable_params")) or _int(model.get("trainable_params")),
        gpu_hours=_num(comp.get("gpu_hours")),
        peak_rss_mb=_num(comp.get("peak_rss_mb")),
        peak_gpu_mb=_num(comp.get("peak_gpu_mb")),
        train_pflops=pflops,
        dataset=str((metrics.get("data") or {}).get("dataset") or "") or None,
    )


def _split_hash(run_dir: Path) -> str | None:
    """Identity of the evaluation split: the class and image ids of every part (not the report text)."""
    obj = read_json(RunFolder(run_dir).split)
    if not isinstance(obj, dict):
        try:
            return hashlib.sha256(RunFolder(run_dir).split.read_bytes()).hexdigest()
        except OSError:
            return None
    import json

    key = {k: obj.get(k) for k in ("classes", "ids", "query", "query_domain", "query_ids", "gallery_ids")}
    if all(v is None for v in key.values()):
        key = obj
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _checked_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's metrics.json for comparing: a broken run or a damaged file is one line naming it, never a
    silently shorter comparison."""
    from ofgr_core.runs.state import load_run
    from ofgr_core.runs.validate import METRICS, read_run_json

    path = RunFolder(run_dir).metrics
    m, why = read_run_json(path, METRICS)
    if why is not None:
        raise DataError(f"{path}: cannot compare it ({why.split(': ', 1)[-1]})")
    if not isinstance(m, dict):
        raise NotFoundError(f"{run_dir.name}: no {METRICS_FILE} (the run has not finished)")
    info = load_run(run_dir) if RunFolder(run_dir).is_run() else None  # (a bare folder of result files is fine)
    if info is not None and info.status == "broken":
        raise DataError(f"run {run_dir.name} is broken ({info.reason}); leave it out of the comparison")
    return m


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Per-query arrays, or None when the file does not exist (that run has no paired test); a file that
    exists but is not a plain .npz of 1-D numeric arrays (ids as text) is one ``DataError`` naming it."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an .npz archive")
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise DataError(f"{path}: unreadable per-query file ({str(e).splitlines()[0][:120]})") from None
    n = {len(v) for v in arrays.values() if v.ndim == 1}
    if any(v.ndim != 1 for v in arrays.values()) or len(n) > 1 or (
            "ids" in arrays and arrays["ids"].dtype.kind not in "US"):
        raise DataError(f"{path}: not per-query arrays (expected equal-length 1-D arrays and text ids)")
    return arrays


def _per_query(run_dir: Path, split: str, mode: str = "image") -> dict[str, np.ndarray] | None:
    folder = RunFolder(run_dir)
    if mode == "image":
        return _load_npz(folder.per_query(split))
    if mode == "text":
        return _load_npz(folder.per_query_text(split))
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


def _ci(x: object) -> tuple[float, float] | None:
    if isinstance(x, (list, tuple)) and len(x) == 2:
        lo, hi = _num(x[0]), _num(x[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None


# a split block of one retrieval mode and its per-query arrays, each None when the run lacks it
_Section = tuple[dict[str, Any] | None, dict[str, np.ndarray] | None]
SectionLoader = Callable[[Path, dict[str, Any], str], _Section]


def _image_section(run_dir: Path, metrics: dict[str, Any], split: str) -> _Section:
    block = metrics.get(split)
    return (block if isinstance(block, dict) else None), _per_query(run_dir, split, "image")


def text_block(split_block: object) -> tuple[dict[str, Any] | None, str | None]:
    """The text->image metrics of a metrics.json split block, and the image space they were measured in.

    Accepts ``text_to_image`` as ``{"fine": ..., "coarse": ...}`` directly, or per space as ofgr_core.retrieval.text
    writes it (``{"raw": B, "head": B | None, "space_for_free_text": ...}``): then the space free-text
    queries use (else head, else raw).
    """
    t2i = split_block.get("text_to_image") if isinstance(split_block, dict) else None
    if not isinstance(t2i, dict):
        return None, None
    if any(isinstance(t2i.get(lv), dict) for lv in LEVELS):
        return t2i, t2i.get("space") if isinstance(t2i.get("space"), str) else None
    for space in (t2i.get("space_for_free_text"), "head", "raw"):
        if isinstance(space, str) and isinstance(t2i.get(space), dict):
            return t2i[space], space
    return None, None


def text_spaces(split_block: object) -> list[tuple[str, dict[str, Any], bool]]:
    """Every image space a split's text->image block was measured in: ``(space, metrics block, free text
    searches it)``, raw CLIP first. A block written without spaces comes back as one space named ``"-"``."""
    t2i = split_block.get("text_to_image") if isinstance(split_block, dict) else None
    if not isinstance(t2i, dict):
        return []
    if any(isinstance(t2i.get(lv), dict) for lv in LEVELS):
        return [(str(t2i.get("space") or "-"), t2i, True)]
    free = t2i.get("space_for_free_text")
    return [(sp, t2i[sp], sp == free) for sp in ("raw", "head") if isinstance(t2i.get(sp), dict)]


def _text_section(run_dir: Path, metrics: dict[str, Any], split: str) -> _Section:
    block, _ = text_block(metrics.get(split))
    return block, _per_query(run_dir, split, "text")


def _coarse_first_section(run_dir: Path, metrics: dict[str, Any], split: str) -> _Section:
    from ofgr_core.retrieval.coarse_first import coarse_first_for_run

    try:
        res = coarse_first_for_run(run_dir, split)
    except OfgrError:
        return None, None
    if res is None:
        return None, None
    return res.block, res.per_query_arrays()


_SECTIONS: dict[str, SectionLoader] = {
    "image": _image_section,
    "text": _text_section,
    "coarse-first": _coarse_first_section,
}


def compare_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    *,
    baseline: int = 0,
    n_resamples: int = 10000,
    seed: int = 0,
    alpha: float = ALPHA,
    coarse_first: bool = True,
    ks: Sequence[int] | None = None,
) -> Comparison:
    """Compare 2-8 finished runs against ``run_dirs[baseline]``.

    Args:
        run_dirs: Run folders.
        baseline: Which run the deltas and paired tests are against (it is moved to position 0).
        n_resamples: Bootstrap resamples per paired test (the smallest possible p-value is 1/(n+1)).
        seed: Bootstrap seed.
        alpha: Family-wise error level of the Holm-Bonferroni correction.
        coarse_first: Also evaluate coarse-first retrieval from each run's stored embeddings.
        ks: Only these Recall@K rows (default: every K the runs report). Curves keep every K.

    Raises:
        OfgrError: fewer than 2 or more than 8 runs.
        NotFoundError: a run has no ``metrics.json`` (not finished).
    """
    from ofgr_core.retrieval.metrics import holm_adjust

    dirs, all_metrics = _load_runs(run_dirs, baseline)
    notes: list[str] = []
    hashes = [_split_hash(d) for d in dirs]
    mismatch = tuple(
        d.name for d, h in zip(dirs[1:], hashes[1:], strict=True) if hashes[0] and h and h != hashes[0]
    )
    for name in mismatch:
        notes.append(f"{name} was evaluated on a different split than {dirs[0].name}: its numbers are not "
                     "comparable query by query, and no paired test is run")
    rows: list[MetricRow] = []
    curves: dict[tuple[str, ...], tuple[tuple[tuple[int, float], ...], ...]] = {}
    modes = [m for m in MODES if coarse_first or m != "coarse-first"]
    for mode in modes:
        for split in SPLITS:
            loaded = [_SECTIONS[mode](d, m, split) for d, m in zip(dirs, all_metrics, strict=True)]
            sections = [s for s, _ in loaded]
            if all(s is None for s in sections):
                continue
            per_query = [p for _, p in loaded]
            pairing, unpaired = _pairings(dirs, sections, per_query, mismatch)
            notes += [f"{MODE_LABELS[mode]} {split}: {dirs[i].name} vs {dirs[0].name}: {why}: significance "
                      "unavailable" for i, why in unpaired]
            section_rows, section_curves = _section_rows(sections, ks)
            curves.update({((split, level) if mode == "image" else (split, level, mode)): c
                           for level, c in section_curves.items()})
            tests_by_run = _paired_tests(section_rows, pairing, per_query, n_resamples, seed)
            rows += [_metric_row(split, mode, row, tests_by_run) for row in section_rows]

    rows, family = _holm(rows, alpha, holm_adjust)
    if family and 1.0 / (n_resamples + 1) * family >= alpha:
        notes.append(f"with {n_resamples} bootstrap resamples no difference can survive Holm over {family} "
                     f"tests; use more resamples")
    costs = tuple(_cost(d, m) for d, m in zip(dirs, all_metrics, strict=True))
    return Comparison(
        run_ids=tuple(d.name for d in dirs),
        costs=costs,
        rows=tuple(rows),
        curves=curves,
        notes=tuple(dict.fromkeys(notes)),
        split_mismatch=mismatch,
        ratios=_ratios(costs),
        n_resamples=n_resamples,
        alpha=alpha,
        family_size=family,
    )


def _load_runs(run_dirs: Sequence[str | os.PathLike[str]], baseline: int) -> tuple[list[Path], list[dict[str, Any]]]:
    """The run folders with the baseline first, and their metrics.json documents."""
    dirs = [Path(d) for d in run_dirs]
    if not MIN_RUNS <= len(dirs) <= MAX_RUNS:
        raise OfgrError(f"compare needs {MIN_RUNS} to {MAX_RUNS} runs, got {len(dirs)}")
    if not 0 <= baseline < len(dirs):
        raise OfgrError(f"baseline index {baseline} out of range for {len(dirs)} runs")
    dirs.insert(0, dirs.pop(baseline))
    all_metrics = [_checked_metrics(d) for d in dirs]  # a broken run is one line, never a shorter comparison
    return dirs, all_metrics


# a per-run row of one section: (level, metric, value per run, interval per run)
_SectionRow = tuple[str, str, tuple[float | None, ...], tuple[tuple[float, float] | None, ...]]


def _pairings(dirs: list[Path], sections: list[dict[str, Any] | None],
              per_query: list[dict[str, np.ndarray] | None], mismatch: tuple[str, ...]
              ) -> tuple[list[tuple[np.ndarray, np.ndarray] | None], list[tuple[int, str]]]:
    """Per run, the row alignment of its queries with the baseline's (None for the baseline itself).

    Returns:
        The alignments, and ``(run index, reason)`` for each run whose queries cannot be paired (its
        alignment is None).
    """
    pairing: list[tuple[np.ndarray, np.ndarray] | None] = [None]
    unpaired: list[tuple[int, str]] = []
    pq0 = per_query[0]
    for i in range(1, len(dirs)):
        why = None
        pqi = per_query[i]
        if dirs[i].name in mismatch:
            why = "different splits"
        elif sections[0] is None or sections[i] is None:
            why = "not evaluated in both runs"
        elif pq0 is None or pqi is None:
            why = "no per-query results"
        pair = None if why or pq0 is None or pqi is None else _aligned(pq0, pqi)
        if why is None and pair is None:
            why = "different query sets"
        if why:
            unpaired.append((i, why))
        pairing.append(pair)
    return pairing, unpaired


def _section_rows(sections: list[dict[str, Any] | None], ks: Sequence[int] | None
                  ) -> tuple[list[_SectionRow], dict[str, tuple[tuple[tuple[int, float], ...], ...]]]:
    """The table rows of one (mode, split) section and its Recall@K curves per level."""
    section_rows: list[_SectionRow] = []
    curves: dict[str, tuple[tuple[tuple[int, float], ...], ...]] = {}
    for level in LEVELS:
        blocks = [(s or {}).get(level) or {} for s in sections]
        cis = [((s or {}).get("ci95") or {}).get(level) or {} for s in sections]
        names = sorted({k for b in blocks for k in b if _table_metric(k, ks) and _num(b[k]) is not None},
                       key=_metric_order)
        for metric in names:
            section_rows.append((level, metric, tuple(_num(b.get(metric)) for b in blocks),
                                 tuple(_ci(c.get(metric)) for c in cis)))
        curve = []
        for b in blocks:
            pts = sorted(
                (int(m.group(1)), float(v))
                for k, v in b.items()
                if (m := _RECALL.match(k)) and _num(v) is not None
            )
            curve.append(tuple(pts))
        if any(curve):
            curves[level] = tuple(curve)
    if any(_num((s or {}).get(RCWF)) is not None for s in sections):
        section_rows.append(("both", RCWF, tuple(_num((s or {}).get(RCWF)) for s in sections),
                             tuple(_ci((s or {}).get(RCWF + "_ci95")) for s in sections)))
    return section_rows, curves


def _metric_row(split: str, mode: str, row: _SectionRow, tests_by_run: list[dict[str, PairedTest]]) -> MetricRow:
    """A table row with each run's delta to the baseline and its paired test (None where there is none)."""
    level, metric, values, ci = row
    key = RCWF if level == "both" else f"{level}_{metric}"
    deltas = tuple(None if i == 0 or v is None or values[0] is None else v - values[0] for i, v in enumerate(values))
    tests: list[Significance | None] = [None]
    for i in range(1, len(tests_by_run)):
        t = tests_by_run[i].get(key)
        tests.append(None if t is None else Significance(t.delta, t.ci, t.p_value, t.n_queries))
    return MetricRow(split, level, metric, values, ci, deltas, tuple(tests), mode)


def _paired_tests(section_rows: list[_SectionRow], pairing: list[tuple[np.ndarray, np.ndarray] | None],
                  per_query: list[dict[str, np.ndarray] | None], n_resamples: int, seed: int
                  ) -> list[dict[str, PairedTest]]:
    """Per run, the paired tests against the baseline of every row it can pair: one bootstrap per run pair."""
    from ofgr_core.retrieval.metrics import paired_bootstrap_tests

    tests_by_run: list[dict[str, PairedTest]] = [{}]
    for i in range(1, len(pairing)):
        pair, pq0, pqi = pairing[i], per_query[0], per_query[i]
        if pair is None or pq0 is None or pqi is None:
            tests_by_run.append({})
            continue
        keys = [RCWF if lv == "both" else f"{lv}_{mt}" for lv, mt, _, _ in section_rows]
        keys = [k for k in keys if k in pq0 and k in pqi]
        try:
            tests_by_run.append(paired_bootstrap_tests(
                {k: np.asarray(pqi[k], dtype=np.float64)[pair[1]] for k in keys},
                {k: np.asarray(pq0[k], dtype=np.float64)[pair[0]] for k in keys},
                n_resamples=n_resamples, seed=seed))
        except ValueError:
            tests_by_run.append({})
    return tests_by_run


def _holm(rows: list[MetricRow], alpha: float, adjust: Callable[[list[float]], list[float]]
          ) -> tuple[list[MetricRow], int]:
    where = [(r, i, t) for r, row in enumerate(rows) if row.metric in HEADLINE and row.level in LEVELS
             for i, t in enumerate(row.tests) if t is not None]
    if not where:
        return rows, 0
    adjusted = adjust([t.p_value for _, _, t in where])
    new_tests = [list(row.tests) for row in rows]
    for (r, i, t), p in zip(where, adjusted, strict=True):
        new_tests[r][i] = Significance(t.delta, t.ci, t.p_value, t.n_queries, p, p < alpha)
    out = [MetricRow(row.split, row.level, row.metric, row.values, row.ci, row.deltas, tuple(tests), row.mode)
           for row, tests in zip(rows, new_tests, strict=True)]
    return out, len(where)


def _ratios(costs: tuple[RunCost, ...]) -> tuple[Ratio, ...]:
    out = []
    base = costs[0]
    for c in costs[1:]:
        for quantity, attr in RATIO_QUANTITIES:
            v, b = getattr(c, attr), getattr(base, attr)
            if v and b and v > 0 and b > 0:
                out.append(Ratio(quantity, c.run_id, base.run_id, float(v), float(b)))
    return tuple(out)
