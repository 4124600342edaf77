"""Head fitting on in-memory features takes the fast path and trains exactly as the reference path does; the head's
written-out backward (``train.head_step: auto``) trains it as autograd does, to rounding.

The fast path (``FeatureDataset.take``: ``ofgr_core.train.loop.InMemoryBatches``) gathers each batch from the
feature matrix on the device along the sampler's plan for the epoch, with no DataLoader; it holds end-of-epoch
checkpoints back for up to ``LAZY_CHECKPOINT_S`` and writes them after the last epoch or on a stop; ArcFace
runs its arithmetic directly instead of through PML. Both paths step the fused optimizer update (``train.fused:
auto`` for a head on features). The reference is the same ``train`` over a plain dataset of the same rows
(DataLoader, collation, a checkpoint after every epoch). Every loss value, every weight and the checkpoints must
be equal.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ofgr_core.config import Config, load_config
from ofgr_core.losses import create_loss
from ofgr_core.losses.arcface import ArcFaceLoss
from ofgr_core.models.base import Encoder, FeatureHead, apply_head
from ofgr_core.models.factory import create_model_and_transforms
from ofgr_core.runs.checkpoint import load_checkpoint
from ofgr_core.runs.events import TrainEpoch
from ofgr_core.samplers import create_sampler
from ofgr_core.train import loop as loop_mod
from ofgr_core.train.fit import FeatureDataset
from ofgr_core.train.headstep import HeadStep
from ofgr_core.train.loop import TrainResult, train

REPO = Path(__file__).resolve().parents[2]


class Rows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """The same rows without ``take``: the DataLoader path."""

    def __init__(self, inner: FeatureDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.inner[i]


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    cfg = load_config(REPO / "configs" / "demo_clip.yaml",
                      ["model.pretrained=null", "train.epochs=4", "sampler.batches_per_epoch=6"])
    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms(cfg.model, image_size=32)
    rng = np.random.default_rng(0)
    fine = np.repeat(np.arange(12), 20)
    centres = rng.normal(size=(12, model.feature_dim)).astype(np.float32)
    feats = centres[fine] + rng.normal(size=(len(fine), model.feature_dim)).astype(np.float32)
    vf = np.repeat(np.arange(12), 4)
    val_x = centres[vf] + rng.normal(size=(len(vf), model.feature_dim)).astype(np.float32)
    return {"cfg": cfg, "model": model, "feats": feats, "labels": np.stack([fine, fine // 3], 1),
            "val_x": val_x, "val_labels": np.stack([vf, vf // 3], 1)}


def _fit(s: dict[str, Any], ckpt: Path, fast: bool, cfg: Config | None = None, **kw: Any
         ) -> tuple[TrainResult, Encoder, list[TrainEpoch]]:
    cfg = cfg or s["cfg"]
    model: Encoder = copy.deepcopy(s["model"])
    torch.manual_seed(1)
    loss_fn = create_loss(cfg.loss, num_classes=12, embed_dim=model.embed_dim)
    data = FeatureDataset(s["feats"], s["labels"])
    events = train(cfg, model=FeatureHead(model), loss_fn=loss_fn,
                   sampler=create_sampler(cfg.sampler, s["labels"], seed=cfg.seed),
                   train_dataset=data if fast else Rows(data),
                   val_embed=lambda: apply_head(model, s["val_x"], torch.device("cpu")), val_labels=s["val_labels"],
                   device=torch.device("cpu"), ckpt_dir=ckpt, state_dict=model.trainable_state_dict,
                   load_state_dict=model.load_trainable_state_dict, num_workers=0, **kw)
    epochs: list[TrainEpoch] = []
    while True:
        try:
            ev = next(events)
        except StopIteration as stop:
            return stop.value, model, epochs
        if isinstance(ev, TrainEpoch):
            epochs.append(ev)


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            _same_state(a[k], b[k])
        else:
            assert a[k] == b[k], k


def test_fast_path_trains_exactly_like_the_reference(setup: dict[str, Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    saves: list[str] = []
    real_save = loop_mod.save_checkpoint
    monkeypatch.setattr(loop_mod, "save_checkpoint", lambda p, st: (saves.append(Path(p).name), real_save(p, st)))
    ref, ref_model, ref_epochs = _fit(setup, tmp_path / "ref", fast=False)
    n_ref = len(saves)
    fast, fast_model, fast_epochs = _fit(setup, tmp_path / "fast", fast=True)
    assert [(e.loss, e.losses, e.val, e.best) for e in fast_epochs] == \
        [(e.loss, e.losses, e.val, e.best) for e in ref_epochs]
    assert fast.history == ref.history and fast.best_epoch == ref.best_epoch and fast.best_val == ref.best_val
    for a, b in zip(fast_model.head.parameters(), ref_model.head.parameters(), strict=True):
        assert torch.equal(a, b)
    # the checkpoints the run ends with are the reference's: the kept epoch's weights, the last epoch's state
    _same_state(load_checkpoint(tmp_path / "fast" / "best.pt")["model"],
                load_checkpoint(tmp_path / "ref" / "best.pt")["model"])
    last_f, last_r = load_checkpoint(tmp_path / "fast" / "last.pt"), load_checkpoint(tmp_path / "ref" / "last.pt")
    for key in ("model", "loss", "epoch", "best_epoch", "best_val", "history", "sampler"):
        if isinstance(last_r[key], dict):
            _same_state(last_f[key], last_r[key])
        else:
            assert last_f[key] == last_r[key], key
    for a, b in zip(last_f["optimizer"]["state"].values(), last_r["optimizer"]["state"].values(), strict=True):
        _same_state(a, b)
    # reference: last.pt after every epoch (plus best.pt when kept); fast: held back, written once at the end
    assert saves[:n_ref].count("last.pt") == 4 and saves[n_ref:] == ["last.pt", "best.pt"]


def test_held_back_checkpoints_are_written_on_time_and_on_a_stop(setup: dict[str, Any], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    saves: list[str] = []
    real_save = loop_mod.save_checkpoint
    monkeypatch.setattr(loop_mod, "save_checkpoint", lambda p, st: (saves.append(Path(p).name), real_save(p, st)))
    monkeypatch.setattr(loop_mod, "LAZY_CHECKPOINT_S", 0.0)  # due after every epoch: the reference's writes
    _fit(setup, tmp_path / "due", fast=True)
    assert saves.count("last.pt") == 4

    # a stop mid-epoch writes the held-back kept model and the step's last.pt; resuming from it finishes
    # with the same weights as the run that was never stopped
    monkeypatch.setattr(loop_mod, "LAZY_CHECKPOINT_S", 1e9)
    whole, whole_model, _ = _fit(setup, tmp_path / "whole", fast=True)
    calls = {"n": 0}

    def stop_at_step_15() -> bool:
        calls["n"] += 1
        return calls["n"] == 15

    saves.clear()
    stopped, _, _ = _fit(setup, tmp_path / "stopped", fast=True, stop=stop_at_step_15)
    assert stopped.stopped and saves == ["best.pt", "last.pt"]
    state = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert (state["epoch"], state["step"]) == (2, 3)  # epoch 3 (0-based 2) after its third step
    resumed, resumed_model, _ = _fit(setup, tmp_path / "stopped", fast=True,
                                     resume_from=tmp_path / "stopped" / "last.pt")
    assert resumed.history == whole.history
    for a, b in zip(resumed_model.head.parameters(), whole_model.head.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("seed", range(6))
def test_direct_arcface_equals_pml_bit_for_bit(seed: int) -> None:
    torch.manual_seed(seed)
    loss = ArcFaceLoss(9, 16, scale=16.0 + seed, margin=0.1 + 0.1 * seed)
    x = torch.randn(20, 16, requires_grad=True)
    fine = torch.randint(0, 9, (20,))
    fine[3] = -1  # a coarse-only row: skipped
    with torch.no_grad():
        x[0] = -5 * loss.weight[:, fine[0]]  # the angle to its class near pi: the monotonic extension
    labels = torch.stack([fine, fine.clamp(min=0) // 3], 1)
    assert loss._direct
    got = loss.compute_loss(x, labels)
    got_grads = torch.autograd.grad(got, [x, loss.weight])
    loss._direct = False  # PML's ArcFaceLoss
    ref = loss.compute_loss(x, labels)
    ref_grads = torch.autograd.grad(ref, [x, loss.weight])
    assert torch.equal(got, ref)
    assert all(torch.equal(a, b) for a, b in zip(got_grads, ref_grads, strict=True))


def test_fused_update_is_the_heads_and_never_an_image_models(setup: dict[str, Any], tmp_path: Path) -> None:
    """``train.fused: auto`` fuses a head's update on features (both paths), leaves an image model's alone, and
    ``off`` gives the multi-tensor update back: the setting, not the data path, decides the arithmetic."""
    _fit(setup, tmp_path / "auto", fast=True)
    groups = load_checkpoint(tmp_path / "auto" / "last.pt")["optimizer"]["param_groups"]
    assert all(g["fused"] for g in groups)
    off = setup["cfg"].model_copy(deep=True)
    off.train.fused = "off"
    _fit(setup, tmp_path / "off", fast=True, cfg=off)
    groups = load_checkpoint(tmp_path / "off" / "last.pt")["optimizer"]["param_groups"]
    assert not any(g["fused"] for g in groups) and all(g["foreach"] for g in groups)
    # an image model (anything but a FeatureHead) under auto: not fused
    image_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 128))
    loss_fn = create_loss(setup["cfg"].loss, num_classes=12, embed_dim=128)
    parts = loop_mod._setup(setup["cfg"], image_model, loss_fn,
                            create_sampler(setup["cfg"].sampler, setup["labels"], seed=0), torch.device("cpu"),
                            loop_mod.DistInfo(), probe_epochs=0, backbone_lr_mult=1.0, layer_decay=None,
                            autocast_dtype=None, state_dict=None, load_state_dict=None)
    assert not any(g["fused"] for g in parts.optimizer.param_groups)


def test_head_step_trains_the_head_autograd_trains(setup: dict[str, Any], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]
    real = HeadStep.step

    def counted(self: HeadStep, x: torch.Tensor, labels: torch.Tensor) -> Any:
        calls[0] += 1
        return real(self, x, labels)

    monkeypatch.setattr(HeadStep, "step", counted)
    auto, auto_model, auto_epochs = _fit(setup, tmp_path / "auto", fast=True)
    assert calls[0] == 4 * 6  # every step of the 4 epochs x 6 batches
    off = setup["cfg"].model_copy(deep=True)
    off.train.head_step = "autograd"
    ref, ref_model, ref_epochs = _fit(setup, tmp_path / "ref", fast=True, cfg=off)
    assert calls[0] == 4 * 6  # not called with head_step: autograd
    # rounding apart, the same training: loss per epoch, validation, weights
    np.testing.assert_allclose([e.loss for e in auto_epochs], [e.loss for e in ref_epochs], rtol=1e-4)
    assert [e.val for e in auto_epochs] == pytest.approx([e.val for e in ref_epochs], rel=1e-3)
    for a, b in zip(auto_model.head.parameters(), ref_model.head.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    assert auto.best_epoch == ref.best_epoch


def test_head_step_only_without_autocast_and_only_when_asked(setup: dict[str, Any]) -> None:
    cfg = setup["cfg"]
    sampler = create_sampler(cfg.sampler, setup["labels"], seed=0)

    def built(c: Config, autocast_dtype: torch.dtype | None) -> HeadStep | None:
        model = FeatureHead(copy.deepcopy(setup["model"]))
        loss_fn = create_loss(c.loss, num_classes=12, embed_dim=model.embed_dim)
        return loop_mod._setup(c, model, loss_fn, sampler, torch.device("cpu"), loop_mod.DistInfo(),
                               probe_epochs=0, backbone_lr_mult=1.0, layer_decay=None,
                               autocast_dtype=autocast_dtype, state_dict=None, load_state_dict=None).head_step

    assert built(cfg, None) is not None
    assert built(cfg, torch.bfloat16) is None
    off = cfg.model_copy(deep=True)
    off.train.head_step = "autograd"
    assert built(off, None) is None
    applies = loop_mod._head_step_applies
    assert applies(cfg.train, torch.device("cpu"), loop_mod.DistInfo(), None)
    assert not applies(cfg.train, torch.device("cuda", 0), loop_mod.DistInfo(), None)
    assert not applies(cfg.train, torch.device("cpu"), loop_mod.DistInfo(world_size=2, rank=0, local_rank=0), None)
