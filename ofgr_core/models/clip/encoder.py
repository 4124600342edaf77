"""The CLIP family: a frozen OpenCLIP model (image + text towers) -> an MLP head trained on cached features.

``model.kind: clip`` builds a ``ClipEncoder``: the whole open_clip model is the *tower* (attribute ``clip``,
always frozen, always in eval mode), ``tower_features`` are its L2-normalised image embeddings (the raw CLIP
space, where text embeddings live too), and the head is an ``MLPHead`` (or nothing, ``head: none``).

Weights, offline first (``model.pretrained``):

- an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...): used only from the local caches (the
  Hugging Face hub cache, open_clip's URL cache ``~/.cache/clip``). When the file is not cached, ofgr asks
  open_clip to download it only if a 3-second TCP probe of the host succeeds and ``HF_HUB_OFFLINE`` is unset;
  otherwise a one-line ``DependencyError`` says how to provide the weights, at once (open_clip alone retries
  for ~46 s). The tag's own preprocessing (mean, std, interpolation, resize mode) is used.
- a checkpoint file (``.pt``/``.pth``/``.bin``/``.safetensors``) of architecture ``model.name``: loaded with
  the preprocessing of that architecture's pretrained tags (or of an ``open_clip_config.json`` next to the
  file), never open_clip's silent defaults.
- ``local-dir:PATH``: a folder with ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
  ``open_clip_model.safetensors``, as ``ofgr clip pretrain`` writes it (``save_local_dir``).
- ``null``: random initialisation (tests, ``ofgr clip pretrain``).

QuickGELU: OpenAI's (and LAION-400M's) weights were trained with QuickGELU; open_clip only warns when the
activation does not match. ofgr uses QuickGELU whenever the tag needs it (``model.quick_gelu: null``), and
refuses a contradicting ``model.quick_gelu`` with the fix.

open_clip is imported inside functions only, so importing this module (and the CLI) stays light. ofgr's
own architecture configs (``configs/*.json``, e.g. ``ofgr-tiny-clip``: a ~0.4M-parameter 64 px ViT
image tower + a 2-layer text tower) are registered with ``open_clip.add_model_config`` on first use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from ofgr_core.common.atomic import atomic_path, atomic_write_text
from ofgr_core.common.diskspace import DISK_ERRNOS, make_dir
from ofgr_core.common.errors import ConfigError, DependencyError, DiskError, NotFoundError
from ofgr_core.models.base import Encoder, MLPHead
from ofgr_core.models.clip.config import ClipModelConfig

CONFIG_DIR = Path(__file__).with_name("configs")
TINY_ARCH = "ofgr-tiny-clip"
DEFAULT_ARCH = "ViT-B-32"
DEFAULT_TAG = "openai"  # ClipModelConfig's default; laion2b_s34b_b79k scores higher zero-shot (README)
LOCAL_DIR = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")
_PROBE_TIMEOUT_S = 3.0
# open_clip resize modes -> timm eval crop modes (with crop_pct 1.0 they compute the same transform)
_CROP_MODE = {"shortest": "center", "squash": "squash", "longest": "border"}

_configs_registered = False


def open_clip_module() -> Any:
    """``open_clip``, with ofgr's architecture configs registered (imported lazily: it is slow to import)."""
    global _configs_registered
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise DependencyError(f"model.kind=clip needs open_clip ({e}); pip install open_clip_torch") from None
    if not _configs_registered:
        open_clip.add_model_config(CONFIG_DIR)
        _configs_registered = True
    return open_clip


