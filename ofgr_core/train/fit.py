"""Fit strategies: how a run trains its encoder, chosen by what the encoder can do (never by its family).

- ``EndToEnd``: images through the whole encoder every step (timm backbones being fine-tuned).
- ``HeadOnFeatures``: the encoder's tower is frozen (``model.tower_frozen``: a CLIP image tower, a timm
  backbone with ``freeze: all``), so its features are computed once through the content-addressed cache
  (``ofgr_core.embedding.features``) and only the head trains on them. Retraining or re-evaluating a head never runs
  the tower again.

Both train through ``ofgr_core.train.loop.train`` with the same losses, sampler, optimizer/schedule
factories, seen-class validation, early stopping, checkpoints and events.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ofgr_core.config import Config
from ofgr_core.models.base import Encoder, FeatureHead
from ofgr_core.runs.events import Event
from ofgr_core.train.ddp import DistInfo
from ofgr_core.train.loop import TrainResult, _flag, train

Progress = Callable[[int, int], None]


@dataclass
class FitInputs:
    """What a fit needs from the run: the data rows (indices into ``paths``) and how to train."""

    cfg: Config
    model: Encoder
    train_transform: Callable[..., Any]
    eval_transform: Callable[..., Any]
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


def _trainable(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class FeatureDataset(torch.utils.data.Dataset):
    """In-memory features by row: ``(feature, labels_row, index)``, like ``ImageDataset``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.labels[i], i


class Fitter:
    """A fit strategy. ``prepare`` (optional heavy work), ``fit`` (an event generator), ``embed``."""

    name = ""

    def prepare(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None) -> dict[str, Any]:
        return {}

    def fit(self, inp: FitInputs, loss_fn: torch.nn.Module, sampler: Any) -> Generator[Event, None, TrainResult]:
        raise NotImplementedError

    def embed(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None,
              out: Path | None = None) -> np.ndarray:
        """Embeddings of ``rows``; with ``out`` they are written to that ``.npy`` file (streamed where the
        strategy allows) and a read-only memory map of it is returned."""
        raise NotImplementedError

    def tower_features(self, rows: np.ndarray) -> np.ndarray | None:
        """The frozen tower's features of ``rows`` when this strategy has them (text -> image needs them)."""
        return None

    def trains_anything(self, inp: FitInputs) -> bool:
        return _trainable(inp.model) and inp.cfg.train.epochs > 0


def _no_training(inp: FitInputs) -> TrainResult:
    return TrainResult(best_path=None, last_path=None, best_epoch=0, best_val=None, epochs_done=0, seconds=0.0,
                       images_seen=0, stopped=False, history=[])


class EndToEnd(Fitter):
    """Images through the whole encoder each step, with augmentation (``data.crop_scale``, flips)."""

    name = "end_to_end"

    def fit(self, inp: FitInputs, loss_fn: torch.nn.Module, sampler: Any) -> Generator[Event, None, TrainResult]:
        from ofgr_core.data.loader import ImageDataset
        from ofgr_core.embedding.embed import embed_paths

        cfg = inp.cfg
        labels, _ = train_labels(inp.labels, inp.train_rows)
        cl = _flag(cfg.train.channels_last, inp.device.type == "cuda")
        val_paths = [inp.paths[i] for i in inp.val_rows]

        def val_embed() -> np.ndarray:
            return embed_paths(inp.model, val_paths, inp.eval_transform, inp.device,
                               batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers,
                               autocast_dtype=inp.model.autocast_dtype, channels_last=cl)

        mc = cfg.model
        return (yield from _train(
            inp,
            model=inp.model,
            loss_fn=loss_fn,
            sampler=sampler,
            train_dataset=ImageDataset([inp.paths[i] for i in inp.train_rows], labels, inp.train_transform),
            val_embed=val_embed if len(val_paths) >= 2 else None,
            probe_epochs=getattr(mc, "probe_epochs", 0),
            backbone_lr_mult=getattr(mc, "backbone_lr_mult", 1.0),
            layer_decay=getattr(mc, "layer_decay", None),
        ))

    def embed(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None,
              out: Path | None = None) -> np.ndarray:
        from ofgr_core.embedding.embed import embed_paths

        cfg = inp.cfg
        cuda = inp.device.type == "cuda"
        return embed_paths(inp.model, [inp.paths[i] for i in rows], inp.eval_transform, inp.device,
                           progress=progress, batch_size=cfg.train.eval_batch_size,
                           num_workers=cfg.data.num_workers, autocast_dtype=inp.model.autocast_dtype,
                           channels_last=_flag(cfg.train.channels_last, cuda), out=out)


