"""``ofgr clip pretrain``: contrastive (CLIP) training of an open_clip model on images with captions.

Symmetric InfoNCE with open_clip's own ``ClipLoss`` and learnable temperature, AdamW (no weight decay on
biases, norms, embeddings' temperature), warmup + cosine schedule. The result is a ``local-dir:`` folder
(``open_clip_config.json`` with model and preprocess config + ``open_clip_model.safetensors``) that
``model.pretrained: local-dir:OUT`` loads. Users adapt CLIP to their domain with it (``--pretrained TAG`` starts
from existing weights); ofgr's demo pretrains the tiny architecture on captions of a separate synthetic world.

Input: a manifest CSV (or a folder holding ``manifest.csv``) with ``path`` (relative to the manifest) and
``caption`` columns; ``ofgr data synth`` writes one. Rows with an empty caption are skipped.

Images are decoded once with the model's eval preprocessing and kept in memory when they fit
(``preload_limit_bytes``), so an epoch costs only the forward/backward passes. No augmentation: captions
name colours and facing direction, which colour jitter and flips would contradict.

A finished output folder records the training spec (manifest hash, model, hyper-parameters); calling again
with the same spec reuses it (``force=True`` retrains).

API::

    pretrain_clip(manifest, out_dir, *, model="ofgr-tiny-clip", pretrained=None, epochs=10, batch_size=128,
                  lr=5e-3, weight_decay=0.1, warmup_fraction=0.1, seed=0, image_size=None, device="auto",
                  force=False, stop=None) -> Iterator[Event]   # ends with PretrainFinished
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterator
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
    from PIL import Image

    n = len(paths)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                out[i] = transform(im.convert("RGB"))
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


def pretrain_clip(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    model: str = "ofgr-tiny-clip",
    pretrained: str | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 5e-3,
    weight_decay: float = 0.1,
    warmup_fraction: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    device: str = "auto",
    force: bool = False,
    stop: Callable[[], bool] | None = None,
    preload_limit_bytes: int = PRELOAD_LIMIT_BYTES,
) -> Iterator[Event]:
    """Train ``model`` contrastively on the manifest's (image, caption) pairs; save a ``local-dir:`` folder.

    Args:
        manifest: CSV with ``path`` and ``caption`` (or a folder holding ``manifest.csv``).
        out_dir: output folder (new, empty, or a previous output: reused when the spec matches).
        model: open_clip architecture (``ofgr models``), e.g. ``ofgr-tiny-clip``.
        pretrained: start from these weights (tag, checkpoint file, ``local-dir:``); ``None``: random init.
        epochs, batch_size, lr, weight_decay, warmup_fraction: optimisation (AdamW, cosine after warmup).
        seed: initialisation and shuffling seed.
        image_size: input size (default: the architecture's).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        force: retrain even if ``out_dir`` holds a result of the same spec.
        stop: polled between steps; when it returns True training ends without saving.

    Yields:
        ``StageStarted``/``StageProgress``/``StageFinished`` (``load``, ``pretrain``, ``save``),
        ``TrainStep``, ``TrainEpoch``, ``Log``, and last ``PretrainFinished``.

    Raises:
        DataError: manifest problems. ConfigError: bad arguments or output folder. DependencyError: weights.
    """
    if epochs < 1:
        raise ConfigError(f"--epochs {epochs}: must be at least 1")
    if batch_size < 2:
        raise ConfigError(f"--batch-size {batch_size}: contrastive training needs at least 2")
    if not lr > 0:
        raise ConfigError(f"--lr {lr}: must be positive")
    t0 = time.perf_counter()
    out = Path(out_dir).expanduser()
    _check_out_dir(out)
    paths, captions, manifest_file = read_captions(manifest)
    spec = _spec(manifest_file, model=model, pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr,
                 weight_decay=weight_decay, warmup_fraction=warmup_fraction, seed=seed, image_size=image_size)
    if not force and _existing_spec(out) == spec:
        yield Log(f"{out} already holds this pretraining (same manifest and settings); reusing it")
        yield PretrainFinished(str(out), f"local-dir:{out}", len(paths), epochs,
                               float(json.loads((out / "open_clip_config.json").read_text())["ofgr"].get("loss", 0.0)),
                               time.perf_counter() - t0, True)
        return

    import torch

    from ofgr_core.models.clip.encoder import (
        as_open_clip,
        data_config_from_preprocess,
        load_open_clip,
        open_clip_module,
        save_local_dir,
        tokenizer_for,
    )
    from ofgr_core.train.ddp import resolve_device
    from ofgr_core.train.optim import cosine_with_warmup

    oc = open_clip_module()
    dev = resolve_device(device)
    torch.manual_seed(seed)
    clip_model, source = load_open_clip(model, pretrained, None, image_size)
    # the checkpoint's folder and space first: a full disk is one line before training, not after it
    weight_bytes = sum(t.numel() * t.element_size() for t in clip_model.state_dict().values())
    make_dir(out, "--out")
    ensure_free(out, weight_bytes + (1 << 20), f"--out {out}: the CLIP checkpoint")
    clip_model.to(dev)
    from open_clip.model import get_model_preprocess_cfg

    from ofgr_core.models.factory import create_transforms

    data_config = data_config_from_preprocess(dict(get_model_preprocess_cfg(clip_model)))
    transform = create_transforms(cast(Any, SimpleNamespace(data_config=data_config)), train=False)
    tokenizer = tokenizer_for(source)

    n = len(paths)
    size = data_config["input_size"]
    need = n * int(np.prod(size)) * 4
    if need > preload_limit_bytes:
        raise ConfigError(f"{n} images at {size[1]}x{size[2]} need {need / 2**30:.1f} GiB in memory (limit "
                          f"{preload_limit_bytes / 2**30:.1f} GiB); use a smaller manifest or a lower --image-size")
    yield StageStarted("load", total=n)
    t_load = time.perf_counter()
    images = torch.empty((n, *size), dtype=torch.float32)
    yield from _load_images(paths, transform, images)
    tokens = tokenizer(captions)
    yield StageFinished("load", time.perf_counter() - t_load)
    n_unique = len(set(captions))
    yield Log(f"{n} images, {n_unique} distinct captions; model {source.describe}, "
              f"{sum(p.numel() for p in clip_model.parameters()) / 1e6:.2f}M parameters, device {dev}")

    clip_model.requires_grad_(True)
    clip_model.train()
    oc_model = as_open_clip(clip_model)
    loss_fn = oc.ClipLoss()
    opt = torch.optim.AdamW(_param_groups(clip_model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    bs = min(batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the last partial batch: tiny batches make InfoNCE noisy
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, int(warmup_fraction * total)))
    gen = torch.Generator().manual_seed(seed)
    yield StageStarted("pretrain", total=epochs)
    t_train = time.perf_counter()
    step = 0
    epoch_loss = float("nan")
    for epoch in range(1, epochs + 1):
        t_ep = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        losses, correct, seen = [], 0, 0
        for b in range(steps_per_epoch):
            if stop is not None and stop():
                yield Log("pretraining stopped; nothing saved", level="warning")
                return
            idx = order[b * bs : (b + 1) * bs]
            x, t = images[idx].to(dev, non_blocking=True), tokens[idx].to(dev, non_blocking=True)
            img_f = oc_model.encode_image(x, normalize=True)
            txt_f = oc_model.encode_text(t, normalize=True)
            scale = oc_model.logit_scale.exp()
            loss = loss_fn(img_f, txt_f, scale)
            if not torch.isfinite(loss):
                raise DataError(f"pretraining diverged at epoch {epoch} step {b + 1} (loss {loss.item()}); "
                                "lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clip_model.parameters(), 5.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                oc_model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
                correct += int((img_f @ txt_f.T).argmax(1).eq(torch.arange(len(idx), device=dev)).sum())
                seen += len(idx)
            loss_value = float(loss.detach())
            losses.append(loss_value)
            step += 1
            rate = len(idx) * (b + 1) / max(1e-9, time.perf_counter() - t_ep)
            yield TrainStep(epoch, b + 1, steps_per_epoch, loss_value, {"clip": loss_value},
                            float(opt.param_groups[0]["lr"]), rate)
        epoch_loss = float(np.mean(losses))
        final_scale = float(oc_model.logit_scale.detach().exp())
        yield TrainEpoch(epoch, epochs, epoch_loss, {"clip": epoch_loss}, float(opt.param_groups[0]["lr"]),
                         {"i2t_batch_acc": correct / max(1, seen), "logit_scale": final_scale},
                         time.perf_counter() - t_ep, False)
        yield StageProgress("pretrain", epoch, epochs)
    yield StageFinished("pretrain", time.perf_counter() - t_train)

    yield StageStarted("save")
    clip_model.eval()
    save_local_dir(clip_model.cpu(), out, arch=model if not source.arch.startswith("local-dir:") else source.arch,
                   extra={"pretrain_spec": spec, "loss": epoch_loss, "images": n,
                          "seconds": round(time.perf_counter() - t0, 2)})
    yield StageFinished("save", 0.0)
    yield PretrainFinished(str(out), f"local-dir:{out}", n, epochs, epoch_loss, time.perf_counter() - t0, False)
