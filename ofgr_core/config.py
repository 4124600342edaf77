"""Strict experiment configuration: defaults < YAML < ``--set a.b=value`` overrides.

Every section is a pydantic model with ``extra="forbid"``: an unknown key is an error that names its path and
the closest valid key; a wrong type names the path, the value and the expected type.

The ``model`` section belongs to the encoder family ``model.kind`` names: each family's folder
(``ofgr_core/models/<family>/config.py``) defines a ``ModelSection`` subclass and registers it with
``register_model_family``; this module imports those config modules when it loads (``_load_families``), so
the schema names no family itself.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from ofgr_core.common.errors import ConfigError
from ofgr_core.common.textio import load_yaml, read_yaml_file


class Section(BaseModel):
    # allow_inf_nan=False: every float in a config is finite (``train.lr: .inf`` is a config error, not NaN weights)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


MAX_SEED = 2**32 - 1  # numpy's legacy seeding range; torch accepts it too
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]{1,3})?)$"


# ----------------------------------------------------------------------------------------------- data
class SourceConfig(Section):
    """One dataset source. ``options`` are validated by the adapter registered under ``type``."""

    type: str = Field("synthetic", min_length=1, max_length=64)
    root: str | None = None
    name: str | None = Field(None, min_length=1, max_length=100)
    options: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()], min_length=1, max_length=64)
    taxonomy: str | None = None  # taxonomy YAML mapping source labels to unified nodes
    unmapped: Literal["error", "drop"] = "error"
    dedup: bool = True  # drop exact duplicate images (content hash)
    coarse_only: Literal["keep", "drop"] = "keep"  # rows with an empty fine label (coarse known)
    image_size: int | None = Field(64, ge=8, le=4096)  # train/eval resolution; null = the model's default
    crop_scale: tuple[float, float] = (0.35, 1.0)  # train random-resized-crop area range (timm/ImageNet: 0.08)
    cache: bool = True  # decoded-and-resized uint8 cache (memory-mapped)
    cache_dir: str | None = None  # default: <first source root>/.ofgr_cache
    feature_cache: str | None = None  # frozen-tower features, shared across runs; default $OFGR_CACHE/features
    # DataLoader processes; embedding on a CPU whose cores the model's threads take decodes in-process instead
    # (ofgr_core.embedding.embed.loader_workers)
    num_workers: int = Field(0, ge=0, le=256)

    @field_validator("crop_scale")
    @classmethod
    def _crop_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError("must be [low, high] with 0 < low <= high <= 1")
        return v


# ---------------------------------------------------------------------------------------------- split
class SplitConfig(Section):
    protocol: Literal["random", "cars196", "file", "manifest"] = "random"
    unseen_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)  # of seen fine classes, held out for model selection
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # default: the run's seed
    file: str | None = None  # protocol=file: YAML/JSON with `seen`/`unseen` (and optional `val`) class lists
    reuse: str | None = None  # a run folder or split.json whose split to reuse (fair comparisons)
    query: Literal["leave_one_out", "files", "cross_domain", "manifest"] = "leave_one_out"
    query_file: str | None = None
    gallery_file: str | None = None
    query_domain: str | None = None
    unseen: list[str] | None = None  # protocol=file without a file: the held-out fine classes
    seen_test_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # per seen class, if the source has no test split
    # coarse-only rows (no fine label): trained on with the coarse terms, or coarse-level gallery items of
    # the unseen part (never queries, never fine positives)
    coarse_only: Literal["train", "gallery"] = "train"


# ---------------------------------------------------------------------------------------------- model
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class ModelSection(Section):
    """The ``model`` section every encoder family's config class extends (``models/<family>/config.py``).

    A family's class narrows ``kind`` to its ``Literal`` name and adds its own keys; ``model.kind`` picks the
    class (``register_model_family``), so a key of another family is an unknown key.
    """

    kind: str
    name: str = Field(min_length=1, max_length=300)
    # the dtype of the encoder's forward passes (training, feature extraction, embedding): auto = bf16 where
    # the GPU supports it, else fp16, when train.amp is on (auto: on CUDA); fp32 = no autocast. CPU runs
    # fp32 or bf16 (torch's CPU autocast); fp16 needs CUDA.
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"

    @property
    def tower_frozen(self) -> bool:
        """The tower never trains: its features are cached and only the head is fitted."""
        return False

    def without_weights(self) -> ModelSection:
        """The same architecture built without loading pretrained weights (a checkpoint that holds the whole
        network supplies them). Families whose weights come from a source override it."""
        return self

    def text_config(self) -> TextConfig:
        """The class-name prompts of text-capable families (``TextConfig`` defaults otherwise)."""
        return TextConfig()

    def fine_tuning(self) -> FineTuning:
        """How an end-to-end fit treats the tower (``ofgr_core.train.optim``); defaults: one learning rate."""
        return FineTuning()


@dataclass(frozen=True)
class FineTuning:
    """An end-to-end fit's recipe for a pretrained tower (docs/recipes.md).

    Attributes:
        probe_epochs: the tower stays frozen for this many epochs first (a linear probe).
        backbone_lr_mult: the tower's learning rate is ``train.lr`` times this.
        layer_decay: layer-wise learning-rate decay from the top block down (``None``: off).
    """

    probe_epochs: int = 0
    backbone_lr_mult: float = 1.0
    layer_decay: float | None = None


class TextConfig(Section):
    """Class-name prompts for zero-shot text -> image retrieval (families with a text encoder)."""

    templates: list[str] = Field(default_factory=lambda: [
        "a photo of a {fine}.",
        "a photo of a {fine}, a type of {coarse}.",
        "a {coarse}: {fine}.",
    ])
    coarse_templates: list[str] = Field(default_factory=lambda: ["a photo of a {coarse}.", "a {coarse}."])
    space: Literal["auto", "raw", "head"] = "auto"  # which image space free-text queries search (see README)


@dataclass(frozen=True)
class ModelFamily:
    """One registry entry per encoder family: what ``model.kind`` selects, readable without building a model.

    Attributes:
        kind: the ``model.kind`` value.
        config: the family's ``ModelSection`` subclass (its keys, defaults and checks).
        factory: ``"package.module:function"`` building the encoder from that config; imported on first use,
            so reading a config never imports torch or the family's libraries.
        supports_text: the family's encoders embed text in the image space (text queries, text -> image).
        default: the family used when ``model.kind`` is not given (exactly one).
        summary: one line for listings.
    """

    kind: str
    config: type[ModelSection]
    factory: str
    supports_text: bool = False
    default: bool = False
    summary: str = ""


_FAMILIES: dict[str, ModelFamily] = {}


def register_model_family(family: ModelFamily) -> ModelFamily:
    """Add a family (called by ``models/<family>/config.py`` at import, or by a plugin module).

    Raises:
        ValueError: the kind is taken, or a second family claims to be the default.
    """
    if family.kind in _FAMILIES:
        raise ValueError(f"model family {family.kind!r} is already registered")
    if family.default and any(f.default for f in _FAMILIES.values()):
        raise ValueError(f"model family {family.kind!r}: another family is already the default")
    _FAMILIES[family.kind] = family
    return family


def unregister_model_family(kind: str) -> None:
    """Remove a family (tests and plugins that register one for a while)."""
    _FAMILIES.pop(kind, None)


def model_families() -> list[ModelFamily]:
    """Every registered family, the default first."""
    return sorted(_FAMILIES.values(), key=lambda f: not f.default)


def model_kinds() -> list[str]:
    return [f.kind for f in model_families()]


def model_family(kind: str) -> ModelFamily:
    """The registry entry of ``model.kind``.

    Raises:
        ConfigError: no family of that kind (naming the registered ones).
    """
    try:
        return _FAMILIES[kind]
    except KeyError:
        raise ConfigError(f"model.kind: must be one of {', '.join(model_kinds())}, got {kind!r}") from None


def default_model_kind() -> str:
    return next((f.kind for f in _FAMILIES.values() if f.default), "")


def text_families() -> list[str]:
    """The kinds whose encoders embed text (for messages that tell a user where text queries work)."""
    return [f.kind for f in model_families() if f.supports_text]


def _default_model() -> ModelSection:
    return model_family(default_model_kind()).config.model_validate({})


def _load_families() -> None:
    """Import every family's config module (``ofgr_core/models/<family>/config.py``, which registers it) and
    the plugin modules named in ``$OFGR_PLUGINS`` (comma-separated; they register families of their own).

    The folders are found on disk, so a new family is a folder: nothing here names one. The config modules
    import only this module (no torch), so reading a config stays light.
    """
    models_dir = Path(__file__).with_name("models")
    for folder in sorted(models_dir.iterdir()):
        if (folder / "config.py").is_file() and (folder / "__init__.py").is_file():
            importlib.import_module(f"{__package__}.models.{folder.name}.config")
    for name in filter(None, (p.strip() for p in os.environ.get("OFGR_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"OFGR_PLUGINS: cannot import {name!r} ({e}); fix the module name or unset it") from None


# ----------------------------------------------------------------------------------------------- loss
class ArcFaceConfig(Section):
    weight: float = Field(1.0, ge=0.0, le=1e3)
    scale: float = Field(16.0, gt=0.0, le=1024.0)  # logits scale s; exp(s) must stay finite in float32
    margin: float = Field(0.2, ge=0.0, le=3.1416)  # additive angular margin in radians (0.5 rad = 28.6 deg)
    lr: float | None = Field(None, gt=0.0, le=100.0)  # class-weight matrix learning rate; default 10x train.lr
    subcenters: int = Field(1, ge=1, le=1024)  # > 1: sub-center ArcFace (K centres per class; robust to label noise)


class HTripletConfig(Section):
    weight: float = Field(1.0, ge=0.0, le=1e3)
    margin_fine: float = Field(0.1, ge=0.0, le=4.0)  # distances between unit vectors lie in [0, 2]
    margin_coarse: float = Field(0.3, ge=0.0, le=4.0)
    mining: Literal["batch_hard", "semi_hard", "all"] = "batch_hard"


class LossConfig(Section):
    arcface: ArcFaceConfig = Field(default_factory=ArcFaceConfig)
    htriplet: HTripletConfig = Field(default_factory=HTripletConfig)


# -------------------------------------------------------------------------------------------- sampler
MAX_BATCHES_PER_EPOCH = 1_000_000


class SamplerConfig(Section):
    type: str = "hierarchical_pk"
    coarse_per_batch: int = Field(2, ge=1, le=10_000)  # C
    fine_per_coarse: int = Field(4, ge=1, le=10_000)  # P
    k: int = Field(4, ge=1, le=10_000)  # K images per fine class
    coarse_only_k: int | None = Field(None, ge=0, le=10_000)  # coarse-only images per coarse class per batch
    # per rank; default n_train // (C*P*K*world_size), >= one class pass; at most a million (an epoch of 10^12
    # batches never ends, and every epoch ends in a validation and a checkpoint)
    batches_per_epoch: int | None = Field(None, ge=1, le=MAX_BATCHES_PER_EPOCH)


# ---------------------------------------------------------------------------------------------- train
class TrainConfig(Section):
    epochs: int = Field(12, ge=0, le=100_000)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=100.0)
    weight_decay: float = Field(0.05, ge=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    warmup_epochs: float = Field(1.0, ge=0.0, le=100_000)
    grad_clip: float | None = Field(5.0, ge=0.0, le=1e6)  # max gradient norm; 0 or null = no clipping
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/Inf loss or gradient: fail the run, or skip the step
    amp: Literal["auto", "on", "off"] = "auto"  # auto = on for CUDA
    channels_last: Literal["auto", "on", "off"] = "auto"
    # the optimizer's fused single-kernel update (PyTorch's fused=True): auto = on when only a head trains on
    # cached features (its steps are small enough that the update's seven multi-tensor passes are a third of
    # the step), off when images train (the CNN baselines keep the arithmetic their figures were measured with)
    fused: Literal["auto", "on", "off"] = "auto"
    # a head on cached features: auto = its backward pass written out (ofgr_core/train/headstep.py: an MLP head
    # under ArcFace and batch-hard triplet, on CPU, no DDP or autocast; anything else trains through autograd),
    # the same loss values and gradients to float rounding; autograd = always PyTorch's autograd
    head_step: Literal["auto", "autograd"] = "auto"
    early_stopping: int | None = Field(None, ge=1)  # patience in epochs on validation Recall@1; null = off
    eval_batch_size: int = Field(256, ge=1, le=65536)
    log_every: int = Field(10, ge=1)
    # the memory plan before a run (ofgr_core/train/memplan.py): check = refuse a training step that does not
    # fit (and lower eval_batch_size to one that does), warn = say so and run anyway, off = no plan
    memory_check: Literal["check", "warn", "off"] = "check"


# ----------------------------------------------------------------------------------------------- eval
class IndexConfig(Section):
    type: Literal["flat", "ivf_flat", "ivf_pq", "hnsw"] = "flat"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    nlist: int | None = Field(None, ge=1, le=1 << 24)  # IVF lists; default ~4*sqrt(N)
    nprobe: int = Field(16, ge=1, le=1 << 24)
    pq_m: int = Field(16, ge=1, le=1024)  # IVF-PQ sub-quantizers
    pq_nbits: int = Field(8, ge=1, le=16)
    refine_k_factor: int = Field(0, ge=0, le=1024)  # IVF-PQ: re-rank k*factor candidates exactly; 0 = off
    hnsw_m: int = Field(32, ge=2, le=512)  # FAISS aborts the process on 0
    ef_construction: int = Field(200, ge=1, le=1 << 16)
    ef_search: int = Field(128, ge=1, le=1 << 16)
    exact_check: int = Field(10000, ge=0)  # approximate types: queries re-searched exactly (recall_vs_exact)
    # several GPUs: split the vectors across them (shard: memory / n_gpus, every query visits all) or copy the
    # index to each (replicate: full memory per GPU, queries divided); null = shard. Ignored, with a note, on CPU.
    multi_gpu: Literal["shard", "replicate"] | None = None


MAX_K = 1_000_000
EvalSplit = Literal["unseen", "seen"]
EVAL_SPLITS: tuple[EvalSplit, ...] = ("unseen", "seen")


class EvalConfig(Section):
    ks: list[int] = Field(default_factory=lambda: [1, 2, 4, 5, 8, 10])
    # must include unseen: Recall@1 on unseen classes is the headline metric (ofgr runs, compare, reports)
    splits: list[EvalSplit] = Field(default_factory=lambda: list(EVAL_SPLITS))
    index: IndexConfig = Field(default_factory=IndexConfig)
    bootstrap: int = Field(1000, ge=0, le=100_000)  # resamples for confidence intervals; 0 = off
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    exclude_same_group: bool = False
    batch_size: int = Field(4096, ge=1)  # queries per search chunk
    max_r: int = Field(1000, ge=1, le=1_000_000)  # cap on R, hence on k, for MAP@R / R-precision / mAP

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 or k > MAX_K for k in v):
            raise ValueError(f"must be a non-empty list of integers in 1..{MAX_K}")
        return sorted(set(v))

    @field_validator("splits")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


# ---------------------------------------------------------------------------------------------- root
class Config(Section):
    name: str = Field("demo", min_length=1, max_length=100)  # part of the run folder's name
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("auto", pattern=DEVICE_PATTERN)  # auto | cpu | cuda | cuda:N | mps
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    # the family's own class, chosen by model.kind (register_model_family); dumped with all its keys
    model: SerializeAsAny[ModelSection] = Field(default_factory=_default_model)
    loss: LossConfig = Field(default_factory=LossConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("model", mode="before")
    @classmethod
    def _model_family(cls, value: Any) -> Any:
        """A mapping becomes the config class of its ``kind``'s family (errors keep their key paths)."""
        if not isinstance(value, Mapping):
            return value
        kind = value.get("kind", default_model_kind())
        family = _FAMILIES.get(kind) if isinstance(kind, str) else None
        if family is None:
            raise PydanticCustomError("model_kind", "model.kind must be one of {kinds}",
                                      {"kinds": ", ".join(model_kinds())})
        return family.config.model_validate(dict(value))


