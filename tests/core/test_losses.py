"""Losses against naive references: loops over all triplets, explicit softmax, pytorch-metric-learning."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners

from ofgr_core.common.errors import ConfigError
from ofgr_core.config import ArcFaceConfig, HTripletConfig, LossConfig, load_config
from ofgr_core.losses import MINING_MODES, ArcFaceLoss, CombinedLoss, HierarchicalTripletLoss, create_loss


def _hier_batch(seed: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Imbalanced hierarchy: 3 coarse classes with 1-3 fine classes of 1-4 images (singletons included)."""
    rng = np.random.default_rng(seed)
    rows = []
    fine_id = 0
    for coarse in range(3):
        for _ in range(rng.integers(1, 4)):
            rows += [(fine_id, coarse)] * int(rng.integers(1, 5))
            fine_id += 1
    labels = torch.tensor(rows)[torch.from_numpy(rng.permutation(len(rows)))]
    return torch.from_numpy(rng.normal(size=(len(rows), dim))), labels


def _naive_htriplet(emb, labels, m_fine, m_coarse, mining) -> float:
    x = emb.numpy() / np.linalg.norm(emb.numpy(), axis=1, keepdims=True)
    fine, coarse = labels[:, 0].tolist(), labels[:, -1].tolist()
    n = len(fine)

    def d(i, j):
        return 1.0 - float(np.dot(x[i], x[j]))

    def margin(a, neg):
        return m_fine if coarse[neg] == coarse[a] else m_coarse

    if mining == "batch_hard":
        terms = []
        for a in range(n):
            positives = [p for p in range(n) if p != a and fine[p] == fine[a]]
            if not positives:
                continue
            d_ap = max(d(a, p) for p in positives)
            for same_coarse, m in ((True, m_fine), (False, m_coarse)):
                negs = [k for k in range(n) if fine[k] != fine[a] and (coarse[k] == coarse[a]) == same_coarse]
                if negs:
                    terms.append(max(0.0, d_ap - min(d(a, k) for k in negs) + m))
        return sum(terms) / len(terms) if terms else 0.0
    kept = []
    for a, p, k in itertools.product(range(n), repeat=3):
        if p == a or fine[p] != fine[a] or fine[k] == fine[a]:
            continue
        loss = d(a, p) - d(a, k) + margin(a, k)
        if loss > 0 and (mining == "all" or loss < margin(a, k)):
            kept.append(loss)
    return sum(kept) / len(kept) if kept else 0.0


@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_htriplet_matches_naive_loop(mining, seed):
    emb, labels = _hier_batch(seed)
    # wide margins so that every mode keeps a good share of the triplets
    loss = HierarchicalTripletLoss(margin_fine=0.4, margin_coarse=0.9, mining=mining)
    got = loss(emb, labels)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_naive_htriplet(emb, labels, 0.4, 0.9, mining), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mining", MINING_MODES)
def test_htriplet_single_level_is_a_plain_triplet_loss(mining):
    emb, labels = _hier_batch(3)
    loss = HierarchicalTripletLoss(margin_fine=0.05, margin_coarse=0.5, mining=mining)
    expected = _naive_htriplet(emb, labels[:, :1], 0.05, 0.5, mining)  # coarse := fine
    assert loss(emb, labels[:, 0]).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("mining", "miner"), [("all", None), ("semi_hard", "semihard")])
def test_htriplet_single_level_agrees_with_pml(mining, miner):
    emb, labels = _hier_batch(4)
    emb = emb.float()
    fine = labels[:, 0]
    pml = losses.TripletMarginLoss(margin=0.5, distance=distances.CosineSimilarity())
    tuples = None
    if miner:
        mine = miners.TripletMarginMiner(0.5, type_of_triplets=miner, distance=distances.CosineSimilarity())
        tuples = mine(emb, fine)
    ours = HierarchicalTripletLoss(margin_fine=0.5, margin_coarse=0.5, mining=mining)(emb, fine)
    torch.testing.assert_close(ours, pml(emb, fine, tuples))


def _on_circle(*angles: float) -> torch.Tensor:
    return torch.tensor([[math.cos(t), math.sin(t)] for t in angles], dtype=torch.float64)


