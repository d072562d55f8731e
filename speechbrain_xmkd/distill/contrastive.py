"""Contrastive baselines: CCL (compositional contrastive) and CLIP (symmetric InfoNCE).

Registered as ``ccl`` and ``clip``; see
:mod:`speechbrain_xmkd.distill.baselines`.
"""

import math

import torch
import torch.nn.functional as F

from .._checks import check_labels, check_pair
from .logit import classifier_logits
from .registry import register_loss

# CCL's log stabiliser (loss/nce_loss.py, loss/jsd_loss.py).
CCL_EPS = 1e-10


def class_contrastive(anchors, candidates, labels, temperature):
    """CCL's multi-class contrastive loss, per anchor.

    With unit-normalised rows, ``p = softmax(cos(a_i, b_j) / temperature)``
    over ``j``; positives are the ``j`` with the same label as ``i``
    (including ``j = i``)::

        L_i = mean_{j pos} -log(p_ij + eps) + mean_{j neg} -log(1 - p_ij + eps)

    CCL writes ``cos`` as ``1 - |a - b|^2 / 2``, equal to ``a . b`` for unit
    vectors; the dot product is used because the distance form has no
    gradient at ``a = b``. A row with no negatives (the whole batch shares
    one label) has a negative term of 0 here, where CCL's 0/0 gives NaN.

    Arguments
    ---------
    anchors : torch.Tensor
        ``[batch, dim]``.
    candidates : torch.Tensor
        ``[batch, dim]``.
    labels : torch.Tensor
        ``[batch]`` integer class labels.
    temperature : float
        Softmax temperature (CCL: 0.1 image teacher, 0.5 audio teacher).

    Returns
    -------
    torch.Tensor
        ``[batch]``; its mean is CCL's ``NCELoss`` value.

    Example
    -------
    >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> class_contrastive(a, a, torch.tensor([0, 1]), temperature=1.0)
    tensor([0.6265, 0.6265])
    """
    anchors = F.normalize(anchors, dim=1)
    candidates = F.normalize(candidates, dim=1)
    prob = F.softmax(anchors @ candidates.t() / temperature, dim=1)
    positive = labels.unsqueeze(1) == labels.unsqueeze(0)
    negative = ~positive
    pos_term = -(torch.log(prob + CCL_EPS) * positive).sum(dim=1) / positive.sum(dim=1)
    neg_term = -(torch.log(1.0 - prob + CCL_EPS) * negative).sum(dim=1)
    return pos_term + neg_term / negative.sum(dim=1).clamp(min=1)


def symmetric_kl(logits_p, logits_q, eps=CCL_EPS):
    """CCL's "JSD" term, per sample: ``KL(p||q) + KL(q||p)`` with ``eps`` in the log.

    Exactly ``sum p log(p/q + eps) + sum q log(q/p + eps)`` as in CCL's
    ``JSDLoss`` (a symmetric KL, not the Jensen-Shannon divergence),
    evaluated in log space so that ``p/q`` cannot overflow.

    Arguments
    ---------
    logits_p : torch.Tensor
        ``[batch, classes]``.
    logits_q : torch.Tensor
        ``[batch, classes]``.
    eps : float
        Stabiliser inside the log.

    Returns
    -------
    torch.Tensor
        ``[batch]``.

    Example
    -------
    >>> z = torch.tensor([[1.0, 2.0]])
    >>> symmetric_kl(z, z.flip(1))
    tensor([0.9242])
    """
    log_p = F.log_softmax(logits_p, dim=1)
    log_q = F.log_softmax(logits_q, dim=1)
    log_eps = math.log(eps)
    kl_pq = (log_p.exp() * torch.logaddexp(log_p - log_q, log_q.new_tensor(log_eps))).sum(1)
    kl_qp = (log_q.exp() * torch.logaddexp(log_q - log_p, log_p.new_tensor(log_eps))).sum(1)
    return kl_pq + kl_qp


