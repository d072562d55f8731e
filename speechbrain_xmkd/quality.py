"""Quality-based adaptive sample weights (Eq. 11)."""

import torch

from ._checks import as_rows, check_batch

SOURCES = ("teacher", "student", "both")


class QualityWeighter(torch.nn.Module):
    """Weights each sample's distillation term by input quality, Eq. 11.

    Quality ``Q_i`` is the l2 norm of the raw embedding, which tracks input
    quality (a blurred face or a noisy utterance gets a smaller norm)::

        w_i = w_base + (Q_i - mu_q) / (sigma_q / h)

    ``mu_q`` and ``sigma_q`` are exponential moving averages kept as buffers,
    so SpeechBrain's checkpointer saves and restores them with the model. The
    paper calls ``sigma_q`` a variance, but dividing a norm difference by a
    variance mixes units; we use the standard deviation, which makes
    ``(Q_i - mu_q) / sigma_q`` a z-score and ``h`` its scale. Weights are
    detached (they steer, they are not trained), clamped at 0 (a negative
    weight would reward moving away from the teacher) and at ``max_weight``.
    Under DDP the batch statistics are all-reduced so every rank keeps the
    same running values.

    Arguments
    ---------
    source : str
        Which raw embedding measures quality: ``"teacher"`` (E_T, the
        default), ``"student"`` (the student embedding) or ``"both"`` (the
        mean of the two z-scores).
    w_base : float
        Base weight (1 in the paper).
    h : float
        Range of the weights' variation (1/3 in the paper).
    momentum : float
        Weight of the new batch in the moving averages, in (0, 1].
    max_weight : float or None
        Upper clamp of the weights; None for no upper clamp.
    eps : float
        Floor of ``sigma_q``.

    Example
    -------
    >>> weighter = QualityWeighter()
    >>> teacher = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])  # norms 5, 1, 10
    >>> w = weighter(teacher=teacher)
    >>> bool((w[1] < w[0]) & (w[0] < w[2]))
    True
    >>> weighter.running_mean  # initialised from the first batch: (5+1+10)/3
    tensor([5.3333, 0.0000])
    """

    def __init__(
        self, source="teacher", w_base=1.0, h=1.0 / 3.0, momentum=0.1, max_weight=3.0, eps=1e-6
    ):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"QualityWeighter: source must be one of {SOURCES}, got {source!r}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"QualityWeighter: momentum must be in (0, 1], got {momentum!r}")
        if h <= 0:
            raise ValueError(f"QualityWeighter: h must be > 0, got {h!r}")
        if max_weight is not None and max_weight <= 0:
            raise ValueError(f"QualityWeighter: max_weight must be > 0 or None, got {max_weight!r}")
        self.source = source
        self.w_base = float(w_base)
        self.h = float(h)
        self.momentum = float(momentum)
        self.max_weight = None if max_weight is None else float(max_weight)
        self.eps = float(eps)
        # Index 0: teacher statistics, index 1: student statistics.
        self.register_buffer("running_mean", torch.zeros(2))
        self.register_buffer("running_std", torch.ones(2))
        self.register_buffer("num_batches_tracked", torch.zeros(2, dtype=torch.long))

    def _zscore(self, embedding, slot, name):
        x = as_rows(embedding, name)
        check_batch(x, name)
        quality = torch.linalg.vector_norm(x.detach().float(), dim=1)
        if self.training:
            self._update(quality, slot)
        std = self.running_std[slot].clamp_min(self.eps)
        return (quality - self.running_mean[slot]) / std

    @torch.no_grad()
    def _update(self, quality, slot):
        stats = torch.stack(
            [quality.new_tensor(float(quality.numel())), quality.sum(), quality.pow(2).sum()]
        )
        if _distributed():
            torch.distributed.all_reduce(stats)
        count, total, total_sq = stats
        if count == 0:
            return
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        std = var.sqrt()
        if self.num_batches_tracked[slot] == 0:
            self.running_mean[slot] = mean
            self.running_std[slot] = std
        else:
            m = self.momentum
            self.running_mean[slot] = (1 - m) * self.running_mean[slot] + m * mean
            self.running_std[slot] = (1 - m) * self.running_std[slot] + m * std
        self.num_batches_tracked[slot] += 1

    @torch.no_grad()
    def skip_batch(self):
        """Takes part in the statistics' all-reduce with an empty batch.

        Under DDP every rank must join the same collective calls: a rank whose
        batch has no usable teacher row calls this instead of ``forward``.
        Without DDP, or in eval mode, it does nothing.
        """
        if not (self.training and _distributed()):
            return
        device = self.running_mean.device
        for slot, source in ((0, "teacher"), (1, "student")):
            if self.source in (source, "both"):
                self._update(torch.zeros(0, device=device), slot)

    def forward(self, teacher=None, student=None):
        """Returns detached, non-negative weights ``[batch]``.

        Arguments
        ---------
        teacher : torch.Tensor, optional
            Raw teacher embeddings ``E_T`` (needed for ``"teacher"``/``"both"``).
        student : torch.Tensor, optional
            Raw student embeddings (needed for ``"student"``/``"both"``).
        """
        needed = {"teacher": ("teacher",), "student": ("student",), "both": ("teacher", "student")}
        given = {"teacher": teacher, "student": student}
        for name in needed[self.source]:
            if given[name] is None:
                raise ValueError(
                    f"QualityWeighter(source={self.source!r}) needs the {name} embedding"
                )
        scores = []
        if teacher is not None and self.source in ("teacher", "both"):
            scores.append(self._zscore(teacher, 0, "teacher"))
        if student is not None and self.source in ("student", "both"):
            scores.append(self._zscore(student, 1, "student"))
        if len(scores) == 2 and scores[0].shape != scores[1].shape:
            raise ValueError(
                f"teacher and student batch sizes differ: {tuple(scores[0].shape)} "
                f"vs {tuple(scores[1].shape)}"
            )
        z = scores[0] if len(scores) == 1 else 0.5 * (scores[0] + scores[1])
        weights = (self.w_base + self.h * z).clamp_min(0.0)
        if self.max_weight is not None:
            weights = weights.clamp_max(self.max_weight)
        return weights.detach()

    def extra_repr(self):
        return (
            f"source={self.source}, w_base={self.w_base}, h={self.h:.4g}, "
            f"momentum={self.momentum}, max_weight={self.max_weight}"
        )


def _distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()
