"""The timm family's factory (``ModelFamily.factory`` of ``model.kind: timm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from timm.data.config import resolve_model_data_config
from torch import nn

from ofgr_core.common.errors import ConfigError
from ofgr_core.models.timm.backbone import cached_hub_weights, create_timm_backbone
from ofgr_core.models.timm.config import TimmModelConfig
from ofgr_core.models.timm.encoder import EmbeddingModel


def create_timm_model(cfg: TimmModelConfig, image_size: int | None = None) -> EmbeddingModel:
    """Any timm model by name, with the pool -> Linear -> BatchNorm1d -> L2 neck.

    The global pool is the architecture's own (average pooling for CNNs, class/average token for
    transformers), taken from timm with ``num_classes=0``.
    """
    import ofgr_core.models.timm.tiny_cnn  # noqa: F401  registers ofgr_tinycnn with timm

    backbone = create_timm_backbone(cfg.name, cfg.pretrained, cfg.key_map, image_size)
    data_config: dict[str, Any] = resolve_model_data_config(backbone)  # type: ignore[no-untyped-call]  # timm leaves it unannotated
    if image_size is not None:
        data_config["input_size"] = (data_config["input_size"][0], image_size, image_size)
    model = EmbeddingModel(
        backbone,
        # models with a pre-logits stage (mobilenetv3's conv head) pool wider than num_features
        num_features=_pooled_width(backbone),
        embed_dim=cfg.embed_dim,
        data_config=data_config,
        freeze=cfg.freeze,
        trainable=cfg.trainable,
        head=cfg.head,
        freeze_bn=cfg.freeze_bn,
        arch=cfg.name,
    )
    model.tower_from_weights = cfg.pretrained is not False
    model.source, model.source_file = _weights_source(cfg)
    return model


def _pooled_width(backbone: nn.Module) -> int:
    width = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if not isinstance(width, int):
        raise ConfigError(f"model.name: {type(backbone).__name__} reports no pooled feature width (num_features)")
    return width


def _weights_source(cfg: TimmModelConfig) -> tuple[str, str | None]:
    """``(what the weights are, the file they were read from)`` for provenance."""
    if cfg.pretrained is False:
        return "random init", None
    if cfg.pretrained is True:
        pcfg = timm.models.get_pretrained_cfg(cfg.name)
        where = (pcfg.hf_hub_id or pcfg.url) if pcfg is not None else "?"
        return f"timm hub {where}", cached_hub_weights(pcfg) if pcfg is not None else None
    path = str(Path(cfg.pretrained).expanduser().resolve())
    return f"file {path}", path
