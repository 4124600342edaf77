"""The training loop as an event generator, shared by every fit strategy.

``train(...)`` yields ``TrainStep``/``TrainEpoch``/``Log`` events and returns a :class:`TrainResult`
(``result = yield from train(...)``). It never prints. It trains whatever module it is given on whatever
dataset it is given: a whole encoder on images (end-to-end fine-tuning) or a head on cached tower features
(``ofgr_core.train.fit``). Every epoch ends with validation Recall@1 on held-out *seen* classes (never unseen
ones), an atomic ``last.pt`` and ``best.pt`` for the model that :class:`Selection` keeps: the best validation
Recall@1, or without validation data the last epoch (the training loss says nothing about retrieval on new
classes, so it never picks a model).
Stopping (a ``stop()`` callback, e.g. the run folder's ``stop`` file, which SIGINT/SIGTERM create) finishes the
current step, writes ``last.pt`` with that step, and ends the run; ``ofgr resume`` continues at the next step
(bit-identical on CPU with ``data.num_workers: 0``). What a checkpoint holds is ``checkpoint_state``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ofgr_core.config import Config, EvalConfig, IndexConfig, TrainConfig
from ofgr_core.models.base import Encoder, FeatureHead
from ofgr_core.models.precision import autocast
from ofgr_core.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ofgr_core.runs.events import Event, Log, TrainEpoch, TrainStep
from ofgr_core.samplers.factory import BatchSampler
from ofgr_core.train import guard
from ofgr_core.train.ddp import DistInfo, any_rank, barrier
from ofgr_core.train.headstep import HeadStep
from ofgr_core.train.optim import create_optimizer, create_scheduler, head_lr, param_groups

# In-memory training (a head on cached features) writes last.pt/best.pt at most this often, and always after
# the last epoch and on a stop: its epochs take a fraction of a second, a checkpoint tens of milliseconds.
LAZY_CHECKPOINT_S = 10.0

SELECTED_BY_VALIDATION = "best seen-validation recall@1"
SELECTED_LAST_EPOCH = "last epoch (no validation data)"


@dataclass
class TrainResult:
    """What a training run ends with.

    Attributes:
        best_path: the checkpoint of the kept model (``best.pt``), or ``None`` when no epoch finished.
        best_epoch: the kept epoch, 1-based (0: none).
        best_val: its seen-validation Recall@1; ``None`` without validation data.
        selection: how the epoch was kept (``SELECTED_BY_VALIDATION`` or ``SELECTED_LAST_EPOCH``).
    """

    best_path: Path | None
    last_path: Path | None
    best_epoch: int
    best_val: float | None
    epochs_done: int
    seconds: float
    images_seen: int
    stopped: bool
    history: list[dict[str, Any]]
    selection: str = SELECTED_BY_VALIDATION


# what a resume reads from last.pt (a foreign file without them is one line, not a KeyError)
RESUME_KEYS = ("model", "loss", "optimizer", "scheduler", "scaler", "sampler", "rng", "epoch", "best_val",
               "best_epoch", "images_seen", "history", "bad_epochs")


class TrainModule(nn.Module):
    """Model + loss in one module, so DDP synchronises the ArcFace class weights with the backbone."""

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        emb = self.model(inputs)
        loss: tuple[torch.Tensor, dict[str, torch.Tensor]] = self.loss(emb.float(), labels)
        return loss


@runtime_checkable
class InMemoryBatches(Protocol):
    """A training set held as tensors on the training device (cached tower features): the loop gathers each
    batch by index from it, with no DataLoader, no per-item ``__getitem__`` and no collation."""

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` of ``rows`` (a long tensor on the dataset's device), in that order."""
        ...


