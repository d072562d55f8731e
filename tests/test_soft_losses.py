"""SoftFeatureLoss and SharedClassifierLoss against hand-computed values."""

import math

import pytest
import torch

from speechbrain_xmkd.distill import SharedClassifierLoss, SoftFeatureLoss, build_loss

# Two 3-d samples chosen so every distance has a closed form:
# row 0: |s| = |t| = 3, s.t = 8  -> cos = 8/9
# row 1: |s| = |t| = 5, s.t = 20 -> cos = 4/5
S = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]])
T = torch.tensor([[2.0, 1.0, 2.0], [0.0, 0.0, 5.0]])


@pytest.mark.parametrize(
    "distance, margin, normalize, expected",
    [
        ("cosine", 0.0, False, [1 / 9, 0.2]),
        ("cosine", 0.15, False, [0.0, 0.05]),
        ("angle", 0.0, False, [math.degrees(math.acos(8 / 9)), math.degrees(math.acos(0.8))]),
        ("angle", 30.0, False, [0.0, math.degrees(math.acos(0.8)) - 30.0]),
        ("l2", 0.0, False, [math.sqrt(2), math.sqrt(10)]),  # diffs (-1,1,0), (0,3,-1)
        ("l2", 1.5, False, [0.0, math.sqrt(10) - 1.5]),
        ("squared_l2", 3.0, False, [0.0, 7.0]),
        ("squared_l2", 0.0, True, [2 / 9, 0.4]),  # = 2 (1 - cos) on unit vectors
    ],
)
def test_soft_feature_hand_values(distance, margin, normalize, expected):
    loss = SoftFeatureLoss(distance=distance, margin=margin, normalize=normalize)
    assert torch.allclose(loss(S, T), torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize(
    "distance, margin",
    [("cosine", 0.5), ("angle", 60.0), ("l2", 4.0), ("squared_l2", 11.0), ("l2", 0.0)],
)
def test_zero_gradient_inside_margin(distance, margin):
    """Inside the margin the gradient is exactly zero, never NaN."""
    # The last case puts identical vectors at the margin of the l2 distance,
    # where a naive sqrt would give a NaN gradient.
    s = (T.clone() if margin == 0.0 else S.clone()).requires_grad_(True)
    t = T.clone().requires_grad_(True)
    out = SoftFeatureLoss(distance=distance, margin=margin)(s, t)
    assert torch.equal(out, torch.zeros(2))
    out.sum().backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    assert torch.equal(t.grad, torch.zeros_like(t))


def test_angle_identical_vectors_has_finite_zero_gradient():
    s = S.clone().requires_grad_(True)
    out = SoftFeatureLoss(distance="angle", margin=1.0)(s, S.clone())
    out.sum().backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_gradient_outside_margin_pulls_student_to_teacher():
    s = S.clone().requires_grad_(True)
    SoftFeatureLoss(distance="squared_l2")(s, T).sum().backward()
    # d/ds ||s - t||^2 = 2 (s - t)
    assert torch.allclose(s.grad, 2 * (S - T))


def test_margin_outside_range_rejected():
    with pytest.raises(ValueError, match=r"margin 2\.0 is outside the range \[0, 2\.0\)"):
        SoftFeatureLoss(distance="cosine", margin=2.0)
    with pytest.raises(ValueError, match="angle"):
        SoftFeatureLoss(distance="angle", margin=180.0)
    with pytest.raises(ValueError, match="normalize=True"):
        SoftFeatureLoss(distance="squared_l2", margin=4.0, normalize=True)
    with pytest.raises(ValueError, match="outside"):
        SoftFeatureLoss(distance="l2", margin=-0.1)
    with pytest.raises(ValueError, match="valid: cosine, angle, l2, squared_l2"):
        SoftFeatureLoss(distance="cos")


def test_presets_follow_the_paper():
    speaker = SoftFeatureLoss.from_preset("speaker")
    assert speaker.distance == "cosine" and speaker.margin == pytest.approx(0.8660254)
    assert SoftFeatureLoss.from_preset("speaker_angle").margin == 30.0
    assert SoftFeatureLoss.from_preset("image_resnet18").margin == pytest.approx(0.09)
    assert SoftFeatureLoss.from_preset("image_resnet34").margin == pytest.approx(0.04)
    with pytest.raises(ValueError, match="valid: speaker"):
        SoftFeatureLoss.from_preset("nope")


def test_bad_input_messages():
    loss = SoftFeatureLoss()
    with pytest.raises(ValueError, match=r"student \(2, 3\) vs teacher \(2, 4\)"):
        loss(S, torch.ones(2, 4))
    with pytest.raises(ValueError, match="empty batch"):
        loss(torch.ones(0, 3), torch.ones(0, 3))
    bad = T.clone()
    bad[0, 0] = float("nan")
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="teacher has 2 non-finite"):
        loss(S, bad)
    with pytest.raises(ValueError, match=r"student must have shape \[batch, dim\]"):
        loss(torch.ones(2, 2, 3), torch.ones(2, 3))


