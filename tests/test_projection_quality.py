"""ProjectionHead (Eq. 2-4) and QualityWeighter (Eq. 11) against hand values."""

import math

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_xmkd import ProjectionHead, QualityWeighter
from speechbrain_xmkd.projection import semi_orthogonal

E = torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]])


def test_projection_hand_values():
    head = ProjectionHead(teacher_dim=3, num_layers=1, alpha=0.6)
    with torch.no_grad():
        head.mlp[0].weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]))
        head.mlp[0].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    # MLP(e) = (e2 + 1, e1, 2 e3): rows (1, 1, 4) and (0, 0, 2)
    # F_T = 0.6 e + 0.4 MLP(e)
    expected = torch.tensor([[1.0, 0.4, 2.8], [0.0, -0.6, 1.4]])
    assert torch.allclose(head(E), expected, atol=1e-6)


def test_alpha_one_keeps_teacher_geometry_exactly():
    same = ProjectionHead(teacher_dim=3, alpha=1.0)
    assert torch.equal(same(E), E)
    narrow = ProjectionHead(teacher_dim=3, student_dim=2, alpha=1.0, seed=3)
    assert torch.allclose(narrow(E), E @ semi_orthogonal(2, 3, seed=3).T)


def test_semi_orthogonal_properties():
    w = semi_orthogonal(4, 10, seed=1)
    assert torch.allclose(w @ w.T, torch.eye(4), atol=1e-5)
    tall = semi_orthogonal(10, 4, seed=1)
    assert torch.allclose(tall.T @ tall, torch.eye(4), atol=1e-5)
    assert torch.equal(semi_orthogonal(4, 10, seed=1), w)  # deterministic
    assert not torch.equal(semi_orthogonal(4, 10, seed=2), w)


def test_skip_map_is_checkpointed_and_not_trained():
    head = ProjectionHead(teacher_dim=6, student_dim=4)
    assert "skip" in head.state_dict()
    assert all(p is not head.skip for p in head.parameters())
    other = ProjectionHead(teacher_dim=6, student_dim=4, seed=99)
    other.load_state_dict(head.state_dict())
    assert torch.equal(other.skip, head.skip)


def test_projection_gradients_reach_mlp():
    head = ProjectionHead(teacher_dim=3, student_dim=2)
    head(E).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.mlp.parameters())


def test_projection_bad_input():
    with pytest.raises(ValueError, match=r"width 5, got shape \(2, 3\)"):
        ProjectionHead(teacher_dim=5)(E)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        ProjectionHead(teacher_dim=5, alpha=1.5)
    with pytest.raises(ValueError, match="teacher_embedding has 1 non-finite"):
        ProjectionHead(teacher_dim=3)(torch.tensor([[1.0, float("inf"), 0.0], [0.0, 0.0, 0.0]]))


# Norms 5, 1, 10: mean 16/3, population std sqrt(122/9) = 3.6818.
Q_BATCH = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
MU = 16 / 3
SIGMA = math.sqrt(((5 - MU) ** 2 + (1 - MU) ** 2 + (10 - MU) ** 2) / 3)


def test_quality_weights_hand_values():
    weighter = QualityWeighter(h=1 / 3, max_weight=None)
    w = weighter(teacher=Q_BATCH)
    expected = [1 + (q - MU) / (SIGMA * 3) for q in (5.0, 1.0, 10.0)]
    assert torch.allclose(w, torch.tensor(expected), atol=1e-5)
    assert weighter.running_mean[0].item() == pytest.approx(MU)
    assert weighter.running_std[0].item() == pytest.approx(SIGMA)


def test_quality_moving_average_and_eval_mode():
    weighter = QualityWeighter(momentum=0.1)
    weighter(teacher=Q_BATCH)
    weighter(teacher=torch.tensor([[2.0, 0.0], [4.0, 0.0]]))  # norms 2, 4: mean 3, std 1
    assert weighter.running_mean[0].item() == pytest.approx(0.9 * MU + 0.1 * 3.0)
    assert weighter.running_std[0].item() == pytest.approx(0.9 * SIGMA + 0.1 * 1.0)
    weighter.eval()
    before = weighter.running_mean.clone()
    weighter(teacher=Q_BATCH)
    assert torch.equal(weighter.running_mean, before)


def test_quality_weights_never_negative_and_clamped():
    weighter = QualityWeighter(h=2.0, max_weight=1.5)
    x = torch.cat([torch.full((1, 2), 0.01), torch.randn(30, 2) * 5 + 20, torch.full((1, 2), 100.0)])
    w = weighter(teacher=x)
    assert w.min().item() == 0.0 and w.max().item() == 1.5
    assert not w.requires_grad


def test_quality_sources():
    t = Q_BATCH
    s = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # norms 1, 2, 3: z = -1.2247, 0, 1.2247
    w_student = QualityWeighter(source="student", max_weight=None)(student=s)
    z = torch.tensor([-1.0, 0.0, 1.0]) * math.sqrt(1.5)
    assert torch.allclose(w_student, 1 + z / 3, atol=1e-5)
    w_both = QualityWeighter(source="both", max_weight=None)(teacher=t, student=s)
    z_t = (torch.tensor([5.0, 1.0, 10.0]) - MU) / SIGMA
    assert torch.allclose(w_both, 1 + 0.5 * (z_t + z) / 3, atol=1e-5)
    with pytest.raises(ValueError, match="needs the student embedding"):
        QualityWeighter(source="both")(teacher=t)
    with pytest.raises(ValueError, match="source must be one of"):
        QualityWeighter(source="face")


def test_quality_buffers_round_trip_through_checkpointer(tmp_path):
    weighter = QualityWeighter()
    weighter(teacher=Q_BATCH)
    Checkpointer(tmp_path, recoverables={"weighter": weighter}).save_checkpoint()
    restored = QualityWeighter()
    Checkpointer(tmp_path, recoverables={"weighter": restored}).recover_if_possible()
    assert torch.equal(restored.running_mean, weighter.running_mean)
    assert torch.equal(restored.running_std, weighter.running_std)
    assert torch.equal(restored.num_batches_tracked, weighter.num_batches_tracked)
    restored.eval()
    weighter.eval()
    assert torch.equal(restored(teacher=Q_BATCH), weighter(teacher=Q_BATCH))