class HeadOnFeatures(Fitter):
    """The frozen tower's features once (cached by content hash), then the head trains on them."""

    name = "head_on_features"

    def __init__(self) -> None:
        self._features: dict[int, int] = {}  # row -> position in self._matrix
        self._matrix = np.empty((0, 0), np.float32)

    def prepare(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None) -> dict[str, Any]:
        from ofgr_core.embedding.features import FeatureStore, default_cache_root, extract_features

        cfg = inp.cfg
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        root = Path(cfg.data.feature_cache).expanduser() if cfg.data.feature_cache else default_cache_root()
        store = FeatureStore(root, inp.model.feature_key(), inp.model.feature_dim)
        digests = [inp.digests[i] for i in rows]
        dist = inp.dist_info
        if dist.enabled:
            # under torchrun each rank extracts its share of the missing images into the one shared cache
            from ofgr_core.train.ddp import barrier

            todo = store.missing(digests)
            hits = len(rows) - len(todo)
            mine = todo[dist.rank :: dist.world_size]
            extract_features(
                inp.model, [inp.paths[rows[j]] for j in mine], inp.eval_transform, inp.device,
                digests=[digests[j] for j in mine], store=store, batch_size=cfg.train.eval_batch_size,
                num_workers=cfg.data.num_workers, progress=progress,
            )
            barrier(dist)
            store.refresh()
            feats, stats = store.read(digests), {"hits": hits, "computed": len(todo)}
        else:
            feats, stats = extract_features(
                inp.model, [inp.paths[i] for i in rows], inp.eval_transform, inp.device, digests=digests,
                store=store, batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers,
                progress=progress,
            )
        self._matrix = feats
        self._features = {int(r): j for j, r in enumerate(rows)}
        return {**stats, "cache": str(store.folder), "dim": int(inp.model.feature_dim), "notes": list(store.notes)}

    def tower_features(self, rows: np.ndarray) -> np.ndarray:
        return self._matrix[[self._features[int(r)] for r in rows]]

    def _apply_head(self, inp: FitInputs, x: np.ndarray, batch: int = 4096) -> np.ndarray:
        head = FeatureHead(inp.model).to(inp.device)
        was = head.training
        head.eval()
        out = np.empty((len(x), inp.model.embed_dim), np.float32)
        with torch.no_grad():
            for a in range(0, len(x), batch):
                t = torch.from_numpy(np.ascontiguousarray(x[a : a + batch])).to(inp.device)
                out[a : a + batch] = head(t).float().cpu().numpy()
        head.train(was)
        return out

    def fit(self, inp: FitInputs, loss_fn: torch.nn.Module, sampler: Any) -> Generator[Event, None, TrainResult]:
        labels, _ = train_labels(inp.labels, inp.train_rows)
        val_x = self.tower_features(inp.val_rows)
        head = FeatureHead(inp.model)
        # a small head on in-memory features trains fastest on one CPU thread: with tiny matrices OpenMP's
        # thread hand-offs cost more than the arithmetic (measured 12x on the 2-core box while it was busy)
        threads = torch.get_num_threads()
        if inp.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            return (yield from self._train(inp, head, loss_fn, sampler, labels, val_x))
        finally:
            torch.set_num_threads(threads)

    def _train(self, inp: FitInputs, head: FeatureHead, loss_fn: torch.nn.Module, sampler: Any,
               labels: np.ndarray, val_x: np.ndarray) -> Generator[Event, None, TrainResult]:
        return (yield from _train(
            inp,
            model=head,
            loss_fn=loss_fn,
            sampler=sampler,
            train_dataset=FeatureDataset(self.tower_features(inp.train_rows), labels),
            val_embed=(lambda: self._apply_head(inp, val_x)) if len(val_x) >= 2 else None,
            num_workers=0,
        ))

    def embed(self, inp: FitInputs, rows: np.ndarray, progress: Progress | None = None,
              out: Path | None = None) -> np.ndarray:
        emb = self._apply_head(inp, self.tower_features(rows))
        if progress is not None:
            progress(len(rows), len(rows))
        if out is not None:  # the tower features are in memory already; the file is written in one go
            import os

            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(emb, dtype=np.float32))
            os.replace(tmp, out)
            return np.load(out, mmap_mode="r") if len(emb) else np.load(out)
        return emb

    def trains_anything(self, inp: FitInputs) -> bool:
        return _trainable(inp.model.head) and inp.cfg.train.epochs > 0


def _train(inp: FitInputs, **kwargs: Any) -> Generator[Event, None, TrainResult]:
    """``train`` with what every strategy takes from the run: validation labels, device, checkpoints (the
    encoder's trainable state: a frozen tower built from weights is never saved), stop and resume."""
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


__all__ = ["EndToEnd", "FeatureDataset", "FitInputs", "Fitter", "HeadOnFeatures", "create_fitter",
           "_no_training", "train_labels"]
