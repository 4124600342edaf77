"""``HeadStep`` (a head's backward written out) against autograd: the same loss bit for bit, the same gradients to
float rounding, the same random draws; the models and losses it does not cover go to autograd. Through ``train``
(``train.head_step``): tests/core/test_head_fit.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from ofgr_core.losses.arcface import ArcFaceLoss
from ofgr_core.losses.combined import CombinedLoss
from ofgr_core.losses.hierarchical_triplet import HierarchicalTripletLoss
from ofgr_core.losses.subcenter_arcface import SubCenterArcFaceLoss
from ofgr_core.models.base import FeatureHead, MLPHead
from ofgr_core.train import guard
from ofgr_core.train.headstep import HeadStep
from ofgr_core.train.loop import TrainModule

CLASSES = 6


class _Owner(nn.Module):
    """What ``FeatureHead`` reads from an encoder: its head and embedding width."""

    def __init__(self, head: MLPHead, embed_dim: int) -> None:
        super().__init__()
        self.head = head
        self.embed_dim = embed_dim


def _parts(
    seed: int,
    *,
    feat: int = 40,
    embed: int = 16,
    depth: int = 2,
    width: int = 24,
    dropout: float = 0.1,
    residual: bool = False,
    approximate: str = "none",
    losses: str = "both",
    weights: tuple[float, float] = (1.0, 1.0),
) -> tuple[FeatureHead, CombinedLoss]:
    torch.manual_seed(seed)
    head = MLPHead(feat, embed, depth=depth, width=width, dropout=dropout, residual=residual)
    for m in head.mlp:
        if isinstance(m, nn.GELU):
            m.approximate = approximate
    if residual:  # the residual head starts as the identity: move it off zero so every gradient is exercised
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.1 * torch.randn_like(p))
    named: dict[str, Any] = {}
    if losses in ("both", "arcface"):
        named["arcface"] = ArcFaceLoss(CLASSES, embed, scale=16.0, margin=0.2)
    if losses in ("both", "htriplet"):
        named["htriplet"] = HierarchicalTripletLoss(0.1, 0.3, "batch_hard")
    w = dict(zip(("arcface", "htriplet"), weights, strict=True))
    return FeatureHead(_Owner(head, embed)), CombinedLoss(named, {k: w[k] for k in named})  # type: ignore[arg-type]


def _batch(seed: int, feat: int, *, unknown: int = 0, one_column: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fine = torch.arange(24) % CLASSES
    coarse = fine // 2
    x = torch.randn(CLASSES, feat, generator=g)[fine] + 0.8 * torch.randn(24, feat, generator=g)
    if unknown:  # coarse-only rows
        fine = fine.clone()
        fine[:unknown] = -1
    labels = fine[:, None] if one_column else torch.stack([fine, coarse], 1)
    return x, labels


def _both(
    model: FeatureHead, loss: CombinedLoss, x: torch.Tensor, labels: torch.Tensor
) -> tuple[tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor]], ...]:
    """(autograd, HeadStep): loss, components, gradients; both from the same random state, which they must
    leave the same."""
    module = TrainModule(model, loss)
    module.train()
    params = list(module.parameters())
    step = HeadStep.build(model, loss)
    assert step is not None
    state = torch.get_rng_state()
    total, parts = module(x, labels)
    for p in params:
        p.grad = None
    total.backward()
    ref = (total.detach(), {k: v.detach() for k, v in parts.items()}, [p.grad.clone() for p in params])
    after_ref = torch.get_rng_state()
    torch.set_rng_state(state)
    for p in params:
        p.grad = torch.full_like(p, 7.0)  # written over, never added to
    total2, parts2 = step.step(x, labels)
    assert torch.equal(torch.get_rng_state(), after_ref)  # the same dropout draws
    return ref, (total2, parts2, [p.grad.clone() for p in params])


CASES = {
    "demo": {},
    "depth 1": {"depth": 1},
    "depth 3": {"depth": 3},
    "residual": {"residual": True, "embed": 40},
    "no dropout": {"dropout": 0.0},
    "tanh GELU": {"approximate": "tanh"},
    "ArcFace only": {"losses": "arcface"},
    "triplet only": {"losses": "htriplet"},
    "weighted": {"weights": (0.5, 2.0)},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("labels", ["known", "coarse-only rows", "one column"])
def test_step_equals_autograd(case: str, labels: str) -> None:
    kw: dict[str, Any] = dict(CASES[case])
    if labels == "one column" and kw.get("losses") == "htriplet":
        pytest.skip("covered by the both-losses case")
    model, loss = _parts(0, **kw)
    for seed in range(3):
        x, y = _batch(seed, 40, unknown=5 if labels == "coarse-only rows" else 0, one_column=labels == "one column")
        (t_ref, p_ref, g_ref), (t_new, p_new, g_new) = _both(model, loss, x, y)
        assert torch.equal(t_ref, t_new)  # the same forward operations: the same bits
        assert p_ref.keys() == p_new.keys() and all(torch.equal(p_ref[k], p_new[k]) for k in p_ref)
        assert float(t_ref) > 0
        for a, b in zip(g_ref, g_new, strict=True):
            assert a.shape == b.shape and b.is_contiguous()
            scale = float(a.abs().max())
            assert scale > 0  # every parameter has a gradient in these batches
            assert float((a - b).abs().max()) <= 1e-5 * scale


def test_every_row_coarse_only_gives_arcface_nothing() -> None:
    model, loss = _parts(1)
    x, y = _batch(0, 40, unknown=24)
    (t_ref, _, g_ref), (t_new, _, g_new) = _both(model, loss, x, y)
    assert torch.equal(t_ref, t_new)
    for a, b in zip(g_ref, g_new, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_hardest_distance_tied_shares_its_gradient_as_autograd_does() -> None:
    model, loss = _parts(2, dropout=0.0)
    x, y = _batch(0, 40)
    # three positives of anchor 0 (rows 6, 12, 18 of its class) are the same image, and so are two of its
    # sibling negatives (rows 1 and 7 of class 1): its hardest positive and negative are ties
    x[2 * CLASSES] = x[3 * CLASSES] = x[CLASSES]
    x[CLASSES + 1] = x[1]
    emb = torch.nn.functional.normalize(model(x), dim=1)
    dist = 1 - emb @ emb.T
    assert dist[0, CLASSES] == dist[0, 2 * CLASSES] == dist[0, 3 * CLASSES] and dist[0, 1] == dist[0, CLASSES + 1]
    (_, _, g_ref), (_, _, g_new) = _both(model, loss, x, y)
    for a, b in zip(g_ref, g_new, strict=True):
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_label_out_of_range_is_the_reference_message() -> None:
    model, loss = _parts(0)
    x, y = _batch(0, 40)
    y[0, 0] = CLASSES
    step = HeadStep.build(model, loss)
    assert step is not None
    with pytest.raises(ValueError, match=rf"ArcFace fine labels must lie in \[0, {CLASSES}\), got \[0, {CLASSES}\]"):
        step.step(x, y)


def test_what_it_does_not_cover_trains_through_autograd() -> None:
    model, loss = _parts(0)
    assert HeadStep.build(model, loss) is not None
    sub = CombinedLoss({"arcface": SubCenterArcFaceLoss(CLASSES, 16, subcenters=3)}, {"arcface": 1.0})
    semi = CombinedLoss({"htriplet": HierarchicalTripletLoss(mining="semi_hard")}, {"htriplet": 1.0})
    assert HeadStep.build(model, sub) is None
    assert HeadStep.build(model, semi) is None
    assert HeadStep.build(model.head, loss) is None  # not a head on features
    linear_head = FeatureHead(_Owner(nn.Sequential(nn.Linear(40, 16)), 16))  # type: ignore[arg-type]
    assert HeadStep.build(linear_head, loss) is None
    double = copy.deepcopy(model).double()
    assert HeadStep.build(double, loss) is None
    frozen = copy.deepcopy(model)
    frozen.head.mlp[0].weight.requires_grad_(False)
    assert HeadStep.build(frozen, loss) is None


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_is_torchs_bit_for_bit(max_norm: float) -> None:
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(5, 7)) for _ in range(3)]
    b = [nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b, strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    a[1].grad = None
    b[1].grad = None
    ref = torch.nn.utils.clip_grad_norm_(a, max_norm)
    got = guard.clip_grad_norm(b, max_norm)
    assert got == float(ref)
    for p, q in zip(a, b, strict=True):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)
    clipped = max_norm < float(ref)
    assert clipped == (max_norm == 0.5)  # one case under the norm, one over
