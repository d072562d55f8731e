"""Speaker-verification metrics: EER, minDCF and DET-curve points.

They follow SpeechBrain's conventions (a trial is accepted when its score is
strictly above the threshold; FRR counts target scores ``<= threshold``, FAR
counts non-target scores ``> threshold``) and return the same thresholds
as ``speechbrain.utils.metric_stats.EER`` / ``minDCF``, and the same values
to float32 precision (SpeechBrain computes the rates in float32, we in
float64).
We do not use SpeechBrain's versions because its EER loops over every
threshold in Python and its minDCF allocates a thresholds x scores matrix
(hundreds of GB on large trial lists); ours sort the scores once, O(n log n).

Authors
 * speechbrain_xmkd contributors
"""

import numpy as np
import torch

__all__ = ["eer", "min_dcf", "det_curve"]


def eer(positive_scores, negative_scores):
    """Computes the Equal Error Rate and its threshold.

    Among the thresholds SpeechBrain considers (the distinct scores and the
    midpoints between neighbours), picks the one where FAR and FRR are
    closest and returns their mean there, exactly as
    ``speechbrain.utils.metric_stats.EER`` does, including which threshold
    wins when several are equally close.

    Arguments
    ---------
    positive_scores : torch.Tensor, numpy.ndarray or list of float
        Scores of target (same-speaker) trials, 1-D after squeezing.
        Tensors may live on any device and have any float dtype.
    negative_scores : torch.Tensor, numpy.ndarray or list of float
        Scores of non-target trials, 1-D after squeezing.

    Returns
    -------
    value : float
        The EER as a fraction in [0, 1] (not a percentage).
    threshold : float
        The threshold it was reached at, in the precision of the inputs.

    Example
    -------
    >>> eer(torch.tensor([0.6, 0.7, 0.8, 0.5]), torch.tensor([0.4, 0.3, 0.2, 0.1]))
    (0.0, 0.4000000059604645)
    >>> eer([0.9, 0.4], [0.5, 0.1])
    (0.5, 0.4)
    """
    pos, neg, dtype = _validate(positive_scores, negative_scores)
    thresholds, misses, false_alarms = _operating_points(pos, neg)
    return _eer_from_counts(thresholds, misses, false_alarms, len(pos), len(neg), dtype)


def min_dcf(
    positive_scores,
    negative_scores,
    p_target=0.01,
    c_miss=1.0,
    c_fa=1.0,
    normalize=True,
):
    """Computes the minimum of the detection cost function and its threshold.

    ``C_det = c_miss * P_miss * p_target + c_fa * P_fa * (1 - p_target)``,
    minimised over the thresholds. With ``normalize=True`` the minimum is
    divided by ``min(c_miss * p_target, c_fa * (1 - p_target))``, the cost
    of the best trivial system, as WeSpeaker and the NIST SRE plans report
    it; ``normalize=False`` gives the raw minimum that SpeechBrain's
    ``minDCF`` returns.

    The accept-everything operating point (threshold ``-inf``) is included
    so that the normalised value never exceeds 1; SpeechBrain omits it,
    which only matters when ``c_fa * (1 - p_target) < c_miss * p_target``.

    Arguments
    ---------
    positive_scores : torch.Tensor, numpy.ndarray or list of float
        Scores of target trials, 1-D after squeezing.
    negative_scores : torch.Tensor, numpy.ndarray or list of float
        Scores of non-target trials, 1-D after squeezing.
    p_target : float
        Prior probability of a target trial, in (0, 1).
    c_miss : float
        Cost of a miss (rejected target), > 0.
    c_fa : float
        Cost of a false alarm (accepted non-target), > 0.
    normalize : bool
        Whether to divide by the cost of the best trivial system.

    Returns
    -------
    value : float
        The minDCF, in [0, 1] when normalised.
    threshold : float
        The threshold it was reached at (``-inf`` for accept-everything).

    Example
    -------
    >>> pos, neg = [0.9, 0.8, 0.35], [0.4, 0.3, 0.2, 0.1]
    >>> value, threshold = min_dcf(pos, neg)
    >>> round(value, 6), threshold
    (0.333333, 0.4)
    >>> value, threshold = min_dcf(pos, neg, normalize=False)
    >>> round(value, 6)
    0.003333
    """
    for name, cost in (("c_miss", c_miss), ("c_fa", c_fa)):
        if not np.isfinite(cost) or cost <= 0:
            raise ValueError(f"{name} must be a positive finite cost, got {cost}")
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    pos, neg = _validate(positive_scores, negative_scores)[:2]
    thresholds, misses, false_alarms = _operating_points(pos, neg)

    # Pick the threshold with SpeechBrain's float32 arithmetic and
    # first-minimum rule, so near-ties resolve to the same threshold.
    f32 = np.float32
    cost32 = (f32(c_miss) * _rate32(misses, len(pos))) * f32(p_target) + (
        f32(c_fa) * _rate32(false_alarms, len(neg))
    ) * f32(1 - p_target)
    best = int(np.argmin(cost32))
    accept_all32 = (f32(c_fa) * f32(1.0)) * f32(1 - p_target)
    if accept_all32 < cost32[best]:
        value, threshold = c_fa * (1 - p_target), float("-inf")
    else:
        value = c_miss * p_target * (misses[best] / len(pos)) + c_fa * (
            1 - p_target
        ) * (false_alarms[best] / len(neg))
        threshold = float(thresholds[best])
    if normalize:
        # A trivial system reaches exactly 1; the clip only absorbs the
        # float32 selection picking a point a rounding error above it.
        value = min(value / min(c_miss * p_target, c_fa * (1 - p_target)), 1.0)
    return float(value), threshold


