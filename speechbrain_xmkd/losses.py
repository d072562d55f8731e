"""Task losses of the speaker student beyond SpeechBrain's own.

The paper trains the speaker student with two task losses: AAM-softmax
(SpeechBrain's ``LogSoftmaxWrapper(AdditiveAngularMargin(...))``) and
"angular prototypical + softmax" (Chung et al. 2020, "In defence of metric
learning for speaker recognition"). SpeechBrain has no angular prototypical
loss, so it is written here.

Both classes take embeddings of a speaker-balanced batch (P speakers x M
utterances, see :mod:`speechbrain_xmkd.sampling`); rows need not be grouped
by speaker.

Authors
 * speechbrain-xmkd contributors
"""

import torch
import torch.nn.functional as F

from ._checks import as_rows, check_batch, check_labels

# Lower clamp of the scale w (Chung et al.): keeps the logits' sign.
_MIN_SCALE = 1e-6


class AngularPrototypicalLoss(torch.nn.Module):
    """Angular prototypical loss (Chung et al. 2020).

    Rows are grouped by label. For each of the P speakers in the batch,
    the positive ``x_j`` is its first row in batch order and the prototype
    ``c_j`` is the mean of its other M_j - 1 rows. With
    ``S[j, k] = w * cos(x_j, c_k) + b`` (``w`` clamped to stay positive,
    ``w`` and ``b`` learnt), the loss is the cross-entropy of each row of
    ``S`` against the diagonal, averaged over the P speakers.

    The value does not depend on how the speakers are ordered or
    interleaved in the batch. Which utterance of a speaker is the positive
    follows the row order, as in Chung et al. (utterance 0); the sampler
    draws a speaker's utterances at random, so that choice is random too.

    ``b`` adds the same constant to every logit of a row, which softmax
    cross-entropy ignores: its gradient is exactly 0. It is kept for parity
    with Chung et al.'s formulation (and their checkpoints).

    Arguments
    ---------
    init_w : float
        Initial scale ``w`` (> 0).
    init_b : float
        Initial bias ``b``.

    Example
    -------
    >>> loss = AngularPrototypicalLoss()
    >>> emb = torch.randn(6, 1, 8, requires_grad=True)
    >>> labels = torch.tensor([3, 1, 3, 7, 1, 7])
    >>> value = loss(emb, labels)
    >>> value.shape, bool(value > 0)
    (torch.Size([]), True)
    >>> loss(torch.randn(3, 8), torch.tensor([0, 0, 1]))
    Traceback (most recent call last):
    ...
    ValueError: AngularPrototypicalLoss needs >= 2 utterances ... label 1 has 1 (batch of 3 ...
    """

    def __init__(self, init_w=10.0, init_b=-5.0):
        super().__init__()
        if not init_w > 0:
            raise ValueError(f"AngularPrototypicalLoss: init_w must be > 0, got {init_w!r}")
        self.w = torch.nn.Parameter(torch.tensor(float(init_w)))
        self.b = torch.nn.Parameter(torch.tensor(float(init_b)))

    def similarity(self, embeddings, labels):
        """Returns the scaled cosine matrix ``S`` and the speakers' labels.

        Arguments
        ---------
        embeddings : torch.Tensor
            ``[B, D]`` or ``[B, 1, D]``.
        labels : torch.Tensor
            ``[B]`` or ``[B, 1]`` speaker indices.

        Returns
        -------
        torch.Tensor
            ``[P, P]`` logits, row ``j``: positive of speaker ``j`` against
            every prototype; speakers sorted by label.
        torch.Tensor
            ``[P]`` the sorted labels.
        """
        x = as_rows(embeddings, "embeddings")
        check_batch(x, "embeddings")
        labels = check_labels(labels, x.shape[0]).to(x.device)
        speakers, group, counts = torch.unique(
            labels, return_inverse=True, return_counts=True
        )
        too_few = (counts < 2).nonzero().flatten()
        if len(too_few):
            first = int(too_few[0])
            raise ValueError(
                "AngularPrototypicalLoss needs >= 2 utterances of every speaker "
                f"in a batch; label {int(speakers[first])} has {int(counts[first])} "
                f"(batch of {x.shape[0]} rows, {len(speakers)} speakers); use a "
                "speaker-balanced sampler with >= 2 utterances per speaker"
            )
        if len(speakers) < 2:
            raise ValueError(
                "AngularPrototypicalLoss needs >= 2 speakers in a batch (one "
                f"speaker gives a 1x1 similarity matrix and no loss); got labels "
                f"{speakers.tolist()}"
            )
        rows = torch.arange(x.shape[0], device=x.device)
        first_row = torch.full_like(speakers, x.shape[0]).scatter_reduce(
            0, group, rows, reduce="amin"
        )
        is_positive = torch.zeros_like(labels, dtype=torch.bool)
        is_positive[first_row] = True
        rest = x.masked_fill(is_positive.unsqueeze(1), 0.0)
        prototypes = x.new_zeros(len(speakers), x.shape[1]).index_add(0, group, rest)
        prototypes = prototypes / (counts - 1).unsqueeze(1).to(x.dtype)
        positives = x[first_row]
        cosine = F.normalize(positives, dim=1, eps=1e-8) @ F.normalize(
            prototypes, dim=1, eps=1e-8
        ).T
        return cosine * torch.clamp(self.w, min=_MIN_SCALE) + self.b, speakers

    def forward(self, embeddings, labels):
        """Computes the loss.

        Arguments
        ---------
        embeddings : torch.Tensor
            ``[B, D]`` or ``[B, 1, D]`` speaker embeddings.
        labels : torch.Tensor
            ``[B]`` or ``[B, 1]`` speaker indices; every label at least twice,
            at least two labels.

        Returns
        -------
        torch.Tensor
            Scalar: mean cross-entropy over the P speakers.
        """
        logits, speakers = self.similarity(embeddings, labels)
        target = torch.arange(len(speakers), device=logits.device)
        return F.cross_entropy(logits, target)