@register_loss("ccl")
class CCLLoss(torch.nn.Module):
    """Compositional contrastive learning (Chen et al., CVPR 2021), as in yanbeic/CCL.

    A composition head builds a teacher-side embedding corrected by the
    student: ``f_comp = F_T + r``, ``r = Linear(2d -> d)([norm(F_T);
    norm(F_S)])``, scored by its own ``Linear(d -> num_classes)``. Per
    sample, with ``C`` = :func:`class_contrastive` (positives = same
    label)::

        L_i = C(F_S, f_comp)_i + C(f_comp, F_S)_i      ("contrast_composition")
            + C(F_S, F_T)_i + C(F_T, F_S)_i            ("contrast_teacher")
            + CE(fc(f_comp), y)_i                      ("composition_ce")
            + jsd_weight * SKL(z_S, fc(f_comp))_i      ("jsd")

    where ``z_S = logit_scale * classifier(F_S)`` and ``SKL`` is
    :func:`symmetric_kl` (CCL calls it JSD). ``L.mean()`` is CCL's student
    objective less the student's own CE (the recipe adds the task loss),
    plus the composition head's CE. The JSD term is skipped when
    ``classifier`` is None.

    CCL trains the student and the composition head with two optimisers on
    two objectives; here one optimiser trains everything on this sum. So
    the head does not see CCL's extra ``C(f_comp, F_T) + C(F_T, f_comp)``
    terms, and the student also gets the composition CE through ``r``.
    CCL also drops samples whose teacher feature is all zeros (missing
    audio); teacher embeddings here are always present, so nothing is
    masked.

    Arguments
    ---------
    dim : int
        Width ``d`` of ``F_S`` and ``F_T`` (CCL: 512).
    num_classes : int
        Number of classes of the composition classifier (the student's).
    classifier : torch.nn.Module, optional
        The student's task head, for the JSD term (shared via ``!ref``).
    temperature : float
        Contrastive temperature (CCL: 0.1 image teacher, 0.5 audio).
    jsd_weight : float
        Weight of the JSD term (CCL: 0.5).
    logit_scale : float
        Multiplies the classifier outputs before the JSD; cosine heads
        such as SpeechBrain's give values in [-1, 1].

    Returns
    -------
    torch.Tensor
        ``[batch]`` per-sample loss (from ``forward``); :meth:`terms`
        gives the four named parts.

    Example
    -------
    >>> head = torch.nn.Linear(8, 3)
    >>> loss = CCLLoss(dim=8, num_classes=3, classifier=head)
    >>> labels = torch.tensor([0, 1, 1, 2])
    >>> loss(torch.randn(4, 8), torch.randn(4, 8), labels).shape
    torch.Size([4])
    >>> sorted(loss.terms(torch.randn(4, 8), torch.randn(4, 8), labels))
    ['composition_ce', 'contrast_composition', 'contrast_teacher', 'jsd']
    """

    def __init__(
        self,
        dim,
        num_classes,
        classifier=None,
        temperature=0.1,
        jsd_weight=0.5,
        logit_scale=1.0,
    ):
        super().__init__()
        self.dim = dim
        self.num_classes = num_classes
        self.classifier = classifier
        self.temperature = temperature
        self.jsd_weight = jsd_weight
        self.logit_scale = logit_scale
        self.residual = torch.nn.Linear(2 * dim, dim)
        self.composition_classifier = torch.nn.Linear(dim, num_classes)

    def compose(self, student, teacher):
        """Returns ``(f_comp, composition logits)`` for ``[batch, dim]`` inputs.

        Arguments
        ---------
        student : torch.Tensor
            ``[batch, dim]`` student embeddings ``F_S``.
        teacher : torch.Tensor
            ``[batch, dim]`` teacher embeddings ``F_T``.

        Returns
        -------
        tuple of torch.Tensor
            ``[batch, dim]`` and ``[batch, num_classes]``.
        """
        both = torch.cat((F.normalize(teacher, dim=1), F.normalize(student, dim=1)), 1)
        composed = teacher + self.residual(both)
        return composed, self.composition_classifier(composed)

    def terms(self, student, teacher, labels=None):
        """Returns the named per-sample terms whose sum is ``forward``.

        Arguments
        ---------
        student : torch.Tensor
            ``[batch, dim]`` student embeddings.
        teacher : torch.Tensor
            ``[batch, dim]`` projected teacher embeddings.
        labels : torch.Tensor
            ``[batch]`` (or ``[batch, 1]``) class indices; required.

        Returns
        -------
        dict of str to torch.Tensor
            Each ``[batch]``.
        """
        student, teacher = check_pair(student, teacher)
        if student.shape[1] != self.dim:
            raise ValueError(
                f"student/teacher width is {student.shape[1]} (shapes "
                f"{tuple(student.shape)}, {tuple(teacher.shape)}) but CCLLoss "
                f"was built with dim={self.dim}"
            )
        if labels is None:
            raise ValueError(
                "CCLLoss needs class labels (positives are same-label pairs), got None"
            )
        labels = check_labels(labels, student.shape[0])
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        composed, comp_logits = self.compose(student, teacher)
        tau = self.temperature
        out = {
            "contrast_composition": class_contrastive(student, composed, labels, tau)
            + class_contrastive(composed, student, labels, tau),
            "contrast_teacher": class_contrastive(student, teacher, labels, tau)
            + class_contrastive(teacher, student, labels, tau),
            "composition_ce": F.cross_entropy(comp_logits, labels, reduction="none"),
        }
        if self.classifier is not None:
            student_logits = classifier_logits(self.classifier, student, self.logit_scale)
            if student_logits.shape != comp_logits.shape:
                raise ValueError(
                    f"classifier logits {tuple(student_logits.shape)} and composition "
                    f"logits {tuple(comp_logits.shape)} differ: num_classes must "
                    f"match the classifier's output size"
                )
            out["jsd"] = self.jsd_weight * symmetric_kl(student_logits, comp_logits)
        return out

    def forward(self, student, teacher, labels=None):
        """Returns the per-sample CCL loss (sum of :meth:`terms`).

        Arguments
        ---------
        student : torch.Tensor
            ``[batch, dim]``.
        teacher : torch.Tensor
            ``[batch, dim]``.
        labels : torch.Tensor
            ``[batch]`` class indices; required.

        Returns
        -------
        torch.Tensor
            ``[batch]``.
        """
        return sum(self.terms(student, teacher, labels).values())


