"""The embedded demo: fine-tuned CNN vs frozen CLIP vs frozen CLIP + head, on the built-in synthetic world.

``ofgr demo`` (and ``make demo``) runs, with no dataset and no downloads (``run_demo``):

1. ``prepare_clip``: the CLIP stand-in, a LiT model (ImageNet EfficientNet-Lite0 image tower, locked; text tower
   trained on a web-alt-text-like synthetic corpus), rebuilt from the shipped artifact
   (``ofgr_core.models.clip.standin``) into ``DATA_ROOT/clip-lit`` in a second. ``build_standin`` is how the
   artifact is made (``make clip-standin``); ``check_standin`` retrains the first epochs of its recipe and says
   whether this machine reproduces the artifact's training bit for bit.
2. the ``demo`` benchmark suite (``configs/benchmarks/demo.yaml``) through ``ofgr_core.workflows.bench``: the
   three runs on the same split, finished runs skipped.
3. what the runs are measured against: the raw-pixel baseline (32x32 mean-removed pixels of the same unseen
   images, same evaluation), the head's collapse (share of unseen pairs at cosine > 0.999), and attribute
   queries ("red pickup with roof rack": precision@10 against the manifest's colour, body type and accessory
   columns).
4. ``demo_gates``: what the stand-in must show (frozen above pixels, head above frozen, zero-shot coarse
   text -> image >= 0.8, colour + type queries); every figure is printed, passed or not.

CPU time (user + sys, this process and its children) is recorded per stage and per run, since wall time on a
shared machine says little. The stand-in is a model of CLIP, not CLIP: README "CLIP" says what it imitates.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ofgr_core.runs.events import Event, Log, StageFinished, StageStarted
from ofgr_core.runs.folder import RunFolder
from ofgr_core.runs.state import read_json

STANDIN_DIR = "clip-lit"  # under the data root; configs/demo_clip*.yaml point at local-dir:data/clip-lit
DEMO_FILE = "demo.json"  # in the runs folder: the table, the gates and the CPU times
PIXEL_SIZE = 32
COLLAPSE_COSINE = 0.999
COLLAPSE_MAX_SHARE = 0.001  # a head that maps more than 0.1% of unseen pairs onto one point has collapsed
TEXT_COARSE_GATE = 0.8
ATTRIBUTE_QUERY = ("red pickup with roof rack", {"color": "red", "coarse": "pickup", "accessory": "roof rack"})
ATTRIBUTE_GATE = 8  # of the named query's top 10 must be red pickups
COLOURS = ("red", "blue", "white", "black", "silver", "green", "yellow", "orange", "grey", "brown")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children (synthesis workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ------------------------------------------------------------------------------------------- stand-in
def _standin_corpus(work: Path, recipe: dict[str, dict[str, Any]]) -> Generator[Event, None, Path]:
    """The recipe's captioned corpus in ``work/corpus`` (reused when complete), as the ``corpus`` stage."""
    from ofgr_core.data import synthetic_corpus

    yield StageStarted("corpus")
    t0 = time.perf_counter()
    corpus = synthetic_corpus.generate_corpus(work / "corpus", **recipe["corpus"])
    yield StageFinished("corpus", time.perf_counter() - t0)
    return corpus