def _gathered(dataset: InMemoryBatches, sampler: BatchSampler,
              device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The epoch's batches from an in-memory dataset, as the DataLoader would give them (same rows, same
    values: a gather is what default collation of single rows stacks).

    The sampler's plan for the epoch (what is left of it after a resume) is drawn up front and goes to the
    device as one index tensor, so a step only slices it and gathers.
    """
    plan = [list(b) for b in sampler]
    sizes = [len(b) for b in plan]
    flat = torch.as_tensor([i for b in plan for i in b], dtype=torch.long).to(device)
    for rows in torch.split(flat, sizes) if sizes else ():
        x, y = dataset.take(rows)
        yield x, y, rows


def _flag(value: str, cuda: bool) -> bool:
    return value == "on" or (value == "auto" and cuda)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------- model selection
@dataclass
class Selection:
    """Which epoch's model the run keeps, and early stopping's count of epochs without improvement.

    With validation data the best seen-validation Recall@1 is kept (ties keep the earlier epoch); without,
    every epoch replaces the previous one, so the last epoch is kept, and early stopping has nothing to
    watch.
    """

    validated: bool
    best_val: float | None = None
    best_epoch: int = -1  # 0-based; -1: no epoch finished
    bad_epochs: int = 0

    @property
    def rule(self) -> str:
        return SELECTED_BY_VALIDATION if self.validated else SELECTED_LAST_EPOCH

    def observe(self, epoch: int, val: Mapping[str, float]) -> bool:
        """Record an epoch's validation; True when its model becomes the kept one."""
        if not self.validated:
            self.best_epoch = epoch
            return True
        score = float(val["recall@1"])
        if self.best_val is None or score > self.best_val:
            self.best_val, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def exhausted(self, patience: int | None) -> bool:
        """Early stopping: ``patience`` epochs in a row without a better validation score."""
        return self.validated and patience is not None and self.bad_epochs >= patience


# ---------------------------------------------------------------------------------- checkpoint schema
@dataclass
class _Parts:
    """The objects a run steps; a checkpoint holds their states."""

    model: nn.Module
    loss_fn: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    sampler: BatchSampler
    save_state: Callable[[], Mapping[str, torch.Tensor]]
    load_state: Callable[[dict[str, torch.Tensor]], Any]
    # the module's parameters, listed once: a step's gradient norm needs them, and walking the module tree
    # (the losses' wrapped PML modules included) every step costs more than a small head's arithmetic
    params: list[nn.Parameter] = field(default_factory=list)
    # a head on features with its backward written out (train.head_step: auto), None: autograd
    head_step: HeadStep | None = None


@dataclass
class _Counters:
    """What the loop counts across epochs (saved in checkpoints)."""

    selection: Selection
    images_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def result(self, best: Path, last: Path, epochs_done: int, seconds: float, stopped: bool) -> TrainResult:
        sel = self.selection
        return TrainResult(
            best_path=best if best.exists() else None, last_path=last if last.exists() else None,
            best_epoch=sel.best_epoch + 1, best_val=sel.best_val, epochs_done=epochs_done, seconds=seconds,
            images_seen=self.images_seen, stopped=stopped, history=self.history, selection=sel.rule,
        )


@dataclass
class _Resume:
    """Where a resumed run starts: the epoch, the step within it and that epoch's partial sums."""

    epoch: int = 0
    step: int = 0
    partial: tuple[dict[str, float], int, dict[str, Any]] | None = None


def checkpoint_state(parts: _Parts, counters: _Counters, cfg: Config, epoch: int, step: int = 0,
                     **extra: Any) -> dict[str, Any]:
    """A training checkpoint (``last.pt``): everything to continue. ``step`` > 0 marks a checkpoint taken
    after that many steps of ``epoch`` (a stop mid-epoch)."""
    sel = counters.selection
    return {
        "model": parts.save_state(),
        "loss": parts.loss_fn.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "sampler": parts.sampler.state_dict(batches_done=step) if step else parts.sampler.state_dict(),
        "rng": rng_state(),
        "epoch": epoch,
        "step": step,
        "best_val": sel.best_val,
        "best_epoch": sel.best_epoch,
        "bad_epochs": sel.bad_epochs,
        "images_seen": counters.images_seen,
        "history": counters.history,
        "config": cfg.model_dump(mode="json"),
        **extra,
    }


def best_state(parts: _Parts, cfg: Config, epoch: int, val: Mapping[str, float], selection: str) -> dict[str, Any]:
    """The kept model's checkpoint (``best.pt``): its weights, the epoch and how it was chosen."""
    return {"model": parts.save_state(), "epoch": epoch, "val": dict(val), "selection": selection,
            "config": cfg.model_dump(mode="json")}


