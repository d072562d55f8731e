"""Baseline distillation losses against hand-worked values and independent re-derivations.

Every expected value here is computed without calling the module under
test: closed forms with ``math``, numpy re-implementations of the reference
repositories' formulas, or torch's own losses (``KLDivLoss``, ``MSELoss``,
``cross_entropy``) on logits built in the test.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speechbrain_xmkd.distill.baselines import (
    CCLLoss,
    CLIPLoss,
    FitNetLoss,
    ICKDLoss,
    KDLoss,
    PKTLoss,
    SPLoss,
    class_contrastive,
)
from speechbrain_xmkd.distill.registry import available_losses, build_loss

DIM, CLASSES = 8, 5


def _np(x):
    return x.detach().double().numpy()


def _randn(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _np_normalize_rows(x, axis=-1):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


# ----------------------------------------------------------------------- KD


def test_kd_hand_value():
    # T = 2: row 0 compares softmax([1.5, 1, .5]) with its mirror; the log
    # ratios are +1, 0, -1, so KL = p_max - p_min; row 1 is uniform vs uniform.
    z_s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    z_t = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    e = math.exp
    kl_row0 = (e(1.5) - e(0.5)) / (e(1.5) + e(1.0) + e(0.5))
    expected = [4 * kl_row0, 0.0]  # T^2 * KL
    assert expected[0] == pytest.approx(1.280627, abs=1e-6)
    out = KDLoss(temperature=2.0)(z_s, z_t)
    assert out.tolist() == pytest.approx(expected, abs=1e-5)


def test_kd_mean_is_kldiv_batchmean_times_t2():
    z_s, z_t = _randn(6, 7, seed=1), _randn(6, 7, seed=2) * 3
    temperature = 4.0
    reference = torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(z_s / temperature, dim=1), F.softmax(z_t / temperature, dim=1)
    ) * temperature**2
    out = KDLoss(temperature=temperature)(z_s, z_t)
    assert out.shape == (6,)
    assert out.mean().item() == pytest.approx(reference.item(), rel=1e-10)


def test_kd_with_speechbrain_classifier_uses_scaled_cosine_logits():
    from speechbrain.lobes.models.ECAPA_TDNN import Classifier

    torch.manual_seed(0)
    head = Classifier(input_size=DIM, out_neurons=CLASSES).double()
    f_s, f_t = _randn(4, DIM, seed=3), _randn(4, 1, DIM, seed=4)
    loss = KDLoss(temperature=4.0, classifier=head, logit_scale=30.0)
    # Cosine logits re-derived from the head's weight matrix.
    w = F.normalize(head.weight, dim=1)
    z_s = 30.0 * F.normalize(f_s, dim=1) @ w.t()
    z_t = 30.0 * F.normalize(f_t.squeeze(1), dim=1) @ w.t()
    reference = torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(z_s / 4.0, dim=1), F.softmax(z_t / 4.0, dim=1)
    ) * 16.0
    assert loss(f_s, f_t).mean().item() == pytest.approx(reference.item(), rel=1e-10)


@pytest.mark.parametrize("detach", [False, True])
def test_kd_detach_teacher_controls_teacher_gradient(detach):
    head = torch.nn.Linear(DIM, CLASSES).double()
    f_s = _randn(4, DIM, seed=5).requires_grad_()
    f_t = _randn(4, DIM, seed=6).requires_grad_()
    KDLoss(classifier=head, detach_teacher=detach)(f_s, f_t).sum().backward()
    assert f_s.grad.abs().sum() > 0
    assert head.weight.grad.abs().sum() > 0
    if detach:
        assert f_t.grad is None
    else:
        assert f_t.grad.abs().sum() > 0


def test_kd_rejects_logit_scale_without_classifier():
    with pytest.raises(ValueError, match="logit_scale"):
        KDLoss(logit_scale=30.0)


# ------------------------------------------------------------------- FitNet


def test_fitnet_hand_value():
    loss = FitNetLoss(student_dim=3, teacher_dim=2)
    with torch.no_grad():
        loss.regressor.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        loss.regressor.bias.copy_(torch.tensor([0.5, -0.5]))
    f_s = torch.tensor([[1.0, 2.0, 9.0], [0.0, 0.0, 0.0]])
    f_t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # row 0: regressed [1.5, 1.5] vs [0, 0] -> (2.25 + 2.25) / 2
    # row 1: regressed [0.5, -0.5] vs [1, 1] -> (0.25 + 2.25) / 2
    assert loss(f_s, f_t).tolist() == pytest.approx([2.25, 1.25])


def test_fitnet_mean_is_mseloss_with_same_regressor():
    loss = FitNetLoss(student_dim=6, teacher_dim=4).double()
    f_s, f_t = _randn(5, 6, seed=7), _randn(5, 4, seed=8)
    w, b = loss.regressor.weight.detach(), loss.regressor.bias.detach()
    reference = torch.nn.MSELoss()(f_s @ w.t() + b, f_t)
    assert loss(f_s, f_t).mean().item() == pytest.approx(reference.item(), rel=1e-12)


# ---------------------------------------------------------------------- PKT


def _pkt_reference(f_s, f_t, eps=1e-7):
    def affinity(x):
        x = x / (np.sqrt((x**2).sum(axis=1, keepdims=True)) + eps)
        s = (x @ x.T + 1.0) / 2.0
        return s / s.sum(axis=1, keepdims=True)

    p_s, p_t = affinity(f_s), affinity(f_t)
    entries = p_t * np.log((p_t + eps) / (p_s + eps))
    return entries.mean(), entries.mean(axis=1)


def test_pkt_hand_value():
    # Student rows orthogonal: affinities (I + 1) / 2 -> rows [2/3, 1/3].
    # Teacher rows identical: affinities all 1 -> rows [1/2, 1/2].
    # Per row: mean_j .5 * log(.5 / p_s) = .25 * (log .75 + log 1.5) = .25 log(9/8).
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f_t = torch.tensor([[2.0, 0.0], [3.0, 0.0]])
    expected = 0.25 * math.log(9 / 8)
    assert PKTLoss()(f_s, f_t).tolist() == pytest.approx([expected, expected], abs=1e-6)


def test_pkt_mean_matches_numpy_reference_over_bxb_entries():
    f_s, f_t = _randn(6, 5, seed=9), _randn(6, 9, seed=10)
    out = PKTLoss()(f_s, f_t)
    batch, rows = _pkt_reference(_np(f_s), _np(f_t))
    assert out.shape == (6,)
    assert out.mean().item() == pytest.approx(batch, rel=1e-10)
    np.testing.assert_allclose(_np(out), rows, rtol=1e-10)


# ----------------------------------------------------------------------- SP


def _sp_reference(f_s, f_t):
    """Returns (batch loss ||G_t - G_s||_F^2 / B^2, its row sums / B)."""
    b = f_s.shape[0]
    f_s, f_t = f_s.reshape(b, -1), f_t.reshape(b, -1)
    g_s = _np_normalize_rows(f_s @ f_s.T, axis=1)
    g_t = _np_normalize_rows(f_t @ f_t.T, axis=1)
    squared = (g_t - g_s) ** 2
    return squared.sum() / b**2, squared.sum(axis=1) / b


def test_sp_hand_value():
    # G_s = I; G_t = all ones -> rows [1/sqrt2, 1/sqrt2]; each row's squared
    # error is (1 - 1/sqrt2)^2 + 1/2 = 2 - sqrt2, divided by B = 2.
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = (2 - math.sqrt(2)) / 2
    assert SPLoss()(f_s, f_t).tolist() == pytest.approx([expected, expected], abs=1e-6)


def test_sp_mean_matches_numpy_reference_on_feature_maps():
    f_s, f_t = _randn(5, 3, 2, 4, seed=11), _randn(5, 7, seed=12)
    out = SPLoss()(f_s, f_t)
    batch, rows = _sp_reference(_np(f_s), _np(f_t))
    assert out.shape == (5,)
    assert out.mean().item() == pytest.approx(batch, rel=1e-10)
    np.testing.assert_allclose(_np(out), rows, rtol=1e-10)


# --------------------------------------------------------------------- ICKD


def _ickd_reference(f_s, f_t, weight, gamma, beta, bn_eps=1e-5):
    """Official ICKD: 1x1 conv, BatchNorm (batch statistics), channel Gram, row-normalise."""
    b = f_s.shape[0]
    f_s, f_t = f_s.reshape(b, f_s.shape[1], -1), f_t.reshape(b, f_t.shape[1], -1)
    e = np.einsum("oc,bcl->bol", weight, f_s)
    mean = e.mean(axis=(0, 2), keepdims=True)
    var = e.var(axis=(0, 2), keepdims=True)
    e = (e - mean) / np.sqrt(var + bn_eps) * gamma[None, :, None] + beta[None, :, None]
    g_s = _np_normalize_rows(np.einsum("bcl,bdl->bcd", e, e), axis=2)
    g_t = _np_normalize_rows(np.einsum("bcl,bdl->bcd", f_t, f_t), axis=2)
    channels = f_t.shape[1]
    squared = (g_s - g_t) ** 2
    return squared.sum() / (channels * b), squared.sum(axis=(1, 2)) / channels


def test_ickd_matches_numpy_reference_in_training_mode():
    loss = ICKDLoss(student_channels=3, teacher_channels=4).double()
    with torch.no_grad():
        loss.embed[1].weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        loss.embed[1].bias.copy_(torch.tensor([0.1, 0.0, -0.3, 0.2]))
    f_s, f_t = _randn(4, 3, 5, 6, seed=13), _randn(4, 4, 7, seed=14)
    out = loss(f_s, f_t)
    batch, per_sample = _ickd_reference(
        _np(f_s),
        _np(f_t),
        _np(loss.embed[0].weight[:, :, 0]),
        _np(loss.embed[1].weight),
        _np(loss.embed[1].bias),
    )
    assert out.shape == (4,)
    assert out.mean().item() == pytest.approx(batch, rel=1e-10)
    np.testing.assert_allclose(_np(out), per_sample, rtol=1e-10)


def test_ickd_embedding_hand_value():
    # Identity adapter, eval-mode BN (a positive rescale, which the row
    # normalisation removes). f_s = [1, 1] -> rows [1, 1]/sqrt2; f_t = [1, -1]
    # -> rows [1, -1]/sqrt2 and [-1, 1]/sqrt2; each row differs by 2/sqrt2 in
    # one entry: (2 + 2) / C with C = 2.
    loss = ICKDLoss(student_channels=2, teacher_channels=2).eval()
    with torch.no_grad():
        loss.embed[0].weight.copy_(torch.eye(2).unsqueeze(2))
    out = loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, -1.0]]))
    assert out.tolist() == pytest.approx([2.0], abs=1e-6)
    same = loss(torch.tensor([[3.0, -1.0]]), torch.tensor([[1.5, -0.5]]))
    assert same.tolist() == pytest.approx([0.0], abs=1e-6)


# ---------------------------------------------------------------------- CCL


def test_class_contrastive_hand_value():
    # Rows at 0, 90 and 180 degrees, labels [0, 0, 1], temperature 1.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    e, log = math.e, math.log
    z0 = e + 1 + 1 / e  # row 0: cosines [1, 0, -1]; row 2 is its mirror
    z1 = 2 + e  # row 1: cosines [0, 1, 0]
    row0 = (-log(e / z0) - log(1 / z0)) / 2 - log(1 - (1 / e) / z0)
    row1 = (-log(1 / z1) - log(e / z1)) / 2 - log(1 - 1 / z1)
    row2 = -log(e / z0) + (-log(1 - (1 / e) / z0) - log(1 - 1 / z0)) / 2
    assert row0 == pytest.approx(1.001950, abs=1e-6)
    out = class_contrastive(a, a, labels, temperature=1.0)
    assert out.tolist() == pytest.approx([row0, row1, row2], abs=1e-8)


def test_class_contrastive_single_label_batch_is_finite():
    one_label = torch.zeros(3, dtype=torch.long)
    out = class_contrastive(_randn(3, 4, seed=15), _randn(3, 4, seed=16), one_label, 0.1)
    assert torch.isfinite(out).all()


def _ccl_reference(f_s, f_t, labels, loss, head, tau, jsd_weight):
    """yanbeic/CCL's objective (distance form of the cosine, p/q ratio JSD) in numpy."""
    eps = 1e-10

    def nce(f1, f2):
        f1, f2 = _np_normalize_rows(f1), _np_normalize_rows(f2)
        cos = 1 - 0.5 * ((f1[:, None, :] - f2[None, :, :]) ** 2).sum(2)
        z = np.exp(cos / tau)
        p = z / z.sum(1, keepdims=True)
        neg = (labels[:, None] != labels[None, :]).astype(float)
        pos_part = (-np.log(p + eps) * (1 - neg)).sum(1) / (1 - neg).sum(1)
        neg_part = (-np.log(1 - p + eps) * neg).sum(1) / neg.sum(1)
        return np.mean(pos_part + neg_part)

    def softmax(z):
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    w_r, b_r = _np(loss.residual.weight), _np(loss.residual.bias)
    w_c, b_c = _np(loss.composition_classifier.weight), _np(loss.composition_classifier.bias)
    cat = np.concatenate([_np_normalize_rows(f_t), _np_normalize_rows(f_s)], axis=1)
    comp = f_t + cat @ w_r.T + b_r
    comp_logits = comp @ w_c.T + b_c
    q = softmax(comp_logits)
    ce = np.mean(-np.log(q[np.arange(len(labels)), labels]))
    p = softmax(f_s @ _np(head.weight).T + _np(head.bias))
    jsd = np.mean((p * np.log(p / q + eps)).sum(1) + (q * np.log(q / p + eps)).sum(1))
    contrast = nce(f_s, comp) + nce(comp, f_s) + nce(f_s, f_t) + nce(f_t, f_s)
    return contrast + ce + jsd_weight * jsd


