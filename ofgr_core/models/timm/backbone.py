"""timm backbones: creation by name and the three weight sources (none, hub, local checkpoint).

Hub weights are looked up in the local caches first so that an offline machine fails in seconds with an
actionable message instead of hanging on retries; local checkpoints are validated key by key before loading.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from timm.models import PretrainedCfg
from torch import nn

from ofgr_core.common.errors import ConfigError, DependencyError, NotFoundError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
_HUB_PROBE_TIMEOUT_S = 3.0
_SHOWN_KEYS = 4  # how many mismatched keys an error message lists


def create_timm_backbone(
    name: str,
    pretrained: bool | str = False,
    key_map: Mapping[str, str] | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """A timm model without classifier (``num_classes=0``): ``forward`` returns pooled features.

    Args:
        name: any ``timm.list_models()`` name, optionally with a pretrained tag (``resnet50.a1_in1k``).
        pretrained: ``False`` for random init, ``True`` for the model's default timm hub weights (cached
            weights are used offline; a missing cache on an unreachable hub raises ``DependencyError`` at
            once), or a local ``.pth``/``.pt``/``.safetensors`` path (see ``load_backbone_checkpoint``).
        key_map: prefix remapping for a local checkpoint's keys.
        image_size: input resolution; only passed to timm for models with a fixed input size (ViTs), whose
            position embeddings depend on it. CNNs accept any size.

    Raises:
        ConfigError: unknown model name, or a checkpoint that does not fit the model.
        NotFoundError: the checkpoint path does not exist.
        DependencyError: hub weights requested, not cached, and the hub is unreachable.
    """
    base, _, _ = name.partition(".")
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f", did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise ConfigError(f"model.name: unknown timm model {name!r}{hint}")
    kwargs: dict[str, Any] = {"num_classes": 0}
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    if image_size is not None and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = image_size

    if pretrained is True:
        return _create_with_hub_weights(name, pretrained_cfg, kwargs)
    model = timm.create_model(name, pretrained=False, **kwargs)
    if isinstance(pretrained, str):
        load_backbone_checkpoint(model, pretrained, key_map or {})
    return model


# ------------------------------------------------------------------------------------------ hub weights
def _create_with_hub_weights(name: str, pretrained_cfg: PretrainedCfg | None, kwargs: dict[str, Any]) -> nn.Module:
    if pretrained_cfg is None or not (pretrained_cfg.hf_hub_id or pretrained_cfg.url):
        raise ConfigError(
            f"model.pretrained=true: timm model {name!r} has no pretrained weights; "
            "set model.pretrained to false or to a local checkpoint path"
        )
    cached = cached_hub_weights(pretrained_cfg)
    if cached is not None:
        # Loading from the cached file bypasses huggingface_hub's network round trips entirely.
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs)
    source = pretrained_cfg.hf_hub_id or pretrained_cfg.url
    reason = _hub_unreachable_reason(pretrained_cfg)
    if reason is not None:
        fetch = f"`hf download {pretrained_cfg.hf_hub_id}`" if pretrained_cfg.hf_hub_id else source
        raise DependencyError(
            f"model.pretrained=true: weights for {name!r} ({source}) are not cached and {reason}; "
            f"download them once with network ({fetch}), or set model.pretrained to a local checkpoint "
            "path or false"
        )
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as e:  # network errors surface as OSError subclasses or RuntimeError
        raise DependencyError(
            f"model.pretrained=true: downloading weights for {name!r} ({source}) failed: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


def cached_hub_weights(pretrained_cfg: PretrainedCfg) -> str | None:
    """Path of already-downloaded weights for a timm pretrained config, or ``None``.

    Checks the Hugging Face hub cache (``HF_HUB_CACHE``) for the files timm would fetch, then the torch hub
    cache for models that only have a URL.
    """
    if pretrained_cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo_id, _, revision = pretrained_cfg.hf_hub_id.partition("@")
        filenames = (
            [pretrained_cfg.hf_hub_filename]
            if pretrained_cfg.hf_hub_filename
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for filename in filenames:
            path = try_to_load_from_cache(
                repo_id, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision or None
            )
            if isinstance(path, str) and os.path.isfile(path):
                return path
    if isinstance(pretrained_cfg.url, str) and pretrained_cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(pretrained_cfg.url).path)
        if path.is_file():
            return str(path)
    return None


def _hub_unreachable_reason(pretrained_cfg: PretrainedCfg) -> str | None:
    """Why hub weights cannot be downloaded right now (offline mode, no route), or ``None`` if they can."""
    from huggingface_hub import constants

    if pretrained_cfg.hf_hub_id:
        if constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE"):
            return "HF_HUB_OFFLINE is set"
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    else:
        url = pretrained_cfg.url
        host = (urlparse(url).hostname or "") if isinstance(url, str) else ""
    try:
        # A short TCP probe: a machine without network otherwise waits on several long HTTP timeouts.
        with socket.create_connection((host, 443), timeout=_HUB_PROBE_TIMEOUT_S):
            return None
    except OSError:
        return f"{host} is unreachable"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# ------------------------------------------------------------------------------------ local checkpoints
def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.bin/.safetensors file, unwrapping a ``state_dict`` or ``model`` key.

    Pickled checkpoints are read with ``weights_only=True``: files that pickle arbitrary Python objects are
    refused rather than executed.
    """
    p = Path(path)
    if not p.exists():
        raise NotFoundError(
            f"model.pretrained: checkpoint {str(p)!r} not found; give an existing "
            f"{'/'.join(CHECKPOINT_SUFFIXES)} file, true for hub weights, or false"
        )
    suffix = p.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES or not p.is_file():
        raise ConfigError(
            f"model.pretrained: {str(p)!r} is not a checkpoint file "
            f"(expected {', '.join(CHECKPOINT_SUFFIXES)})"
        )
    if suffix == ".safetensors":
        from ofgr_core.models.weights import check_safetensors

        check_safetensors(p)  # header and byte ranges first: a header claiming 2^40 bytes is one line
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, foreign pickle: one line naming the file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model.pretrained: cannot read checkpoint {str(p)!r} ({first}); save a plain state_dict "
            "with torch.save(model.state_dict(), path) or safetensors"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ConfigError(f"model.pretrained: {str(p)!r} holds no state_dict (a mapping of name -> tensor)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(f"model.pretrained: {str(p)!r} holds no tensors")
    return tensors


def remap_keys(state_dict: Mapping[str, torch.Tensor], key_map: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Apply prefix rewrites in order: each ``old -> new`` replaces a leading ``old`` once.

    ``{"module.": "", "backbone.": ""}`` turns ``module.backbone.conv1.weight`` into ``conv1.weight``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for old, new in key_map.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    return out


def load_backbone_checkpoint(model: nn.Module, path: str, key_map: Mapping[str, str]) -> None:
    """Load a local checkpoint into a timm backbone, strictly except for the classifier head.

    The classifier keys named by the model's pretrained config (``fc``, ``classifier``, ``head``...) may be
    present in the file and are dropped; BatchNorm ``num_batches_tracked`` counters may be absent. Any
    other missing, unexpected or mis-shaped key raises a ``ConfigError`` that lists a few and suggests a
    ``model.key_map`` when the keys only differ by a prefix.
    """
    loaded = remap_keys(read_state_dict(path), key_map)
    own = model.state_dict()
    heads = _classifier_prefixes(model)
    unexpected = [k for k in loaded if k not in own and not any(k.startswith(h) for h in heads)]
    missing = [k for k in own if k not in loaded and not k.endswith("num_batches_tracked")]
    shapes = [
        f"{k} (file {tuple(loaded[k].shape)}, model {tuple(v.shape)})"
        for k, v in own.items()
        if k in loaded and loaded[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_few(shapes)})")
        hint = _key_map_hint(missing, unexpected)
        raise ConfigError(
            f"model.pretrained: checkpoint {path!r} does not fit timm {name!r}: {'; '.join(parts)}"
            + (f"; try model.key_map: {hint}" if hint else "; check model.name and model.key_map")
        )
    model.load_state_dict({k: v for k, v in loaded.items() if k in own}, strict=False)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (", ..." if len(keys) > _SHOWN_KEYS else "")


def _key_map_hint(missing: list[str], unexpected: list[str]) -> str | None:
    """The most common ``{prefix: replacement}`` that turns unexpected keys into missing ones."""
    if not missing or not unexpected:
        return None
    want = set(missing)
    rewrites: Counter[tuple[str, str]] = Counter()
    for key in unexpected:
        parts = key.split(".")
        for i in range(len(parts) - 1):  # keep at least two segments: `weight` alone matches anything
            # candidate: drop the first i segments of the file key, optionally adding a model-side prefix
            tail = ".".join(parts[i:])
            old = ".".join(parts[:i]) + "." if i else ""
            for m in want:
                if m.endswith(tail) and (m == tail or m.endswith("." + tail)):
                    rewrites[(old, m[: len(m) - len(tail)])] += 1
                    break
            else:
                continue
            break
    if not rewrites:
        return None
    (old, new), _ = rewrites.most_common(1)[0]
    return "{" + repr(old) + ": " + repr(new) + "}"
