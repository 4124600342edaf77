"""The CLIP family's ``model`` section (``model.kind: clip``), registered here.

Imported by ``ofgr_core.config`` when it loads; imports nothing heavier than the config module (open_clip is
imported only when a model is built).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ofgr_core.config import ModelFamily, ModelSection, TextConfig, register_model_family


class ClipModelConfig(ModelSection):
    """A frozen OpenCLIP image tower + a light head trained on its cached features."""

    kind: Literal["clip"] = "clip"
    name: str = "ViT-B-32"  # any open_clip architecture (`ofgr models` lists them)
    # an open_clip pretrained tag (openai, laion2b_s34b_b79k, ...), a local checkpoint file, a
    # `local-dir:PATH` folder (open_clip_config.json + open_clip_model.safetensors), or null/false (random
    # init: only useful in tests and for `ofgr clip pretrain`)
    pretrained: str | None = "openai"
    quick_gelu: bool | None = None  # null: what the weights need (OpenAI weights were trained with QuickGELU)
    head: Literal["mlp", "none"] = "mlp"  # none: evaluate the frozen CLIP image embeddings themselves
    embed_dim: int = Field(256, gt=0, le=65536)  # the head's output width
    head_depth: int = Field(2, ge=1, le=64)
    head_width: int = Field(1024, gt=0, le=65536)
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    head_residual: bool = False  # x + mlp(x), identity at initialisation (needs embed_dim = feature width)
    text: TextConfig = Field(default_factory=TextConfig)

    @field_validator("pretrained", mode="before")
    @classmethod
    def _false_is_none(cls, v: Any) -> Any:
        if v is False:
            return None
        if v is True:
            raise ValueError("give a pretrained tag (e.g. openai), a checkpoint file or local-dir:PATH")
        return v

    @property
    def tower_frozen(self) -> bool:
        return True

    def without_weights(self) -> ClipModelConfig:
        return self.model_copy(update={"pretrained": None})

    def text_config(self) -> TextConfig:
        return self.text


FAMILY = register_model_family(ModelFamily(
    kind="clip",
    config=ClipModelConfig,
    factory="ofgr_core.models.clip.encoder:create_clip_model",
    supports_text=True,
    summary="a frozen OpenCLIP model (image + text towers) -> MLP head on cached features",
))
