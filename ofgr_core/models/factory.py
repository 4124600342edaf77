"""``create_model_and_transforms``: one entry point for every encoder family, keyed by ``model.kind``.

Each family registers a factory in ``MODELS`` from its own module (this one registers ``timm``;
``ofgr_core.models.clip.encoder`` registers ``clip``); nothing else switches on the family's name.
"""

from __future__ import annotations

from collections.abc import Callable

import timm
import timm.data

from ofgr_core.common.registry import Registry
from ofgr_core.config import ModelConfig, TimmModelConfig
from ofgr_core.models.base import Encoder
from ofgr_core.models.timm.backbone import create_timm_backbone
from ofgr_core.models.timm.encoder import EmbeddingModel

MODELS: Registry[Encoder] = Registry("model kind")


def create_model(cfg: ModelConfig, image_size: int | None = None) -> Encoder:
    """Build the encoder described by ``cfg`` (the factory registered under ``cfg.kind``).

    Args:
        cfg: the ``model`` config section.
        image_size: training/evaluation resolution; overrides the model's default ``input_size`` in
            ``model.data_config`` (``None`` keeps the model's default).
    """
    return MODELS.create(cfg.kind, cfg=cfg, image_size=image_size)


def encoder_class(cfg: ModelConfig) -> type[Encoder]:
    """The ``Encoder`` subclass ``create_model(cfg)`` builds, read from its factory's return annotation.

    Lets callers ask the contract (``supports_text``, ``family``) without building the model (and without
    loading weights or importing open_clip).
    """
    import typing

    factory = MODELS.get(cfg.kind)
    cls = typing.get_type_hints(factory).get("return")
    if not (isinstance(cls, type) and issubclass(cls, Encoder)):
        raise TypeError(f"model factory {cfg.kind!r} must annotate its return type with an Encoder subclass")
    return cls


def create_model_and_transforms(
    cfg: ModelConfig, image_size: int | None = None, crop_scale: tuple[float, float] = (0.08, 1.0)
) -> tuple[Encoder, Callable, Callable]:
    """The encoder with its own train and eval preprocessing (open_clip's ``create_model_and_transforms``).

    Returns:
        ``(model, train_transform, eval_transform)``; the transforms map a PIL image to a normalised tensor.
    """
    model = create_model(cfg, image_size=image_size)
    return model, create_transforms(model, train=True, crop_scale=crop_scale), create_transforms(model, train=False)


@MODELS.register("timm")
def create_timm_model(cfg: TimmModelConfig, image_size: int | None = None) -> EmbeddingModel:
    """Any timm model by name, with the pool -> Linear -> BatchNorm1d -> L2 neck.

    The global pool is the architecture's own (average pooling for CNNs, class/average token for
    transformers), taken from timm with ``num_classes=0``.
    """
    backbone = create_timm_backbone(cfg.name, cfg.pretrained, cfg.key_map, image_size)
    data_config = timm.data.resolve_model_data_config(backbone)
    if image_size is not None:
        data_config["input_size"] = (data_config["input_size"][0], image_size, image_size)
    model = EmbeddingModel(
        backbone,
        # models with a pre-logits stage (mobilenetv3's conv head) pool wider than num_features
        num_features=getattr(backbone, "head_hidden_size", None) or backbone.num_features,
        embed_dim=cfg.embed_dim,
        data_config=data_config,
        freeze=cfg.freeze,
        trainable=cfg.trainable,
        head=cfg.head,
        freeze_bn=cfg.freeze_bn,
        arch=cfg.name,
    )
    model.tower_from_weights = cfg.pretrained is not False
    return model


def create_transforms(
    model: Encoder, train: bool, crop_scale: tuple[float, float] = (0.08, 1.0)
) -> Callable:
    """PIL image -> normalised tensor, from the model's data config.

    Training: random-resized-crop (area fraction ``crop_scale``; timm's ImageNet default 0.08-1 loses the
    small details fine-grained classes differ by, so ofgr configs pass ``data.crop_scale``) to ``input_size``
    and a horizontal flip,
    no colour jitter (colour is often a discriminative cue in fine-grained data). Evaluation: resize the
    short side to ``input_size / crop_pct`` and centre-crop ``input_size``, the preprocessing the backbone
    was trained with.
    """
    cfg = model.data_config
    return timm.data.create_transform(
        input_size=cfg["input_size"],
        is_training=train,
        scale=tuple(crop_scale),
        hflip=0.5,
        color_jitter=None,
        interpolation=cfg.get("interpolation", "bilinear"),
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg.get("crop_pct"),
        crop_mode=cfg.get("crop_mode"),
    )
