"""Fit strategies: how a run trains its encoder, chosen by what the encoder can do (never by its family).

- ``EndToEnd``: images through the whole encoder every step (a backbone being fine-tuned).
- ``HeadOnFeatures``: the encoder's tower is frozen (``model.tower_frozen``), so its features are computed
  once through the content-addressed cache (``ofgr_core.embedding.features``) and only the head trains on
  them. Retraining or re-evaluating a head never runs the tower again.

Callers ask a strategy what it does (``caches_tower_features``, ``trains_tower``, ``trainable_module``),
never its name. Both train through ``ofgr_core.train.loop.train`` with the same losses, sampler,
optimizer/schedule factories, seen-class validation, model selection, checkpoints and events.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ofgr_core.config import Config
from ofgr_core.models.base import Encoder, FeatureHead, Transform, apply_head
from ofgr_core.runs.events import Event
from ofgr_core.samplers.factory import BatchSampler
from ofgr_core.train.ddp import DistInfo
from ofgr_core.train.loop import TrainResult, _flag, train

Progress = Callable[[int, int], None]


@dataclass
class FitInputs:
    """What a fit needs from the run: the data rows (indices into ``paths``) and how to train."""

    cfg: Config
    model: Encoder
    train_transform: Transform
    eval_transform: Transform
    device: torch.device
    paths: Sequence[str]
    digests: Sequence[str]  # content hash per row of ``paths`` (feature cache key)
    labels: np.ndarray  # (N, L) hierarchy codes of every row
    train_rows: np.ndarray
    val_rows: np.ndarray
    ckpt_dir: Path
    dist_info: DistInfo = field(default_factory=DistInfo)
    stop: Callable[[], bool] = lambda: False
    resume_from: Path | None = None


def train_labels(labels: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """(N, 2) training labels: contiguous fine ids (ArcFace's class index; coarse-only rows keep
    ``COARSE_ONLY``) and coarse ids; and the fine class count (``ofgr_core.data.labels.training_labels``)."""
    from ofgr_core.data.labels import training_labels

    classes, dense = training_labels(labels[rows])
    return dense, len(classes)


class FeatureDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """In-memory features by row: ``(feature, labels_row, index)``, like ``ImageDataset``.

    The whole matrix goes to ``device`` once; the training loop gathers batches from it by index
    (``take``: ``ofgr_core.train.loop.InMemoryBatches``) instead of running a DataLoader over rows.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.labels[i], i

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x.index_select(0, rows), self.labels.index_select(0, rows)


class Fitter(ABC):
    """A fit strategy: ``prepare`` (heavy work before training, when it has any), ``fit`` (an event
    generator returning a ``TrainResult``), ``embed``.

    Capabilities, which callers read instead of names:

    - ``caches_tower_features``: ``prepare`` computes the frozen tower's features once (the pipeline's
      ``features`` stage) and ``tower_features`` returns them afterwards.
    - ``trains_tower``: each step runs images through the whole encoder (training costs ~3x a forward pass
      per image, so forward FLOPs are counted).
    - ``trainable_module(model)``: the module whose parameters train (its count is metrics.json's
      ``trainable_params``).
    """

    name: ClassVar[str]
    caches_tower_features: ClassVar[bool] = False
    trains_tower: ClassVar[bool] = False

    def prepare(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None) -> dict[str, Any]:
        """Heavy work before training; what it did, for metrics.json's ``fit`` block (empty: nothing)."""
        return {}

    @abstractmethod
    def fit(self, inp: FitInputs, loss_fn: nn.Module,
            sampler: BatchSampler) -> Generator[Event, None, TrainResult]:
        """Train; yields events and returns the result."""

    @abstractmethod
    def embed(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None,
              out: Path | None = None) -> np.ndarray:
        """Embeddings of ``rows``; with ``out`` they are written to that ``.npy`` file (streamed where the
        strategy allows) and a read-only memory map of it is returned."""

    @abstractmethod
    def trainable_module(self, model: Encoder) -> nn.Module:
        """The part of the encoder this strategy trains."""

    def tower_features(self, rows: np.ndarray) -> np.ndarray | None:
        """The frozen tower's features of ``rows`` when this strategy has them (text -> image needs them)."""
        return None

    def trains_anything(self, inp: FitInputs) -> bool:
        module = self.trainable_module(inp.model)
        return any(p.requires_grad for p in module.parameters()) and inp.cfg.train.epochs > 0

    def trainable_params(self, model: Encoder) -> int:
        return sum(p.numel() for p in self.trainable_module(model).parameters() if p.requires_grad)