# ------------------------------------------------------------------------------------- load / errors
def _model_at(path: tuple[Any, ...], model_kind: Any = None) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``path`` (to suggest valid keys)."""
    model: Any = Config
    if path and path[0] == "model":
        kind = model_kind if isinstance(model_kind, str) else default_model_kind()
        family = _FAMILIES.get(kind)
        if family is None:
            return None
        model = family.config
        path = path[1:]
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part) if isinstance(model, type) else None
        if field is None:
            return None
        ann = field.annotation
        # unwrap list[X] / X | None
        for arg in (*getattr(ann, "__args__", ()), ann):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
        else:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _kind_of(value: Any) -> Any:
    return value.get("kind") if isinstance(value, dict) else value


_UNION_TAG = re.compile(r"^(int|str|float|bool|none|[a-z][a-z_-]*\[.*\])$")


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) if str(p).isprintable() and str(p) else repr(p) for p in path)


def _format_error(e: ValidationError, origin: str, tree: Mapping[str, Any] | None = None) -> str:
    model_tree = (tree or {}).get("model")
    kind = model_tree.get("kind") if isinstance(model_tree, Mapping) else None
    msgs = []
    for item in e.errors():
        # drop pydantic's union-member tags ("int", "list[int]", "function-after[...]"), keep user keys
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
        where = _dotted(loc) or "<root>"
        if item["type"] == "model_kind":
            msgs.append(f"{where}.kind: must be one of {', '.join(model_kinds())}, got {_kind_of(item.get('input'))!r}")
        elif item["type"] == "extra_forbidden" and loc:
            model = _model_at(loc, kind)
            hint = ""
            if model is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.5)
                parent = _dotted(loc[:-1])
                if close:
                    hint = f", did you mean {parent + '.' if parent else ''}{close[0]}?"
                else:
                    hint = f" (valid keys: {', '.join(model.model_fields)})"
            msgs.append(f"{where}: unknown key{hint}")
        else:
            value = item.get("input")
            shown = _short(repr(value)) if not isinstance(value, dict) else "a mapping"
            msgs.append(f"{where}: {item['msg'].lower()}, got {shown}")
    # deduplicate (unions report one error per member)
    seen: list[str] = []
    for m in msgs:
        if m not in seen:
            seen.append(m)
    return f"{origin}: " + "; ".join(seen)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example --set train.epochs=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key segment")
    try:
        value = load_yaml(raw, f"--set {text!r}") if raw.strip() else ""
    except ConfigError as e:
        if "refused" in str(e):
            raise
        value = raw
    return key.split("."), value


def _apply_override(tree: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {text}: {'.'.join(parts[: i + 1])}: no list item {part}")
            node = node[int(part)]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {text}: no list item {last}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {text}: {'.'.join(parts[:-1])} is not a section")


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    data = read_yaml_file(p, error=ConfigError, what="config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Resolve a config: defaults < ``base`` < YAML file < ``--set`` overrides.

    Relative paths inside the YAML stay as written; they are resolved against the working directory.
    """
    tree: dict[str, Any] = dict(base or {})
    origin = "config"
    if path is not None:
        tree = _deep_merge(tree, read_yaml(path))
        origin = str(path)
    overrides = list(overrides or [])
    if overrides:
        # validate the file alone first so its errors name the file, not the overrides
        try:
            validated = Config.model_validate(tree)
        except ValidationError as e:
            raise ConfigError(_format_error(e, origin, tree)) from None
        tree = validated.model_dump(mode="json")
        # the model section keeps only what was written, so `--set model.kind=clip` does not carry the
        # other family's defaults into a section where they are unknown keys
        tree["model"] = {"kind": validated.model.kind,
                         **validated.model.model_dump(mode="json", exclude_unset=True)}
        for text in overrides:
            parts, value = parse_override(text)
            _apply_override(tree, parts, value, text)
        origin = f"{origin} with --set {' '.join(_short(o) for o in overrides)}"
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, origin, tree)) from None
    problem = headline_problem(cfg)
    if problem is not None:
        raise ConfigError(f"{origin}: {problem}")
    return cfg


def headline_problem(cfg: Config) -> str | None:
    """Why a run with ``cfg`` could not produce its headline metric (Recall@1 on unseen fine classes), or None.

    Checked by :func:`load_config` for runs (``ofgr eval-embeddings`` builds an ``EvalConfig`` of any ``--k``).
    """
    if "unseen" not in cfg.eval.splits:
        return (f"eval.splits: must include unseen, got {cfg.eval.splits}: Recall@1 on unseen classes is the "
                "headline metric; e.g. [unseen] or [unseen, seen]")
    if 1 not in cfg.eval.ks:
        return (f"eval.ks: must include 1, got {cfg.eval.ks}: Recall@1 is the headline metric (ofgr runs, "
                "compare, reports)")
    return None


def set_run_name(cfg: Config, name: str) -> None:
    """Replace the run name (``ofgr run --name``); a name the schema refuses is a one-line ``ConfigError``."""
    try:
        cfg.name = name
    except ValidationError as e:
        raise ConfigError(_format_error(e, f"--name {_short(repr(name))}")) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


_load_families()
