"""``ofgr_tinycnn``: a small VGG-style CNN registered in timm, sized for the built-in 64 px synthetic world.

ImageNet backbones downsample 32x (a 64 px image ends as a 2x2 map after a stride-4 stem), which erases the
few-pixel structural details that separate the synthetic world's fine classes, and they cost more than a
laptop CPU should spend on a demo. This network keeps an 8x8 map at 64 px, costs ~60 MMACs per image and is
created like any timm model (``timm.create_model("ofgr_tinycnn", num_classes=0)``), so it goes through the
same factory, data config and checkpoints as resnet50 or efficientnet_b0.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

DEFAULT_CFG: dict[str, Any] = {
    "input_size": (3, 64, 64),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "crop_pct": 1.0,  # synthetic objects reach the border: evaluate on the whole image
    "crop_mode": "center",
    "num_classes": 0,
    "first_conv": "stages.0.0",
    "classifier": "fc",
}


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class TinyCNN(nn.Module):
    """Four conv-BN-ReLU stages (3 max-pools, total stride 8), global average pool, optional classifier."""

    pretrained_cfg: dict[str, Any]
    default_cfg: dict[str, Any]

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        **_: Any,
    ) -> None:
        super().__init__()
        chans = (in_chans, *widths)
        self.stages = nn.Sequential(
            *[_block(chans[i], chans[i + 1], pool=i < len(widths) - 1) for i in range(len(widths))]
        )
        self.num_features = self.head_hidden_size = widths[-1]
        self.global_pool = global_pool
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.stages(x)
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3)) if self.global_pool else x.flatten(1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


@register_model
def ofgr_tinycnn(pretrained: bool = False, **kwargs: Any) -> TinyCNN:
    """ofgr's demo backbone (no pretrained weights exist)."""
    if pretrained:
        raise ValueError("ofgr_tinycnn has no pretrained weights; use pretrained: false")
    model = TinyCNN(**kwargs)
    model.pretrained_cfg = model.default_cfg = dict(DEFAULT_CFG)
    return model