class EndToEnd(Fitter):
    """Images through the whole encoder each step, with augmentation (``data.crop_scale``, flips)."""

    name = "end_to_end"
    trains_tower = True

    def trainable_module(self, model: Encoder) -> nn.Module:
        return model

    def fit(self, inp: FitInputs, loss_fn: nn.Module,
            sampler: BatchSampler) -> Generator[Event, None, TrainResult]:
        from ofgr_core.data.loader import ImageDataset

        labels, _ = train_labels(inp.labels, inp.train_rows)
        recipe = inp.cfg.model.fine_tuning()
        return (yield from _train(
            inp,
            model=inp.model,
            loss_fn=loss_fn,
            sampler=sampler,
            train_dataset=ImageDataset([inp.paths[i] for i in inp.train_rows], labels, inp.train_transform),
            val_embed=(lambda: self.embed(inp, inp.val_rows)) if len(inp.val_rows) >= 2 else None,
            probe_epochs=recipe.probe_epochs,
            backbone_lr_mult=recipe.backbone_lr_mult,
            layer_decay=recipe.layer_decay,
        ))

    def embed(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None,
              out: Path | None = None) -> np.ndarray:
        from ofgr_core.embedding.embed import embed_paths

        cfg = inp.cfg
        return embed_paths(inp.model, [inp.paths[i] for i in rows], inp.eval_transform, inp.device,
                           progress=progress, batch_size=cfg.train.eval_batch_size,
                           num_workers=cfg.data.num_workers, autocast_dtype=inp.model.autocast_dtype,
                           channels_last=_flag(cfg.train.channels_last, inp.device.type == "cuda"), out=out)


# A head trains on all CPU threads only when its largest weight matrix has this many entries. Idle, the 2-core box
# (benchmarks/bench_head_step.py, fused AdamW, batches of 32; docs/benchmarks.md) steps a 128 -> 512 -> 128 head in
# 3.14 ms on one thread or two and a 512-wide input in 3.78 / 3.87 ms, while a 1280 -> 512 -> 128 head (the
# stand-in's features) takes 5.47 ms on one and 4.14 ms on two. Small heads stay on one thread: they gain
# nothing from a second, and on a busy box OpenMP's hand-offs around tiny matrices were measured 12x slower.
HEAD_THREADS_MIN_WEIGHTS = 512 * 512


def _largest_weight(module: nn.Module) -> int:
    return max((p.numel() for p in module.parameters()), default=0)


