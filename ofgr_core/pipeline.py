"""The end-to-end run: data -> split -> train -> embed -> index -> evaluate -> report.

``run_pipeline`` is what ``ofgr run`` / ``ofgr resume`` (and so the TUI) execute. It reports through an
``emit(event)`` callback and writes nothing but the run folder; the front ends decide how events look.
"""

from __future__ import annotations

import csv
import json
import time
import traceback
import warnings
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ofgr_core import runs
from ofgr_core.config import Config
from ofgr_core.errors import OfgrError
from ofgr_core.events import (
    EvalResult,
    Event,
    Log,
    RunFailed,
    RunFinished,
    RunInterrupted,
    StageFinished,
    StageProgress,
    StageStarted,
)

Emit = Callable[[Event], None]
T = TypeVar("T")
HEADLINE = ("recall@1", "recall@5", "recall@10", "map@r")


class _Stage:
    """Times a stage and emits its start/finish events."""

    def __init__(self, name: str, emit: Emit, timings: dict[str, float], total: int | None = None) -> None:
        self.name, self.emit, self.timings, self.total = name, emit, timings, total

    def __enter__(self) -> _Stage:
        self.t0 = time.perf_counter()
        self.emit(StageStarted(stage=self.name, total=self.total))
        return self

    def progress(self, done: int, total: int | None = None) -> None:
        self.emit(StageProgress(stage=self.name, done=done, total=total))

    def __exit__(self, exc_type: object, *_: object) -> None:
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
            return stop.value


