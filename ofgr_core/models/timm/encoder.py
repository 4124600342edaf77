"""The timm family's encoder: backbone (pooled features) -> neck -> L2-normalised embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ofgr_core.common.errors import ConfigError
from ofgr_core.models.base import Encoder
from ofgr_core.models.timm.neck import EmbeddingNeck

FREEZE_MODES = ("none", "all", "partial")


class EmbeddingModel(Encoder):
    """A backbone returning pooled features followed by an ``EmbeddingNeck`` (or no head at all).

    Frozen parts stay frozen through ``train()``: a fully frozen backbone runs in eval mode (fixed
    BatchNorm statistics, no dropout), and with partial freezing every BatchNorm outside the trainable
    prefixes keeps its running statistics, so a frozen layer really computes the same function all run.

    Args:
        backbone: module mapping images to pooled features of width ``num_features``.
        num_features: the backbone's output width.
        embed_dim: embedding width.
        data_config: preprocessing the backbone expects (``input_size``, ``mean``, ``std``,
            ``interpolation``, ``crop_pct``, ``crop_mode``), as from ``timm.data.resolve_model_data_config``.
        freeze: ``none``, ``all`` (backbone frozen, neck trains) or ``partial`` (only backbone parameters
            under ``trainable`` prefixes train, plus the neck).
        trainable: backbone parameter-name prefixes kept trainable with ``freeze="partial"``, matched on
            whole name segments (``layer4`` matches ``layer4.0.conv1.weight`` but not ``layer40.x``); a
            leading ``backbone.`` is accepted. Ignored for other freeze modes.
        head: ``neck`` (Linear -> BatchNorm1d -> L2) or ``none`` (the pooled features, L2-normalised:
            the honest frozen baseline, ``embed_dim`` is then ``num_features``).
        freeze_bn: keep every backbone BatchNorm in eval mode while training (fixed statistics).
        arch: the timm model name, for the feature cache key.

    Attributes:
        embed_dim: embedding width.
        data_config: preprocessing dict (see ``create_transforms``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        embed_dim: int,
        data_config: dict[str, Any],
        freeze: str = "none",
        trainable: Sequence[str] = (),
        head: str = "neck",
        freeze_bn: bool = False,
        arch: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if head not in ("neck", "none"):
            raise ConfigError(f"model.head: {head!r} is not one of neck, none")
        self.neck: nn.Module = EmbeddingNeck(num_features, embed_dim) if head == "neck" else nn.Identity()
        self.num_features = self.feature_dim = num_features
        self.embed_dim = embed_dim if head == "neck" else num_features
        self.data_config = dict(data_config)
        self.freeze = freeze
        self.freeze_bn = freeze_bn
        self.trainable = tuple(trainable)
        self.arch = arch or type(backbone).__name__
        self.source: str = "random init"  # set by the factory from model.pretrained
        self.source_file: str | None = None  # set by the factory from model.pretrained
        self._backbone_frozen_now = False
        self._apply_freeze()

    family = "timm"
    tower_module_name = "backbone"

    def weights_source(self) -> tuple[str, str | None]:
        return self.source, self.source_file

    @property
    def head(self) -> nn.Module:  # type: ignore[override]  # the contract's attribute, read-only here: the neck
        return self.neck

    def tower_features(self, images: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.backbone(images)
        return features

    @property
    def tower_frozen(self) -> bool:
        """Frozen for the whole run (``freeze: all``); a linear probe's temporary freeze does not count, so
        checkpoints written during the probe still hold the backbone and features are never cached from it."""
        return not self._backbone_frozen_now and super().tower_frozen

    def set_tower_frozen(self, frozen: bool) -> None:
        """Freeze or release the whole backbone for a while (linear probe before fine-tuning).

        Frozen, the backbone runs in eval mode (BatchNorm statistics fixed) and its parameters stop
        requiring gradients, so a probe epoch costs a forward pass through the backbone and no backward,
        and the optimizer leaves the backbone (and its moment estimates) alone. Released, the parameters
        the ``freeze`` mode trains require gradients again.
        """
        self._backbone_frozen_now = frozen
        self._apply_requires_grad()
        self.train(self.training)

    def train(self, mode: bool = True) -> EmbeddingModel:
        super().train(mode)
        if mode and (self.freeze == "all" or self._backbone_frozen_now):
            self.backbone.eval()
        elif mode and self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        elif mode and self.freeze == "partial":
            for name, module in self.backbone.named_modules():
                if isinstance(module, _BatchNorm) and not self._is_trainable(name):
                    module.eval()
        return self

    def _is_trainable(self, name: str) -> bool:
        return any(_under(name, p) for p in self._prefixes)

    def _apply_freeze(self) -> None:
        if self.freeze not in FREEZE_MODES:
            raise ConfigError(f"model.freeze: {self.freeze!r} is not one of {', '.join(FREEZE_MODES)}")
        self._prefixes = tuple(p.removeprefix("backbone.").rstrip(".") for p in self.trainable)
        names = [n for n, _ in self.backbone.named_parameters()]
        if self.freeze == "partial":
            if not self._prefixes:
                raise ConfigError(
                    "model.trainable: empty with model.freeze=partial; list backbone parameter prefixes "
                    f"to train (e.g. {_top_level(names)[-1]!r}) or use model.freeze=all"
                )
            unknown = [p for p in self._prefixes if not any(_under(n, p) for n in names)]
            if unknown:
                raise ConfigError(
                    f"model.trainable: {', '.join(map(repr, unknown))} match no backbone parameter; "
                    f"top-level names are {', '.join(_top_level(names))}"
                )
        self._apply_requires_grad()
        self.train(self.training)

    def _apply_requires_grad(self) -> None:
        partial = self.freeze == "partial"
        for name, param in self.backbone.named_parameters():
            trains = self.freeze == "none" or (partial and self._is_trainable(name))
            param.requires_grad_(trains and not self._backbone_frozen_now)


def _under(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` or lies below it, on whole dotted segments."""
    return name == prefix or name.startswith(prefix + ".")


def _top_level(names: list[str]) -> list[str]:
    return list(dict.fromkeys(n.split(".", 1)[0] for n in names))