def ofgr_architectures() -> list[str]:
    """The architecture configs ofgr ships (``configs/*.json``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


# ------------------------------------------------------------------------------------------ weights
@dataclass
class ClipSource:
    """Where a CLIP model's weights and preprocessing come from (``resolve_clip_source``).

    Attributes:
        arch: the open_clip architecture (``ViT-B-32``), or ``local-dir:PATH``.
        kind: ``tag``, ``file``, ``local-dir`` or ``none`` (random init).
        checkpoint: the weights file to load (``None`` for random init and for local-dir, which open_clip
            resolves itself).
        tag: the pretrained tag, for ``kind == "tag"``.
        quick_gelu: whether the model is built with QuickGELU.
        preprocess: open_clip preprocess overrides (mean, std, interpolation, resize_mode, ...).
        describe: one line for logs and ``ofgr models``.
    """

    arch: str
    kind: str
    checkpoint: str | None = None
    tag: str | None = None
    quick_gelu: bool = False
    preprocess: dict[str, Any] = field(default_factory=dict)
    describe: str = ""
    image_size: int | list[int] | None = None  # the input size the weights were saved with, when known


def _hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment now (not at huggingface_hub's import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _url_cache_dir() -> str:
    return os.path.expanduser("~/.cache/clip")  # open_clip's download_pretrained_from_url default


def _hub_files(pcfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """``(repo_id, candidate filenames)`` of a tag's hub weights, safetensors first (open_clip's order)."""
    hub = pcfg.get("hf_hub") or ""
    if not hub:
        return None
    repo_id, filename = os.path.split(hub)  # exactly as open_clip's download_pretrained splits it
    filename = filename or "open_clip_pytorch_model.bin"
    names = []
    if filename == "open_clip_pytorch_model.bin":
        names.append(WEIGHTS_FILE)
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    names.append(filename)
    return repo_id, names


def cached_tag_weights(pcfg: dict[str, Any]) -> str | None:
    """Path of a pretrained tag's weights if they are already on disk (hub cache or open_clip's URL cache)."""
    files = _hub_files(pcfg)
    if files is not None:
        from huggingface_hub import try_to_load_from_cache

        repo_id, names = files
        cache = _hf_cache_dir()
        for name in names:
            path = try_to_load_from_cache(repo_id, name, cache_dir=cache)
            if isinstance(path, str) and os.path.isfile(path):
                return path
    url = pcfg.get("url") or ""
    if url:
        path = os.path.join(_url_cache_dir(), os.path.basename(urlparse(url).path))
        if os.path.isfile(path):
            return path
    return None


def _tag_source_text(pcfg: dict[str, Any]) -> str:
    files = _hub_files(pcfg)
    return f"hf-hub {files[0]}" if files else (pcfg.get("url") or "?")


def _download_blocked_reason(pcfg: dict[str, Any]) -> str | None:
    """Why a tag's weights cannot be downloaded now (offline mode, host unreachable), or ``None``."""
    files = _hub_files(pcfg)
    if files is not None:
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
            return "HF_HUB_OFFLINE is set"
        from huggingface_hub import constants

        host = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).hostname or "huggingface.co"
    else:
        host = urlparse(pcfg.get("url") or "").hostname or ""
    if not host:
        return "the tag names no download location"
    try:
        # a short TCP probe: without network, open_clip waits on retries and long HTTP timeouts (~46 s)
        with socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S):
            return None
    except OSError:
        return f"{host} is unreachable"


def _tag_preprocess(pcfg: dict[str, Any]) -> dict[str, Any]:
    return {k: pcfg[k] for k in PREPROCESS_KEYS if k in pcfg and k != "size" and pcfg[k] is not None}


def architecture_preprocess(arch: str) -> dict[str, Any]:
    """The preprocessing of an architecture's pretrained tags (the most common one when they differ).

    A bare checkpoint file gets this; an architecture without tags gets open_clip's defaults (OpenAI mean and
    std, bicubic, shortest-side resize), which is what its configs were written for.
    """
    oc = open_clip_module()
    tags = oc.list_pretrained_tags_by_model(arch)
    cfgs = [_tag_preprocess(oc.get_pretrained_cfg(arch, t)) for t in tags]
    if not cfgs:
        return {}
    counts = Counter(json.dumps(c, sort_keys=True) for c in cfgs)
    common: dict[str, Any] = json.loads(counts.most_common(1)[0][0])
    return common


def _resolve_quick_gelu(arch_default: bool, needed: bool | None, wanted: bool | None, what: str) -> bool:
    """QuickGELU for the weights: ``needed`` (what they were trained with, None if unknown) vs ``wanted``."""
    if needed is None:
        return arch_default if wanted is None else bool(wanted)
    if wanted is not None and bool(wanted) != needed:
        fix = "remove model.quick_gelu (or set it to true)" if needed else "remove model.quick_gelu (or set it false)"
        raise ConfigError(
            f"model.quick_gelu={str(wanted).lower()}: {what} were trained "
            f"{'with' if needed else 'without'} QuickGELU and would give wrong features; {fix}"
        )
    return needed


