"""The timm family's ``model`` section (``model.kind: timm``, the default family), registered here.

Imported by ``ofgr_core.config`` when it loads; imports nothing heavier than the config module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ofgr_core.config import FineTuning, ModelFamily, ModelSection, register_model_family


class TimmModelConfig(ModelSection):
    """Any timm model, fine-tuned end to end (or frozen: ``freeze: all`` trains only the head, on cached
    features)."""

    kind: Literal["timm"] = "timm"
    name: str = "ofgr_tinycnn"  # the demo default; real-data configs name resnet50 / efficientnet_b0
    pretrained: bool | str = False  # false, true (hub weights), or a local .pth/.safetensors path
    head: Literal["neck", "none"] = "neck"  # neck: Linear -> BN -> L2; none: the pooled features themselves
    embed_dim: int = Field(128, gt=0, le=65536)  # the neck's width (head: none uses the backbone's feature width)
    freeze: Literal["none", "all", "partial"] = "none"
    trainable: list[str] = Field(default_factory=list)  # freeze=partial: parameter-name prefixes kept trainable
    key_map: dict[str, str] = Field(default_factory=dict)  # prefix remapping for foreign state dicts
    # fine-tuning recipes for pretrained backbones (docs/recipes in the README)
    backbone_lr_mult: float = Field(1.0, ge=0.0, le=100.0)  # backbone learning rate = train.lr x this
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)  # layer-wise lr decay from the top block down
    probe_epochs: int = Field(0, ge=0)  # linear probe first: the backbone stays frozen for this many epochs
    freeze_bn: bool = False  # keep the backbone's BatchNorm statistics fixed while it trains

    @property
    def tower_frozen(self) -> bool:
        return self.freeze == "all"

    def without_weights(self) -> TimmModelConfig:
        return self.model_copy(update={"pretrained": False})

    def fine_tuning(self) -> FineTuning:
        return FineTuning(self.probe_epochs, self.backbone_lr_mult, self.layer_decay)


FAMILY = register_model_family(ModelFamily(
    kind="timm",
    config=TimmModelConfig,
    factory="ofgr_core.models.timm.factory:create_timm_model",
    supports_text=False,
    default=True,
    summary="any timm backbone -> Linear-BN neck; fine-tuned end to end or frozen",
))