@register_loss("clip")
class CLIPLoss(torch.nn.Module):
    """CLIP's symmetric InfoNCE between student and teacher embeddings of the same samples.

    With unit-normalised rows and ``s = exp(logit_scale)``,
    ``Z = s * F_S F_T^T`` (``[B, B]``, matching pairs on the diagonal)::

        L_i = (CE(Z[i, :], i) + CE(Z[:, i], i)) / 2

    so ``L.mean()`` is open_clip's ``ClipLoss`` (single process, no
    gathering). ``logit_scale`` is learnable, initialised to
    ``log(1/0.07)`` as in CLIP. open_clip clamps it in place to
    ``[0, log(100)]`` after each optimiser step; here the same in-place
    clamp runs at the start of each training ``forward`` (the same values
    at every step, without a hook in the training loop), and the value used
    is clamped too, so eval-mode calls are bounded as well. Labels are
    ignored, as in CLIP: two samples of one class in a batch are still
    negatives of each other.

    Arguments
    ---------
    init_logit_scale : float
        Initial ``log`` of the inverse temperature.
    max_logit_scale : float
        Upper clamp of ``logit_scale`` (open_clip: ``log(100)``).

    Returns
    -------
    torch.Tensor
        ``[batch]`` per-sample loss (from ``forward``).

    Example
    -------
    >>> loss = CLIPLoss()
    >>> f = torch.eye(3)
    >>> per_sample = loss(f, f)  # matching pairs win by a margin of 14.3
    >>> per_sample.shape, bool(per_sample.max() < 1e-5)
    (torch.Size([3]), True)
    >>> round(loss.logit_scale.exp().item(), 2)
    14.29
    """

    def __init__(self, init_logit_scale=math.log(1 / 0.07), max_logit_scale=math.log(100)):
        super().__init__()
        if init_logit_scale > max_logit_scale:
            raise ValueError(
                f"init_logit_scale {init_logit_scale} exceeds "
                f"max_logit_scale {max_logit_scale}"
            )
        self.max_logit_scale = max_logit_scale
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(init_logit_scale)))

    def forward(self, student, teacher, labels=None):
        """Returns the per-sample symmetric InfoNCE loss.

        Arguments
        ---------
        student : torch.Tensor
            ``[batch, dim]``.
        teacher : torch.Tensor
            ``[batch, dim]``.
        labels : torch.Tensor, optional
            Unused.

        Returns
        -------
        torch.Tensor
            ``[batch]``.
        """
        student, teacher = check_pair(student, teacher)
        if self.training:
            with torch.no_grad():
                self.logit_scale.clamp_(0.0, self.max_logit_scale)
        scale = self.logit_scale.clamp(0.0, self.max_logit_scale).exp()
        logits = scale * F.normalize(student, dim=1) @ F.normalize(teacher, dim=1).t()
        target = torch.arange(logits.shape[0], device=logits.device)
        per_row = F.cross_entropy(logits, target, reduction="none")
        per_column = F.cross_entropy(logits.t(), target, reduction="none")
        return (per_row + per_column) / 2
