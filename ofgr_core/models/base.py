"""The encoder contract every model family implements, and the head that trains on a tower's features.

An encoder is a *tower* (the pretrained or trainable network that maps images to features) followed by a
*head* (what ofgr trains on top: a Linear-BN neck, an MLP, or nothing). Callers never ask which family a
model is; they ask the model (``Encoder``) or, before building one, the family's registry entry
(``ofgr_core.config.ModelFamily``: ``supports_text``) and its config (``tower_frozen``):

- ``embed_dim``: width of the L2-normalised embeddings ``encode_images`` returns.
- ``feature_dim``: width of the tower's features (the head's input).
- ``data_config``: the preprocessing the tower expects (``input_size``, ``mean``, ``std``, ``interpolation``,
  ``crop_pct``, ``crop_mode``).
- ``tower_frozen``: the tower never changes during training, so its features can be computed once and
  cached (``ofgr_core.embedding.features``) and only the head is trained on them.
- ``tower_features`` / ``encode_features``: images -> tower features -> embeddings (the head applied).
- ``supports_text``: ``tokenize`` + ``encode_text`` map text into the same space as the tower's images.
- ``trainable_state_dict()`` / ``load_trainable_state_dict()``: what a checkpoint holds; a frozen tower
  built from a weights source (hub tag, checkpoint file) is never written into checkpoints, it is rebuilt
  from that source.
- ``feature_key()``: what identifies the tower's features (architecture, weights, preprocessing, the
  autocast dtype of extraction), the feature cache's key together with each image's content hash.
- ``provenance()``: what was actually loaded (weights source and hash, activations, preprocessing,
  precision), recorded in metrics.json so two runs can be told apart.

``create_model_and_transforms`` (``ofgr_core.models.factory``) returns the model with its own train and eval
preprocessing, like ``open_clip.create_model_and_transforms``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ofgr_core.common.errors import ConfigError
from ofgr_core.config import text_families
from ofgr_core.models.precision import precision_name

Transform = Callable[[Any], torch.Tensor]

# activation modules, by class name, that provenance() reports (a model built with the wrong one computes
# other features with no error: OpenAI CLIP weights need QuickGELU)
ACTIVATIONS = frozenset({
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "CELU", "SELU", "GELU", "GELUTanh", "QuickGELU", "SiLU",
    "Swish", "Mish", "Hardswish", "HardSwish", "Hardsigmoid", "HardSigmoid", "Sigmoid", "Tanh", "Softplus",
})
PREPROCESS_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


class Encoder(nn.Module, ABC):
    """Base class of every model family: ``tower`` -> ``head`` -> L2-normalised embedding.

    A family subclasses it, sets ``family`` (its ``model.kind``) and ``tower_module_name`` (the attribute
    holding the tower), builds the ``head`` module and implements ``tower_features`` and ``weights_source``.
    Families with text set ``supports_text`` and implement ``tokenize`` and ``encode_text``.

    Attributes:
        embed_dim: embedding width.
        feature_dim: tower feature width (head input).
        data_config: the preprocessing the tower expects.
        tower_from_weights: the tower's weights come from a source that rebuilds them exactly (hub tag,
            file): a frozen tower is then left out of checkpoints; a random-init frozen tower must be saved.
        autocast_dtype: the dtype of this encoder's forward passes (``None``: float32), set from
            ``model.precision`` for the device it runs on (``ofgr_core.models.precision.resolve_autocast``).
    """

    family: ClassVar[str] = ""
    supports_text: ClassVar[bool] = False
    tower_module_name: ClassVar[str] = "tower"
    tower_from_weights: bool = False
    autocast_dtype: torch.dtype | None = None

    embed_dim: int
    feature_dim: int
    data_config: dict[str, Any]
    head: nn.Module

    # ------------------------------------------------------------------------------------------ images
    @abstractmethod
    def tower_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> the tower's features ``(B, feature_dim)`` (what the head consumes)."""

    def encode_features(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features -> L2-normalised embeddings ``(B, embed_dim)``."""
        return head_embeddings(self.head, features)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> L2-normalised embeddings ``(B, embed_dim)``."""
        return self.encode_features(self.tower_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_images(images)

    @property
    def tower(self) -> nn.Module:
        # the submodule registry, not getattr: a family may name its tower attribute ``tower`` itself
        tower = self._modules.get(self.tower_module_name)
        if tower is None:
            raise TypeError(f"{type(self).__name__}.{self.tower_module_name} is not a submodule")
        return tower

    @property
    def tower_frozen(self) -> bool:
        """True when no tower parameter trains: features can be cached and only the head is fitted."""
        return not any(p.requires_grad for p in self.tower.parameters())

    def set_tower_frozen(self, frozen: bool) -> None:
        """Freeze or release the whole tower for a while (``model.probe_epochs``: a linear probe first).

        Families whose config offers probe epochs implement it (the frozen tower must keep computing the same
        function: eval mode, no gradients).

        Raises:
            ConfigError: the family has no temporary freeze.
        """
        raise ConfigError(f"{self.family} models cannot freeze their tower for a probe (model.probe_epochs)")

    @property
    def has_head(self) -> bool:
        """The head changes the space (an identity head gives embeddings equal to the tower's features)."""
        return not isinstance(self.head, nn.Identity)

    def tower_digest(self) -> str:
        """The hash of the tower's weights as they are now (cached: the frozen tower never changes)."""
        digest: str | None = getattr(self, "_weights_digest", None)
        if digest is None or not self.tower_frozen:
            digest = weights_digest(self.tower)
            if self.tower_frozen:
                self._weights_digest = digest
        return digest

    def feature_key(self) -> dict[str, Any]:
        """JSON-able identity of the tower's features: architecture, a hash of its weights, preprocessing,
        and the autocast dtype they are extracted with.

        The weights are hashed rather than named, so a random-init tower, a re-exported checkpoint or a
        fine-tuned copy never share cached features by accident.
        """
        return {
            "family": self.family,
            "arch": str(getattr(self, "arch", type(self.tower).__name__)),
            "weights": self.tower_digest(),
            "preprocess": {k: _plain(self.data_config.get(k)) for k in PREPROCESS_KEYS},
            "autocast": precision_name(self.autocast_dtype),
        }

    # ------------------------------------------------------------------------------------- provenance
    @abstractmethod
    def weights_source(self) -> tuple[str, str | None]:
        """``(what the tower's weights are, the file they were read from or None)``, as resolved when the
        model was built (a hub tag resolved to its cached file, a local path made absolute, random init)."""

    def provenance(self) -> dict[str, Any]:
        """What this encoder actually is, for metrics.json: the resolved weights source and file, the hash
        of the tower's weights, the activations its modules use, its preprocessing and forward precision."""
        source, file = self.weights_source()
        return {
            "family": self.family,
            "arch": str(getattr(self, "arch", type(self.tower).__name__)),
            "weights_source": source,
            "weights_file": file,
            "weights_sha256": self.tower_digest(),
            "activations": activations(self.tower),
            "preprocess": {k: _plain(self.data_config.get(k)) for k in PREPROCESS_KEYS},
            "precision": precision_name(self.autocast_dtype),
        }

    # -------------------------------------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> token ids (families with ``supports_text``)."""
        raise ConfigError(_no_text(self.family))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens -> L2-normalised text embeddings in the tower's image-feature space."""
        raise ConfigError(_no_text(self.family))

    # ------------------------------------------------------------------------------------- checkpoints
    def _frozen_prefix(self) -> str | None:
        return f"{self.tower_module_name}." if self.tower_frozen and self.tower_from_weights else None

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint holds: everything except a frozen tower built from weights."""
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


def head_embeddings(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A head applied to tower features: its output in float32, L2-normalised (every path computes this)."""
    return F.normalize(head(features).float(), dim=-1)


def _no_text(family: str) -> str:
    kinds = text_families()
    where = f"model.kind: {' or '.join(kinds)}" if kinds else "no registered family has one"
    return f"{family} models have no text encoder; text queries need a model with one ({where})"


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over a module's parameter and buffer names, shapes, dtypes and bytes (deterministic order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def activations(module: nn.Module) -> list[str]:
    """The activation module classes a network uses (sorted names: ``["QuickGELU"]``, ``["ReLU"]``).

    Activations applied as functions (``F.relu`` in ``forward``) have no module and are not listed.
    """
    return sorted({type(m).__name__ for m in module.modules() if type(m).__name__ in ACTIVATIONS})


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


class TowerOnly(nn.Module):
    """An encoder's tower alone, as a module: ``forward(images)`` is ``encoder.tower_features(images)``
    (what feature extraction runs; train/eval reach the encoder, so a frozen tower stays in eval mode)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.embed_dim = encoder.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.tower_features(images)


class FeatureHead(nn.Module):
    """Trains an encoder's head on cached tower features: ``forward(features)`` -> embeddings.

    It holds the encoder's own ``head`` module (the same parameters, so training it trains the encoder) and
    computes exactly ``Encoder.encode_features``.
    """

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.head = encoder.head
        self.embed_dim = encoder.embed_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return head_embeddings(self.head, features)


def apply_head(
    encoder: Encoder, features: np.ndarray, device: torch.device | str | None = None, batch_size: int = 4096,
) -> np.ndarray:
    """Tower features (or text embeddings in the tower's space) -> the encoder's embeddings, in eval mode.

    The one place a head is applied to stored vectors (fit strategies, text -> image, text queries).

    Args:
        features: ``(N, feature_dim)`` float vectors.
        device: where the head runs (default: where its parameters are, else CPU).

    Returns:
        ``(N, embed_dim)`` float32, L2-normalised.
    """
    if device is None:
        params = list(encoder.head.parameters())
        device = params[0].device if params else torch.device("cpu")
    else:
        encoder.head.to(device)
    # only the head runs here: toggling the whole encoder would walk every module of its tower (a Lite0 tower has
    # hundreds), which per-epoch validation paid every epoch
    was = encoder.head.training
    encoder.head.eval()
    out = np.empty((len(features), encoder.embed_dim), np.float32)
    try:
        with torch.no_grad():
            for a in range(0, len(features), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(features[a : a + batch_size], dtype=np.float32))
                out[a : a + batch_size] = encoder.encode_features(x.to(device)).float().cpu().numpy()
    finally:
        encoder.head.train(was)
    return out


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
        y: torch.Tensor = self.mlp(x)
        return x + y if self.residual else y
