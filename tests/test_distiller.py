"""Distiller: Eq. 1 assembled from the pieces, named terms, weights, masks."""

import pytest
import torch
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from speechbrain_xmkd import Distiller, ProjectionHead, QualityWeighter
from speechbrain_xmkd.distill import SharedClassifierLoss, SoftFeatureLoss


class ScalarLoss(torch.nn.Module):
    """A batch-level loss: returns one scalar, the mean squared difference."""

    def forward(self, student, teacher, labels=None):
        return (student - teacher).pow(2).mean()


def test_weights_multiply_per_sample_terms():
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, 4.0]])  # squared l2: 1 and 25; norms 1 and 5
    weighter = QualityWeighter(max_weight=None)  # z = -1, +1 -> w = 2/3, 4/3
    distiller = Distiller(SoftFeatureLoss(distance="squared_l2"), weighter=weighter, weight=2.0)
    terms = distiller(s, t)
    assert list(terms) == ["soft_feature"]
    assert terms["soft_feature"].item() == pytest.approx(2.0 * (2 / 3 * 1 + 4 / 3 * 25) / 2)


def test_batch_level_loss_scaled_by_mean_weight():
    s = torch.zeros(2, 2)
    t = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    distiller = Distiller(ScalarLoss(), weighter=QualityWeighter(h=1.0, max_weight=None))
    # z = -1, +1 with h = 1: weights 0 and 2, mean 1; loss = (1 + 25) / 4
    assert distiller(s, t)["ScalarLoss"].item() == pytest.approx(26 / 4)


def _speaker_setup(loss, **kwargs):
    torch.manual_seed(0)
    head = Classifier(input_size=8, out_neurons=4)
    aam = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))
    return (
        Distiller(
            loss(head) if callable(loss) and not isinstance(loss, str) else loss,
            projection=ProjectionHead(teacher_dim=12, student_dim=8),
            classifier=head,
            task_loss=aam,
            **kwargs,
        ),
        head,
        aam,
    )


def test_task_term_is_the_speechbrain_task_loss():
    distiller, head, aam = _speaker_setup("soft_feature", loss_kwargs={"margin": 0.3})
    s, t, y = torch.randn(5, 1, 8), torch.randn(5, 12), torch.randint(0, 4, (5, 1))
    terms = distiller(s, t, y)
    assert sorted(terms) == ["soft_feature", "task"]
    assert terms["task"].item() == pytest.approx(aam(head(s), y).item(), rel=1e-6)


def test_shared_classifier_task_not_added_twice():
    distiller, head, aam = _speaker_setup(lambda h: SharedClassifierLoss(h, margin=AdditiveAngularMargin(0.2, 30)))
    s, t, y = torch.randn(5, 8), torch.randn(5, 12), torch.randint(0, 4, (5,))
    terms = distiller(s, t, y)
    assert sorted(terms) == ["classifier", "task"]
    f_t = distiller.project(t)
    reference = aam(head(torch.cat([s, f_t])), torch.cat([y, y]).unsqueeze(1))
    assert (terms["task"] + terms["classifier"]).item() == pytest.approx(reference.item(), rel=1e-5)


def test_mask_drops_rows_without_teacher():
    s = torch.zeros(3, 2)
    t = torch.tensor([[1.0, 0.0], [100.0, 100.0], [2.0, 0.0]])
    distiller = Distiller(SoftFeatureLoss(distance="squared_l2"))
    terms = distiller(s, t, mask=torch.tensor([True, False, True]))
    assert terms["soft_feature"].item() == pytest.approx((1 + 4) / 2)
    assert distiller(s, t, mask=torch.zeros(3, dtype=torch.bool))["soft_feature"].item() == 0.0
    assert distiller(s, t, mask=torch.tensor([False, False, True]))["soft_feature"].item() == 0.0
    with pytest.raises(ValueError, match="mask has 2 entries for a batch of 3"):
        distiller(s, t, mask=torch.tensor([True, False]))


def test_mask_with_shared_classifier_keeps_task_for_every_row():
    distiller, head, aam = _speaker_setup(lambda h: SharedClassifierLoss(h, margin=AdditiveAngularMargin(0.2, 30)))
    s, t, y = torch.randn(4, 8), torch.randn(4, 12), torch.tensor([[0], [1], [2], [3]])
    mask = torch.tensor([True, True, False, True])
    terms = distiller(s, t, y, mask=mask)
    # Half the AAM cross-entropy of every student row, teacher or not.
    per_row = [aam(head(s[i : i + 1]), y[i : i + 1]).item() for i in range(4)]
    assert terms["task"].item() == pytest.approx(0.5 * sum(per_row) / 4, rel=1e-5)


def test_teacher_never_receives_gradient_and_stays_bit_identical():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(10, 12), torch.nn.BatchNorm1d(12)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = torch.nn.Linear(6, 8)
    distiller, head, _ = _speaker_setup("soft_feature", weighter=QualityWeighter())
    # As SpeechBrain's Brain does, the optimizer sees every parameter.
    params = list(student.parameters()) + list(distiller.parameters()) + list(teacher.parameters())
    optimizer = torch.optim.Adam(params, lr=0.1)
    head_before = distiller.projection.mlp[0].weight.clone()
    for _ in range(3):
        with torch.no_grad():
            e_t = teacher(torch.randn(5, 10))
        terms = distiller(student(torch.randn(5, 6)), e_t, torch.randint(0, 4, (5,)))
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(head_before, distiller.projection.mlp[0].weight)


def test_distiller_arguments_checked():
    with pytest.raises(KeyError, match="valid names"):
        Distiller("hinton")
    with pytest.raises(ValueError, match="task_loss needs the student's classifier"):
        Distiller("soft_feature", task_loss=torch.nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="loss_kwargs is only used"):
        Distiller(SoftFeatureLoss(), loss_kwargs={"margin": 1})
    distiller, _, _ = _speaker_setup("soft_feature")
    with pytest.raises(ValueError, match="task loss needs labels"):
        distiller(torch.randn(2, 8), torch.randn(2, 12))


def test_plain_student_without_distillation():
    head = torch.nn.Linear(4, 3)
    distiller = Distiller(None, classifier=head, task_loss=torch.nn.functional.cross_entropy)
    s, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    terms = distiller(s, None, y)
    assert list(terms) == ["task"] and not distiller.distills
    assert terms["task"].item() == pytest.approx(torch.nn.functional.cross_entropy(head(s), y).item())
    with pytest.raises(ValueError, match="with loss=None a task_loss is needed"):
        Distiller(None)


def test_single_teacher_row_with_batchnorm_head_still_touches_parameters():
    distiller = Distiller("soft_feature", projection=ProjectionHead(teacher_dim=4, student_dim=3),
                          weighter=QualityWeighter())
    s = torch.randn(3, 3, requires_grad=True)
    terms = distiller(s, torch.randn(3, 4), mask=torch.tensor([True, False, False]))
    terms["soft_feature"].backward()
    assert terms["soft_feature"].item() == 0.0
    assert all(p.grad is not None for p in distiller.projection.parameters())
    assert int(distiller.weighter.num_batches_tracked[0]) == 0