def test_ccl_mean_matches_numpy_reference():
    torch.manual_seed(0)
    head = torch.nn.Linear(DIM, CLASSES).double()
    loss = CCLLoss(DIM, CLASSES, classifier=head, temperature=0.5, jsd_weight=0.5).double()
    f_s, f_t = _randn(6, DIM, seed=17), _randn(6, DIM, seed=18)
    labels = torch.tensor([0, 0, 1, 2, 2, 4])
    out = loss(f_s, f_t, labels.unsqueeze(1))
    expected = _ccl_reference(_np(f_s), _np(f_t), labels.numpy(), loss, head, 0.5, 0.5)
    assert out.shape == (6,)
    assert out.mean().item() == pytest.approx(expected, rel=1e-9)
    terms = loss.terms(f_s, f_t, labels)
    assert torch.allclose(sum(terms.values()), out)


def test_ccl_without_classifier_skips_jsd_and_needs_labels():
    loss = CCLLoss(dim=DIM, num_classes=CLASSES)
    f_s, f_t = torch.randn(4, DIM), torch.randn(4, DIM)
    assert "jsd" not in loss.terms(f_s, f_t, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="needs class labels"):
        loss(f_s, f_t)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        loss(f_s, f_t, torch.tensor([0, 1, 2, 5]))


