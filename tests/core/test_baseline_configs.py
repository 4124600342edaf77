"""The CNN baseline configs validate and build their loss and sampler (models are checked in test_models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ofgr_core.config import load_config
from ofgr_core.losses import create_loss
from ofgr_core.samplers import create_sampler

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BASELINES = ["resnet50_arcface_htriplet", "efficientnet_b0_arcface_htriplet"]
DEMOS = ["demo_resnet50", "demo_efficientnet_b0"]


@pytest.mark.parametrize("name", BASELINES + DEMOS)
def test_baseline_config_builds_loss_and_sampler(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.model.kind == "timm" and cfg.model.name in {"resnet50", "efficientnet_b0"}
    loss = create_loss(cfg.loss, num_classes=24, embed_dim=cfg.model.embed_dim)
    assert set(loss.losses) == {"arcface", "htriplet"}
    # 8 coarse classes x 8 fine classes x 6 images
    fine = np.repeat(np.arange(64), 6)
    sampler = create_sampler(cfg.sampler, np.stack([fine, fine // 8], axis=1), seed=cfg.seed)
    s = cfg.sampler
    assert len(next(iter(sampler))) == s.coarse_per_batch * s.fine_per_coarse * s.k


@pytest.mark.parametrize("name", BASELINES)
def test_real_data_baselines(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.data.sources[0].type == "stanford_cars" and cfg.split.protocol == "cars196"
    assert cfg.data.image_size == 224 and cfg.model.embed_dim == 512 and cfg.model.pretrained is True
    assert cfg.eval.index.type == "flat"


@pytest.mark.parametrize("name", DEMOS)
def test_demo_baselines_need_no_download(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.data.sources[0].type == "synthetic" and cfg.model.pretrained is False
    assert cfg.data.image_size == 64