class HeadOnFeatures(Fitter):
    """The frozen tower's features once (cached by content hash), then the head trains on them."""

    name = "head_on_features"
    caches_tower_features = True

    def __init__(self) -> None:
        self._features: dict[int, int] = {}  # row -> position in self._matrix
        self._matrix = np.empty((0, 0), np.float32)

    def trainable_module(self, model: Encoder) -> nn.Module:
        return model.head

    def prepare(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None) -> dict[str, Any]:
        from ofgr_core.embedding.features import default_cache_root, extract_features, open_feature_store

        cfg = inp.cfg
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        root = Path(cfg.data.feature_cache).expanduser() if cfg.data.feature_cache else default_cache_root()
        store = open_feature_store(inp.model, root)
        digests = [inp.digests[i] for i in rows]
        extract = functools.partial(extract_features, inp.model, transform=inp.eval_transform, device=inp.device,
                                    store=store, batch_size=cfg.train.eval_batch_size,
                                    num_workers=cfg.data.num_workers, progress=progress)
        dist = inp.dist_info
        if dist.enabled:
            # under torchrun each rank extracts its share of the missing images into the one shared cache
            from ofgr_core.train.ddp import barrier

            # every rank reads the same list of missing images: no rank appends before all have read it
            barrier(dist)
            todo = store.missing(digests)
            barrier(dist)
            mine = todo[dist.rank :: dist.world_size]
            extract([inp.paths[rows[j]] for j in mine], digests=[digests[j] for j in mine])
            barrier(dist)
            store.refresh()
            feats, stats = store.read(digests), {"hits": len(rows) - len(todo), "computed": len(todo)}
        else:
            feats, stats = extract([inp.paths[i] for i in rows], digests=digests)
        self._matrix = feats
        self._features = {int(r): j for j, r in enumerate(rows)}
        return {**stats, "cache": str(store.folder), "dim": int(inp.model.feature_dim), "notes": list(store.notes)}

    def tower_features(self, rows: np.ndarray) -> np.ndarray:
        return self._matrix[[self._features[int(r)] for r in rows]]

    def fit(self, inp: FitInputs, loss_fn: nn.Module,
            sampler: BatchSampler) -> Generator[Event, None, TrainResult]:
        labels, _ = train_labels(inp.labels, inp.train_rows)
        val_x = self.tower_features(inp.val_rows)
        threads = torch.get_num_threads()
        if inp.device.type == "cpu" and _largest_weight(inp.model.head) < HEAD_THREADS_MIN_WEIGHTS:
            torch.set_num_threads(1)
        try:
            return (yield from _train(
                inp,
                model=FeatureHead(inp.model),
                loss_fn=loss_fn,
                sampler=sampler,
                train_dataset=FeatureDataset(self.tower_features(inp.train_rows), labels, inp.device),
                val_embed=(lambda: apply_head(inp.model, val_x, inp.device)) if len(val_x) >= 2 else None,
                num_workers=0,
            ))
        finally:
            torch.set_num_threads(threads)

    def embed(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None,
              out: Path | None = None) -> np.ndarray:
        emb = apply_head(inp.model, self.tower_features(rows), inp.device)
        if progress is not None:
            progress(len(rows), len(rows))
        if out is None:
            return emb
        # the tower features are in memory already: the file is written in one go
        from ofgr_core.common.atomic import atomic_save_npy

        atomic_save_npy(out, emb)
        loaded: np.ndarray = np.load(out, mmap_mode="r") if len(emb) else np.load(out)
        return loaded


def _train(inp: FitInputs, **kwargs: Any) -> Generator[Event, None, TrainResult]:
    """``train`` with what every strategy takes from the run: validation labels, device, checkpoints (the
    encoder's trainable state: a frozen tower built from weights is never saved), precision, stop, resume."""
    return (yield from train(
        inp.cfg,
        val_labels=inp.labels[inp.val_rows],
        device=inp.device,
        ckpt_dir=inp.ckpt_dir,
        dist_info=inp.dist_info,
        stop=inp.stop,
        resume_from=inp.resume_from,
        state_dict=inp.model.trainable_state_dict,
        load_state_dict=inp.model.load_trainable_state_dict,
        autocast_dtype=inp.model.autocast_dtype,
        **kwargs,
    ))


def create_fitter(model: Encoder) -> Fitter:
    """The fit strategy the encoder's capabilities call for: a frozen tower trains its head on cached features."""
    return HeadOnFeatures() if model.tower_frozen else EndToEnd()


__all__ = ["EndToEnd", "FeatureDataset", "FitInputs", "Fitter", "HeadOnFeatures", "create_fitter", "train_labels"]
