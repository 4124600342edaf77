"""The training loop as an event generator, shared by every fit strategy.

``train(...)`` yields ``TrainStep``/``TrainEpoch``/``Log`` events and returns a :class:`TrainResult`
(``result = yield from train(...)``). It never prints. It trains whatever module it is given on whatever
dataset it is given: a whole encoder on images (end-to-end fine-tuning) or a head on cached tower features
(``ofgr_core.train.fit``). Every epoch ends with validation Recall@1 on held-out *seen* classes (never unseen
ones), an atomic ``last.pt`` and, when validation improves, ``best.pt``.
Stopping (a ``stop()`` callback, e.g. the run folder's ``stop`` file, which SIGINT/SIGTERM create) finishes the
current step, writes ``last.pt`` with that step, and ends the run; ``ofgr resume`` continues at the next step
(bit-identical on CPU with ``data.num_workers: 0``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ofgr_core.config import Config, EvalConfig, IndexConfig
from ofgr_core.models.precision import autocast
from ofgr_core.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ofgr_core.runs.events import Event, Log, TrainEpoch, TrainStep
from ofgr_core.train import guard
from ofgr_core.train.ddp import DistInfo, any_rank, barrier
from ofgr_core.train.optim import create_optimizer, create_scheduler, head_lr, param_groups


@dataclass
class TrainResult:
    best_path: Path | None
    last_path: Path | None
    best_epoch: int
    best_val: float | None
    epochs_done: int
    seconds: float
    images_seen: int
    stopped: bool
    history: list[dict[str, Any]]


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
        return self.loss(emb.float(), labels)



def _flag(value: str, cuda: bool) -> bool:
    return value == "on" or (value == "auto" and cuda)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train(
    cfg: Config,
    *,
    model: nn.Module,
    loss_fn: nn.Module,
    sampler: Any,
    train_dataset: torch.utils.data.Dataset,
    val_embed: Callable[[], np.ndarray] | None,
    val_labels: np.ndarray,
    device: torch.device,
    ckpt_dir: Path,
    dist_info: DistInfo = DistInfo(),
    stop: Callable[[], bool] = lambda: False,
    resume_from: Path | None = None,
    state_dict: Callable[[], dict[str, torch.Tensor]] | None = None,
    load_state_dict: Callable[[dict[str, torch.Tensor]], None] | None = None,
    num_workers: int | None = None,
    probe_epochs: int = 0,
    backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Generator[Event, None, TrainResult]:
    """Train ``model`` with ``loss_fn`` on batches of ``train_dataset`` drawn by ``sampler``.

    Args:
        model: the module that trains (an encoder on images, or a ``FeatureHead`` on features).
        train_dataset: yields ``(input, labels_row, index)``; labels are (N, 2): column 0 the fine class id
            in ``[0, num_train_classes)`` (what ArcFace needs), column 1 the coarse id.
        val_embed: returns the validation embeddings (N_val, D) with the model as it is now; None = no
            validation (the loss picks the best epoch).
        val_labels: (N_val, L) labels of the validation rows; column 0 is used.
        state_dict / load_state_dict: what checkpoints hold and how it is restored (default: the model's
            whole state; an encoder passes ``trainable_state_dict`` so a frozen tower is never saved).
        num_workers: data-loading processes (default ``data.num_workers``; 0 for in-memory features).
        probe_epochs, backbone_lr_mult, layer_decay: the fine-tuning recipe (``ofgr_core.train.optim``).
        autocast_dtype: the forward pass's autocast dtype (the encoder's, from ``model.precision``).
    """
    tc = cfg.train
    cuda = device.type == "cuda"
    channels_last = _flag(tc.channels_last, cuda)
    save_state = state_dict or model.state_dict
    load_state = load_state_dict or model.load_state_dict
    workers = cfg.data.num_workers if num_workers is None else num_workers
    # fp16 needs loss scaling; bf16 does not
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)

    model.to(device)
    loss_fn.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    module: nn.Module = TrainModule(model, loss_fn)
    if dist_info.enabled:
        module = nn.parallel.DistributedDataParallel(
            # a linear probe leaves the backbone without gradients for its first epochs
            module, device_ids=[device.index] if cuda else None, find_unused_parameters=probe_epochs > 0
        )

    groups = param_groups(model, loss_fn, tc.lr, weight_decay=tc.weight_decay, backbone_lr_mult=backbone_lr_mult,
                          layer_decay=layer_decay)
    optimizer = create_optimizer(tc, groups)
    steps_per_epoch = len(sampler)
    scheduler = create_scheduler(optimizer, tc, steps_per_epoch, probe_epochs=probe_epochs)
    set_frozen = getattr(model, "set_backbone_frozen", None)

    start_epoch, best_val, best_epoch, images_seen, history = 0, None, -1, 0, []
    start_step, partial = 0, None
    bad_epochs = 0
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device, require=RESUME_KEYS)
        load_state(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1
        if state.get("step"):  # written when a stop arrived mid-epoch: continue that epoch at its next step
            start_epoch, start_step = int(state["epoch"]), int(state["step"])
            partial = (dict(state["sums"]), int(state["n_batches"]), state["rng"])
        best_val, best_epoch = state["best_val"], int(state["best_epoch"])
        images_seen, history, bad_epochs = int(state["images_seen"]), list(state["history"]), state["bad_epochs"]
        if dist_info.is_main:
            at = f" step {start_step + 1}" if start_step else ""
            yield Log(f"resumed from {resume_from} at epoch {start_epoch + 1}/{tc.epochs}{at}")

    def checkpoint_state(epoch: int, step: int = 0, **extra: Any) -> dict[str, Any]:
        """Everything to continue: ``step`` > 0 marks a checkpoint taken after that many steps of ``epoch``."""
        return {
            "model": save_state(),
            "loss": loss_fn.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "sampler": sampler.state_dict(batches_done=step) if step else sampler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "step": step,
            "best_val": best_val,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "images_seen": images_seen,
            "history": history,
            "config": cfg.model_dump(mode="json"),
            **extra,
        }

    t_start = time.perf_counter()
    stopped = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, tc.epochs):
        t_epoch = time.perf_counter()
        # per-epoch seeding makes a resumed run replay the same augmentations and batches
        seed_everything(cfg.seed * 100_003 + epoch * 1009 + dist_info.rank)
        sampler.set_epoch(epoch)
        if set_frozen is not None and probe_epochs:
            set_frozen(epoch < probe_epochs)
        loader = torch.utils.data.DataLoader(
            train_dataset,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=cuda,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
        )
        module.train()
        sums: dict[str, float] = {}
        n_batches = n_skipped = first_step = 0
        if partial is not None and epoch == start_epoch:
            sums, n_batches, rng = partial
            set_rng_state(rng)  # the augmentation RNG where the stopped run left it (exact with num_workers=0)
            first_step, partial = start_step, None
        t_window, n_window = time.perf_counter(), 0
        for step, (images, labels, _) in enumerate(loader, start=first_step):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, autocast_dtype):
                loss, parts = module(images, labels)
            optimizer.zero_grad(set_to_none=True)
            values = {"loss": float(loss.detach())} | {k: float(v.detach()) for k, v in parts.items()}
            bad = guard.nonfinite_parts(values["loss"], {k: v for k, v in values.items() if k != "loss"})
            what = "loss"
            if not bad:
                scaler.scale(loss).backward()
                gnorm = 0.0
                if tc.grad_clip:
                    scaler.unscale_(optimizer)
                    gnorm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), tc.grad_clip))
                elif not scaler.is_enabled():
                    gnorm = guard.grad_norm(module.parameters())
                # with fp16 loss scaling an inf gradient is routine: the scaler skips that step itself
                if not scaler.is_enabled() and not math.isfinite(gnorm):
                    bad, what = [f"gradient norm={gnorm}"], "gradient"
            if any_rank(bool(bad), dist_info):
                n_skipped += 1
                msg = guard.describe(epoch + 1, step + 1, values["loss"], values, bad or ["loss on another rank"],
                                     what=what, checkpoint=str(last_path) if last_path.is_file() else None)
                if tc.nonfinite == "stop":
                    guard.raise_nonfinite(msg)
                optimizer.zero_grad(set_to_none=True)
                if dist_info.is_main and n_skipped <= 10:
                    yield Log(f"skipped step: {msg}", level="warning")
                continue
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            n = images.shape[0] * dist_info.world_size
            images_seen += n
            n_window += n
            n_batches += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            # the very first step is logged too: its pace gives an ETA within seconds (ofgr_core/workflows/checks)
            first = epoch == start_epoch and step == first_step
            if dist_info.is_main and ((step + 1) % tc.log_every == 0 or step + 1 == steps_per_epoch or first):
                dt = time.perf_counter() - t_window
                yield TrainStep(
                    epoch=epoch + 1,
                    step=step + 1,
                    steps_per_epoch=steps_per_epoch,
                    loss=values["loss"],
                    losses={k: v for k, v in values.items() if k != "loss"},
                    lr=head_lr(optimizer),
                    images_per_s=n_window / dt if dt > 0 else 0.0,
                    gpu_mem_mb=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
                )
                t_window, n_window = time.perf_counter(), 0
            if any_rank(stop() if dist_info.is_main else False, dist_info):
                stopped = True
                if dist_info.is_main:  # finish the step, then checkpoint it: resume continues at the next one
                    save_checkpoint(last_path, checkpoint_state(epoch, step + 1, sums=sums, n_batches=n_batches))
                    yield Log(f"stopped after epoch {epoch + 1} step {step + 1}; checkpoint {last_path}")
                break
        if stopped:
            break
        if n_batches == 0 and steps_per_epoch > 0:
            guard.raise_nonfinite(f"every step of epoch {epoch + 1} had a non-finite loss or gradient and was "
                                  "skipped (train.nonfinite=skip); lower train.lr or loss.arcface.scale")

        # ---- validation on held-out seen classes (rank 0), then checkpoint
        means = {k: v / max(1, n_batches) for k, v in sums.items()}
        val: dict[str, float] = {}
        improved = False
        if dist_info.is_main:
            if val_embed is not None and len(val_labels) >= 2:
                val = validate(val_embed(), val_labels)
            score = val.get("recall@1", -means.get("loss", 0.0))
            improved = best_val is None or score > best_val
            if improved:
                best_val, best_epoch, bad_epochs = score, epoch, 0
            else:
                bad_epochs += 1
            record = {"epoch": epoch + 1, "loss": means.get("loss"), "val": val}
            history.append(record)
            save_checkpoint(last_path, checkpoint_state(epoch))
            if improved:
                save_checkpoint(best_path, {"model": save_state(), "epoch": epoch, "val": val,
                                            "config": cfg.model_dump(mode="json")})
            yield TrainEpoch(
                epoch=epoch + 1,
                epochs=tc.epochs,
                loss=means.get("loss", float("nan")),
                losses={k: v for k, v in means.items() if k != "loss"},
                lr=head_lr(optimizer),
                val=val,
                seconds=time.perf_counter() - t_epoch,
                best=improved,
            )
        barrier(dist_info)
        patience = tc.early_stopping
        if any_rank(patience is not None and bad_epochs >= patience, dist_info):
            if dist_info.is_main:
                yield Log(f"early stopping: no validation improvement for {patience} epochs")
            break

    return TrainResult(
        best_path=best_path if best_path.exists() else None,
        last_path=last_path if last_path.exists() else None,
        best_epoch=best_epoch + 1,
        best_val=best_val,
        epochs_done=(epoch + 1) if not stopped else epoch,
        seconds=time.perf_counter() - t_start,
        images_seen=images_seen,
        stopped=stopped,
        history=history,
    )


def validate(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out Recall@1 and MAP@R (fine) of validation embeddings, through the final metrics' engine."""
    from ofgr_core.retrieval.evaluate import run_split

    block = run_split(
        embeddings, labels, cfg=EvalConfig(ks=[1], bootstrap=0, index=IndexConfig(type="flat", device="cpu")),
    ).block
    return {"recall@1": float(block["fine"]["recall@1"]), "map@r": float(block["fine"]["map@r"])}