def det_curve(positive_scores, negative_scores):
    """Computes the points of the DET curve, one per distinct threshold.

    The thresholds are ``-inf`` (accept everything) followed by the
    distinct scores in increasing order; a trial is accepted when its
    score is strictly above the threshold (SpeechBrain's convention; note
    that sklearn's ``det_curve`` uses ``>=``).

    Arguments
    ---------
    positive_scores : torch.Tensor, numpy.ndarray or list of float
        Scores of target trials, 1-D after squeezing.
    negative_scores : torch.Tensor, numpy.ndarray or list of float
        Scores of non-target trials, 1-D after squeezing.

    Returns
    -------
    p_fa : numpy.ndarray
        False-alarm rate at each threshold, from 1 down to 0.
    p_miss : numpy.ndarray
        Miss rate at each threshold, from 0 up to 1.
    thresholds : numpy.ndarray
        The thresholds, increasing, float64.

    Example
    -------
    >>> p_fa, p_miss, thresholds = det_curve([0.9, 0.5], [0.5, 0.1])
    >>> p_fa.tolist(), p_miss.tolist(), thresholds.tolist()
    ([1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 1.0], [-inf, 0.1, 0.5, 0.9])
    """
    pos, neg = _validate(positive_scores, negative_scores)[:2]
    thresholds, misses, false_alarms = _operating_points(pos, neg)
    p_fa = np.concatenate([[1.0], false_alarms / len(neg)])
    p_miss = np.concatenate([[0.0], misses / len(pos)])
    return p_fa, p_miss, np.concatenate([[-np.inf], thresholds])


def _validate(positive_scores, negative_scores):
    """Returns both score sets as 1-D float64 arrays, plus their torch dtype.

    Checked in numpy, with the messages of ``_checks.check_batch``: the
    rest of the computation is numpy, and torch ops on a long score list
    would wake torch's thread pool for nothing (it dominated the run time).
    """
    arrays, dtypes = [], []
    for name, scores in (
        ("positive_scores", positive_scores),
        ("negative_scores", negative_scores),
    ):
        if isinstance(scores, torch.Tensor):
            dtype = scores.dtype
            scores = scores.detach().cpu()
            if dtype == torch.bfloat16:  # numpy has no bfloat16
                scores = scores.float()
            scores = scores.numpy()
        else:
            scores = np.asarray(scores)
            dtype = _TORCH_DTYPES.get(scores.dtype, torch.float64)
        shape = scores.shape
        scores = scores.astype(np.float64, copy=False).squeeze()
        if scores.ndim == 0:
            scores = scores.reshape(1)
        if scores.ndim != 1:
            raise ValueError(f"{name} must be 1-D (after squeezing), got shape {shape}")
        if len(scores) == 0:
            raise ValueError(f"{name} is empty (shape {shape})")
        bad = len(scores) - int(np.count_nonzero(np.isfinite(scores)))
        if bad:
            raise ValueError(
                f"{name} has {bad} non-finite value(s) (NaN or inf) in shape {shape}"
            )
        arrays.append(scores)
        dtypes.append(dtype if dtype.is_floating_point else torch.float64)
    return arrays[0], arrays[1], torch.promote_types(*dtypes)


