"""The end-to-end run: data -> split -> model -> [features] -> train (fit) -> embed -> evaluate -> report.

``run_pipeline`` is what ``ofgr run`` / ``ofgr resume`` (and so the TUI) execute. It composes small stage
functions over a ``RunContext``; how the model trains comes from the model's capabilities
(``ofgr_core.train.fit.create_fitter``: end-to-end fine-tuning, or a head on cached frozen-tower features),
and the strategy's own flags decide the stages it needs. It reports through an ``emit(event)`` callback; the
front ends decide how events look.

What it writes: the run folder (docs/run-folder.md; ``metrics.json`` follows ``ofgr_core.runs.metrics``), and
outside it the shared caches: the frozen-tower feature cache (``data.feature_cache``) and the data layer's
decoded-image cache (``data.cache_dir``), plus a synthetic world when ``data.sources`` names one that does not
exist yet.
"""

from __future__ import annotations

import csv
import time
import traceback
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ofgr_core.common.atomic import atomic_write_json, atomic_writer
from ofgr_core.common.errors import DataError, OfgrError
from ofgr_core.common.memory import release_freed_memory
from ofgr_core.config import Config
from ofgr_core.runs.eventlog import EventWriter
from ofgr_core.runs.events import (
    EvalResult,
    Event,
    Log,
    RateMeter,
    RunFailed,
    RunFinished,
    RunInterrupted,
    StageFinished,
    StageProgress,
    StageStarted,
)
from ofgr_core.runs.folder import RunFolder
from ofgr_core.runs.metrics import (
    SELECTED_UNTRAINED,
    TEXT_TO_IMAGE,
    DataBlock,
    FitBlock,
    ModelBlock,
    RunMetrics,
    TrainBlock,
)
from ofgr_core.runs.state import stop_reason
from ofgr_core.runs.stop import StopRequested, check_stop
from ofgr_core.workflows.checks import EtaLine, flag_degenerate, memory_preflight

if TYPE_CHECKING:  # the model, data and training modules import torch: the stages import them when they run
    from ofgr_core.data.base import DatasetTable
    from ofgr_core.data.dataset import PreparedData
    from ofgr_core.data.labels import Hierarchy
    from ofgr_core.data.splits import Split
    from ofgr_core.models.base import Encoder
    from ofgr_core.retrieval.evaluate import SplitResult
    from ofgr_core.train.ddp import DistInfo
    from ofgr_core.train.fit import FitInputs, Fitter
    from ofgr_core.train.loop import TrainResult

Emit = Callable[[Event], None]
T = TypeVar("T")
HEADLINE = ("recall@1", "recall@5", "recall@10", "map@r")


class _Stage:
    """Times a stage and emits its start/finish events; with ``stop``, a stop request ends it (before it
    starts, or at its next progress report) by raising :class:`StopRequested`. The memory the stage's work left
    free goes back to the OS when it ends (``release_freed_memory``), counted in its time."""

    def __init__(self, name: str, emit: Emit, timings: dict[str, float], total: int | None = None,
                 stop: Callable[[], bool] | None = None) -> None:
        self.name, self.emit, self.timings, self.total, self.stop = name, emit, timings, total, stop
        self.meter = RateMeter()

    def __enter__(self) -> _Stage:
        check_stop(self.stop, self.name, "before")
        self.t0 = time.perf_counter()
        self.emit(StageStarted(stage=self.name, total=self.total))
        return self

    def progress(self, done: int, total: int | None = None) -> None:
        rate, eta = self.meter(done, total)
        self.emit(StageProgress(stage=self.name, done=done, total=total, rate=rate, eta_s=eta))
        check_stop(self.stop, self.name)

    def __exit__(self, exc_type: object, *_: object) -> None:
        release_freed_memory()
        if exc_type is None:
            dt = time.perf_counter() - self.t0
            self.timings[self.name] = self.timings.get(self.name, 0.0) + dt
            self.emit(StageFinished(stage=self.name, seconds=dt))


def _drain(gen: Generator[Event, None, T], emit: Emit) -> T:
    """Forward a generator's events to ``emit`` and return its return value."""
    while True:
        try:
            emit(next(gen))
        except StopIteration as stop:
            value: T = stop.value
            return value


