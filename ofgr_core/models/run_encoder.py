"""Rebuilding a finished (or stopped) run's encoder from its folder: the one way every reader gets a run's
trained model back (queries by image and by text, hierarchy induction from a run, ...).

The run's ``config.yaml`` names the family and architecture; its best (else last) checkpoint holds what
``Encoder.trainable_state_dict`` saved: the whole network when the tower trained (then the weights source is
not needed and is not read), the head alone when the tower is frozen and built from a weights source (then
the tower is rebuilt from that source, exactly as the run built it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ofgr_core.common.errors import NotFoundError
from ofgr_core.config import Config, load_config
from ofgr_core.models.base import Encoder, Transform
from ofgr_core.models.factory import create_model_and_transforms
from ofgr_core.models.precision import resolve_autocast
from ofgr_core.runs.checkpoint import load_checkpoint
from ofgr_core.runs.folder import RunFolder


@dataclass
class RunEncoder:
    """A run's encoder in eval mode on ``device``, its eval transform, its config and the checkpoint loaded."""

    model: Encoder
    transform: Transform
    config: Config
    checkpoint: Path | None
    device: torch.device


def run_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint a run's encoder is rebuilt from: ``best.pt``, else ``last.pt``, else ``None``."""
    folder = RunFolder(run_dir)
    return next((p for p in (folder.checkpoint("best"), folder.checkpoint("last")) if p.is_file()), None)


def checkpoint_mtime(run_dir: str | os.PathLike[str]) -> float:
    """When the run's checkpoints last changed (a cache key for rebuilt encoders); 0 without any."""
    folder = RunFolder(run_dir)
    return max((c.stat().st_mtime for c in (folder.checkpoint("best"), folder.checkpoint("last"))
                if c.is_file()), default=0.0)


def load_run_encoder(run_dir: str | os.PathLike[str], device: torch.device | str = "cpu") -> RunEncoder:
    """The run's trained encoder, rebuilt from its config and best (else last) checkpoint.

    Args:
        run_dir: the run folder.
        device: where the encoder runs; its autocast dtype is ``model.precision`` resolved for this device.

    Raises:
        NotFoundError: no ``config.yaml``, or no checkpoint while the encoder has something trained (a head
            or a tower without a weights source), so the run's model cannot be reproduced.
        ConfigError: the checkpoint does not fit the config's model.
        CheckpointError: the checkpoint is unreadable.
    """
    folder = RunFolder(run_dir)
    if not folder.config.is_file():
        raise NotFoundError(f"{folder.run_id}: no config.yaml (not a run folder?)")
    cfg = load_config(folder.config)
    ckpt = run_checkpoint(folder.path)
    state = load_checkpoint(ckpt, map_location="cpu", require=("model",))["model"] if ckpt is not None else None
    model_cfg = cfg.model
    if state is not None and not model_cfg.tower_frozen:
        model_cfg = model_cfg.without_weights()  # the checkpoint holds the whole network
    model, _, eval_tf = create_model_and_transforms(model_cfg, image_size=cfg.data.image_size)
    if state is not None:
        model.load_trainable_state_dict(state)
    elif not model.tower_from_weights or any(True for _ in model.head.parameters()):
        raise NotFoundError(f"{folder.run_id}: no checkpoint (checkpoints/best.pt or last.pt) holds its trained "
                            "weights; the run's encoder cannot be rebuilt")
    dev = torch.device(device)
    model.to(dev)
    model.autocast_dtype = resolve_autocast(cfg.model.precision, cfg.train.amp, dev)
    model.eval()
    return RunEncoder(model, eval_tf, cfg, ckpt, dev)