class AngularPrototypicalSoftmax(torch.nn.Module):
    """Classifier loss plus angular prototypical loss on the embeddings.

    ``L = classifier_loss(logits, labels) + weight * L_AP(embeddings, labels)``
    (Chung et al. 2020's "softmax + angular prototypical"). Use it as the
    student's task loss; ``takes_embeddings = True`` tells the caller
    (:class:`~speechbrain_xmkd.Distiller`) to pass ``embeddings=``.

    Arguments
    ---------
    classifier_loss : callable
        ``classifier_loss(logits, labels)`` in SpeechBrain's convention, e.g.
        ``LogSoftmaxWrapper(AdditiveAngularMargin(margin=0, scale=30))``
        (plain softmax on a cosine classifier) with ``[B, 1, C]`` logits and
        ``[B, 1]`` labels.
    weight : float
        Weight of the angular prototypical term.
    init_w : float
        Initial scale of :class:`AngularPrototypicalLoss`.
    init_b : float
        Initial bias of :class:`AngularPrototypicalLoss`.

    Example
    -------
    >>> from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
    >>> loss = AngularPrototypicalSoftmax(
    ...     LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.0, scale=30.0))
    ... )
    >>> emb = torch.randn(4, 1, 8)
    >>> logits = torch.rand(4, 1, 5) * 2 - 1  # cosines of a cosine classifier
    >>> labels = torch.tensor([[2], [4], [2], [4]])
    >>> terms = loss.terms(logits, labels, embeddings=emb)
    >>> sorted(terms)
    ['angleproto', 'classifier']
    >>> torch.allclose(loss(logits, labels, embeddings=emb), sum(terms.values()))
    True
    """

    takes_embeddings = True

    def __init__(self, classifier_loss, weight=1.0, init_w=10.0, init_b=-5.0):
        super().__init__()
        if weight < 0:
            raise ValueError(f"AngularPrototypicalSoftmax: weight must be >= 0, got {weight!r}")
        self.classifier_loss = classifier_loss
        self.weight = float(weight)
        self.angleproto = AngularPrototypicalLoss(init_w=init_w, init_b=init_b)

    def terms(self, logits, labels, embeddings=None):
        """Returns the two terms by name (``"classifier"``, ``"angleproto"``).

        Arguments
        ---------
        logits : torch.Tensor
            Classifier output, as ``classifier_loss`` expects it.
        labels : torch.Tensor
            Speaker indices, as ``classifier_loss`` expects them.
        embeddings : torch.Tensor
            ``[B, D]`` or ``[B, 1, D]`` embeddings the logits came from.

        Returns
        -------
        dict of str -> torch.Tensor
            Scalars; ``"angleproto"`` already multiplied by ``weight``.
        """
        if embeddings is None:
            raise ValueError(
                "AngularPrototypicalSoftmax needs the embeddings: call "
                "loss(logits, labels, embeddings=emb) (it has takes_embeddings=True)"
            )
        return {
            "classifier": self.classifier_loss(logits, labels),
            "angleproto": self.weight * self.angleproto(embeddings, labels),
        }

    def forward(self, logits, labels, embeddings=None):
        """Returns ``classifier_loss + weight * angleproto`` (a scalar).

        Arguments
        ---------
        logits : torch.Tensor
            Classifier output, as ``classifier_loss`` expects it.
        labels : torch.Tensor
            Speaker indices, as ``classifier_loss`` expects them.
        embeddings : torch.Tensor
            ``[B, D]`` or ``[B, 1, D]`` embeddings (required).

        Returns
        -------
        torch.Tensor
            Scalar loss.
        """
        terms = self.terms(logits, labels, embeddings)
        return terms["classifier"] + terms["angleproto"]
