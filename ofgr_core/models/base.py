"""The encoder contract every model family implements (timm CNNs, OpenCLIP, ...).

An encoder is a *tower* (the pretrained or trainable network that maps images to features) followed by a
*head* (what ofgr trains on top: a Linear-BN neck, an MLP, or nothing). Callers never ask which family a
model is; they ask the model:

- ``embed_dim``: width of the L2-normalised embeddings ``encode_images`` returns.
- ``feature_dim``: width of the tower's features (the head's input).
- ``tower_frozen``: the tower never changes during training, so its features can be computed once and
  cached (``ofgr_core.embedding.features``) and only the head is trained on them.
- ``supports_text``: ``tokenize`` + ``encode_text`` map text into the same space as the tower's images.
- ``trainable_state_dict()`` / ``load_trainable_state_dict()``: what a checkpoint holds; a frozen tower
  built from a weights source (hub tag, checkpoint file) is never written into checkpoints, it is rebuilt
  from that source.
- ``feature_key()``: what identifies the tower's features (architecture, weights, preprocessing), the
  feature cache's key together with each image's content hash.

``create_model_and_transforms`` (``ofgr_core.models.factory``) returns the model with its own train and eval
preprocessing, like ``open_clip.create_model_and_transforms``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ofgr_core.common.errors import ConfigError


class Encoder(nn.Module):
    """Base class of every model family: ``tower`` -> ``head`` -> L2-normalised embedding.

    Subclasses set ``family``, build ``self.tower_module_name`` (the attribute holding the tower) and the
    ``head`` module, and implement ``tower_features``. Families with text override ``supports_text``,
    ``tokenize`` and ``encode_text``.

    Attributes:
        embed_dim: embedding width.
        feature_dim: tower feature width (head input).
        data_config: the preprocessing the tower expects (``input_size``, ``mean``, ``std``,
            ``interpolation``, ``crop_pct``, ``crop_mode``).
    """

    family: ClassVar[str] = ""
    supports_text: ClassVar[bool] = False
    tower_module_name: ClassVar[str] = "tower"
    # the tower's weights come from a source that rebuilds them exactly (hub tag, file): a frozen tower is
    # then left out of checkpoints; a random-init frozen tower must be saved to be reproducible
    tower_from_weights: bool = False

    embed_dim: int
    feature_dim: int
    data_config: dict[str, Any]
    head: nn.Module

    # ------------------------------------------------------------------------------------------ images
    def tower_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> the tower's features ``(B, feature_dim)`` (what the head consumes)."""
        raise NotImplementedError

    def encode_features(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features -> L2-normalised embeddings ``(B, embed_dim)``."""
        return F.normalize(self.head(features).float(), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> L2-normalised embeddings ``(B, embed_dim)``."""
        return self.encode_features(self.tower_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_images(images)

    @property
    def tower_frozen(self) -> bool:
        """True when no tower parameter trains: features can be cached and only the head is fitted."""
        return not any(p.requires_grad for p in self.tower.parameters())

    @property
    def tower(self) -> nn.Module:
        return getattr(self, self.tower_module_name)

    def feature_key(self) -> dict[str, Any]:
        """JSON-able identity of the tower's features: architecture, a hash of its weights, preprocessing.

        The weights are hashed rather than named, so a random-init tower, a re-exported checkpoint or a
        fine-tuned copy never share cached features by accident.
        """
        if getattr(self, "_weights_digest", None) is None:
            self._weights_digest = weights_digest(self.tower)
        keep = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        return {
            "family": self.family,
            "arch": getattr(self, "arch", type(self.tower).__name__),
            "weights": self._weights_digest,
            "preprocess": {k: _plain(self.data_config.get(k)) for k in keep},
        }

    # -------------------------------------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        raise ConfigError(f"{self.family} models have no text encoder; text queries need model.kind=clip")

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens -> L2-normalised text embeddings in the tower's image-feature space."""
        raise ConfigError(f"{self.family} models have no text encoder; text queries need model.kind=clip")

    # ------------------------------------------------------------------------------------- checkpoints
    def _frozen_prefix(self) -> str | None:
        return f"{self.tower_module_name}." if self.tower_frozen and self.tower_from_weights else None

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint holds: everything except a frozen tower."""
        prefix = self._frozen_prefix()
        return {k: v for k, v in self.state_dict().items() if prefix is None or not k.startswith(prefix)}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what ``trainable_state_dict`` saved; the frozen tower keeps the weights it was built with.

        Raises:
            ConfigError: the state does not fit this model (a checkpoint of another config).
        """
        prefix = self._frozen_prefix()
        own = self.state_dict()
        unexpected = [k for k in state if k not in own]
        missing = [k for k in own if k not in state and (prefix is None or not k.startswith(prefix))]
        shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if unexpected or missing or shapes:
            few = ", ".join((unexpected + missing + shapes)[:3])
            raise ConfigError(
                f"checkpoint does not fit this {self.family} model ({len(unexpected)} unexpected, "
                f"{len(missing)} missing, {len(shapes)} mis-shaped keys: {few}); was model.* changed?"
            )
        self.load_state_dict(dict(state), strict=False)

    def num_params(self) -> tuple[int, int]:
        """``(total, trainable)`` parameter counts."""
        params = list(self.parameters())
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over a module's parameter and buffer names, shapes, dtypes and bytes (deterministic order)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


class FeatureHead(nn.Module):
    """Trains an encoder's head on cached tower features: ``forward(features)`` -> embeddings.

    It holds the encoder's own ``head`` module (the same parameters, so training it trains the encoder).
    """

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.head = encoder.head
        self.embed_dim = encoder.embed_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features).float(), dim=-1)


class MLPHead(nn.Module):
    """``depth`` x (Linear -> GELU -> Dropout) then a final Linear, optionally residual.

    With ``residual=True`` (input and output widths equal), the output is ``x + mlp(x)`` and the last layer
    starts at zero, so the untrained head is exactly the identity: training can only move away from the
    frozen features as far as the loss asks.
    """

    def __init__(
        self, in_dim: int, out_dim: int, *, depth: int = 2, width: int = 1024, dropout: float = 0.1,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and in_dim != out_dim:
            raise ConfigError(
                f"model.head_residual needs model.embed_dim equal to the feature width {in_dim}, got {out_dim}"
            )
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(max(0, depth - 1)):
            layers += [nn.Linear(dim, width), nn.GELU(), nn.Dropout(dropout)]
            dim = width
        last = nn.Linear(dim, out_dim)
        if residual:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.mlp = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        return x + y if self.residual else y


Transform = Callable[[Any], torch.Tensor]
