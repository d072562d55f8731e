"""Tests for speechbrain_xmkd.metrics against SpeechBrain and a brute-force sweep."""

import math

import numpy as np
import pytest
import torch
from speechbrain.utils.metric_stats import EER, minDCF

from speechbrain_xmkd.metrics import det_curve, eer, min_dcf


def random_trials(seed, kind):
    """Small random score sets; 'ties' rounds them so many scores coincide."""
    g = torch.Generator().manual_seed(seed)
    n_pos = int(torch.randint(1, 30, (1,), generator=g))
    n_neg = int(torch.randint(1, 30, (1,), generator=g))
    if kind == "unbalanced":
        n_neg = n_neg * 4 + 30
    pos = torch.randn(n_pos, generator=g) + 0.7
    neg = torch.randn(n_neg, generator=g)
    if kind == "ties":
        pos, neg = torch.round(pos * 2), torch.round(neg * 2)
    if kind == "heavy_ties":
        pos, neg = torch.round(pos), torch.round(neg)
    return pos, neg


KINDS = ["continuous", "ties", "heavy_ties", "unbalanced"]


def brute_force_rates(pos, neg, threshold):
    """(FAR, FRR) at one threshold, accepting scores strictly above it."""
    far = sum(1 for s in neg if s > threshold) / len(neg)
    frr = sum(1 for s in pos if s <= threshold) / len(pos)
    return far, frr


@pytest.mark.parametrize("kind", KINDS)
def test_eer_equals_speechbrain(kind):
    for seed in range(100):
        pos, neg = random_trials(seed, kind)
        value, threshold = eer(pos, neg)
        sb_value, sb_threshold = EER(pos, neg)
        # SpeechBrain's rates are float32, ours float64: equal to 1e-7.
        assert value == pytest.approx(sb_value, abs=1e-7), seed
        assert threshold == sb_threshold, seed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p_target", [0.01, 0.05, 0.3])
def test_min_dcf_equals_speechbrain(kind, p_target):
    for seed in range(40):
        pos, neg = random_trials(seed, kind)
        c_miss, c_fa = (1.0, 1.0) if seed % 2 else (5.0, 0.5)
        sb_value, sb_threshold = minDCF(pos, neg, c_miss, c_fa, p_target)
        raw, threshold = min_dcf(pos, neg, p_target, c_miss, c_fa, normalize=False)
        if threshold == -math.inf:
            # Accept-everything: outside SpeechBrain's grid, and cheaper.
            assert c_fa * (1 - p_target) < c_miss * p_target
            assert raw == pytest.approx(c_fa * (1 - p_target)) and raw < sb_value
            continue
        assert raw == pytest.approx(sb_value, rel=1e-6, abs=1e-9), seed
        assert threshold == sb_threshold, seed
        norm, norm_threshold = min_dcf(pos, neg, p_target, c_miss, c_fa)
        c_def = min(c_miss * p_target, c_fa * (1 - p_target))
        assert norm == pytest.approx(sb_value / c_def, rel=1e-6), seed
        assert norm_threshold == threshold
        assert 0.0 <= norm <= 1.0


def test_hand_computed_case():
    # pos = [0.9, 0.6, 0.3], neg = [0.5, 0.2]; accept when score > threshold.
    #   t     FRR (pos <= t)  FAR (neg > t)  |FAR-FRR|
    #   0.2   0/3             1/2            1/2
    #   0.3   1/3             1/2            1/6   <- smallest
    #   0.5   1/3             0/2            1/3
    # EER = (1/3 + 1/2) / 2 = 5/12 at t = 0.3.
    # C_det(p_target=0.25) = 0.25 * FRR + 0.75 * FAR:
    #   t=-inf: 0.75; 0.2: 0.375; 0.3: 1/12 + 3/8 = 11/24; 0.5: 1/12; 0.6: 1/6;
    #   0.9: 0.25. min = 1/12 at t = 0.5; C_def = min(0.25, 0.75) = 0.25,
    #   normalised 1/3.
    pos, neg = [0.9, 0.6, 0.3], [0.5, 0.2]
    assert eer(pos, neg) == (pytest.approx(5 / 12), 0.3)
    value, threshold = min_dcf(pos, neg, p_target=0.25, normalize=False)
    assert (value, threshold) == (pytest.approx(1 / 12), 0.5)
    assert min_dcf(pos, neg, p_target=0.25)[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("kind", KINDS)
def test_eer_agrees_with_brute_force_sweep(kind):
    for seed in range(100):
        pos, neg = (x.tolist() for x in random_trials(1000 + seed, kind))
        value, threshold = eer(pos, neg)
        candidates = sorted(set(pos + neg))
        rates = [brute_force_rates(pos, neg, t) for t in candidates]
        # Compare gaps exactly in integers: |FAR - FRR| * len(pos) * len(neg).
        gaps = [round(abs(far - frr) * len(pos) * len(neg)) for far, frr in rates]
        closest = [r for r, gap in zip(rates, gaps) if gap == min(gaps)]
        # Our threshold reaches the smallest gap, and the value is its mean;
        # when two thresholds tie, SpeechBrain's float32 rounding picks one.
        far, frr = brute_force_rates(pos, neg, threshold)
        assert (far, frr) in closest, seed
        assert value == pytest.approx((far + frr) / 2), seed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p_target", [0.01, 0.2, 0.7])
def test_min_dcf_agrees_with_brute_force_sweep(kind, p_target):
    for seed in range(50):
        pos, neg = (x.tolist() for x in random_trials(2000 + seed, kind))
        candidates = [-math.inf] + sorted(set(pos + neg)) + [math.inf]
        costs = []
        for t in candidates:
            far, frr = brute_force_rates(pos, neg, t)
            costs.append(p_target * frr + (1 - p_target) * far)
        value, threshold = min_dcf(pos, neg, p_target=p_target, normalize=False)
        assert value == pytest.approx(min(costs), abs=1e-12), seed
        far, frr = brute_force_rates(pos, neg, threshold)
        assert p_target * frr + (1 - p_target) * far == pytest.approx(value)


def test_accept_everything_when_it_is_cheapest():
    # With p_target=0.9 a miss is 9x as costly as a false alarm; scores that
    # carry no information make accepting everything (cost 0.1) optimal,
    # which SpeechBrain's threshold grid (lowest score upwards) cannot reach.
    pos, neg = [0.1, 0.2, 0.3], [0.15, 0.25, 0.35]
    value, threshold = min_dcf(pos, neg, p_target=0.9, normalize=False)
    assert (value, threshold) == (pytest.approx(0.1), -math.inf)
    assert min_dcf(pos, neg, p_target=0.9) == (pytest.approx(1.0), -math.inf)


def test_det_curve_monotone_with_endpoints():
    pos, neg = random_trials(3, "heavy_ties")
    p_fa, p_miss, thresholds = det_curve(pos, neg)
    n_distinct = len(set(pos.tolist() + neg.tolist()))
    assert len(p_fa) == len(p_miss) == len(thresholds) == n_distinct + 1
    assert (p_fa[0], p_miss[0], thresholds[0]) == (1.0, 0.0, -np.inf)
    assert (p_fa[-1], p_miss[-1]) == (0.0, 1.0)
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(p_fa) <= 0) and np.all(np.diff(p_miss) >= 0)
    # Every step moves at least one of the two rates.
    assert np.all((np.diff(p_fa) < 0) | (np.diff(p_miss) > 0))
    for fa, miss, t in zip(p_fa, p_miss, thresholds):
        expected = brute_force_rates(pos.tolist(), neg.tolist(), t)
        assert (fa, miss) == pytest.approx(expected)