def test_speechbrain_embedding_shape_accepted():
    loss = SoftFeatureLoss(distance="squared_l2")
    assert torch.allclose(loss(S.unsqueeze(1), T.unsqueeze(1)), torch.tensor([2.0, 10.0]))


def _identity_head():
    head = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    return head


# Student logits [[1,0],[0,1]] -> CE = log(1 + e^-1) each;
# teacher logits [[0,0],[0,2]] -> CE = log 2 (label 0), log(1 + e^-2) (label 1).
CS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
CT = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
CY = torch.tensor([0, 1])
CE_S = math.log(1 + math.exp(-1))


def test_shared_classifier_hand_values():
    terms = SharedClassifierLoss(_identity_head())(CS, CT, CY)
    assert terms["task"].item() == pytest.approx(0.5 * CE_S, abs=1e-6)
    expected = [0.5 * math.log(2), 0.5 * math.log(1 + math.exp(-2))]
    assert torch.allclose(terms["classifier"], torch.tensor(expected), atol=1e-6)
    # The two halves add up to the cross-entropy over all 2b rows (Eq. 10).
    total = terms["task"] + terms["classifier"].mean()
    all_rows = (2 * CE_S + math.log(2) + math.log(1 + math.exp(-2))) / 4
    assert total.item() == pytest.approx(all_rows, abs=1e-6)


def test_shared_classifier_beta_adds_logit_distance():
    terms = SharedClassifierLoss(_identity_head(), beta=1.0)(CS, CT, CY.unsqueeze(1))
    # logit differences (1, 0) and (0, -1): mean squared difference 0.5 each
    expected = [0.5 * math.log(2) + 0.5, 0.5 * math.log(1 + math.exp(-2)) + 0.5]
    assert torch.allclose(terms["classifier"], torch.tensor(expected), atol=1e-6)
    l2 = SharedClassifierLoss(_identity_head(), beta=2.0, logit_distance="l2")(CS, CT, CY)
    assert l2["classifier"][0].item() == pytest.approx(0.5 * math.log(2) + 2.0, abs=1e-6)


def test_shared_classifier_equals_speechbrain_aam_over_2b_rows():
    from speechbrain.lobes.models.ECAPA_TDNN import Classifier
    from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

    torch.manual_seed(0)
    head = Classifier(input_size=8, out_neurons=5)
    aam = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))
    s, t = torch.randn(6, 8), torch.randn(6, 8)
    y = torch.randint(0, 5, (6, 1))
    terms = SharedClassifierLoss(head, margin=aam)(s, t, y)
    reference = aam(head(torch.cat([s, t])), torch.cat([y, y]))
    assert (terms["task"] + terms["classifier"].mean()).item() == pytest.approx(
        reference.item(), rel=1e-5
    )


def test_shared_classifier_trains_the_teacher_branch():
    head = _identity_head()
    t = CT.clone().requires_grad_(True)
    terms = SharedClassifierLoss(head)(CS, t, CY)
    (terms["task"] + terms["classifier"].mean()).backward()
    assert t.grad.abs().sum() > 0
    assert head.weight.grad.abs().sum() > 0


def test_shared_classifier_bad_labels():
    loss = SharedClassifierLoss(_identity_head())
    with pytest.raises(ValueError, match="needs labels"):
        loss(CS, CT)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        loss(CS, CT, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \[2\]"):
        loss(CS, CT, torch.tensor([0, 1, 1]))


def test_registry_names_and_unknown_name():
    assert isinstance(build_loss("soft_feature", margin=0.1), SoftFeatureLoss)
    with pytest.raises(KeyError, match="unknown distillation loss 'softfeature'; valid names: .*soft_feature"):
        build_loss("softfeature")
