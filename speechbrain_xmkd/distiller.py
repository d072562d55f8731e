"""The whole objective of Eq. 1 as one yaml-buildable module."""

import torch

from ._checks import as_rows, check_batch
from .distill.registry import build_loss


class Distiller(torch.nn.Module):
    """Combines projection head, a distillation loss and quality weights.

    ``L = L_task(sigma(F_S), y) + weight * mean_i(w_i * L_distill_i)`` (Eq. 1).
    For batch-level losses that have no per-sample term, the batch mean of
    ``w`` multiplies the scalar. The call returns the named terms as a dict;
    the caller sums them (``sum(terms.values())``) and logs each, so the
    train log shows which part of the objective moves.

    Arguments
    ---------
    loss : torch.nn.Module or str or None
        A distillation loss following the registry's call contract, or the
        registry name of one (built with ``loss_kwargs``). None trains the
        plain student (the task term alone): the baseline row of a table,
        with the same recipe and the same log.
    projection : torch.nn.Module, optional
        Head mapping the raw teacher embedding ``E_T`` to ``F_T`` (usually
        :class:`~speechbrain_xmkd.ProjectionHead`). None: ``F_T = E_T``.
    weighter : torch.nn.Module, optional
        A :class:`~speechbrain_xmkd.QualityWeighter`. None: all weights 1.
    classifier : torch.nn.Module, optional
        The student's task head, used for the ``"task"`` term.
    task_loss : callable, optional
        ``task_loss(logits, labels)`` in SpeechBrain's convention (e.g.
        ``LogSoftmaxWrapper(AdditiveAngularMargin(...))`` with
        ``[batch, 1, classes]`` logits and ``[batch, 1]`` labels). Skipped when
        the distillation loss already includes the task (classifier sharing).
        A task loss with ``takes_embeddings = True`` also gets
        ``embeddings=F_S`` (angular prototypical + softmax).
    weight : float
        Weight of the distillation term(s) (``lambda``; 1 in the paper).
    loss_kwargs : dict, optional
        Constructor arguments when ``loss`` is a name.

    Example
    -------
    >>> from speechbrain_xmkd import ProjectionHead, QualityWeighter
    >>> distiller = Distiller(
    ...     loss="soft_feature",
    ...     loss_kwargs={"distance": "cosine", "margin": 0.1},
    ...     projection=ProjectionHead(teacher_dim=16, student_dim=8),
    ...     weighter=QualityWeighter(),
    ...     classifier=torch.nn.Linear(8, 5),
    ...     task_loss=lambda logits, y: torch.nn.functional.cross_entropy(logits, y),
    ... )
    >>> terms = distiller(torch.randn(6, 8), torch.randn(6, 16), torch.randint(0, 5, (6,)))
    >>> sorted(terms)
    ['soft_feature', 'task']
    """

    def __init__(
        self,
        loss,
        projection=None,
        weighter=None,
        classifier=None,
        task_loss=None,
        weight=1.0,
        loss_kwargs=None,
    ):
        super().__init__()
        if loss is None and task_loss is None:
            raise ValueError("Distiller: with loss=None a task_loss is needed (nothing to train)")
        if isinstance(loss, str):
            loss = build_loss(loss, **(loss_kwargs or {}))
        elif loss_kwargs:
            raise ValueError("Distiller: loss_kwargs is only used when loss is a registry name")
        if task_loss is not None and classifier is None:
            raise ValueError("Distiller: task_loss needs the student's classifier")
        if weight < 0:
            raise ValueError(f"Distiller: weight must be >= 0, got {weight!r}")
        self.loss = loss
        self.projection = projection
        self.weighter = weighter
        self.classifier = classifier
        self.task_loss = task_loss
        self.weight = float(weight)
        self.term_name = getattr(loss, "registry_name", type(loss).__name__)

    @property
    def distills(self):
        """Whether this objective uses the teacher at all."""
        return self.loss is not None

    def project(self, teacher_embedding):
        """Returns ``F_T`` for raw teacher embeddings ``E_T``."""
        if self.projection is None:
            return as_rows(teacher_embedding, "teacher_embedding")
        return self.projection(teacher_embedding)

    def forward(self, student, teacher, labels=None, mask=None):
        """Returns the named loss terms for one batch.

        Arguments
        ---------
        student : torch.Tensor
            Student embeddings ``F_S``, ``[batch, dim]`` or ``[batch, 1, dim]``.
        teacher : torch.Tensor
            Raw teacher embeddings ``E_T`` from the frozen teacher (or its cache).
        labels : torch.Tensor, optional
            Class indices ``[batch]`` or ``[batch, 1]`` (needed by the task
            loss and by label-aware distillation losses).
        mask : torch.Tensor, optional
            Bool ``[batch]``: samples that have a usable teacher input (a
            video with no face, say). Distillation terms use only these rows;
            the task term uses all. With fewer than two such rows the
            distillation terms are zero for the batch.

        Returns
        -------
        dict of str -> torch.Tensor
            Scalar terms: ``"task"`` and one per distillation term.
        """
        student = as_rows(student, "student")
        check_batch(student, "student")
        includes_task = getattr(self.loss, "includes_task", False)
        terms = {}
        if self.task_loss is not None and not includes_task:
            terms["task"] = self._task(student, labels)
        if self.loss is None:
            return terms
        teacher = as_rows(teacher, "teacher")

        # Rows without a usable teacher input leave the distillation terms.
        # With classifier sharing their task CE is computed apart, at the
        # same half weight the shared loss gives student rows (Eq. 10).
        share = 1.0
        if mask is not None:
            mask = mask.to(device=student.device, dtype=torch.bool).reshape(-1)
            if mask.shape[0] != student.shape[0]:
                raise ValueError(
                    f"mask has {mask.shape[0]} entries for a batch of {student.shape[0]}"
                )
            kept = int(mask.sum())
            if kept < mask.shape[0] and includes_task and self.task_loss is not None:
                rest = None if labels is None else labels.reshape(mask.shape[0], -1)[~mask]
                share = kept / mask.shape[0]
                terms["task"] = (1.0 - share) * 0.5 * self._task(student[~mask], rest)
            if kept < 2:
                # Too few teacher rows to distil (a BatchNorm in the head
                # needs two). Every collective op still runs, as on the other
                # DDP ranks (SyncBatchNorm in the head, the weighter's
                # all-reduce), and the zero term touches every trainable
                # parameter so DDP's gradient reduction sees them used.
                projected = self.project(teacher)
                if self.weighter is not None:
                    self.weighter.skip_batch()
                touched = [p.sum() for p in self.loss.parameters() if p.requires_grad]
                terms[self.term_name] = 0.0 * (projected.sum() + sum(touched))
                return terms
            if kept < mask.shape[0]:
                student, teacher = student[mask], teacher[mask]
                labels = None if labels is None else labels.reshape(mask.shape[0], -1)[mask]

        projected = self.project(teacher)
        weights = None
        if self.weighter is not None:
            weights = self.weighter(teacher=teacher, student=student)

        result = self.loss(student, projected, labels)
        if not isinstance(result, dict):
            result = {self.term_name: result}
        for name, value in result.items():
            if name == "task":
                terms["task"] = terms.get("task", 0.0) + share * self._reduce(value, None)
            else:
                terms[name] = self.weight * self._reduce(value, weights)
        return terms

    def _task(self, student, labels):
        if labels is None:
            raise ValueError("Distiller: the task loss needs labels")
        logits = self.classifier(student)
        labels = labels.reshape(-1).long() if logits.dim() == 2 else labels.reshape(-1, 1)
        # Metric-learning task losses (angular prototypical + softmax) also
        # need the embeddings themselves.
        if getattr(self.task_loss, "takes_embeddings", False):
            return self.task_loss(logits, labels, embeddings=student)
        return self.task_loss(logits, labels)

    @staticmethod
    def _reduce(value, weights):
        if value.dim() == 0:
            return value if weights is None else value * weights.mean()
        if weights is None:
            return value.mean()
        if weights.shape != value.shape:
            raise ValueError(
                f"quality weights {tuple(weights.shape)} do not match the per-sample "
                f"loss {tuple(value.shape)}"
            )
        return (weights.to(value.dtype) * value).mean()