def _angle(distance: float) -> float:
    return math.acos(1.0 - distance)  # cosine distance -> angle from the anchor


@pytest.mark.parametrize("same_coarse", [True, False])
@pytest.mark.parametrize("gap", [0.05, 0.15, 0.25, 0.4])
def test_htriplet_margin_depends_on_the_negative_level(same_coarse, gap):
    # anchor at 0, positive at d=0.1 on one side, negative at d=0.1+gap on the other side: only the anchor
    # sees a violating triplet (the positive is far from the negative)
    m_fine, m_coarse, d_ap = 0.1, 0.3, 0.1
    emb = _on_circle(0.0, _angle(d_ap), -_angle(d_ap + gap))
    labels = torch.tensor([[0, 0], [0, 0], [1, 0 if same_coarse else 1]])
    margin = m_fine if same_coarse else m_coarse
    expected = max(0.0, margin - gap)
    for mining in ("all", "semi_hard"):
        got = HierarchicalTripletLoss(m_fine, m_coarse, mining)(emb, labels).item()
        assert got == pytest.approx(expected, abs=1e-9), mining
    # batch hard: two anchors (0 and 1) each with one negative term; only anchor 0's is positive
    assert HierarchicalTripletLoss(m_fine, m_coarse, "batch_hard")(emb, labels).item() == pytest.approx(
        expected / 2, abs=1e-9
    )


def test_semi_hard_skips_hard_negatives_that_all_keeps():
    emb = _on_circle(0.0, _angle(0.3), -_angle(0.2))  # negative closer than the positive
    labels = torch.tensor([[0, 0], [0, 0], [1, 0]])
    assert HierarchicalTripletLoss(0.1, 0.3, "all")(emb, labels).item() == pytest.approx(0.2)
    assert HierarchicalTripletLoss(0.1, 0.3, "semi_hard")(emb, labels).item() == 0.0


def test_batch_hard_uses_hardest_pair_per_margin_type():
    # anchor 0; positives at d=0.05 and 0.2 (hardest 0.2); fine negatives at d=0.25 and 0.5 (hardest 0.25);
    # coarse negative at d=0.3
    emb = _on_circle(0.0, _angle(0.05), _angle(0.2), -_angle(0.25), -_angle(0.5), -_angle(0.3))
    labels = torch.tensor([[0, 0], [0, 0], [0, 0], [1, 0], [2, 0], [3, 1]])
    loss = HierarchicalTripletLoss(0.1, 0.3, "batch_hard")(emb, labels).item()
    assert loss == pytest.approx(_naive_htriplet(emb, labels, 0.1, 0.3, "batch_hard"), rel=1e-12)
    # 3 anchors x 2 terms; only anchor 0 violates: relu(0.2 - 0.25 + 0.1) + relu(0.2 - 0.3 + 0.3)
    assert loss == pytest.approx((0.05 + 0.2) / 6, rel=1e-9)