def write_embeddings(run_dir: Path, split: str, emb: np.ndarray, rows: list[dict[str, str]]) -> None:
    """``embeddings/<split>.npy`` + ``<split>.csv`` (one row per embedding row)."""
    folder = runs.RunFolder(run_dir)
    npy, csv_path = folder.embeddings_npy(split), folder.embeddings_csv(split)
    npy.parent.mkdir(exist_ok=True)
    tmp = npy.with_name(f".{npy.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, emb.astype(np.float32, copy=False))
    tmp.replace(npy)
    fields = list(rows[0]) if rows else ["id", "path", "fine", "coarse"]
    tmp_csv = csv_path.with_name(f".{csv_path.name}.tmp")
    with open(tmp_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tmp_csv.replace(csv_path)


def save_per_query(result: Any, path: Path) -> None:
    """Per-query metric arrays (``ids`` + ``<level>_<metric>``) for paired tests between runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ids": np.asarray(result.query_ids).astype(str)}
    for level, per_metric in result.per_query.items():
        for metric, values in per_metric.items():
            arrays[f"{level}_{metric}" if level != "_" else metric] = np.asarray(values)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def count_flops_per_image(model: Any, image_size: int, device: Any) -> float | None:
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
        return counter.get_total_flops() / 2
    except Exception:  # compute accounting must never fail a run
        return None


def run_pipeline(
    cfg: Config,
    run_dir: Path,
    emit: Emit,
    *,
    stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
) -> dict[str, Any] | None:
    """Execute a whole run; returns metrics (rank 0) or None when stopped or on other ranks."""
    import torch

    from ofgr_core.data.dataset import load_dataset
    from ofgr_core.embed import embed_paths
    from ofgr_core.evaluate import run_split
    from ofgr_core.losses import create_loss
    from ofgr_core.models import create_model, create_transforms
    from ofgr_core.samplers import create_sampler
    from ofgr_core.splits import Split, make_split, save_split
    from ofgr_core.train.ddp import barrier, init_distributed
    from ofgr_core.train.loop import _flag, resolve_device, train

    folder = runs.RunFolder(run_dir)
    dist_info = init_distributed(cfg.device)
    main = dist_info.is_main
    emit_main: Emit = emit if main else (lambda e: None)
    timings: dict[str, float] = {}
    torch.manual_seed(cfg.seed)

    with _Stage("data", emit_main, timings) as st:
        # rank 0 first: it may generate data or fill caches that the other ranks then reuse
        if main:
            prepared = load_dataset(cfg.data, progress=st.progress)
        barrier(dist_info)
        if not main:
            prepared = load_dataset(cfg.data)
        rep = prepared.report
        if main:
            runs.atomic_write_json(folder.data_report, rep)
            if rep.get("unreadable"):
                emit(Log(f"skipped {len(rep['unreadable'])} unreadable images "
                         f"(listed in {runs.DATA_REPORT_FILE})", level="warning"))
            for w in rep.get("warnings", []):
                emit(Log(str(w), level="warning"))
            emit(Log(f"{len(prepared.table)} images, {prepared.hierarchy.num_classes(0)} fine / "
                     f"{prepared.hierarchy.num_classes(1) if len(prepared.hierarchy.level_names) > 1 else 0}"
                     " coarse classes"))
    table, hier, labels = prepared.table, prepared.hierarchy, prepared.labels

    with _Stage("split", emit_main, timings):
        split_path = folder.split
        if resume and split_path.is_file():
            split = Split.from_json(json.loads(split_path.read_text()), table)
        else:
            split = make_split(table, hier, labels, cfg.split, cfg.seed, ks=cfg.eval.ks)
            if main:
                save_split(split, table, split_path)
                rep["split"] = split.report
                runs.atomic_write_json(folder.data_report, rep)
                for w in split.report.get("warnings", []):
                    emit(Log(f"split: {w}", level="warning"))
        if main:
            c = {p: len(v) for p, v in split.indices.items()}
            emit(Log(f"split {split.protocol}: {len(split.classes['train'])} train / {len(split.classes['val'])} "
                     f"val / {len(split.classes['unseen'])} unseen fine classes; images {c}"))

    device = resolve_device(cfg.device, dist_info)
    image_size = cfg.data.image_size
    model = create_model(cfg.model, image_size=image_size)
    train_tf = create_transforms(model, train=True, crop_scale=cfg.data.crop_scale)
    eval_tf = create_transforms(model, train=False)
    tr = split.indices["train"]
    from ofgr_core.hierarchy import training_labels

    train_fine, train_labels = training_labels(labels[tr])  # coarse-only rows keep fine id -1
    coarse_train = train_labels[:, 1]
    sampler_cfg = cfg.sampler
    n_coarse = len(np.unique(coarse_train))
    if n_coarse < sampler_cfg.coarse_per_batch:
        # e.g. a flat image folder (one coarse class): keep the batch size with more fine classes per coarse
        per_batch = sampler_cfg.coarse_per_batch * sampler_cfg.fine_per_coarse
        sampler_cfg = sampler_cfg.model_copy(update={
            "coarse_per_batch": n_coarse, "fine_per_coarse": max(1, per_batch // n_coarse)})
        emit_main(Log(f"training data has {n_coarse} coarse class(es) < sampler.coarse_per_batch="
                      f"{cfg.sampler.coarse_per_batch}: sampling C={sampler_cfg.coarse_per_batch} x "
                      f"P={sampler_cfg.fine_per_coarse} x K={sampler_cfg.k}", level="warning"))
    loss_fn = create_loss(cfg.loss, num_classes=len(train_fine), embed_dim=model.embed_dim)
    sampler = create_sampler(sampler_cfg, train_labels, seed=cfg.seed, rank=dist_info.rank,
                             world_size=dist_info.world_size)
    size = image_size or int(model.data_config["input_size"][-1])
    flops = count_flops_per_image(model, size, "cpu") if main else None

    ckpt_dir = folder.checkpoints
    last = folder.checkpoint("last")
    resume_from = last if resume and last.is_file() else None
    with _Stage("train", emit_main, timings, total=cfg.train.epochs):
        result = _drain(
            train(
                cfg,
                model=model,
                loss_fn=loss_fn,
                sampler=sampler,
                train_paths=[table.paths[i] for i in tr],
                train_labels=train_labels,
                val_paths=[table.paths[i] for i in split.indices["val"]],
                val_labels=labels[split.indices["val"]],
                train_transform=train_tf,
                eval_transform=eval_tf,
                device=device,
                ckpt_dir=ckpt_dir,
                dist_info=dist_info,
                stop=stop,
                resume_from=resume_from,
            ),
            emit_main,
        )
    if result.stopped:
        return None
    barrier(dist_info)
    if not main:
        return None

    # ---- final evaluation with the best checkpoint (rank 0 only)
    if result.best_path is not None:
        from ofgr_core.train.checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(result.best_path, map_location=device)["model"])
    amp, cl = _flag(cfg.train.amp, device.type == "cuda"), _flag(cfg.train.channels_last, device.type == "cuda")
    level_names = hier.level_names
    splits_out: dict[str, Any] = {}
    for part in cfg.eval.splits:
        idx = split.indices[part]
        if len(idx) < 2:
            emit(Log(f"{part}: fewer than 2 images, not evaluated", level="warning"))
            continue
        with _Stage("embed", emit, timings, total=len(idx)) as st:
            emb = embed_paths(model, [table.paths[i] for i in idx], eval_tf, device, progress=st.progress,
                              batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers,
                              amp=amp, channels_last=cl)
            rows = [{"id": table.ids[i], "path": table.paths[i],
                     **{lv: table.labels[lv][i] for lv in table.labels},
                     "domain": table.domains[i], "group": table.groups[i], "split": part} for i in idx]
            write_embeddings(run_dir, part, emb, rows)
        q_mask, g_mask = split.query_gallery(part, table)
        if not np.any(q_mask):
            emit(Log(f"{part}: no usable queries under the {cfg.split.query} protocol; not evaluated",
                     level="warning"))
            continue
        with _Stage("evaluate", emit, timings) as st:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ev_result = run_split(
                    emb,
                    labels[idx],
                    ids=np.asarray([table.ids[i] for i in idx]),
                    groups=np.asarray([table.groups[i] for i in idx]),
                    domains=np.asarray([table.domains[i] for i in idx]),
                    level_names=tuple(level_names),
                    class_names=hier.classes[0],
                    query_mask=q_mask,
                    gallery_mask=g_mask,
                    cfg=cfg.eval,
                    seed=cfg.seed,
                    progress=st.progress,
                )
            for w in caught:
                emit(Log(f"{part}: {w.message}", level="warning"))
            block = ev_result.block
            save_per_query(ev_result, folder.per_query(part))
        splits_out[part] = block
        for lv in level_names:
            if lv in block:
                emit(EvalResult(split=part, level=lv,
                                metrics={k: v for k, v in block[lv].items() if isinstance(v, (int, float))}))

    with _Stage("report", emit, timings):  # metrics["timings"] is this dict: it gains the report time
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        metrics: dict[str, Any] = {
            "schema_version": 1,
            "run_id": run_dir.name,
            "name": cfg.name,
            "model": {"kind": cfg.model.kind, "name": cfg.model.name, "embed_dim": model.embed_dim,
                      "params": params, "trainable_params": trainable, "image_size": size},
            "data": {
                "dataset": "+".join(s.name or s.type for s in cfg.data.sources),
                "n_images": len(table),
                "n_unreadable": len(prepared.report.get("unreadable", [])),
                "n_fine_train": len(split.classes["train"]),
                "n_fine_val": len(split.classes["val"]),
                "n_fine_seen": len(split.classes["train"]) + len(split.classes["val"]),
                "n_fine_unseen": len(split.classes["unseen"]),
                "split_protocol": split.protocol,
            },
            "train": {
                "epochs": result.epochs_done,
                "best_epoch": result.best_epoch,
                "val_recall@1": result.best_val,
                "seconds": result.seconds,
                "images_seen": result.images_seen,
                "forward_gflops_per_image": flops / 1e9 if flops else None,
                "train_pflops": 3 * flops * result.images_seen / 1e15 if flops else None,
                "device": str(device),
                "world_size": dist_info.world_size,
            },
            "timings": timings,
            **splits_out,
        }
    runs.atomic_write_json(folder.metrics, metrics)
    return metrics


def execute_run(
    cfg: Config,
    run_dir: Path,
    writer: runs.EventWriter | None,
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

    from ofgr_core.events import RunStarted
    from ofgr_core.train.ddp import DistInfo, cleanup

    main = int(os.environ.get("RANK", "0")) == 0

    def emit(event: Event) -> None:
        if main and writer is not None:
            writer.write(event)
        if on_event is not None:
            on_event(event)

    stop_file = runs.RunFolder(run_dir).stop_file
    stop_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    emit(RunStarted(run_id=run_dir.name, name=cfg.name, pid=os.getpid(), host=socket.gethostname(),
                    config_path=config_path))
    try:
        metrics = run_pipeline(cfg, run_dir, emit, stop=stop_file.exists, resume=resume)
    except KeyboardInterrupt:
        emit(RunInterrupted(reason="keyboard interrupt"))
        raise
    except OfgrError as e:
        emit(RunFailed(error=str(e), traceback=traceback.format_exc()))
        raise
    except Exception as e:
        emit(RunFailed(error=f"{type(e).__name__}: {e}".splitlines()[0], traceback=traceback.format_exc()))
        raise
    finally:
        cleanup(DistInfo(world_size=int(os.environ.get("WORLD_SIZE", "1"))))
    if metrics is None:
        if stop_file.exists():
            emit(RunInterrupted(reason="stop requested; resume with `ofgr resume " + run_dir.name + "`"))
            return "interrupted", None
        return "finished", None  # non-zero rank
    emit(RunFinished(seconds=time.perf_counter() - t0, metrics_path=str(runs.RunFolder(run_dir).metrics)))
    return "finished", metrics
