"""Encoders: ``create_model_and_transforms(cfg.model, image_size)`` -> an ``Encoder`` + its preprocessing."""

from ofgr_core.models.base import Encoder, FeatureHead, MLPHead
from ofgr_core.models.clip.encoder import ClipEncoder  # registers model.kind=clip (open_clip is imported lazily)
from ofgr_core.models.factory import (
    MODELS,
    create_model,
    create_model_and_transforms,
    create_transforms,
    encoder_class,
)
from ofgr_core.models.timm.backbone import create_timm_backbone, load_backbone_checkpoint, read_state_dict
from ofgr_core.models.timm.encoder import EmbeddingModel
from ofgr_core.models.timm.neck import EmbeddingNeck
from ofgr_core.models.timm.tiny_cnn import TinyCNN  # registers ofgr_tinycnn in timm

__all__ = [
    "MODELS",
    "ClipEncoder",
    "EmbeddingModel",
    "Encoder",
    "FeatureHead",
    "MLPHead",
    "create_model_and_transforms",
    "EmbeddingNeck",
    "TinyCNN",
    "create_model",
    "create_timm_backbone",
    "create_transforms",
    "encoder_class",
    "load_backbone_checkpoint",
    "read_state_dict",
]
