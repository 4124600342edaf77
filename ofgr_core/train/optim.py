"""Optimizer and schedule factories: parameter groups carry the fine-tuning recipe.

Groups are named (``backbone``, ``head``, ``loss``) and carry an ``lr_scale``; the schedule is cosine with
linear warmup for every group, times the group's scale, with the backbone held at zero during a linear probe
(``model.probe_epochs``). Recipes for pretrained backbones live here, not in the loop:

- ``model.backbone_lr_mult``: the backbone learns at ``train.lr x mult`` (e.g. 0.1), the head at ``train.lr``.
- ``model.layer_decay``: timm's layer-wise decay, each block below the top learns ``decay`` times slower.
- ``model.probe_epochs``: head-only for the first epochs (the backbone's lr is 0, it gets no gradients and
  its BatchNorm statistics stay fixed), then everything trains, the backbone on a warmup + cosine of its own
  over the remaining epochs: the classic linear-probe-then-fine-tune that keeps a random head's first
  gradients from wrecking pretrained features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ofgr_core.common.errors import ConfigError
from ofgr_core.config import TrainConfig


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def param_groups(
    model: nn.Module,
    loss_fn: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.0,
    backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Named parameter groups with ``lr_scale`` (relative to ``lr``).

    An encoder trained end to end (its ``tower``, ``ofgr_core.models.base.Encoder``) gets separate
    ``backbone`` (the tower) and ``head`` groups; any other module (a head trained on cached features) is one
    ``head`` group. The loss's own groups (ArcFace class centres with their learning rate) come last.
    """
    groups: list[dict[str, Any]] = []
    backbone = getattr(model, "tower", None)
    if isinstance(backbone, nn.Module):
        if layer_decay is not None:
            groups += _layer_decay_groups(backbone, weight_decay, layer_decay, backbone_lr_mult)
        else:
            params = [p for p in backbone.parameters() if p.requires_grad]
            groups.append({"params": params, "name": "backbone", "lr_scale": backbone_lr_mult})
        in_tower = {id(p) for p in backbone.parameters()}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_tower]
        groups.append({"params": rest, "name": "head", "lr_scale": 1.0})
    else:
        groups.append({"params": [p for p in model.parameters() if p.requires_grad], "name": "head",
                       "lr_scale": 1.0})
    loss_groups = getattr(loss_fn, "param_groups", None)
    if callable(loss_groups):
        for g in loss_groups(lr):
            groups.append({"name": "loss", **g, "lr_scale": g.get("lr", lr) / lr})
    else:
        groups.append({"params": [p for p in loss_fn.parameters() if p.requires_grad], "name": "loss",
                       "lr_scale": 1.0})
    out = []
    for g in groups:
        if g["params"]:
            g = dict(g)
            g["lr"] = lr * g["lr_scale"]
            out.append(g)
    return out


def _layer_decay_groups(backbone: nn.Module, weight_decay: float, decay: float, mult: float) -> list[dict[str, Any]]:
    if not hasattr(backbone, "group_matcher"):
        raise ConfigError(
            f"model.layer_decay: {type(backbone).__name__} does not describe its layers (no group_matcher); "
            "use model.backbone_lr_mult instead"
        )
    from timm.optim._param_groups import param_groups_layer_decay

    groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, layer_decay=decay)
    return [{"params": g["params"], "name": "backbone", "lr_scale": mult * g.get("lr_scale", 1.0),
             "weight_decay": g.get("weight_decay", weight_decay)} for g in groups]


def create_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]], *, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) over named groups (each keeps its own ``lr``).

    ``fused``: PyTorch's single-kernel update (one pass over each parameter instead of one multi-tensor op per
    arithmetic step). The same update rule, rounded differently: a run's numbers change in the last bits, and
    over many epochs that becomes a different model, so it is a setting (``train.fused``), not a silent switch.
    """
    clean = [{k: v for k, v in g.items()} for g in groups]
    extra: dict[str, Any] = {"fused": True} if fused else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(clean, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    return torch.optim.SGD(clean, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True,
                           **extra)


def head_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the head group (what progress reports show: the backbone's is 0 during a probe)."""
    for g in optimizer.param_groups:
        if g.get("name") == "head":
            return float(g["lr"])
    return float(optimizer.param_groups[0]["lr"])


def create_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, probe_epochs: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine with warmup per step; the ``backbone`` groups stay at 0 for the first ``probe_epochs``, then
    follow a schedule of their own over the remaining epochs: warmup over ``train.warmup_epochs`` again (a
    pretrained backbone released at full rate would take the largest steps of the run at once), then cosine.

    Raises:
        ConfigError: ``probe_epochs`` leaves no epoch in which the backbone trains.
    """
    if probe_epochs and probe_epochs >= cfg.epochs:
        raise ConfigError(
            f"model.probe_epochs={probe_epochs} >= train.epochs={cfg.epochs}: the backbone would never train; "
            "lower model.probe_epochs, or set model.freeze=all to train only the head (on cached features)"
        )
    total = max(1, steps_per_epoch * cfg.epochs)
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    base = cosine_with_warmup(total, warmup_steps)
    probe_steps = probe_epochs * steps_per_epoch

    after = cosine_with_warmup(max(1, total - probe_steps), warmup_steps)

    def probe(step: int) -> float:
        return 0.0 if step < probe_steps else after(step - probe_steps)

    lambdas = [probe if g.get("name") == "backbone" and probe_steps else base for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