# --------------------------------------------------------------------- CLIP


def test_clip_hand_value():
    # logit scale log(1) -> logits are plain cosines [[1, c], [0, c]], c = 1/sqrt2.
    loss = CLIPLoss(init_logit_scale=0.0)
    f_s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    f_t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    c, e, log = 1 / math.sqrt(2), math.exp, math.log
    row0 = -1 + log(e(1) + e(c))
    row1 = -c + log(e(0) + e(c))
    col0 = -1 + log(e(1) + e(0))
    col1 = log(2.0)
    out = loss(f_s, f_t)
    assert out.tolist() == pytest.approx([(row0 + col0) / 2, (row1 + col1) / 2], abs=1e-6)


def test_clip_mean_is_symmetric_cross_entropy():
    loss = CLIPLoss().double()
    f_s, f_t = _randn(7, DIM, seed=19), _randn(7, DIM, seed=20)
    logits = (1 / 0.07) * F.normalize(f_s, dim=1) @ F.normalize(f_t, dim=1).t()
    target = torch.arange(7)
    reference = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    per_sample = (
        F.cross_entropy(logits, target, reduction="none")
        + F.cross_entropy(logits.t(), target, reduction="none")
    ) / 2
    out = loss(f_s, f_t)
    # The parameter holds log(1/0.07) rounded to float32, hence rel=1e-6.
    assert out.mean().item() == pytest.approx(reference.item(), rel=1e-6)
    np.testing.assert_allclose(_np(out), _np(per_sample), rtol=1e-6)


