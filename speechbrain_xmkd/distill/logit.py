"""Logit-level baseline: Hinton knowledge distillation (KD).

Registered as ``kd``; see :mod:`speechbrain_xmkd.distill.baselines` for the
whole family of baselines.
"""

import torch
import torch.nn.functional as F

from .._checks import check_pair
from .registry import register_loss


def classifier_logits(classifier, embeddings, scale=1.0):
    """Runs ``classifier`` on ``[batch, dim]`` embeddings, returns ``[batch, classes]``.

    SpeechBrain heads (``speechbrain.lobes.models.ECAPA_TDNN.Classifier``)
    return ``[batch, 1, classes]`` cosine logits; that axis is squeezed.

    Arguments
    ---------
    classifier : torch.nn.Module
        The student's task head.
    embeddings : torch.Tensor
        ``[batch, dim]`` embeddings.
    scale : float
        Multiplies the logits (cosine heads give values in [-1, 1]).

    Returns
    -------
    torch.Tensor
        ``[batch, classes]`` logits.

    Example
    -------
    >>> head = torch.nn.Linear(4, 3)
    >>> classifier_logits(head, torch.ones(2, 4), scale=2.0).shape
    torch.Size([2, 3])
    """
    logits = classifier(embeddings)
    if logits.dim() == 3 and logits.shape[1] == 1:
        logits = logits.squeeze(1)
    if logits.dim() != 2 or logits.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"classifier must map embeddings {tuple(embeddings.shape)} to "
            f"[batch, classes] or [batch, 1, classes], got {tuple(logits.shape)}"
        )
    return logits * scale


@register_loss("kd")
class KDLoss(torch.nn.Module):
    """Hinton knowledge distillation: KL between temperature-softened class posteriors.

    Per sample ``i``::

        L_i = T^2 * sum_c p_t[i, c] * (log p_t[i, c] - log p_s[i, c]),
        p = softmax(z / T)

    so ``L.mean()`` is RepDistiller's ``DistillKL`` and mdistiller's
    ``kd_loss`` (both ``T^2 * KL`` averaged over the batch). torchdistill's
    ``KDLoss`` drops the ``T^2`` when it has no hard targets; the ``T^2``
    is kept here, as in the other two and in Hinton et al. (2015), so the
    gradient scale does not depend on ``T``.

    In the cross-modal setting the teacher (a face model) has no logits over
    the student's classes. With ``classifier`` (the student's own task head,
    shared in yaml with ``!ref``) both ``F_S`` and the projected ``F_T`` are
    scored by that head, ``z = logit_scale * classifier(x)``; without it the
    inputs are taken to be logits already.

    Arguments
    ---------
    temperature : float
        Softmax temperature ``T`` (RepDistiller / mdistiller default 4).
    classifier : torch.nn.Module, optional
        Head mapping ``[batch, dim]`` to ``[batch, classes]`` (or
        ``[batch, 1, classes]``). ``None``: inputs are logits.
    logit_scale : float
        Multiplies the classifier outputs. SpeechBrain's cosine heads give
        values in [-1, 1], which a temperature of 4 flattens to an almost
        uniform posterior; a scale like AAM-softmax's ``s = 30`` restores
        a useful contrast. Only meaningful with a classifier.
    detach_teacher : bool
        ``True`` gives Hinton's fixed soft targets. The default ``False``
        lets the gradient reach ``F_T``: here ``F_T`` is the output of the
        trainable projection head, and with a detached target a KD-only run
        would leave that head at its random initialisation.

    Returns
    -------
    torch.Tensor
        ``[batch]`` per-sample loss (from ``forward``).

    Example
    -------
    >>> loss = KDLoss(temperature=2.0)
    >>> z_s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    >>> loss(z_s, z_s.flip(1))
    tensor([1.2806, 0.0000])
    >>> head = torch.nn.Linear(8, 5)
    >>> loss = KDLoss(classifier=head, logit_scale=30.0)
    >>> loss(torch.randn(4, 8), torch.randn(4, 1, 8)).shape
    torch.Size([4])
    """

    def __init__(
        self, temperature=4.0, classifier=None, logit_scale=1.0, detach_teacher=False
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if classifier is None and logit_scale != 1.0:
            raise ValueError(
                "logit_scale only applies to classifier outputs; pass a "
                "classifier or leave logit_scale at 1.0"
            )
        self.temperature = temperature
        self.classifier = classifier
        self.logit_scale = logit_scale
        self.detach_teacher = detach_teacher

    def forward(self, student, teacher, labels=None):
        """Returns the per-sample KD loss.

        Arguments
        ---------
        student : torch.Tensor
            ``[batch, dim]`` student embeddings (or logits without a classifier).
        teacher : torch.Tensor
            ``[batch, dim]`` projected teacher embeddings (or logits).
        labels : torch.Tensor, optional
            Unused.

        Returns
        -------
        torch.Tensor
            ``[batch]``.
        """
        student, teacher = check_pair(student, teacher)
        if self.classifier is not None:
            student = classifier_logits(self.classifier, student, self.logit_scale)
            teacher = classifier_logits(self.classifier, teacher, self.logit_scale)
        if self.detach_teacher:
            teacher = teacher.detach()
        log_p_s = F.log_softmax(student / self.temperature, dim=1)
        log_p_t = F.log_softmax(teacher / self.temperature, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
        return kl * self.temperature**2