def build_standin(
    work_dir: str | os.PathLike[str], artifact_dir: str | os.PathLike[str] | None = None, *,
    recipe: dict[str, dict[str, Any]] | None = None, feature_cache: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Iterator[Event]:
    """Generate the captioned corpus, pretrain the LiT model on it and export the artifact (``make clip-standin``).

    Args:
        work_dir: holds ``corpus/`` and ``lit/`` (the full local-dir); both are reused when their specs match.
        artifact_dir: where ``standin.json`` and ``standin.safetensors`` go (default: the shipped artifact).
        recipe: ``STANDIN_RECIPE`` by default.
        feature_cache: feature cache root for the locked image tower.
        force: pretrain again even if ``work_dir/lit`` holds this recipe's result.
    """
    from ofgr_core.data import synthetic, synthetic_corpus
    from ofgr_core.embedding.features import cached_tower_features
    from ofgr_core.models.clip.pretrain import pretrain_clip
    from ofgr_core.models.clip.standin import ARTIFACT_DIR, STANDIN_RECIPE, export_standin

    recipe = recipe or STANDIN_RECIPE
    work = Path(work_dir)
    corpus = yield from _standin_corpus(work, recipe)
    yield from pretrain_clip(corpus, work / "lit", device="cpu", force=force,
                             tower_features=cached_tower_features(feature_cache), **recipe["pretrain"])
    spec = {"recipe": recipe, "corpus_sha256": synthetic_corpus.corpus_hash(corpus),
            "corpus_version": synthetic_corpus.CORPUS_VERSION, "synth_version": synthetic.SYNTH_VERSION}
    out = export_standin(work / "lit", artifact_dir or ARTIFACT_DIR, spec)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    yield Log(f"stand-in artifact: {out} ({size / 2**20:.1f} MiB)")


@dataclass(frozen=True)
class StandinCheck(Event):
    """The last event of ``check_standin``: how far a rebuild follows the artifact's training bit for bit."""

    type: ClassVar[str] = "standin_check"
    corpus_same: bool  # the recipe generated the corpus the artifact was trained on (same SHA-256)
    epochs: int  # epochs retrained
    schedule: int  # epochs of the recipe's schedule
    same_epochs: int  # leading epochs whose weights hash as the artifact's training recorded
    seconds: float

    @property
    def reproduced(self) -> bool:
        return self.corpus_same and self.same_epochs == self.epochs

    def line(self) -> str:
        """What the check found, in one line."""
        if not self.corpus_same:
            return "the recipe generated another corpus than the artifact's (generator or library versions differ)"
        if self.reproduced:
            return (f"this machine reproduces the stand-in's training bit for bit through epoch {self.epochs} of "
                    f"{self.schedule} ({self.seconds:.0f} s)")
        return (f"this machine's training leaves the artifact's at epoch {self.same_epochs + 1} of {self.schedule} "
                "(other CPU kernels or thread counts round differently): a full rebuild (make clip-standin) "
                "gives another artifact, which must then meet the demo's gates")


def check_standin(work_dir: str | os.PathLike[str], epochs: int, artifact_dir: str | os.PathLike[str] | None = None,
                  *, feature_cache: str | os.PathLike[str] | None = None) -> Iterator[Event]:
    """Regenerate the artifact's corpus and retrain the first ``epochs`` epochs of its recipe's schedule, nothing
    saved; compare with the weights' hashes its training recorded per epoch. Ends with ``StandinCheck``.

    Raises:
        ConfigError: ``epochs`` outside the recipe's schedule, or an artifact without per-epoch hashes.
    """
    from ofgr_core.common.errors import ConfigError
    from ofgr_core.data import synthetic_corpus
    from ofgr_core.embedding.features import cached_tower_features
    from ofgr_core.models.clip.pretrain import PretrainPrefix, pretrain_clip
    from ofgr_core.models.clip.standin import ARTIFACT_DIR, read_artifact

    t0 = time.perf_counter()
    art = Path(artifact_dir or ARTIFACT_DIR)
    meta = read_artifact(art)["ofgr"]
    recorded = meta.get("epoch_weights_sha256")
    recipe = meta["standin"]["recipe"]
    if not isinstance(recorded, list) or len(recorded) != recipe["pretrain"]["epochs"]:
        raise ConfigError(f"{art}: the artifact records no per-epoch weight hashes (built before they were); "
                          "rebuild it with make clip-standin")
    if not 1 <= epochs <= len(recorded):
        raise ConfigError(f"--check {epochs}: must be 1..{len(recorded)} (the epochs of the stand-in's recipe)")
    work = Path(work_dir)
    corpus = yield from _standin_corpus(work, recipe)
    if synthetic_corpus.corpus_hash(corpus) != meta["standin"]["corpus_sha256"]:
        yield StandinCheck(False, epochs, len(recorded), 0, time.perf_counter() - t0)
        return
    digests: list[str] = []
    for e in pretrain_clip(corpus, work / "lit-check", device="cpu",
                           tower_features=cached_tower_features(feature_cache), epochs_run=epochs,
                           **recipe["pretrain"]):
        if isinstance(e, PretrainPrefix):
            digests = e.digests
        else:
            yield e
    same = next((i for i, (a, b) in enumerate(zip(digests, recorded, strict=False)) if a != b), len(digests))
    yield StandinCheck(True, epochs, len(recorded), same, time.perf_counter() - t0)


def prepare_clip(data_root: str | os.PathLike[str] = "data",
                 artifact_dir: str | os.PathLike[str] | None = None) -> Iterator[Event]:
    """The stand-in as ``DATA_ROOT/clip-lit`` (a ``local-dir:``), rebuilt from the shipped artifact if needed."""
    from ofgr_core.models.clip.standin import ARTIFACT_DIR, materialize_standin

    yield StageStarted("clip stand-in")
    t0 = time.perf_counter()
    out = materialize_standin(Path(data_root) / STANDIN_DIR, artifact_dir or ARTIFACT_DIR)
    yield StageFinished("clip stand-in", time.perf_counter() - t0)
    yield Log(f"CLIP stand-in: local-dir:{out}")


# ------------------------------------------------------------------------------------------ measurements
def _ci(block: dict[str, Any], level: str) -> list[float] | None:
    ci = (block.get("ci95") or {}).get(level, {}).get("recall@1")
    return [float(ci[0]), float(ci[1])] if isinstance(ci, list | tuple) and len(ci) == 2 else None


def _embedding_table(run_dir: Path, split: str) -> list[dict[str, str]]:
    with open(RunFolder(run_dir).embeddings_csv(split), newline="") as f:
        return list(csv.DictReader(f))


def pixel_baseline(run_dir: str | os.PathLike[str], *, split: str = "unseen", size: int = PIXEL_SIZE) -> dict[str, Any]:
    """Raw pixels of a run's ``split`` images (``size`` x ``size``, mean-removed) through the same evaluation.

    The images, labels, cut-offs, bootstrap and seed are the run's, so its intervals are comparable.

    Returns:
        ``{"fine": R@1, "fine_ci": [lo, hi], "coarse": ..., "coarse_ci": ..., "n": queries, "size": size}``.
    """
    from PIL import Image

    from ofgr_core.config import load_config
    from ofgr_core.data.decode import open_rgb
    from ofgr_core.retrieval.evaluate import evaluate_embeddings

    run = Path(run_dir)
    cfg = load_config(RunFolder(run).config)
    rows = _embedding_table(run, split)
    pixels = np.empty((len(rows), size * size * 3), np.float32)
    for i, r in enumerate(rows):
        img = open_rgb(r["path"]).resize((size, size), Image.Resampling.BOX)
        pixels[i] = np.asarray(img, np.float32).reshape(-1)
    pixels -= pixels.mean(axis=0, keepdims=True)
    table = {"fine": [r["fine"] for r in rows], "id": [r["id"] for r in rows]}
    if rows and "coarse" in rows[0]:
        table["coarse"] = [r["coarse"] for r in rows]
    block = next(iter(evaluate_embeddings(pixels, table, cfg.eval, seed=cfg.seed).values()))
    out: dict[str, Any] = {"size": size, "n": len(rows)}
    for level in ("fine", "coarse"):
        out[level] = (block.get(level) or {}).get("recall@1")
        out[f"{level}_ci"] = _ci(block, level)
    return out


def collapse_share(embeddings: np.ndarray, threshold: float = COLLAPSE_COSINE) -> float:
    """Share of distinct pairs whose cosine similarity exceeds ``threshold`` (1.0: everything on one point)."""
    x = np.asarray(embeddings, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    if n < 2:
        return 0.0
    above = 0
    for a in range(0, n, 1024):
        sims = x[a : a + 1024] @ x.T
        rows = np.arange(a, min(a + 1024, n))[:, None]
        above += int(((sims > threshold) & (np.arange(n)[None, :] > rows)).sum())
    return above / (n * (n - 1) / 2)


def _manifest_attributes(run_dir: Path) -> dict[str, dict[str, str]]:
    """``{absolute image path: manifest row}`` of the run's synthetic world (colour, body type, accessory)."""
    from ofgr_core.config import load_config

    cfg = load_config(RunFolder(run_dir).config)
    out: dict[str, dict[str, str]] = {}
    for source in cfg.data.sources:
        root = getattr(source, "root", None)
        manifest = Path(root) / "manifest.csv" if root else None
        if manifest is None or not manifest.is_file():
            continue
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                out[str((manifest.parent / row["path"]).resolve())] = row
    return out


def _type_word(coarse: str) -> str:
    return "SUV" if coarse == "suv" else coarse


def attribute_queries(run_dir: str | os.PathLike[str], *, split: str = "unseen", k: int = 10) -> dict[str, Any]:
    """Colour + body type text queries (``ofgr query RUN --text``) scored against the manifest's columns.

    Returns:
        ``{"space", "colour_type_p@10": mean precision over every colour x body type present, "n_queries",
        "named": {"query", "colour_type": hits of the named query's colour and type in its top k,
        "with_accessory": hits that also carry its accessory, "in_gallery": images with all three}}``.
    """
    from ofgr_core.retrieval.query import query_run

    run = Path(run_dir)
    attrs = _manifest_attributes(run)
    gallery = [attrs.get(str(Path(r["path"]).resolve())) for r in _embedding_table(run, split)]
    if not gallery or any(g is None for g in gallery):
        return {"error": "no manifest with colour/accessory columns for this run's images"}
    present = sorted({(g["color"], g["coarse"]) for g in gallery if g})
    precisions = []
    space = None
    for colour, coarse in present:
        res = query_run(run, text=f"a {colour} {_type_word(coarse)}", k=k, split=split)
        space = res.space
        got = [attrs.get(str(Path(h.path).resolve())) or {} for h in res.results]
        precisions.append(sum(g.get("color") == colour and g.get("coarse") == coarse for g in got) / k)
    text, want = ATTRIBUTE_QUERY
    res = query_run(run, text=text, k=k, split=split)
    got = [attrs.get(str(Path(h.path).resolve())) or {} for h in res.results]
    both = [g.get("color") == want["color"] and g.get("coarse") == want["coarse"] for g in got]
    return {
        "space": space or res.space, "k": k, "n_queries": len(precisions),
        "colour_type_p@10": float(np.mean(precisions)) if precisions else None,
        "named": {"query": text, "colour_type": int(sum(both)),
                  "with_accessory": int(sum(b and g.get("accessory") == want["accessory"]
                                            for b, g in zip(both, got, strict=True))),
                  "in_gallery": int(sum(g is not None and all(g.get(c) == v for c, v in want.items())
                                        for g in gallery))},
    }


# -------------------------------------------------------------------------------------------- summary
def _ci_half(block: dict[str, Any], level: str) -> float | None:
    ci = _ci(block, level)
    return (ci[1] - ci[0]) / 2 if ci else None


def summary_rows(run_dirs: list[Path], names: list[str]) -> list[dict[str, Any]]:
    """One row per run: unseen fine/coarse R@1 (with CIs), text -> image R@1, parameters, times."""
    rows = []
    for run_dir, name in zip(run_dirs, names, strict=True):
        m = read_json(RunFolder(run_dir).metrics) or {}
        unseen = m.get("unseen") or {}
        timings = m.get("timings") or {}
        model = m.get("model") or {}
        t2i = (unseen.get("text_to_image") or {})
        space = t2i.get("space_for_free_text")
        t2i_block = t2i.get(space) if space else None
        raw_block = t2i.get("raw") or {}
        rows.append({
            "name": name,
            "run_id": run_dir.name,
            "model": f"{model.get('kind', '?')}:{model.get('name', '?')}",
            "fine_r1": (unseen.get("fine") or {}).get("recall@1"),
            "fine_ci": _ci_half(unseen, "fine"),
            "fine_ci95": _ci(unseen, "fine"),
            "coarse_r1": (unseen.get("coarse") or {}).get("recall@1"),
            "coarse_ci": _ci_half(unseen, "coarse"),
            "text_coarse_r1": ((t2i_block or {}).get("coarse") or {}).get("recall@1"),
            "text_fine_r1": ((t2i_block or {}).get("fine") or {}).get("recall@1"),
            "text_raw_coarse_r1": (raw_block.get("coarse") or {}).get("recall@1"),
            "text_raw_fine_r1": (raw_block.get("fine") or {}).get("recall@1"),
            "text_space": space,
            "trained_params": model.get("trainable_params"),
            "fit_seconds": sum(float(timings.get(k, 0.0)) for k in ("features", "train")),
            "run_seconds": sum(float(v) for v in timings.values()),
            "warnings": [str(w) for w in m.get("warnings") or [] if isinstance(w, str)],  # degenerate results
        })
    return rows


def verdict(rows: list[dict[str, Any]]) -> str:
    """Which run has the best unseen fine R@1, and whether its interval separates it from the runner-up."""
    scored = [r for r in rows if r["fine_r1"] is not None]
    if len(scored) < 2:
        return ""
    best, second = sorted(scored, key=lambda r: -r["fine_r1"])[:2]
    gap = best["fine_r1"] - second["fine_r1"]
    ci = (best["fine_ci"] or 0) + (second["fine_ci"] or 0)
    sure = "clearly ahead of" if gap > ci else "but within the 95% intervals of"
    fit = ""
    if best.get("fit_cpu_seconds") and second.get("fit_cpu_seconds"):
        fit = f"; fit {best['fit_cpu_seconds']:.0f} vs {second['fit_cpu_seconds']:.0f} CPU s"
    return (f"best unseen fine R@1: {best['name']} ({100 * best['fine_r1']:.1f}%), {sure} "
            f"{second['name']} ({100 * second['fine_r1']:.1f}%){fit}")


@dataclass(frozen=True)
class Gate:
    """One thing the stand-in must show, with the figures it was judged on."""

    name: str
    passed: bool
    detail: str


def _above(a: list[float] | None, b: list[float] | None) -> bool:
    """Interval ``a`` lies entirely above interval ``b``."""
    return a is not None and b is not None and a[0] > b[1]


def _fmt_ci(x: float | None, ci: list[float] | None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def demo_gates(by_name: dict[str, dict[str, Any]], pixels: dict[str, Any], collapse: float | None,
               attributes: dict[str, Any] | None) -> list[Gate]:
    """The stand-in's gates on unseen classes (see the module docstring)."""
    frozen, head = by_name.get("clip_frozen") or {}, by_name.get("clip_head") or {}
    gates = [
        Gate("frozen CLIP above raw pixels", _above(frozen.get("fine_ci95"), pixels.get("fine_ci")),
             f"fine R@1 {_fmt_ci(frozen.get('fine_r1'), frozen.get('fine_ci95'))} vs pixels "
             f"{PIXEL_SIZE}x{PIXEL_SIZE} {_fmt_ci(pixels.get('fine'), pixels.get('fine_ci'))}"),
        Gate("CLIP + head above frozen, no collapse",
             _above(head.get("fine_ci95"), frozen.get("fine_ci95")) and collapse is not None
             and collapse <= COLLAPSE_MAX_SHARE,
             f"fine R@1 {_fmt_ci(head.get('fine_r1'), head.get('fine_ci95'))} vs "
             f"{_fmt_ci(frozen.get('fine_r1'), frozen.get('fine_ci95'))}; unseen pairs at cosine > "
             f"{COLLAPSE_COSINE}: {'-' if collapse is None else f'{100 * collapse:.3f}%'}"),
    ]
    t2i = frozen.get("text_raw_coarse_r1")
    gates.append(Gate(f"zero-shot text->image coarse R@1 >= {TEXT_COARSE_GATE}",
                      t2i is not None and t2i >= TEXT_COARSE_GATE,
                      f"{'-' if t2i is None else f'{t2i:.3f}'} (chance {1 / 6:.3f} with 6 body types)"))
    named = (attributes or {}).get("named") or {}
    p10 = (attributes or {}).get("colour_type_p@10")
    gates.append(Gate(f"'{ATTRIBUTE_QUERY[0]}': >= {ATTRIBUTE_GATE} red pickups in the top 10",
                      named.get("colour_type", -1) >= ATTRIBUTE_GATE,
                      f"{named.get('colour_type', '-')} red pickups ({named.get('with_accessory', '-')} with a roof "
                      f"rack; {named.get('in_gallery', '-')} in the gallery); colour+type precision@10 over "
                      f"{(attributes or {}).get('n_queries', 0)} queries: {'-' if p10 is None else f'{p10:.2f}'}"))
    return gates


# ------------------------------------------------------------------------------------------------ demo
@dataclass
class DemoResult:
    """What ``run_demo`` measured; ``to_dict`` is ``runs/demo.json``."""

    rows: list[dict[str, Any]]
    pixels: dict[str, Any]
    collapse: float | None
    attributes: dict[str, Any] | None
    gates: list[Gate]
    cpu: dict[str, Any] = field(default_factory=dict)
    fit_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "pixels": self.pixels, "collapse_share": self.collapse,
                "attributes": self.attributes, "gates": [g.__dict__ for g in self.gates], "cpu_seconds": self.cpu,
                "clip_fit_over_cnn_fit": self.fit_ratio}


class _CpuMeter:
    """CPU seconds per demo stage and, inside the suite, per run and per pipeline stage (from its events)."""

    def __init__(self) -> None:
        self.totals: dict[str, Any] = {}
        self._run: str | None = None
        self._run_t0 = 0.0
        self._stage_t0: dict[str, float] = {}

    def stage(self, name: str, t0: float) -> None:
        self.totals[name] = round(cpu_seconds() - t0, 2)

    def __call__(self, e: Event) -> None:
        now = cpu_seconds()
        if e.type == "run_started":
            self._run, self._run_t0 = str(getattr(e, "name", "run")), now
            self.totals.setdefault("runs", {})[self._run] = {"stages": {}}
        elif self._run is not None and e.type == "stage_started":
            self._stage_t0[str(getattr(e, "stage", ""))] = now
        elif self._run is not None and e.type == "stage_finished":
            stage = str(getattr(e, "stage", ""))
            if stage in self._stage_t0:
                stages = self.totals["runs"][self._run]["stages"]
                stages[stage] = round(stages.get(stage, 0.0) + now - self._stage_t0.pop(stage), 2)
        elif self._run is not None and e.type in ("run_finished", "run_failed", "run_interrupted"):
            self.totals["runs"][self._run]["total"] = round(now - self._run_t0, 2)
            self._run = None

    def fit(self, run: str, stages: tuple[str, ...] = ("features", "train")) -> float:
        got = ((self.totals.get("runs") or {}).get(run) or {}).get("stages") or {}
        return float(sum(got.get(s, 0.0) for s in stages))


def add_fit_cpu(rows: list[dict[str, Any]], meter: _CpuMeter) -> float | None:
    """Each row's fit CPU seconds (``fit_cpu_seconds``) and its share of the CNN's (``fit_vs_cnn``).

    CLIP + head's fit is the frozen tower's feature extraction (done once, by ``clip_frozen``: the head run
    reads the cache) plus the head's own stages; the returned ratio is that fit over the CNN's.
    """
    ran = meter.totals.get("runs") or {}
    for r in rows:
        r["fit_cpu_seconds"] = round(meter.fit(r["name"]), 2) if r["name"] in ran else None
    head = next((r for r in rows if r["name"] == "clip_head"), None)
    if head is not None and head["fit_cpu_seconds"] is not None and "clip_frozen" in ran:
        head["fit_cpu_seconds"] = round(meter.fit("clip_frozen", ("features",)) + head["fit_cpu_seconds"], 2)
    cnn = next((r["fit_cpu_seconds"] for r in rows if r["name"] == "cnn_finetuned"), None)
    for r in rows:
        r["fit_vs_cnn"] = r["fit_cpu_seconds"] / cnn if cnn and r["fit_cpu_seconds"] is not None else None
    return head["fit_vs_cnn"] if head is not None else None


def run_demo(
    runs_dir: str | os.PathLike[str], data_root: str | os.PathLike[str] = "data", *,
    overrides: list[str] | tuple[str, ...] = (), emit: Callable[[Event], None] = lambda e: None,
    suite: str = "demo", artifact_dir: str | os.PathLike[str] | None = None,
) -> DemoResult:
    """The whole demo (module docstring): stand-in, the suite, the baselines and gates; writes ``runs/demo.json``."""
    from ofgr_core.workflows.bench import load_suite, run_suite

    meter = _CpuMeter()

    def both(e: Event) -> None:
        meter(e)
        emit(e)

    t0 = cpu_seconds()
    for e in prepare_clip(data_root, artifact_dir):
        emit(e)
    meter.stage("clip stand-in", t0)
    spec = load_suite(suite)
    t0 = cpu_seconds()
    result = run_suite(spec, runs_dir, data_root=data_root, overrides=list(overrides), emit=both, write_report=False)
    meter.stage("suite", t0)
    names = [r.name for r in spec.runs]
    run_of = dict(zip(names, result.run_dirs, strict=True))
    rows = summary_rows(result.run_dirs, names)
    by_name = {r["name"]: r for r in rows}

    emit(StageStarted("baselines"))
    t0, w0 = cpu_seconds(), time.perf_counter()
    first = result.run_dirs[0]
    pixels = pixel_baseline(first)
    collapse = None
    if "clip_head" in run_of:
        collapse = collapse_share(np.load(RunFolder(run_of["clip_head"]).embeddings_npy("unseen")))
    attributes = attribute_queries(run_of["clip_frozen"]) if "clip_frozen" in run_of else None
    meter.stage("baselines and attribute queries", t0)
    emit(StageFinished("baselines", time.perf_counter() - w0))

    gates = demo_gates(by_name, pixels, collapse, attributes)
    clip_fit = add_fit_cpu(rows, meter)
    out = DemoResult(rows, pixels, collapse, attributes, gates, meter.totals, clip_fit)
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    (Path(runs_dir) / DEMO_FILE).write_text(json.dumps(out.to_dict(), indent=1, default=str) + "\n")
    return out


__all__ = ["DEMO_FILE", "STANDIN_DIR", "DemoResult", "Gate", "StandinCheck", "attribute_queries", "build_standin",
           "check_standin", "collapse_share", "cpu_seconds", "demo_gates", "pixel_baseline", "prepare_clip",
           "run_demo", "summary_rows", "verdict"]