def test_clip_logit_scale_is_clamped():
    f_s, f_t = _randn(4, DIM, seed=21), _randn(4, DIM, seed=22)
    logits = 100.0 * F.normalize(f_s, dim=1) @ F.normalize(f_t, dim=1).t()
    target = torch.arange(4)
    at_max = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2

    loss = CLIPLoss().double()
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)
    loss.eval()
    assert loss(f_s, f_t).mean().item() == pytest.approx(at_max.item(), rel=1e-10)
    assert loss.logit_scale.item() == 10.0  # eval leaves the parameter alone
    loss.train()
    assert loss(f_s, f_t).mean().item() == pytest.approx(at_max.item(), rel=1e-10)
    assert loss.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        loss.logit_scale.fill_(-3.0)
    loss(f_s, f_t)
    assert loss.logit_scale.item() == 0.0


# ------------------------------------------------------- contract, for all


def _build(name):
    """Each loss with small, compatible hyperparameters, plus its trainable parts."""
    head = torch.nn.Linear(DIM, CLASSES)
    kwargs = {
        "kd": {"classifier": head, "logit_scale": 10.0},
        "fitnet": {"student_dim": DIM, "teacher_dim": DIM},
        "pkt": {},
        "sp": {},
        "ickd": {"student_channels": DIM, "teacher_channels": DIM},
        "ccl": {"dim": DIM, "num_classes": CLASSES, "classifier": head},
        "clip": {},
    }[name]
    loss = build_loss(name, **kwargs)
    trainable = {
        "kd": lambda: [head.weight],
        "fitnet": lambda: [loss.regressor.weight],
        "ickd": lambda: [loss.embed[0].weight],
        "ccl": lambda: [loss.residual.weight, loss.composition_classifier.weight, head.weight],
        "clip": lambda: [loss.logit_scale],
    }.get(name, list)()
    return loss, trainable