def write_embedding_rows(run_dir: Path, split: str, rows: list[dict[str, str]]) -> None:
    """``embeddings/<split>.csv``: the item behind each row of ``<split>.npy``."""
    fields = list(rows[0]) if rows else ["id", "path", "fine", "coarse"]
    with atomic_writer(RunFolder(run_dir).embeddings_csv(split), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def save_per_query(result: SplitResult, path: Path) -> None:
    """Per-query metric arrays (``ids`` + ``<level>_<metric>``) for paired tests between runs."""
    arrays = {"ids": np.asarray(result.query_ids).astype(str)}
    for level, per_metric in result.per_query.items():
        for metric, values in per_metric.items():
            arrays[f"{level}_{metric}" if level != "_" else metric] = np.asarray(values)
    with atomic_writer(path) as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # mypy: **arrays may fill allow_pickle


def count_flops_per_image(model: Encoder, image_size: int, device: str) -> float | None:
    """Forward FLOPs for one image (torch's FLOP counter); training compute ~ 3x forward per image."""
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        was_training = model.training
        model.eval()
        x = torch.zeros(2, 3, image_size, image_size, device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        model.train(was_training)
        return float(counter.get_total_flops()) / 2
    except Exception:  # compute accounting must never fail a run
        return None


@dataclass
class RunContext:
    """What the stages share: the config, the run folder, event sinks, timings and the distributed setup."""

    cfg: Config
    folder: RunFolder
    emit: Emit
    timings: dict[str, float]
    dist: DistInfo
    stop: Callable[[], bool]
    resume: bool
    _stop_noted: bool = False

    @property
    def main(self) -> bool:
        return bool(self.dist.is_main)

    def emit_main(self, event: Event) -> None:
        if self.main:
            self.emit(event)

    def stage(self, name: str, total: int | None = None, *, all_ranks: bool = False) -> _Stage:
        stop: Callable[[], bool] | None = self.stop
        if self.dist.enabled:
            # under torchrun the ranks agree on a stop inside the training loop only: one rank leaving a
            # stage elsewhere would leave the others waiting at a barrier. Say so instead of ignoring it.
            stop = None
            if self.main and not self._stop_noted and self.stop():
                self._stop_noted = True
                self.emit(Log(f"stop requested: under torchrun a stop takes effect during training only; "
                              f"{name} and the stages after it run to the end", level="warning"))
        return _Stage(name, self.emit if all_ranks else self.emit_main, self.timings, total, stop)


def stage_data(ctx: RunContext) -> PreparedData:
    """Load, check and de-duplicate every source (rank 0 first: it may generate data or fill caches)."""
    from ofgr_core.data.dataset import load_dataset
    from ofgr_core.train.ddp import barrier

    with ctx.stage("data") as st:
        if ctx.main:
            prepared = load_dataset(ctx.cfg.data, progress=st.progress)
        barrier(ctx.dist)
        if not ctx.main:
            prepared = load_dataset(ctx.cfg.data)
        rep = prepared.report
        if ctx.main:
            atomic_write_json(ctx.folder.data_report, rep)
            if rep.get("unreadable"):
                ctx.emit(Log(f"skipped {len(rep['unreadable'])} unreadable images "
                             f"(listed in {ctx.folder.data_report.name})", level="warning"))
            for w in rep.get("warnings", []):
                ctx.emit(Log(str(w), level="warning"))
            hier = prepared.hierarchy
            ctx.emit(Log(f"{len(prepared.table)} images, {hier.num_classes(0)} fine / "
                         f"{hier.num_classes(1) if len(hier.level_names) > 1 else 0} coarse classes"))
    return prepared


def stage_split(ctx: RunContext, prepared: PreparedData) -> Split:
    """The class-disjoint open-set split (reused from split.json on resume)."""
    from ofgr_core.data.splits import make_split, read_split, save_split

    cfg, table = ctx.cfg, prepared.table
    with ctx.stage("split"):
        if ctx.resume and ctx.folder.split.is_file():
            split = read_split(ctx.folder.split, table)
        else:
            split = make_split(table, prepared.hierarchy, prepared.labels, cfg.split, cfg.seed, ks=cfg.eval.ks)
            if ctx.main:
                save_split(split, table, ctx.folder.split)
                prepared.report["split"] = split.report
                atomic_write_json(ctx.folder.data_report, prepared.report)
                for w in split.report.get("warnings", []):
                    ctx.emit(Log(f"split: {w}", level="warning"))
        if ctx.main:
            c = {p: len(v) for p, v in split.indices.items()}
            ctx.emit(Log(f"split {split.protocol}: {len(split.classes['train'])} train / "
                         f"{len(split.classes['val'])} val / {len(split.classes['unseen'])} unseen fine classes; "
                         f"images {c}"))
    return split


def content_digests(table: DatasetTable) -> list[str]:
    """Each image's content hash (from the data stage's check; hashed here when the check was skipped)."""
    from ofgr_core.embedding.features import file_digest

    known = table.meta.get("content_hash", {})
    return [known.get(i) or file_digest(p) for i, p in zip(table.ids, table.paths, strict=True)]


@dataclass
class Fit:
    """The model stage's outcome: the encoder, how it trains, what the fit gets from the run."""

    model: Encoder
    fitter: Fitter
    inp: FitInputs
    provenance: dict[str, Any]
    info: dict[str, Any]  # metrics.json's ``fit`` block
    forward_flops: float | None = None  # per image, counted before training for strategies that train the tower
    checks: dict[str, Any] = field(default_factory=dict)  # the memory plan (workflows/checks.py)


def run_pipeline(
    cfg: Config,
    run_dir: Path,
    emit: Emit,
    *,
    stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
) -> dict[str, Any] | None:
    """Execute a whole run: data -> split -> model -> [features] -> train (the fit) -> embed -> evaluate ->
    report.

    Returns metrics (rank 0), or None on other ranks. A stop request raises :class:`StopRequested`
    naming the stage it was seen in (``execute_run`` turns it into ``run_interrupted``).
    """
    import torch

    from ofgr_core.retrieval.shard import current_shard
    from ofgr_core.train.ddp import barrier, init_distributed, resolve_device

    dist_info = init_distributed(cfg.device)
    resolve_device(cfg.device, dist_info)  # before any work: device=mps on a build without MPS is one line
    ctx = RunContext(cfg, RunFolder(run_dir), emit, {}, dist_info, stop, resume)
    torch.manual_seed(cfg.seed)

    prepared = stage_data(ctx)
    split = stage_split(ctx, prepared)
    fit = stage_model(ctx, prepared, split)
    stage_features(ctx, fit, split)
    result = stage_train(ctx, fit, prepared)
    barrier(dist_info)
    # under torchrun every rank takes part in the evaluation: rank 0 embeds (streamed to disk), then each
    # rank searches its share of the queries (ofgr_core.retrieval.shard) and rank 0 alone writes, the same
    # files as one process would
    shard = current_shard() if dist_info.enabled else None
    if not ctx.main and shard is None:
        return None
    splits_out = stage_evaluate(ctx, fit, result, prepared, split, shard)
    if not ctx.main:
        return None
    if "unseen" not in splits_out:  # the headline metric: a run without it has not produced its result
        raise DataError(f"the unseen split could not be evaluated ({len(split.indices['unseen'])} images, "
                        f"query protocol {cfg.split.query}); see the warnings above and split.json")
    run_warnings = [*fit.checks.get("warnings", []), *(w for b in splits_out.values() for w in b.pop("_warnings", []))]
    with ctx.stage("report", all_ranks=True):
        metrics = run_metrics(ctx, fit, result, prepared, split, splits_out)
        metrics.warnings, metrics.memory_plan = run_warnings, fit.checks.get("plan")
    metrics.timings = dict(ctx.timings)  # with the report stage's own time
    doc = metrics.to_dict()
    atomic_write_json(ctx.folder.metrics, doc)
    return doc


def stage_model(ctx: RunContext, prepared: PreparedData, split: Split) -> Fit:
    """Build the encoder with its transforms on the run's device and precision, and its fit strategy."""
    from ofgr_core.models.factory import create_model_and_transforms
    from ofgr_core.models.precision import resolve_autocast
    from ofgr_core.train.ddp import resolve_device
    from ofgr_core.train.fit import FitInputs, create_fitter

    cfg, folder = ctx.cfg, ctx.folder
    device = resolve_device(cfg.device, ctx.dist)
    model, train_tf, eval_tf = create_model_and_transforms(cfg.model, image_size=cfg.data.image_size,
                                                           crop_scale=cfg.data.crop_scale)
    model.autocast_dtype = resolve_autocast(cfg.model.precision, cfg.train.amp, device)
    provenance = model.provenance() if ctx.main else {}  # what was loaded, before anything trains
    fitter = create_fitter(model)
    size = cfg.data.image_size or int(model.data_config["input_size"][-1])
    checks = memory_preflight(cfg, model, device, image_size=size, emit=ctx.emit_main, max_rows=len(prepared.table),
                              trains_images=fitter.trains_tower and cfg.train.epochs > 0)
    last = folder.checkpoint("last")
    inp = FitInputs(
        cfg=cfg, model=model, train_transform=train_tf, eval_transform=eval_tf, device=device,
        paths=prepared.table.paths, digests=content_digests(prepared.table) if fitter.caches_tower_features else [],
        labels=prepared.labels, train_rows=np.asarray(split.indices["train"]),
        val_rows=np.asarray(split.indices["val"]), ckpt_dir=folder.checkpoints, dist_info=ctx.dist, stop=ctx.stop,
        resume_from=last if ctx.resume and last.is_file() else None,
    )
    # counted on the CPU before the model moves: training compute is ~3x forward per image
    flops = count_flops_per_image(model, size, "cpu") if ctx.main and fitter.trains_tower else None
    return Fit(model, fitter, inp, provenance, {"strategy": fitter.name}, flops, checks)


def stage_features(ctx: RunContext, fit: Fit, split: Split) -> None:
    """A strategy that caches the frozen tower's features computes them once, for every row it will use."""
    if not fit.fitter.caches_tower_features:
        return
    inp = fit.inp
    parts = [np.asarray(split.indices[p]) for p in ctx.cfg.eval.splits if len(split.indices[p]) >= 2]
    rows = np.concatenate([inp.train_rows, inp.val_rows, *parts])
    with ctx.stage("features", total=len(np.unique(rows)), all_ranks=False) as st:
        fit.info["features"] = f = fit.fitter.prepare(inp, rows, progress=st.progress)
    ctx.emit_main(Log(f"tower features: {f['hits']} cached, {f['computed']} computed ({f['cache']})"))
    for note in f.pop("notes", []):  # a damaged feature cache, rebuilt or repaired
        ctx.emit_main(Log(note, level="warning"))


def stage_train(ctx: RunContext, fit: Fit, prepared: PreparedData) -> TrainResult:
    """The fit (an event generator), or, with nothing to train, the encoder as it is."""
    import warnings

    from ofgr_core.losses import create_loss
    from ofgr_core.samplers import create_sampler
    from ofgr_core.train.fit import train_labels

    cfg, inp, model = ctx.cfg, fit.inp, fit.model
    with ctx.stage("train", total=cfg.train.epochs):
        if not fit.fitter.trains_anything(inp):
            return untrained(ctx, fit, prepared)
        t_labels, n_train_fine = train_labels(prepared.labels, inp.train_rows)
        loss_fn = create_loss(cfg.loss, num_classes=n_train_fine, embed_dim=model.embed_dim)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sampler = create_sampler(cfg.sampler, t_labels, seed=cfg.seed, rank=ctx.dist.rank,
                                     world_size=ctx.dist.world_size)
        for w in caught:
            ctx.emit_main(Log(str(w.message), level="warning"))
        result = _drain(fit.fitter.fit(inp, loss_fn, sampler), EtaLine(ctx.emit_main, cfg.train.epochs))
        if result.stopped:  # raised inside the stage: a stopped training did not finish
            raise StopRequested("train")
        return result


def untrained(ctx: RunContext, fit: Fit, prepared: PreparedData) -> TrainResult:
    """Nothing to train: the untrained encoder's validation score, and ``best.pt`` holding it when its weights
    source cannot rebuild it (a random-init tower, an untrained head), so queries and ``--run`` get it back."""
    from ofgr_core.runs.checkpoint import save_checkpoint
    from ofgr_core.train.loop import TrainResult, validate

    inp = fit.inp
    result = TrainResult(best_path=None, last_path=None, best_epoch=0, best_val=None, epochs_done=0, seconds=0.0,
                         images_seen=0, stopped=False, history=[], selection=SELECTED_UNTRAINED)
    if not ctx.main:
        return result
    if len(inp.val_rows) >= 2:  # the untrained model's score on the same validation set
        result.best_val = validate(fit.fitter.embed(inp, inp.val_rows), prepared.labels[inp.val_rows])["recall@1"]
    ctx.emit(Log("nothing to train (train.epochs=0 or no trainable parameters): evaluating the encoder as it is"))
    state = fit.model.trainable_state_dict()
    if state:
        save_checkpoint(ctx.folder.checkpoint("best"), {"model": state, "epoch": -1, "val": {},
                                                        "selection": SELECTED_UNTRAINED,
                                                        "config": ctx.cfg.model_dump(mode="json")})
    return result


def stage_evaluate(ctx: RunContext, fit: Fit, result: TrainResult, prepared: PreparedData, split: Split,
                   shard: Any) -> dict[str, dict[str, Any]]:
    """The kept model embeds each evaluated split (rank 0, streamed to ``embeddings/``), then every rank
    searches its share of the queries; image -> image metrics, and text -> image for text-capable models."""
    from ofgr_core.runs.checkpoint import load_checkpoint
    from ofgr_core.train.ddp import barrier

    model, folder, table = fit.model, ctx.folder, prepared.table
    if result.best_path is not None and ctx.main:
        best = load_checkpoint(result.best_path, map_location=fit.inp.device, require=("model",))
        model.load_trainable_state_dict(best["model"])
    model.eval()
    out: dict[str, dict[str, Any]] = {}
    for part in ctx.cfg.eval.splits:
        idx = np.asarray(split.indices[part])
        if len(idx) < 2:
            ctx.emit_main(Log(f"{part}: fewer than 2 images, not evaluated", level="warning"))
            continue
        if ctx.main:
            with ctx.stage("embed", total=len(idx), all_ranks=True) as st:
                emb = fit.fitter.embed(fit.inp, idx, progress=st.progress, out=folder.embeddings_npy(part))
                write_embedding_rows(folder.path, part, embedding_rows(table, idx, part))
        barrier(ctx.dist)
        if not ctx.main:
            emb = np.load(folder.embeddings_npy(part), mmap_mode="r")
        q_mask, g_mask = split.query_gallery(part, table)
        if not np.any(q_mask):
            ctx.emit_main(Log(f"{part}: no usable queries under the {ctx.cfg.split.query} protocol; not evaluated",
                              level="warning"))
            continue
        with ctx.stage("evaluate") as st:
            block = evaluate_part(ctx, part, emb, prepared.labels[idx], table, idx, prepared.hierarchy, q_mask,
                                  g_mask, st.progress, shard=shard)
            if ctx.main:  # degenerate embeddings: figures in the block, loud lines in the log and metrics
                block["embedding_health"], block["_warnings"] = flag_degenerate(part, emb, q_mask, ctx.emit,
                                                                                seed=ctx.cfg.seed)
            if model.supports_text and ctx.main:  # text queries are few: rank 0 alone
                block[TEXT_TO_IMAGE] = text_to_image_part(ctx, part, fit, idx, emb, prepared.hierarchy)
        out[part] = block
        for lv in prepared.hierarchy.level_names:
            if lv in block:
                ctx.emit_main(EvalResult(split=part, level=lv, metrics={
                    k: v for k, v in block[lv].items() if isinstance(v, (int, float))}))
    return out


def run_metrics(ctx: RunContext, fit: Fit, result: TrainResult, prepared: PreparedData, split: Split,
                splits_out: dict[str, dict[str, Any]]) -> RunMetrics:
    """The metrics.json document of this run (``ofgr_core.runs.metrics`` is its schema)."""
    cfg, model, fitter = ctx.cfg, fit.model, fit.fitter
    size = cfg.data.image_size or int(model.data_config["input_size"][-1])
    flops = fit.forward_flops
    total_params, _ = model.num_params()
    fit.info["seconds"] = result.seconds
    classes = split.classes
    return RunMetrics(
        run_id=ctx.folder.run_id,
        name=cfg.name,
        model=ModelBlock(kind=cfg.model.kind, name=cfg.model.name, family=model.family, embed_dim=model.embed_dim,
                         feature_dim=model.feature_dim, head=type(model.head).__name__,
                         tower_frozen=model.tower_frozen, supports_text=model.supports_text, params=total_params,
                         trainable_params=fitter.trainable_params(model), image_size=size,
                         provenance=fit.provenance),
        data=DataBlock(dataset="+".join(s.name or s.type for s in cfg.data.sources), n_images=len(prepared.table),
                       n_unreadable=len(prepared.report.get("unreadable", [])),
                       n_fine_train=len(classes["train"]), n_fine_val=len(classes["val"]),
                       n_fine_seen=len(classes["train"]) + len(classes["val"]),
                       n_fine_unseen=len(classes["unseen"]), split_protocol=split.protocol),
        train=TrainBlock(epochs=result.epochs_done, best_epoch=result.best_epoch, val_recall_at_1=result.best_val,
                         selection=result.selection, seconds=result.seconds, images_seen=result.images_seen,
                         forward_gflops_per_image=flops / 1e9 if flops else None,
                         train_pflops=3 * flops * result.images_seen / 1e15 if flops else None,
                         device=str(fit.inp.device), world_size=ctx.dist.world_size),
        fit=FitBlock.model_validate(fit.info),
        timings=dict(ctx.timings),
        splits=splits_out,
    )


def embedding_rows(table: DatasetTable, idx: np.ndarray, part: str) -> list[dict[str, str]]:
    """One CSV row per embedding: id, path, labels, domain, group, split, and the caption when there is one."""
    with_captions = any(table.captions[i] for i in idx)
    rows = []
    for i in idx:
        row = {"id": table.ids[i], "path": table.paths[i], **{lv: table.labels[lv][i] for lv in table.labels},
               "domain": table.domains[i], "group": table.groups[i], "split": part}
        if with_captions:
            row["caption"] = table.captions[i]
        rows.append(row)
    return rows


def evaluate_part(
    ctx: RunContext, part: str, emb: np.ndarray, labels: np.ndarray, table: DatasetTable, idx: np.ndarray,
    hier: Hierarchy, q_mask: np.ndarray, g_mask: np.ndarray, progress: Callable[[int, int], None], *,
    shard: Any = None,
) -> dict[str, Any]:
    """Image -> image metrics of one split (per-query values saved for paired tests); warnings become events.

    With ``shard`` (under torchrun) this rank searches its share of the queries; rank 0 writes.
    """
    from ofgr_core.retrieval.evaluate import run_split

    cfg = ctx.cfg
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev_result = run_split(
            emb,
            labels,
            ids=np.asarray([table.ids[i] for i in idx]),
            groups=np.asarray([table.groups[i] for i in idx]),
            domains=np.asarray([table.domains[i] for i in idx]),
            level_names=tuple(hier.level_names),
            class_names=hier.classes[0],
            query_mask=q_mask,
            gallery_mask=g_mask,
            cfg=cfg.eval,
            seed=cfg.seed,
            progress=progress,
            shard=shard,
            note=lambda m: ctx.emit_main(Log(m)),
        )
    for w in caught:
        ctx.emit_main(Log(f"{part}: {w.message}", level="warning"))
    if ctx.main:
        save_per_query(ev_result, ctx.folder.per_query(part))
    return ev_result.block


def text_to_image_part(
    ctx: RunContext, part: str, fit: Fit, idx: np.ndarray, emb: np.ndarray, hier: Hierarchy,
) -> dict[str, Any] | None:
    """Zero-shot text -> image of one split (``ofgr_core.retrieval.text``): class-name prompts against the
    split's images, in the tower's raw space and through the head; the free-text space is chosen on seen
    validation classes only."""
    from ofgr_core.retrieval.text import evaluate_text_to_image, save_text_per_query

    fitter, inp = fit.fitter, fit.inp
    raw = fitter.tower_features(idx)
    if raw is None:  # a strategy that keeps no tower features
        return None
    val = None
    if len(inp.val_rows) >= 2:
        val_raw = fitter.tower_features(inp.val_rows)
        if val_raw is not None:
            val = (val_raw, fitter.embed(inp, inp.val_rows), inp.labels[inp.val_rows])
    per_query: dict[str, Any] = {}
    block = evaluate_text_to_image(inp.model, raw, emb, inp.labels[idx], hier.classes, ctx.cfg.model.text_config(),
                                   ctx.cfg.eval, val=val, level_names=tuple(hier.level_names), seed=ctx.cfg.seed,
                                   per_query=per_query)
    if ctx.main and per_query.get(block["space_for_free_text"]):  # the space `ofgr compare` reports text -> image in
        save_text_per_query(per_query[block["space_for_free_text"]], ctx.folder.per_query_text(part))
    parts = []
    for space in ("raw", "head"):
        b = block.get(space)
        if b:
            parts.append(f"{space} fine {b['fine'].get('recall@1', 0):.3f} / coarse "
                         f"{b.get('coarse', {}).get('recall@1', 0) or 0:.3f}")
    ctx.emit(Log(f"{part} text->image R@1: {'; '.join(parts)}; free text searches the "
                 f"{block['space_for_free_text']} space"))
    return block


def execute_run(
    cfg: Config,
    run_dir: Path,
    writer: EventWriter | None,
    on_event: Emit | None = None,
    *,
    resume: bool = False,
    config_path: str | None = None,
) -> tuple[str, dict[str, Any] | None]:
    """Run the pipeline inside a run folder, turning its outcome into terminal events.

    Returns ``(status, metrics)``. Known errors become ``run_failed`` with a one-line message; unexpected ones
    too, with the traceback in the event. The exception is re-raised for the caller to report.
    """
    import os
    import socket

    from ofgr_core.runs.compute import ComputeMeter
    from ofgr_core.runs.events import RunStarted
    from ofgr_core.train.ddp import DistInfo, cleanup

    main = int(os.environ.get("RANK", "0")) == 0
    meter = ComputeMeter()  # per-stage compute accounting from the stage events (metrics["compute"])

    def emit(event: Event) -> None:
        meter.observe(event)
        if main and writer is not None:
            writer.write(event)
        if on_event is not None:
            on_event(event)

    stop_file = RunFolder(run_dir).stop_file
    stop_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    emit(RunStarted(run_id=run_dir.name, name=cfg.name, pid=os.getpid(), host=socket.gethostname(),
                    config_path=config_path))
    try:
        metrics = run_pipeline(cfg, run_dir, emit, stop=stop_file.exists, resume=resume)
    except StopRequested as e:
        why = stop_reason(run_dir) or "stop requested"
        emit(RunInterrupted(reason=f"{why}; stopped {e.when} {e.stage}; resume with `ofgr resume {run_dir.name}`"))
        return "interrupted", None
    except KeyboardInterrupt as e:
        emit(RunInterrupted(reason=str(e) or "keyboard interrupt"))  # SignalInterrupt names its signal
        raise
    except OfgrError as e:
        emit(RunFailed(error=str(e), traceback=traceback.format_exc()))
        raise
    except Exception as e:
        emit(RunFailed(error=f"{type(e).__name__}: {e}".splitlines()[0], traceback=traceback.format_exc()))
        raise
    finally:
        meter.close()
        cleanup(DistInfo(world_size=int(os.environ.get("WORLD_SIZE", "1"))))
        if main:  # a stop that came too late to take effect (the run had ended) is not left behind
            stop_file.unlink(missing_ok=True)
    if metrics is not None:
        metrics["compute"] = meter.summary(metrics)
        atomic_write_json(RunFolder(run_dir).metrics, metrics)
    if metrics is None:
        return "finished", None  # non-zero rank
    emit(RunFinished(seconds=time.perf_counter() - t0, metrics_path=str(RunFolder(run_dir).metrics)))
    return "finished", metrics
