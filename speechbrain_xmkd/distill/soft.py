"""The paper's soft constraints: margin feature loss and classifier sharing.

Both follow the registry's call contract
``loss(student, teacher, labels=None)`` on the student embedding ``F_S`` and
the projected teacher embedding ``F_T``.
"""

import math

import torch
import torch.nn.functional as F

from .._checks import check_labels, check_pair
from .registry import register_loss

# Cosine of the angle is clamped away from +-1 so acos has a finite gradient.
_COS_CLAMP = 1.0 - 1e-7


def _cosine(student, teacher):
    return F.cosine_similarity(student, teacher, dim=1, eps=1e-8)


def _l2(student, teacher):
    # vector_norm's backward is 0 (not NaN) at a zero difference.
    return torch.linalg.vector_norm(student - teacher, dim=1)


DISTANCES = {
    # name: (function, upper bound of the distance or None, unit)
    "cosine": (lambda s, t: 1.0 - _cosine(s, t), 2.0),
    "angle": (
        lambda s, t: torch.rad2deg(torch.acos(_cosine(s, t).clamp(-_COS_CLAMP, _COS_CLAMP))),
        180.0,
    ),
    "l2": (_l2, None),
    "squared_l2": (lambda s, t: (s - t).pow(2).sum(dim=1), None),
}

# Upper bounds of l2 distances once both sides are unit-normalised.
_NORMALIZED_BOUNDS = {"l2": 2.0, "squared_l2": 4.0}


@register_loss("soft_feature")
class SoftFeatureLoss(torch.nn.Module):
    """Feature-level soft distillation, Eq. 6: ``max(d(F_S, F_T) - m, 0)``.

    The margin ``m`` lets the student stop short of the teacher: once the
    distance is below ``m`` the sample contributes exactly zero loss and zero
    gradient, so modality-specific detail the student cannot hear is not
    forced on it. ``m = 0`` is the hard baseline of Eq. 5.

    Presets (``SoftFeatureLoss.from_preset(name)``), from the paper:

    - ``"speaker"``: cosine distance ``1 - cos`` with ``m = cos(30 deg)
      = 0.866``, the literal reading of "cosine, margin cos 30" (loss is zero
      once ``cos(F_S, F_T) > 0.134``).
    - ``"speaker_angle"``: the other reading, angle in degrees with
      ``m = 30`` (loss is zero once the angle is under 30 degrees).
    - ``"image_resnet18"``: squared l2 with ``m = 0.3 ** 2``.
    - ``"image_resnet34"``: squared l2 with ``m = 0.2 ** 2``.
    - ``"hard_l2"``: squared l2, ``m = 0`` (hard baseline).

    Arguments
    ---------
    distance : str
        ``"cosine"`` (1 - cos, in [0, 2]), ``"angle"`` (degrees, in
        [0, 180]), ``"l2"`` or ``"squared_l2"``.
    margin : float
        ``m`` of Eq. 6, in the distance's unit; must lie inside the
        distance's range.
    normalize : bool
        L2-normalise both embeddings before an l2 / squared l2 distance.

    Example
    -------
    >>> loss = SoftFeatureLoss(distance="cosine", margin=0.5)
    >>> s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    >>> t = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    >>> loss(s, t)  # 1 - cos = [0.2929, 2.0], minus 0.5, clipped at 0
    tensor([0.0000, 1.5000])
    """

    PRESETS = {
        "speaker": dict(distance="cosine", margin=math.cos(math.radians(30))),
        "speaker_angle": dict(distance="angle", margin=30.0),
        "image_resnet18": dict(distance="squared_l2", margin=0.3**2),
        "image_resnet34": dict(distance="squared_l2", margin=0.2**2),
        "hard_l2": dict(distance="squared_l2", margin=0.0),
    }

    def __init__(self, distance="cosine", margin=0.0, normalize=False):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(
                f"SoftFeatureLoss: unknown distance '{distance}'; valid: "
                + ", ".join(DISTANCES)
            )
        upper = DISTANCES[distance][1]
        if normalize and distance in _NORMALIZED_BOUNDS:
            upper = _NORMALIZED_BOUNDS[distance]
        if not math.isfinite(margin) or margin < 0 or (upper is not None and margin >= upper):
            allowed = f"[0, {upper})" if upper is not None else "[0, inf)"
            raise ValueError(
                f"SoftFeatureLoss: margin {margin!r} is outside the range {allowed} "
                f"of the '{distance}' distance"
                + (" (normalize=True)" if normalize and distance in _NORMALIZED_BOUNDS else "")
            )
        self.distance = distance
        self.margin = float(margin)
        self.normalize = bool(normalize)
        self._distance_fn = DISTANCES[distance][0]

    @classmethod
    def from_preset(cls, name):
        """Builds one of the paper's settings (see the class docstring).

        Example
        -------
        >>> SoftFeatureLoss.from_preset("image_resnet34").margin
        0.04000000000000001
        """
        if name not in cls.PRESETS:
            raise ValueError(
                f"unknown SoftFeatureLoss preset '{name}'; valid: " + ", ".join(cls.PRESETS)
            )
        return cls(**cls.PRESETS[name])

    def distances(self, student, teacher):
        """Per-sample distance ``d(F_S, F_T)`` before the margin, ``[batch]``."""
        student, teacher = check_pair(student, teacher)
        # Distances in float32 even under bf16/fp16 autocast: the margin
        # comparison is what decides whether a sample gets a gradient.
        student, teacher = student.float(), teacher.float()
        if self.normalize:
            student = F.normalize(student, dim=1)
            teacher = F.normalize(teacher, dim=1)
        return self._distance_fn(student, teacher)

    def forward(self, student, teacher, labels=None):
        """Returns the per-sample loss ``[batch]`` (Eq. 6).

        Arguments
        ---------
        student : torch.Tensor
            ``F_S``, ``[batch, dim]``.
        teacher : torch.Tensor
            ``F_T``, ``[batch, dim]``.
        labels : torch.Tensor, optional
            Unused; part of the common call contract.
        """
        return torch.relu(self.distances(student, teacher) - self.margin)

    def extra_repr(self):
        return f"distance={self.distance}, margin={self.margin}, normalize={self.normalize}"


