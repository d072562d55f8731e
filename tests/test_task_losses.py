"""Tests of the angular prototypical task losses (speechbrain_xmkd.losses)."""

import math

import pytest
import torch
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from speechbrain_xmkd.losses import AngularPrototypicalLoss, AngularPrototypicalSoftmax

# 2 speakers x 2 utterances, rows not grouped by speaker. The first row of
# each label is its positive, the other one its prototype:
#   speaker 1: positive (0, 2), prototype (0, 1)
#   speaker 0: positive (1, 0), prototype (1, 1)
EMBEDDINGS = [[0.0, 2.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
LABELS = [1, 0, 0, 1]


def _hand_value(w=10.0, b=-5.0):
    # Speakers sorted by label (0, 1). cos(p0, c0) = 1/sqrt(2), cos(p0, c1) = 0,
    # cos(p1, c0) = 1/sqrt(2), cos(p1, c1) = 1.
    # w=10, b=-5: S = [[2.0711, -5.0], [2.0711, 5.0]]
    # row 0: log(1 + exp(-5 - 2.0711)) = log(1 + exp(-7.0711)) = 0.0008489
    # row 1: log(1 + exp(2.0711 - 5)) = log(1 + exp(-2.9289)) = 0.0520744
    # mean = 0.0264617
    s00, s01 = w / math.sqrt(2) + b, b
    s10, s11 = w / math.sqrt(2) + b, w + b
    row0 = math.log1p(math.exp(s01 - s00))
    row1 = math.log1p(math.exp(s10 - s11))
    return (row0 + row1) / 2


def test_hand_computed_value():
    assert _hand_value() == pytest.approx(0.0264617, abs=1e-6)
    loss = AngularPrototypicalLoss(init_w=10.0, init_b=-5.0)
    value = loss(torch.tensor(EMBEDDINGS), torch.tensor(LABELS))
    assert value.item() == pytest.approx(_hand_value(), rel=1e-5)
    # [B, 1, D] embeddings and [B, 1] labels (SpeechBrain's shapes) agree.
    again = loss(torch.tensor(EMBEDDINGS).unsqueeze(1), torch.tensor(LABELS).unsqueeze(1))
    assert again.item() == pytest.approx(_hand_value(), rel=1e-5)


def test_other_scale_and_bias_invariance():
    loss = AngularPrototypicalLoss(init_w=3.0, init_b=0.0)
    value = loss(torch.tensor(EMBEDDINGS), torch.tensor(LABELS))
    assert value.item() == pytest.approx(_hand_value(w=3.0, b=0.0), rel=1e-5)
    # b shifts every logit of a row equally: the loss does not depend on it.
    shifted = AngularPrototypicalLoss(init_w=3.0, init_b=7.0)
    assert shifted(torch.tensor(EMBEDDINGS), torch.tensor(LABELS)).item() == pytest.approx(
        value.item(), rel=1e-6
    )


def test_scale_is_clamped_positive():
    loss = AngularPrototypicalLoss(init_w=10.0, init_b=0.0)
    with torch.no_grad():
        loss.w.fill_(-4.0)
    logits, _ = loss.similarity(torch.tensor(EMBEDDINGS), torch.tensor(LABELS))
    # w clamped to 1e-6: all logits ~0, so the loss is ~log(P) = log 2.
    assert logits.abs().max().item() < 1e-5
    assert loss(torch.tensor(EMBEDDINGS), torch.tensor(LABELS)).item() == pytest.approx(
        math.log(2), rel=1e-5
    )


def _interleave(labels, generator):
    """A random permutation of rows that keeps each speaker's row order."""
    n = len(labels)
    slots = torch.randperm(n, generator=generator)
    by_speaker = {}
    for i, y in enumerate(labels):
        by_speaker.setdefault(y, []).append(i)
    # Assign speakers to shuffled slots, then fill each speaker's slots in order.
    spk_of_slot = [labels[int(s)] for s in slots]
    order, used = [], {y: 0 for y in by_speaker}
    for y in spk_of_slot:
        order.append(by_speaker[y][used[y]])
        used[y] += 1
    return torch.tensor(order)


def test_order_invariance():
    generator = torch.Generator().manual_seed(0)
    speakers, per_speaker, dim = 5, 3, 8
    labels = torch.arange(speakers).repeat_interleave(per_speaker) * 11 + 2
    emb = torch.randn(len(labels), dim, generator=generator)
    loss = AngularPrototypicalLoss()
    reference = loss(emb, labels).item()
    for _ in range(5):
        perm = _interleave(labels.tolist(), generator)
        assert loss(emb[perm], labels[perm]).item() == pytest.approx(reference, rel=1e-6)
    # Relabelling the speakers (another order of the P x P matrix) too.
    assert loss(emb, 100 - labels).item() == pytest.approx(reference, rel=1e-6)


def test_too_few_utterances_error_names_label_and_count():
    loss = AngularPrototypicalLoss()
    emb = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"label 9 has 1 \(batch of 5 rows, 3 speakers\)"):
        loss(emb, torch.tensor([3, 9, 3, 4, 4]))
    with pytest.raises(ValueError, match=r">= 2 speakers"):
        loss(torch.randn(3, 4), torch.tensor([1, 1, 1]))


def test_gradients_reach_embeddings_and_parameters():
    loss = AngularPrototypicalLoss()
    emb = torch.randn(8, 1, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss(emb, torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert loss.w.grad is not None and loss.w.grad.abs() > 0
    # b's gradient exists and is exactly zero (it cancels in the softmax).
    assert loss.b.grad is not None and loss.b.grad.abs() < 1e-6


def test_softmax_combination():
    classifier_loss = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.0, scale=30.0))
    combined = AngularPrototypicalSoftmax(classifier_loss, weight=0.5)
    assert AngularPrototypicalSoftmax.takes_embeddings is True
    emb = torch.tensor(EMBEDDINGS).unsqueeze(1).requires_grad_(True)
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.6, -0.3], [0.0, 0.5]]).unsqueeze(1)
    labels = torch.tensor(LABELS).unsqueeze(1)
    value = combined(logits, labels, embeddings=emb)
    # Plain softmax CE on 30 * cosine, by hand, plus half the hand value above.
    ce = 0.0
    for row, y in zip(logits.squeeze(1).tolist(), LABELS):
        scaled = [30.0 * c for c in row]
        ce += math.log(sum(math.exp(s) for s in scaled)) - scaled[y]
    expected = ce / len(LABELS) + 0.5 * _hand_value()
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert emb.grad.abs().sum() > 0 and combined.angleproto.w.grad is not None
    # Its parameters are module parameters, so an optimizer over the owner sees them.
    assert {n for n, _ in combined.named_parameters()} == {"angleproto.w", "angleproto.b"}
    with pytest.raises(ValueError, match="embeddings="):
        combined(logits, labels)