def test_perfect_separation():
    pos, neg = torch.tensor([2.0, 3.0, 2.5]), torch.tensor([-1.0, 0.0, 1.0, 1.5])
    assert eer(pos, neg) == (0.0, 1.5)
    assert min_dcf(pos, neg) == (0.0, 1.5)


def test_input_types_agree():
    pos, neg = random_trials(7, "ties")
    expected = eer(pos, neg), min_dcf(pos, neg)
    for p, n in [
        (pos.numpy(), neg.numpy()),
        (pos.unsqueeze(1), neg.unsqueeze(0)),  # [n, 1] and [1, n] squeeze to 1-D
        (pos.clone().requires_grad_(), neg),
    ]:
        assert (eer(p, n), min_dcf(p, n)) == expected
    as_lists = pos.tolist(), neg.tolist()
    assert eer(*as_lists)[0] == expected[0][0]
    assert min_dcf(*as_lists) == expected[1]
    # Other precisions: same value (the midpoint threshold is rounded to them).
    for p, n in [(pos.double(), neg.double()), (pos.numpy().astype(np.float64), neg)]:
        assert eer(p, n)[0] == expected[0][0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs():
    pos, neg = random_trials(5, "ties")
    assert eer(pos.cuda(), neg.cuda()) == eer(pos, neg)
    assert min_dcf(pos.cuda(), neg.cuda()) == min_dcf(pos, neg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    pos, neg = random_trials(11, "continuous")
    pos, neg = pos.to(dtype), neg.to(dtype)
    value, threshold = eer(pos, neg)
    assert value == eer(pos.double(), neg.double())[0]
    # The threshold (a score or a midpoint) is reported in the input precision.
    assert torch.tensor(threshold, dtype=dtype).item() == threshold
    assert min_dcf(pos, neg) == min_dcf(pos.float(), neg.float())


@pytest.mark.parametrize("fn", [eer, min_dcf, det_curve])
def test_bad_scores_are_reported(fn):
    good = [0.1, 0.2]
    with pytest.raises(ValueError, match="positive_scores is empty"):
        fn([], good)
    with pytest.raises(ValueError, match="negative_scores is empty"):
        fn(good, torch.tensor([]))
    with pytest.raises(ValueError, match=r"negative_scores has 2 non-finite"):
        fn(good, [0.3, float("nan"), float("inf")])
    with pytest.raises(ValueError, match=r"positive_scores must be 1-D.*\(2, 3\)"):
        fn(torch.zeros(2, 3), good)
    with pytest.raises(ValueError, match=r"negative_scores must be 1-D.*\(2, 1, 2\)"):
        fn(good, np.zeros((2, 1, 2)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p_target": 0.0}, "p_target must be in"),
        ({"p_target": 1.0}, "p_target must be in"),
        ({"p_target": -0.5}, "p_target must be in"),
        ({"c_miss": -1.0}, "c_miss must be a positive"),
        ({"c_fa": -2.0}, "c_fa must be a positive"),
        ({"c_fa": float("nan")}, "c_fa must be a positive"),
    ],
)
def test_bad_cost_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        min_dcf([0.5], [0.1], **kwargs)