_TORCH_DTYPES = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
}


def _operating_points(pos, neg):
    """Sorts all scores once and counts the errors at each distinct score.

    Arguments
    ---------
    pos : numpy.ndarray
        Target scores, 1-D float64.
    neg : numpy.ndarray
        Non-target scores, 1-D float64.

    Returns
    -------
    thresholds : numpy.ndarray
        The distinct scores, increasing.
    misses : numpy.ndarray
        Number of target scores ``<= threshold``.
    false_alarms : numpy.ndarray
        Number of non-target scores ``> threshold``.
    """
    # Sorting each set and then merging the two sorted runs (a stable sort
    # on their concatenation is a linear merge) beats one argsort of all.
    scores = np.concatenate([np.sort(pos), np.sort(neg)])
    is_target = np.argsort(scores, kind="stable") < len(pos)
    scores.sort(kind="stable")
    # Equal scores form one group: counts are read at the end of each group,
    # so the result does not depend on how the sort orders ties.
    group_end = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    misses = np.cumsum(is_target)[group_end]
    false_alarms = len(neg) - (group_end + 1 - misses)
    return scores[group_end], misses, false_alarms


def _rate32(counts, total):
    """The error rate as SpeechBrain computes it: ``counts.float() / total``."""
    return counts.astype(np.float32) / np.float32(total)


def _eer_from_counts(thresholds, misses, false_alarms, n_pos, n_neg, dtype):
    """EER and threshold from the counts of :func:`_operating_points`.

    SpeechBrain scans the candidates (each score, then the midpoint to the
    next one, which has the same FAR and FRR) and moves to a candidate when
    ``float32(|FAR - FRR|)`` (``f``) is strictly below the float64
    ``|FAR - FRR|`` of the current one, i.e. below that value rounded up to
    float32 (``c``). The current ``c`` never increases and a skipped
    candidate has ``c`` at or above it, so a candidate is taken exactly when
    its ``f`` is below the minimum ``c`` of all earlier ones, and the answer
    is the last one taken: a score, or the midpoint after it when ``f < c``
    there too. This reproduces its choice, float32 rounding included.
    """
    gap = np.abs(
        _rate32(false_alarms, n_neg).astype(np.float64)
        - _rate32(misses, n_pos).astype(np.float64)
    )
    gap_nearest = gap.astype(np.float32)
    gap_up = np.where(
        gap_nearest < gap, np.nextafter(gap_nearest, np.float32(np.inf)), gap_nearest
    )
    earlier_min = np.empty_like(gap_up)
    earlier_min[0] = np.inf
    np.minimum.accumulate(gap_up[:-1], out=earlier_min[1:])
    taken = gap_nearest < earlier_min
    best = len(taken) - 1 - int(np.argmax(taken[::-1]))
    threshold = thresholds[best]
    if best + 1 < len(thresholds) and gap_nearest[best] < gap_up[best]:
        # The midpoint, in the input precision as SpeechBrain computes it;
        # one that rounds onto the next score carries that score's rates
        # and was not taken.
        midpoint = (thresholds[best] + thresholds[best + 1]) / 2
        if dtype != torch.float64:
            midpoint = torch.tensor(midpoint, dtype=dtype).item()
        if midpoint != thresholds[best + 1]:
            threshold = midpoint
    value = (false_alarms[best] / n_neg + misses[best] / n_pos) / 2
    return float(value), float(threshold)