@pytest.mark.parametrize("mining", MINING_MODES)
def test_htriplet_no_valid_triplet_is_zero_with_gradient(mining):
    emb = torch.randn(4, 8, requires_grad=True)
    loss = HierarchicalTripletLoss(mining=mining)(emb, torch.tensor([[0, 0], [1, 0], [2, 1], [3, 1]]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


# ---------------------------------------------------------------------------------------------- arcface
def test_arcface_zero_margin_is_normalised_softmax():
    torch.manual_seed(0)
    emb, labels = torch.randn(12, 16), torch.randint(0, 5, (12,))
    loss = ArcFaceLoss(num_classes=5, embed_dim=16, scale=20.0, margin=0.0)
    logits = 20.0 * F.normalize(emb, dim=1) @ F.normalize(loss.weight, dim=0)
    torch.testing.assert_close(loss(emb, labels), F.cross_entropy(logits, labels))
    torch.testing.assert_close(loss.logits(emb), logits)


def test_arcface_margin_is_in_radians():
    torch.manual_seed(1)
    emb, labels = torch.randn(12, 16), torch.randint(0, 5, (12,))
    loss = ArcFaceLoss(num_classes=5, embed_dim=16, scale=30.0, margin=0.5)
    cosine = F.normalize(emb, dim=1) @ F.normalize(loss.weight, dim=0)
    target = torch.cos(torch.acos(cosine.gather(1, labels[:, None]).clamp(-1, 1)) + 0.5)
    logits = 30.0 * cosine.scatter(1, labels[:, None], target)
    torch.testing.assert_close(loss(emb, labels), F.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="radians"):
        ArcFaceLoss(5, 16, margin=28.6)


def test_arcface_rejects_labels_outside_the_training_classes():
    loss = ArcFaceLoss(num_classes=3, embed_dim=4)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\), got \[0, 7\]"):
        loss(torch.randn(2, 4), torch.tensor([[0, 0], [7, 1]]))


def test_arcface_weights_stay_float32_under_autocast():
    loss = ArcFaceLoss(num_classes=3, embed_dim=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(torch.randn(6, 4).bfloat16(), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert loss.weight.dtype == torch.float32 and value.dtype == torch.float32


# --------------------------------------------------------------------------------------------- combined
def test_create_loss_weighted_sum_components_and_gradients():
    torch.manual_seed(0)
    cfg = LossConfig(arcface=ArcFaceConfig(weight=0.5), htriplet=HTripletConfig(weight=2.0, mining="all"))
    combined = create_loss(cfg, num_classes=6, embed_dim=8)
    emb = F.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    labels = torch.stack([torch.arange(16) % 6, torch.arange(16) % 6 // 3], dim=1)
    total, parts = combined(emb, labels)
    assert set(parts) == {"arcface", "htriplet"}
    assert not any(p.requires_grad for p in parts.values())
    torch.testing.assert_close(total.detach(), 0.5 * parts["arcface"] + 2.0 * parts["htriplet"])
    assert parts["htriplet"] > 0
    total.backward()
    for grad in (emb.grad, combined.losses["arcface"].weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("mining", MINING_MODES)
def test_htriplet_gradients_are_finite(mining):
    emb, labels = _hier_batch(5)
    emb = emb.float().requires_grad_()
    HierarchicalTripletLoss(0.4, 0.9, mining)(emb, labels).backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_param_groups_give_arcface_its_own_learning_rate():
    combined = create_loss(LossConfig(), num_classes=4, embed_dim=8)
    (group,) = combined.param_groups(1e-4)
    assert group["name"] == "loss.arcface" and group["lr"] == pytest.approx(1e-3)
    assert group["params"] == [combined.losses["arcface"].weight]
    assert group["params"][0].shape == (8, 4)
    combined = create_loss(LossConfig(arcface=ArcFaceConfig(lr=0.01)), num_classes=4, embed_dim=8)
    assert combined.param_groups(1e-4)[0]["lr"] == 0.01
    optimizer = torch.optim.AdamW(combined.param_groups(1e-4), lr=1e-4)
    assert optimizer.param_groups[0]["lr"] == 0.01


def test_zero_weight_losses_are_skipped():
    only_triplet = create_loss(LossConfig(arcface=ArcFaceConfig(weight=0)), num_classes=4, embed_dim=8)
    assert list(only_triplet.losses) == ["htriplet"] and only_triplet.param_groups(1e-3) == []
    total, parts = only_triplet(torch.randn(4, 8), torch.tensor([[0, 0], [0, 0], [1, 0], [2, 1]]))
    assert list(parts) == ["htriplet"]
    with pytest.raises(ConfigError, match="every loss has weight 0"):
        create_loss(
            LossConfig(arcface=ArcFaceConfig(weight=0), htriplet=HTripletConfig(weight=0)), 4, embed_dim=8
        )
    # the config schema refuses a margin in degrees before any loss is built (one line naming the key)
    with pytest.raises(ConfigError, match=r"loss.arcface.margin"):
        load_config(None, ["loss.arcface.margin=30"])


def test_combined_loss_state_dict_holds_the_class_weights():
    combined = create_loss(LossConfig(), num_classes=4, embed_dim=8)
    assert isinstance(combined, CombinedLoss)
    assert list(combined.state_dict()) == ["losses.arcface.pml.W"]
