"""``create_model_and_transforms``: one entry point for every encoder family, keyed by ``model.kind``.

The family's registry entry (``ofgr_core.config.ModelFamily``, registered by ``models/<family>/config.py``)
names its factory; it is imported here on first use, so nothing outside the family's folder names a family.
The preprocessing comes from the model's own ``data_config`` (timm-the-library's transform builder serves
every family).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from timm.data.transforms_factory import create_transform

from ofgr_core.common.errors import ConfigError
from ofgr_core.config import ModelSection, model_family
from ofgr_core.models.base import Encoder, Transform

EncoderFactory = Callable[..., Encoder]


def family_factory(kind: str) -> EncoderFactory:
    """The function that builds ``kind``'s encoders (``ModelFamily.factory``, imported now).

    Raises:
        ConfigError: unknown kind, or a registry entry whose factory cannot be imported.
    """
    spec = model_family(kind).factory
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model.kind={kind}: its factory {spec!r} cannot be imported ({e})") from None
    if not callable(factory):
        raise ConfigError(f"model.kind={kind}: its factory {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]  # a registry entry's function, checked callable above


def create_model(cfg: ModelSection, image_size: int | None = None) -> Encoder:
    """Build the encoder described by ``cfg`` (the factory of the family ``cfg.kind`` names).

    Args:
        cfg: the ``model`` config section.
        image_size: training/evaluation resolution; overrides the model's default ``input_size`` in
            ``model.data_config`` (``None`` keeps the model's default).
    """
    model = family_factory(cfg.kind)(cfg=cfg, image_size=image_size)
    if not isinstance(model, Encoder):
        raise ConfigError(f"model.kind={cfg.kind}: its factory returned {type(model).__name__}, not an Encoder")
    entry = model_family(cfg.kind)
    if model.family != entry.kind or model.supports_text != entry.supports_text:
        # callers read the entry's flags without building a model: the two must agree
        raise ConfigError(f"model.kind={cfg.kind}: its encoder ({type(model).__name__}: family {model.family!r}, "
                          f"supports_text={model.supports_text}) contradicts its registry entry")
    return model


def create_model_and_transforms(
    cfg: ModelSection, image_size: int | None = None, crop_scale: tuple[float, float] = (0.08, 1.0)
) -> tuple[Encoder, Transform, Transform]:
    """The encoder with its own train and eval preprocessing (open_clip's ``create_model_and_transforms``).

    Returns:
        ``(model, train_transform, eval_transform)``; the transforms map a PIL image to a normalised tensor.
    """
    model = create_model(cfg, image_size=image_size)
    return model, create_transforms(model, train=True, crop_scale=crop_scale), create_transforms(model, train=False)


def create_transforms(model: Encoder, train: bool, crop_scale: tuple[float, float] = (0.08, 1.0)) -> Transform:
    """PIL image -> normalised tensor, from the model's data config.

    Training: random-resized-crop (area fraction ``crop_scale``; timm's ImageNet default 0.08-1 loses the
    small details fine-grained classes differ by, so ofgr configs pass ``data.crop_scale``) to ``input_size``
    and a horizontal flip, no colour jitter (colour is often a discriminative cue in fine-grained data).
    Evaluation: resize the short side to ``input_size / crop_pct`` and centre-crop ``input_size``, the
    preprocessing the backbone was trained with.
    """
    cfg = model.data_config
    transform: Transform = create_transform(
        input_size=cfg["input_size"],
        is_training=train,
        scale=(crop_scale[0], crop_scale[1]),
        hflip=0.5,
        color_jitter=None,  # type: ignore[arg-type]  # timm's annotation says float; its code reads None as "no jitter"
        interpolation=cfg.get("interpolation", "bilinear"),
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg.get("crop_pct"),
        crop_mode=cfg.get("crop_mode"),
    )
    return transform