def _restore(parts: _Parts, counters: _Counters, path: Path, device: torch.device) -> _Resume:
    """Load a ``checkpoint_state`` into the run's objects and counters; where to continue."""
    state = load_checkpoint(path, map_location=device, require=RESUME_KEYS)  # a foreign file: one line
    parts.load_state(state["model"])
    parts.loss_fn.load_state_dict(state["loss"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    parts.sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    sel = counters.selection
    sel.best_epoch, sel.bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
    # runs written before validation-less selection stored -loss here: only a validation score is kept
    sel.best_val = state["best_val"] if sel.validated else None
    counters.images_seen, counters.history = int(state["images_seen"]), list(state["history"])
    if state.get("step"):  # written when a stop arrived mid-epoch: continue that epoch at its next step
        return _Resume(int(state["epoch"]), int(state["step"]),
                       (dict(state["sums"]), int(state["n_batches"]), state["rng"]))
    return _Resume(int(state["epoch"]) + 1)


# ------------------------------------------------------------------------------------------------ train
def train(
    cfg: Config, *, model: nn.Module, loss_fn: nn.Module, sampler: BatchSampler,
    train_dataset: torch.utils.data.Dataset[Any], val_embed: Callable[[], np.ndarray] | None,
    val_labels: np.ndarray, device: torch.device, ckpt_dir: Path, dist_info: DistInfo | None = None,
    stop: Callable[[], bool] = lambda: False, resume_from: Path | None = None,
    state_dict: Callable[[], Mapping[str, torch.Tensor]] | None = None,
    load_state_dict: Callable[[dict[str, torch.Tensor]], Any] | None = None,
    num_workers: int | None = None, probe_epochs: int = 0, backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None, autocast_dtype: torch.dtype | None = None,
) -> Generator[Event, None, TrainResult]:
    """Train ``model`` with ``loss_fn`` on batches of ``train_dataset`` drawn by ``sampler``.

    Args:
        model: the module that trains (an encoder on images, or a ``FeatureHead`` on features).
        train_dataset: yields ``(input, labels_row, index)``; labels are (N, 2): column 0 the fine class id
            in ``[0, num_train_classes)`` (what ArcFace needs), column 1 the coarse id.
        val_embed: returns the validation embeddings (N_val, D) with the model as it is now; None = no
            validation (the last epoch is kept, early stopping is off).
        val_labels: (N_val, L) labels of the validation rows; column 0 is used.
        state_dict / load_state_dict: what checkpoints hold and how it is restored (default: the model's
            whole state; an encoder passes ``trainable_state_dict`` so a frozen tower is never saved).
        num_workers: data-loading processes (default ``data.num_workers``; 0 for in-memory features).
        probe_epochs, backbone_lr_mult, layer_decay: the fine-tuning recipe (``ofgr_core.train.optim``).
        autocast_dtype: the forward pass's autocast dtype (the encoder's, from ``model.precision``).
    """
    dist_info = dist_info or DistInfo()
    tc = cfg.train
    parts = _setup(cfg, model, loss_fn, sampler, device, dist_info, probe_epochs=probe_epochs,
                   backbone_lr_mult=backbone_lr_mult, layer_decay=layer_decay, autocast_dtype=autocast_dtype,
                   state_dict=state_dict, load_state_dict=load_state_dict)
    if isinstance(train_dataset, InMemoryBatches) and not parts.optimizer.defaults.get("fused"):
        # tiny steps on in-memory features: one multi-tensor optimizer update instead of a loop over the
        # parameters (the same arithmetic: bit-identical to the per-tensor update, tests/core/test_head_fit.py)
        for group in parts.optimizer.param_groups:
            group["foreach"] = True
    validated = val_embed is not None and len(val_labels) >= 2
    counters = _Counters(Selection(validated))
    resume = _Resume()
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if resume_from is not None:
        resume = _restore(parts, counters, resume_from, device)
        if dist_info.is_main:
            at = f" step {resume.step + 1}" if resume.step else ""
            yield Log(f"resumed from {resume_from} at epoch {resume.epoch + 1}/{tc.epochs}{at}")
    if dist_info.is_main and tc.early_stopping is not None and not validated:
        yield Log("train.early_stopping watches seen-validation Recall@1, and this run has no validation images: "
                  "it trains all train.epochs and keeps the last epoch", level="warning")
    loop = _Loop(cfg, parts, counters, device, dist_info, stop, last_path,
                 cfg.data.num_workers if num_workers is None else num_workers, autocast_dtype, probe_epochs,
                 lazy=isinstance(train_dataset, InMemoryBatches))
    t_start = time.perf_counter()
    stopped = False
    epoch = resume.epoch - 1
    for epoch in range(resume.epoch, tc.epochs):
        t_epoch = time.perf_counter()
        outcome = yield from loop.epoch(train_dataset, epoch, resume)
        if outcome is None:
            stopped = True
            break
        if dist_info.is_main:
            yield loop.end_epoch(epoch, outcome, val_embed, val_labels, best_path, time.perf_counter() - t_epoch)
        barrier(dist_info)
        if any_rank(counters.selection.exhausted(tc.early_stopping), dist_info):
            if dist_info.is_main:
                yield Log(f"early stopping: no validation improvement for {tc.early_stopping} epochs")
            break
    if dist_info.is_main and not stopped:
        loop.flush()  # nothing runs after the last epoch's end: its held-back checkpoints are still valid
    return counters.result(best_path, last_path, epoch + 1 if not stopped else epoch,
                           time.perf_counter() - t_start, stopped)


def _setup(
    cfg: Config, model: nn.Module, loss_fn: nn.Module, sampler: BatchSampler, device: torch.device,
    dist_info: DistInfo, *, probe_epochs: int, backbone_lr_mult: float, layer_decay: float | None,
    autocast_dtype: torch.dtype | None, state_dict: Callable[[], Mapping[str, torch.Tensor]] | None,
    load_state_dict: Callable[[dict[str, torch.Tensor]], Any] | None,
) -> _Parts:
    """Move the model and loss to the device, wrap them for DDP, build the optimizer, schedule and scaler."""
    tc = cfg.train
    cuda = device.type == "cuda"
    model.to(device)
    loss_fn.to(device)
    if _flag(tc.channels_last, cuda):
        model.to(memory_format=torch.channels_last)
    module: nn.Module = TrainModule(model, loss_fn)
    if dist_info.enabled:
        module = nn.parallel.DistributedDataParallel(
            # a linear probe leaves the backbone without gradients for its first epochs
            module, device_ids=[device.index] if cuda else None, find_unused_parameters=probe_epochs > 0
        )
    groups = param_groups(model, loss_fn, tc.lr, weight_decay=tc.weight_decay, backbone_lr_mult=backbone_lr_mult,
                          layer_decay=layer_decay)
    # a head on cached features (FeatureHead) takes the fused update under "auto": the same in-memory and
    # DataLoader paths (tests/core/test_head_fit.py), never an image model's
    fused = tc.fused == "on" or (tc.fused == "auto" and isinstance(model, FeatureHead))
    optimizer = create_optimizer(tc, groups, fused=fused)
    scheduler = create_scheduler(optimizer, tc, len(sampler), probe_epochs=probe_epochs)
    # fp16 needs loss scaling; bf16 does not
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    head_step = HeadStep.build(model, loss_fn) if _head_step_applies(tc, device, dist_info, autocast_dtype) else None
    return _Parts(model, loss_fn, module, optimizer, scheduler, scaler, sampler,
                  state_dict or model.state_dict, load_state_dict or model.load_state_dict,
                  list(module.parameters()), head_step)


def _head_step_applies(tc: TrainConfig, device: torch.device, dist_info: DistInfo,
                       autocast_dtype: torch.dtype | None) -> bool:
    """Whether ``train.head_step: auto`` may write a head's gradients itself (``HeadStep``): on CPU, where it was
    measured and where its dropout draws are ``nn.Dropout``'s (CUDA's fused dropout draws differently, and no GPU
    figure exists yet), and never under DDP's gradient hooks or autocast's casts, which live in autograd."""
    return (tc.head_step == "auto" and device.type == "cpu" and not dist_info.enabled
            and autocast_dtype is None)


@dataclass
class _EpochOutcome:
    sums: dict[str, float]
    n_batches: int


@dataclass
class _Loop:
    """One training run's epochs: the steps of an epoch, then validation, selection and checkpoints."""

    cfg: Config
    parts: _Parts
    counters: _Counters
    device: torch.device
    dist_info: DistInfo
    stop: Callable[[], bool]
    last_path: Path
    workers: int
    autocast_dtype: torch.dtype | None
    probe_epochs: int
    # the first step this process runs is logged too: its pace gives an ETA within seconds (workflows/checks.py)
    logged_first: bool = False
    # in-memory training: end-of-epoch checkpoints held back up to LAZY_CHECKPOINT_S (see flush)
    lazy: bool = False
    _written: float = field(default_factory=time.perf_counter)
    _unsaved_epoch: int | None = None  # last.pt of this finished epoch is not written yet
    _pending_best: tuple[Path, dict[str, Any]] | None = None  # best.pt not written yet (tensors copied)

    def epoch(self, dataset: torch.utils.data.Dataset[Any], epoch: int,
              resume: _Resume) -> Generator[Event, None, _EpochOutcome | None]:
        """Run one epoch's steps; ``None`` when a stop request ended it (after checkpointing the step)."""
        cfg, parts, dist_info = self.cfg, self.parts, self.dist_info
        cuda = self.device.type == "cuda"
        # per-epoch seeding makes a resumed run replay the same augmentations and batches
        seed_everything(cfg.seed * 100_003 + epoch * 1009 + dist_info.rank)
        parts.sampler.set_epoch(epoch)
        if self.probe_epochs and isinstance(parts.model, Encoder):
            parts.model.set_tower_frozen(epoch < self.probe_epochs)
        loader: Iterable[tuple[torch.Tensor, torch.Tensor, Any]]
        if isinstance(dataset, InMemoryBatches):
            loader = _gathered(dataset, parts.sampler, self.device)
        else:
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=parts.sampler,
                num_workers=self.workers,
                pin_memory=cuda,
                persistent_workers=False,
                generator=torch.Generator().manual_seed(cfg.seed + epoch),
            )
        parts.module.train()
        sums: dict[str, float] = {}
        n_batches = first_step = 0
        if resume.partial is not None and epoch == resume.epoch:
            sums, n_batches, rng = resume.partial
            set_rng_state(rng)  # the augmentation RNG where the stopped run left it (exact with num_workers=0)
            first_step, resume.partial = resume.step, None
        skipped = [0]
        window = [time.perf_counter(), 0.0]
        for step, (images, labels, _) in enumerate(loader, start=first_step):
            values = yield from self._step(images, labels, epoch, step, skipped)
            stopping = any_rank(self.stop() if dist_info.is_main else False, dist_info)
            if values is not None:
                n_batches += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                n = images.shape[0] * dist_info.world_size
                self.counters.images_seen += n
                window[1] += n
                logged = (step + 1) % cfg.train.log_every == 0 or step + 1 == len(parts.sampler)
                # the step a stop ends on is always logged: the live view's "step" then matches the stop message;
                # so is the first step this process runs: its pace gives an ETA within seconds (workflows/checks)
                if dist_info.is_main and (logged or stopping or not self.logged_first):
                    self.logged_first = True
                    yield self._step_event(epoch, step, values, window)
            if stopping:
                if dist_info.is_main:  # finish the step, then checkpoint it: resume continues at the next one
                    self._unsaved_epoch = None  # this checkpoint supersedes the held-back epoch's
                    self.flush()  # the kept model, if held back
                    save_checkpoint(self.last_path, checkpoint_state(parts, self.counters, cfg, epoch, step + 1,
                                                                     sums=sums, n_batches=n_batches))
                    yield Log(f"stopped after epoch {epoch + 1} step {step + 1}; checkpoint {self.last_path}")
                return None
        if n_batches == 0 and len(parts.sampler) > 0:
            guard.raise_nonfinite(f"every step of epoch {epoch + 1} had a non-finite loss or gradient and was "
                                  "skipped (train.nonfinite=skip); lower train.lr or loss.arcface.scale")
        return _EpochOutcome(sums, n_batches)

    def _step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int,
              skipped: list[int]) -> Generator[Event, None, dict[str, float] | None]:
        """One optimisation step; its loss values, or ``None`` when a non-finite value skipped it."""
        parts, tc, dist_info = self.parts, self.cfg.train, self.dist_info
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if _flag(tc.channels_last, self.device.type == "cuda") and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        if parts.head_step is not None:  # loss and gradients in one pass (the gradients written, not summed)
            loss, loss_parts = parts.head_step.step(images, labels)
        else:
            with autocast(self.device, self.autocast_dtype):
                loss, loss_parts = parts.module(images, labels)
            parts.optimizer.zero_grad(set_to_none=True)
        values = {"loss": float(loss.detach())} | {k: float(v.detach()) for k, v in loss_parts.items()}
        bad = guard.nonfinite_parts(values["loss"], {k: v for k, v in values.items() if k != "loss"})
        what = "loss"
        if not bad:
            if parts.head_step is None:
                torch.autograd.backward(parts.scaler.scale(loss))
            gnorm = 0.0
            if tc.grad_clip:
                parts.scaler.unscale_(parts.optimizer)
                gnorm = guard.clip_grad_norm(parts.params, tc.grad_clip)
            elif not parts.scaler.is_enabled():
                gnorm = guard.grad_norm(parts.params)
            # with fp16 loss scaling an inf gradient is routine: the scaler skips that step itself
            if not parts.scaler.is_enabled() and not math.isfinite(gnorm):
                bad, what = [f"gradient norm={gnorm}"], "gradient"
        if any_rank(bool(bad), dist_info):
            skipped[0] += 1
            msg = guard.describe(epoch + 1, step + 1, values["loss"], values, bad or ["loss on another rank"],
                                 what=what, checkpoint=str(self.last_path) if self.last_path.is_file() else None)
            if tc.nonfinite == "stop":
                guard.raise_nonfinite(msg)
            parts.optimizer.zero_grad(set_to_none=True)
            if dist_info.is_main and skipped[0] <= 10:
                yield Log(f"skipped step: {msg}", level="warning")
            return None
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        return values

    def _step_event(self, epoch: int, step: int, values: dict[str, float], window: list[float]) -> TrainStep:
        dt = time.perf_counter() - window[0]
        event = TrainStep(
            epoch=epoch + 1,
            step=step + 1,
            steps_per_epoch=len(self.parts.sampler),
            loss=values["loss"],
            losses={k: v for k, v in values.items() if k != "loss"},
            lr=head_lr(self.parts.optimizer),
            images_per_s=window[1] / dt if dt > 0 else 0.0,
            gpu_mem_mb=torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None,
        )
        window[0], window[1] = time.perf_counter(), 0.0
        return event

    def flush(self) -> None:
        """Write what the lazy policy held back: ``last.pt`` of the last finished epoch (valid only while no
        step has run since it ended: after ``end_epoch``, at the end of training) and the kept model."""
        if self._unsaved_epoch is not None:
            save_checkpoint(self.last_path, checkpoint_state(self.parts, self.counters, self.cfg,
                                                             self._unsaved_epoch))
        if self._pending_best is not None:
            save_checkpoint(*self._pending_best)
        self._unsaved_epoch, self._pending_best, self._written = None, None, time.perf_counter()

    def end_epoch(self, epoch: int, outcome: _EpochOutcome, val_embed: Callable[[], np.ndarray] | None,
                  val_labels: np.ndarray, best_path: Path, seconds: float) -> TrainEpoch:
        """Rank 0 after an epoch: validate, select, write ``last.pt`` (and ``best.pt`` when kept)."""
        means = {k: v / max(1, outcome.n_batches) for k, v in outcome.sums.items()}
        sel = self.counters.selection
        val = validate(val_embed(), val_labels) if sel.validated and val_embed is not None else {}
        kept = sel.observe(epoch, val)
        self.counters.history.append({"epoch": epoch + 1, "loss": means.get("loss"), "val": val})
        best = best_state(self.parts, self.cfg, epoch, val, sel.rule) if kept else None
        if not self.lazy:
            save_checkpoint(self.last_path, checkpoint_state(self.parts, self.counters, self.cfg, epoch))
            if best is not None:
                save_checkpoint(best_path, best)
        else:
            self._unsaved_epoch = epoch
            if best is not None:  # the model trains on: hold a copy of this epoch's weights
                best["model"] = {k: v.detach().clone() for k, v in best["model"].items()}
                self._pending_best = (best_path, best)
            if time.perf_counter() - self._written >= LAZY_CHECKPOINT_S:
                self.flush()
        return TrainEpoch(
            epoch=epoch + 1,
            epochs=self.cfg.train.epochs,
            loss=means.get("loss", float("nan")),
            losses={k: v for k, v in means.items() if k != "loss"},
            lr=head_lr(self.parts.optimizer),
            val=val,
            seconds=seconds,
            best=kept,
        )


def validate(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out Recall@1 and MAP@R (fine) of validation embeddings, through the final metrics' engine."""
    from ofgr_core.retrieval.evaluate import run_split

    block = run_split(
        embeddings, labels, cfg=EvalConfig(ks=[1], bootstrap=0, index=IndexConfig(type="flat", device="cpu")),
    ).block
    return {"recall@1": float(block["fine"]["recall@1"]), "map@r": float(block["fine"]["map@r"])}