def _logits(classifier, x):
    """Runs a classifier and returns ``[batch, classes]`` logits.

    SpeechBrain's cosine classifiers return ``[batch, 1, classes]``.
    """
    out = classifier(x)
    if out.dim() == 3 and out.shape[1] == 1:
        out = out.squeeze(1)
    if out.dim() != 2:
        raise ValueError(
            f"classifier output must be [batch, classes] or [batch, 1, classes], "
            f"got {tuple(out.shape)}"
        )
    return out


@register_loss("shared_classifier")
class SharedClassifierLoss(torch.nn.Module):
    """Classifier-level soft distillation by classifier sharing, Eq. 8-10.

    The student's OWN task head scores both halves of ``[F_S; F_T]`` with
    labels ``[y; y]``: the teacher rows must fall inside the same decision
    regions as the student rows, with no demand that they coincide. The
    cross-entropy is averaged over all ``2b`` rows (Eq. 10), so the student
    half of it IS the student's task loss. It is returned as the ``"task"``
    term (so it is not added a second time) and the teacher half, plus
    ``beta`` times the logit distance, as the per-sample ``"classifier"``
    term (so quality weights apply per sample)::

        task_i       = CE(student row i) / 2
        classifier_i = CE(teacher row i) / 2 + beta * dist(L_S,i, L_T,i)

    whose batch means add up to Eq. 10 when all weights are 1.

    Arguments
    ---------
    classifier : torch.nn.Module
        The student's task head (share it from the yaml with ``!ref``):
        a SpeechBrain cosine classifier (``ECAPA_TDNN.Classifier``,
        ``ResNet.Classifier``) or a plain ``torch.nn.Linear``.
    margin : torch.nn.Module, optional
        Logit transform applied with one-hot targets before the softmax, e.g.
        ``speechbrain.nnet.losses.AdditiveAngularMargin(margin=0.2, scale=30)``
        for AAM-softmax; the margin then applies to both halves. A
        ``LogSoftmaxWrapper`` is accepted and unwrapped. None: plain softmax.
    beta : float
        Weight of the hard logit term (0 for speaker, 1 for image).
    logit_distance : str
        ``"mse"`` (mean over classes of the squared difference), ``"l2"`` or
        ``"squared_l2"`` (sum over classes), between raw logits.

    Example
    -------
    >>> head = torch.nn.Linear(4, 3)
    >>> loss = SharedClassifierLoss(head, beta=1.0)
    >>> terms = loss(torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    >>> terms["task"].shape, terms["classifier"].shape
    (torch.Size([]), torch.Size([5]))
    """

    includes_task = True

    def __init__(self, classifier, margin=None, beta=0.0, logit_distance="mse"):
        super().__init__()
        if beta < 0:
            raise ValueError(f"SharedClassifierLoss: beta must be >= 0, got {beta!r}")
        if logit_distance not in ("mse", "l2", "squared_l2"):
            raise ValueError(
                f"SharedClassifierLoss: unknown logit_distance '{logit_distance}'; "
                "valid: mse, l2, squared_l2"
            )
        self.classifier = classifier
        # SpeechBrain recipes name the whole AAM loss; we need its margin part.
        self.logit_margin = getattr(margin, "loss_fn", margin) if margin is not None else None
        self.beta = float(beta)
        self.logit_distance = logit_distance

    def _cross_entropy(self, logits, labels):
        """Per-row cross-entropy after the optional margin transform."""
        if self.logit_margin is not None:
            onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
            try:
                logits = self.logit_margin(logits, onehot)
            except TypeError:
                logits = self.logit_margin(logits)
        return F.cross_entropy(logits.float(), labels, reduction="none")

    def forward(self, student, teacher, labels=None):
        """Returns ``{"task": scalar, "classifier": [batch]}``.

        Arguments
        ---------
        student : torch.Tensor
            ``F_S``, ``[batch, dim]``.
        teacher : torch.Tensor
            ``F_T``, ``[batch, dim]`` (same width as the student).
        labels : torch.Tensor
            Class indices ``[batch]`` (or SpeechBrain's ``[batch, 1]``).
        """
        student, teacher = check_pair(student, teacher)
        batch = student.shape[0]
        labels = check_labels(labels, batch)
        # One classifier call on the stacked 2b rows (Eq. 8-9).
        logits = _logits(self.classifier, torch.cat([student, teacher], dim=0))
        if labels.max() >= logits.shape[1] or labels.min() < 0:
            raise ValueError(
                f"labels must lie in [0, {logits.shape[1]}) for this classifier, "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        ce = self._cross_entropy(logits, torch.cat([labels, labels]))
        terms = {
            "task": 0.5 * ce[:batch].mean(),
            "classifier": 0.5 * ce[batch:],
        }
        if self.beta > 0:
            diff = (logits[:batch] - logits[batch:]).float()
            if self.logit_distance == "mse":
                dist = diff.pow(2).mean(dim=1)
            elif self.logit_distance == "squared_l2":
                dist = diff.pow(2).sum(dim=1)
            else:
                dist = torch.linalg.vector_norm(diff, dim=1)
            terms["classifier"] = terms["classifier"] + self.beta * dist
        return terms

    def extra_repr(self):
        return f"beta={self.beta}, logit_distance={self.logit_distance}"