def resolve_clip_source(name: str, pretrained: str | None, quick_gelu: bool | None = None) -> ClipSource:
    """Resolve ``model.name`` + ``model.pretrained`` + ``model.quick_gelu`` to a weights file, offline first.

    Raises:
        ConfigError: unknown architecture or tag, a contradicting ``quick_gelu``.
        NotFoundError: a checkpoint file or local-dir folder that does not exist.
        DependencyError: tag weights not cached and not downloadable now (one line, no retries).
    """
    oc = open_clip_module()
    pretrained = None if pretrained in (None, False, "", "none", "null") else str(pretrained)
    if pretrained is not None and pretrained.startswith(LOCAL_DIR):
        return _local_dir_source(pretrained[len(LOCAL_DIR):], quick_gelu)
    arch = name
    if arch.startswith(LOCAL_DIR):
        return _local_dir_source(arch[len(LOCAL_DIR):], quick_gelu)
    model_cfg = oc.get_model_config(arch)
    if model_cfg is None:
        import difflib

        close = difflib.get_close_matches(arch, oc.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "`ofgr models` lists them"
        raise ConfigError(f"model.name: unknown open_clip architecture {arch!r}; {hint}")
    arch_qg = bool(model_cfg.get("quick_gelu", False))
    if pretrained is None:
        qg = _resolve_quick_gelu(arch_qg, None, quick_gelu, "")
        return ClipSource(arch, "none", quick_gelu=qg, preprocess=architecture_preprocess(arch),
                          describe=f"{arch} (random init)")

    pcfg = oc.get_pretrained_cfg(arch, pretrained)
    if pcfg:
        qg = _resolve_quick_gelu(arch_qg, bool(pcfg.get("quick_gelu", False)), quick_gelu,
                                 f"the {arch}/{pretrained} weights")
        path = cached_tag_weights(pcfg)
        if path is None:
            path = _download_tag(arch, pretrained, pcfg)
        return ClipSource(arch, "tag", checkpoint=path, tag=pretrained, quick_gelu=qg,
                          preprocess=_tag_preprocess(pcfg), describe=f"{arch} / {pretrained}")

    p = Path(pretrained).expanduser()
    looks_like_path = os.sep in pretrained or p.suffix.lower() in CHECKPOINT_SUFFIXES
    if not looks_like_path:
        tags = oc.list_pretrained_tags_by_model(arch)
        raise ConfigError(
            f"model.pretrained: {pretrained!r} is not a pretrained tag of {arch} "
            f"({'tags: ' + ', '.join(tags) if tags else 'it has no tags'}), a checkpoint file or local-dir:PATH"
        )
    if not p.is_file():
        raise NotFoundError(
            f"model.pretrained: checkpoint {str(p)!r} not found; give an existing "
            f"{'/'.join(CHECKPOINT_SUFFIXES)} file, a pretrained tag or local-dir:PATH"
        )
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ConfigError(f"model.pretrained: {str(p)!r} is not a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})")
    # a hub snapshot folder (or a local-dir) carries the model's config next to the weights: its preprocessing,
    # its activation and its input size describe these weights better than the architecture's defaults
    beside = p.parent / CONFIG_FILE
    preprocess = architecture_preprocess(arch)
    needed_qg: bool | None = None
    saved_size: int | list[int] | None = None
    if beside.is_file():
        saved = _read_beside_config(beside)
        preprocess.update({k: v for k, v in saved.get("preprocess_cfg", {}).items()
                           if k in PREPROCESS_KEYS and k != "size"})
        beside_model = saved.get("model_cfg", {})
        if "quick_gelu" in beside_model:
            needed_qg = bool(beside_model["quick_gelu"])
        saved_size = beside_model.get("vision_cfg", {}).get("image_size")
    qg = _resolve_quick_gelu(arch_qg, needed_qg, quick_gelu, f"the weights in {p.name} (per {beside.name} beside it)")
    return ClipSource(arch, "file", checkpoint=str(p), quick_gelu=qg, preprocess=preprocess,
                      describe=f"{arch} from {p.name}", image_size=saved_size)


def _read_beside_config(path: Path) -> dict[str, Any]:
    """``{"model_cfg": {...}, "preprocess_cfg": {...}}`` of an ``open_clip_config.json`` (empty parts if unreadable)."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cfg, dict):
        return {}
    out: dict[str, Any] = {}
    for part in ("model_cfg", "preprocess_cfg"):
        value = cfg.get(part)
        out[part] = dict(value) if isinstance(value, dict) else {}
    vision = out["model_cfg"].get("vision_cfg")
    out["model_cfg"]["vision_cfg"] = dict(vision) if isinstance(vision, dict) else {}
    return out


def _download_tag(arch: str, tag: str, pcfg: dict[str, Any]) -> str:
    where = _tag_source_text(pcfg)
    reason = _download_blocked_reason(pcfg)
    if reason is not None:
        files = _hub_files(pcfg)
        fetch = f"`hf download {files[0]} {files[1][-1]}`" if files else f"download {pcfg.get('url')}"
        raise DependencyError(
            f"model.pretrained={tag}: open_clip weights for {arch} ({where}) are not cached and {reason}; "
            f"fetch them once with network ({fetch}), or set model.pretrained to a checkpoint file or "
            "local-dir:PATH (`ofgr clip pretrain` writes one)"
        )
    oc = open_clip_module()
    try:
        return str(oc.download_pretrained(pcfg))
    except Exception as e:  # network failures surface as many types through huggingface_hub / urllib
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DependencyError(f"model.pretrained={tag}: downloading {arch} weights ({where}) failed: {first}") from None


def _local_dir_source(path: str, quick_gelu: bool | None) -> ClipSource:
    folder = Path(path).expanduser()
    cfg_file = folder / CONFIG_FILE
    if not folder.is_dir():
        raise NotFoundError(f"model.pretrained: local-dir {str(folder)!r} not found (`ofgr clip pretrain --out` "
                            "writes one)")
    if not cfg_file.is_file():
        raise NotFoundError(f"model.pretrained: {str(cfg_file)!r} missing; a local-dir folder holds "
                            f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    from ofgr_core.models.weights import read_open_clip_config

    cfg = read_open_clip_config(cfg_file)  # strict JSON, bounded, model_cfg of the right types
    model_cfg = cfg["model_cfg"]
    # open_clip takes any *.safetensors/*.bin/*.pth here; without one it would build random weights silently
    if not any(p.is_file() for ext in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(ext)):
        raise NotFoundError(f"model.pretrained: no weights in local-dir {str(folder)!r} (expected {WEIGHTS_FILE} "
                            f"beside {CONFIG_FILE}); copy the weights file back or rerun `ofgr clip pretrain --out`")
    qg = bool(model_cfg.get("quick_gelu", False))
    _resolve_quick_gelu(qg, qg, quick_gelu, f"the weights in {folder}")
    arch = str(cfg.get("ofgr", {}).get("arch") or folder.name)
    return ClipSource(f"{LOCAL_DIR}{folder}", "local-dir", quick_gelu=qg,
                      preprocess=dict(cfg.get("preprocess_cfg", {})), describe=f"{arch} from {LOCAL_DIR}{folder}")


# --------------------------------------------------------------------------------------------- build
def load_open_clip(
    name: str, pretrained: str | None, quick_gelu: bool | None = None, image_size: int | None = None
) -> tuple[nn.Module, ClipSource]:
    """Build an open_clip model from ``resolve_clip_source`` (no download unless it is possible right now).

    ``image_size`` overrides the architecture's input size (open_clip resizes position embeddings on load).
    The model's ``visual.preprocess_cfg`` is the preprocessing of its weights.

    Returns:
        ``(open_clip model in eval mode, its ClipSource)``.
    """
    from ofgr_core.models.weights import check_safetensors

    oc = open_clip_module()
    src = resolve_clip_source(name, pretrained, quick_gelu)
    # weights files checked (header, byte ranges) before open_clip or safetensors parse them
    if src.kind == "local-dir":
        for weights in Path(src.arch[len(LOCAL_DIR):]).glob("*.safetensors"):
            check_safetensors(weights)
    elif src.kind == "file" and str(src.checkpoint).lower().endswith(".safetensors"):
        check_safetensors(str(src.checkpoint))
    kwargs: dict[str, Any] = {"force_preprocess_cfg": {k: v for k, v in src.preprocess.items() if k != "size"}}
    if image_size is not None:
        kwargs["force_image_size"] = int(image_size)
    elif src.image_size is not None:  # a checkpoint file's own config names its input size
        size = src.image_size
        kwargs["force_image_size"] = int(size) if isinstance(size, int) else tuple(int(v) for v in size)
    try:
        # random init is asked for explicitly (pretrained: null): open_clip's root-logger warning about it is noise
        quiet = _root_log_level(logging.ERROR) if src.kind == "none" else contextlib.nullcontext()
        with quiet:
            # require_pretrained: a weights source that loads nothing is an error, never a random model
            if src.kind == "local-dir":
                model = oc.create_model(src.arch, require_pretrained=True, **kwargs)
            else:
                model = oc.create_model(src.arch, pretrained=src.checkpoint, force_quick_gelu=src.quick_gelu,
                                        require_pretrained=src.kind != "none", **kwargs)
    except Exception as e:  # noqa: BLE001  torch.load, safetensors and open_clip raise many types for a bad file
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model.pretrained: cannot load {src.describe} into {name} ({first}); "
                          "does the checkpoint match model.name?") from None
    model.eval()
    return model, src


@contextlib.contextmanager
def _root_log_level(level: int) -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(before, level))
    try:
        yield
    finally:
        root.setLevel(before)


def tokenizer_for(source: ClipSource) -> Any:
    """open_clip's tokenizer for the architecture (``local-dir:`` folders carry their text config).

    Raises:
        DependencyError: the tokenizer needs a package that is not installed (SigLIP's: transformers).
    """
    try:
        return open_clip_module().get_tokenizer(source.arch)
    except ImportError as e:
        raise DependencyError(f"the tokenizer of {source.describe} needs {e.name or e} (pip install "
                              f"{e.name or 'transformers'})") from None


def data_config_from_preprocess(pp: dict[str, Any]) -> dict[str, Any]:
    """open_clip preprocess cfg -> the timm-style ``data_config`` ``create_transforms`` reads.

    ``crop_pct`` 1.0 with ``crop_mode`` center/squash/border is open_clip's shortest/squash/longest resize, so
    ofgr's eval transform equals open_clip's own.
    """
    size = pp.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    mode = pp.get("resize_mode", "shortest")
    if mode not in _CROP_MODE:
        raise ConfigError(f"open_clip resize_mode {mode!r} is not supported (shortest, squash, longest)")
    return {
        "input_size": (3, int(h), int(w)),
        "mean": tuple(float(x) for x in pp.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": tuple(float(x) for x in pp.get("std", (0.26862954, 0.26130258, 0.27577711))),
        "interpolation": pp.get("interpolation", "bicubic"),
        "crop_pct": 1.0,
        "crop_mode": _CROP_MODE[mode],
    }


class ClipEncoder(Encoder):
    """A frozen open_clip model (``self.clip``) -> MLP head (or identity) -> L2-normalised embeddings.

    ``tower_features`` are the L2-normalised CLIP image embeddings, the space ``encode_text`` maps text into,
    so text -> image retrieval works on raw tower features (``raw``) and, through the head, on embeddings
    (``head``; ``ofgr_core.retrieval.text`` measures both).

    Args:
        clip_model: an open_clip CLIP model; frozen here (no gradients, eval mode for good).
        source: where its weights came from (``resolve_clip_source``).
        head: ``mlp`` or ``none``.
        embed_dim, depth, width, dropout, residual: the ``MLPHead``'s shape (ignored with ``head="none"``).
    """

    family = "clip"
    supports_text = True
    tower_module_name = "clip"

    def __init__(
        self, clip_model: nn.Module, source: ClipSource, *, head: str = "mlp", embed_dim: int = 256,
        depth: int = 2, width: int = 1024, dropout: float = 0.1, residual: bool = False,
    ) -> None:
        super().__init__()
        self.clip = clip_model
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.source = source
        self.arch = source.describe.split(" ", 1)[0] if source.kind == "local-dir" else source.arch
        self.feature_dim = int(_clip_embed_dim(clip_model))
        if head not in ("mlp", "none"):
            raise ConfigError(f"model.head: {head!r} is not one of mlp, none")
        self.head = (
            MLPHead(self.feature_dim, embed_dim, depth=depth, width=width, dropout=dropout, residual=residual)
            if head == "mlp" else nn.Identity()
        )
        self.embed_dim = embed_dim if head == "mlp" else self.feature_dim
        self.data_config = data_config_from_preprocess(_preprocess_cfg(clip_model))
        self._tokenizer: Any = None

    def weights_source(self) -> tuple[str, str | None]:
        src = self.source
        if src.kind == "local-dir":
            folder = Path(src.arch[len(LOCAL_DIR):])
            return src.describe, str((folder / WEIGHTS_FILE).resolve())
        return src.describe, str(Path(src.checkpoint).resolve()) if src.checkpoint else None

    def train(self, mode: bool = True) -> ClipEncoder:
        super().train(mode)
        self.clip.eval()  # the tower is frozen: no dropout, fixed statistics, whatever the head does
        return self

    def tower_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(as_open_clip(self.clip).encode_image(images).float(), dim=-1)

    def feature_key(self) -> dict[str, Any]:
        """The base key plus the activation: equal weights under QuickGELU and GELU give other features."""
        return {**super().feature_key(), "activation": "quick_gelu" if uses_quick_gelu(self.clip) else "gelu"}

    # ---------------------------------------------------------------------------------------- text
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for(self.source)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        tokens: torch.Tensor = self.tokenizer(list(texts))
        return tokens

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens -> L2-normalised text embeddings in the raw CLIP image space (``tower_features``)."""
        device = next(self.clip.parameters()).device
        return F.normalize(as_open_clip(self.clip).encode_text(tokens.to(device)).float(), dim=-1)


class OpenClipModel(Protocol):
    """The part of an open_clip ``CLIP`` model ofgr calls (open_clip ships no type information)."""

    logit_scale: torch.Tensor

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...


def as_open_clip(model: nn.Module) -> OpenClipModel:
    """``model`` (an open_clip model) typed by what ofgr calls on it."""
    return cast(OpenClipModel, model)


def _clip_embed_dim(model: nn.Module) -> int:
    visual = getattr(model, "visual", None)
    dim = getattr(visual, "output_dim", None)
    if dim is None:
        proj = getattr(model, "text_projection", None)
        dim = proj.shape[1] if isinstance(proj, torch.Tensor) else None
    if dim is None:
        with torch.no_grad():
            size = _preprocess_cfg(model).get("size", 224)
            s = (size, size) if isinstance(size, int) else tuple(size)
            dim = as_open_clip(model).encode_image(torch.zeros(1, 3, *s)).shape[-1]
    return int(dim)


def _preprocess_cfg(model: nn.Module) -> dict[str, Any]:
    from open_clip.model import get_model_preprocess_cfg

    return dict(get_model_preprocess_cfg(model))


def create_clip_model(cfg: ClipModelConfig, image_size: int | None = None) -> ClipEncoder:
    """``model.kind: clip``'s factory (``ModelFamily.factory``): the open_clip model of ``cfg`` (frozen) with
    its head; see the module docstring."""
    clip_model, source = load_open_clip(cfg.name, cfg.pretrained, cfg.quick_gelu, image_size)
    model = ClipEncoder(
        clip_model, source, head=cfg.head, embed_dim=cfg.embed_dim, depth=cfg.head_depth, width=cfg.head_width,
        dropout=cfg.head_dropout, residual=cfg.head_residual,
    )
    # weights from a tag, a file or a local-dir are rebuilt from there: checkpoints then hold the head only
    model.tower_from_weights = source.kind != "none"
    return model


# ------------------------------------------------------------------------------------------ local-dir
def save_local_dir(
    clip_model: nn.Module, out_dir: str | os.PathLike[str], *, arch: str, extra: dict[str, Any] | None = None,
    model_cfg: dict[str, Any] | None = None,
) -> Path:
    """Write ``open_clip_config.json`` (model_cfg + preprocess_cfg) and ``open_clip_model.safetensors``.

    ``model.pretrained: local-dir:OUT`` (or open_clip's ``create_model("local-dir:OUT")``) loads it back.
    Files are written under temporary names and renamed, so an interrupted save never leaves a half folder
    that loads. ``model_cfg`` (default: the architecture's, or the ``local-dir:`` folder's) is completed with
    what the model itself says: its activation and its input size.
    """
    from safetensors.torch import save_file

    oc = open_clip_module()
    out = make_dir(out_dir, "CLIP checkpoint folder")
    base_arch = arch
    if model_cfg is not None:
        model_cfg = json.loads(json.dumps(model_cfg))  # a deep copy: the caller's dict stays as it was
    elif arch.startswith(LOCAL_DIR):
        model_cfg = json.loads((Path(arch[len(LOCAL_DIR):]) / CONFIG_FILE).read_text())["model_cfg"]
        base_arch = json.loads((Path(arch[len(LOCAL_DIR):]) / CONFIG_FILE).read_text()).get("ofgr", {}).get(
            "arch", arch)
    else:
        model_cfg = oc.get_model_config(arch)
        if model_cfg is None:
            raise ConfigError(f"unknown open_clip architecture {arch!r}")
    model_cfg = dict(model_cfg)
    # the activation the model was built with, not the registry's default: a model built with
    # force_quick_gelu (OpenAI weights) would otherwise reload with GELU and give other features
    model_cfg["quick_gelu"] = uses_quick_gelu(clip_model)
    if "timm_model_name" in model_cfg.get("vision_cfg", {}):
        # the saved weights hold the whole timm tower: never fetch timm's own pretrained weights on load
        model_cfg["vision_cfg"] = dict(model_cfg["vision_cfg"], timm_model_pretrained=False)
    visual = getattr(clip_model, "visual", None)
    model_cfg["vision_cfg"] = dict(model_cfg["vision_cfg"], image_size=getattr(visual, "image_size",
                                                                               model_cfg["vision_cfg"].get("image_size")))
    if isinstance(model_cfg["vision_cfg"]["image_size"], tuple):
        model_cfg["vision_cfg"]["image_size"] = list(model_cfg["vision_cfg"]["image_size"])
    pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in _preprocess_cfg(clip_model).items()}
    config = {"model_cfg": model_cfg, "preprocess_cfg": pp, "ofgr": {"arch": base_arch, **(extra or {})}}
    state = {k: v.detach().cpu().contiguous() for k, v in clip_model.state_dict().items()}
    try:
        with atomic_path(out / WEIGHTS_FILE) as tmp:  # weights first: a config alone never names missing weights
            save_file(state, str(tmp))
    except Exception as e:  # safetensors reports a full disk as its own error type, not an OSError
        full = isinstance(e, OSError) and e.errno in DISK_ERRNOS or "StorageFull" in str(e) or "os error 28" in str(e)
        if not full:
            raise
        raise DiskError(f"{out}: no space left on the device while writing the CLIP checkpoint; nothing was "
                        "saved") from None
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return out


def uses_quick_gelu(clip_model: nn.Module) -> bool:
    """True when the model's transformer blocks use QuickGELU (OpenAI's activation) rather than GELU."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in clip_model.modules())


# -------------------------------------------------------------------------------------- ofgr models
def list_clip_models(tags: bool = True) -> list[dict[str, Any]]:
    """Every open_clip architecture: image size, embedding width, towers, and its pretrained tags with
    ``cached`` (weights present locally), the cached file's ``bytes`` and the tag's QuickGELU need.

    ofgr's own configs (``ofgr-tiny-clip``) come first with ``ofgr: true`` and their parameter count.
    """
    oc = open_clip_module()
    ours = set(ofgr_architectures())
    rows = []
    for arch in sorted(oc.list_models(), key=lambda a: (a not in ours, a.lower())):
        cfg = oc.get_model_config(arch) or {}
        v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        size = v.get("image_size")
        row: dict[str, Any] = {
            "arch": arch,
            "ofgr": arch in ours,
            "default": arch == DEFAULT_ARCH,
            "image_size": list(size) if isinstance(size, (list, tuple)) else size,
            "embed_dim": cfg.get("embed_dim"),
            "image_tower": v.get("timm_model_name") or ("resnet" if isinstance(v.get("layers"), list) else "vit"),
            "text_tower": t.get("hf_model_name") or "transformer",
            "quick_gelu": bool(cfg.get("quick_gelu", False)),
        }
        if arch in ours:
            with torch.device("meta"):  # shapes only: no memory, no init time
                m = _meta_model(oc, cfg)
            row["params"] = sum(p.numel() for p in m.parameters())
        if tags:
            row["tags"] = []
            for tag in oc.list_pretrained_tags_by_model(arch):
                pcfg = oc.get_pretrained_cfg(arch, tag)
                path = cached_tag_weights(pcfg)
                row["tags"].append({
                    "tag": tag,
                    "default": arch == DEFAULT_ARCH and tag == DEFAULT_TAG,
                    "cached": path is not None,
                    "path": path,
                    "bytes": os.path.getsize(path) if path else None,
                    "quick_gelu": bool(pcfg.get("quick_gelu", False)),
                    "source": _tag_source_text(pcfg),
                })
        rows.append(row)
    return rows


def _meta_model(oc: Any, cfg: dict[str, Any]) -> nn.Module:
    cfg = dict(cfg)
    cfg.pop("custom_text", None)
    model: nn.Module = oc.model.CLIP(**cfg)
    return model