NAMES = ["kd", "fitnet", "pkt", "sp", "ickd", "ccl", "clip"]
CLASSES_OF = {
    "kd": KDLoss,
    "fitnet": FitNetLoss,
    "pkt": PKTLoss,
    "sp": SPLoss,
    "ickd": ICKDLoss,
    "ccl": CCLLoss,
    "clip": CLIPLoss,
}
LABELS = torch.tensor([0, 1, 1, 3])


def test_every_baseline_is_registered():
    assert set(NAMES) <= set(available_losses())
    for name in NAMES:
        assert type(_build(name)[0]) is CLASSES_OF[name]


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_student_and_trainable_parts(name):
    loss, trainable = _build(name)
    f_s = torch.randn(4, 1, DIM, requires_grad=True)  # SpeechBrain's [B, 1, D]
    out = loss(f_s, torch.randn(4, DIM), LABELS)
    assert out.shape == (4,)
    out.mean().backward()
    assert f_s.grad.abs().sum() > 0
    for param in trainable:
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_name_shapes_and_counts(name):
    loss, _ = _build(name)
    good = torch.randn(4, DIM)
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(3, 8\)"):
        loss(good, torch.randn(3, DIM), LABELS)
    bad = good.clone()
    bad[0, 1], bad[2, 3] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="teacher has 2 non-finite"):
        loss(good, bad, LABELS)
    with pytest.raises(ValueError, match="empty batch"):
        loss(torch.zeros(0, DIM), torch.zeros(0, DIM), LABELS[:0])


@pytest.mark.parametrize("name", ["kd", "ccl", "clip", "fitnet", "ickd"])
def test_width_mismatch_names_both_shapes(name):
    loss, _ = _build(name)
    with pytest.raises(ValueError, match=r"\(4, 6\)"):
        loss(torch.randn(4, DIM), torch.randn(4, 6), LABELS)


def test_built_from_hyperpyyaml_with_shared_speechbrain_head():
    from hyperpyyaml import load_hyperpyyaml

    hparams = load_hyperpyyaml(
        """
classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 8
    out_neurons: 5
kd: !new:speechbrain_xmkd.distill.baselines.KDLoss
    temperature: 4.0
    classifier: !ref <classifier>
    logit_scale: 30.0
ccl: !new:speechbrain_xmkd.distill.baselines.CCLLoss
    dim: 8
    num_classes: 5
    classifier: !ref <classifier>
    temperature: 0.5
"""
    )
    assert hparams["kd"].classifier is hparams["classifier"]
    f_s, f_t = torch.randn(4, 1, 8), torch.randn(4, 1, 8)
    assert hparams["kd"](f_s, f_t).shape == (4,)
    assert hparams["ccl"](f_s, f_t, LABELS.unsqueeze(1)).shape == (4,)
