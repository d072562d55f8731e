"""Input validation shared by the losses: one place, clear messages.

Validation happens at the boundary of each public module (``forward`` of a
loss, the projection head, the weighter, the metrics), once, so the maths
below it can trust its inputs.
"""

import torch


def as_rows(x, name):
    """Returns ``x`` as a 2-D ``[batch, dim]`` tensor.

    SpeechBrain embedding models return ``[batch, 1, dim]``; that middle
    axis is squeezed. Anything else that is not 2-D is an error naming
    ``name`` and the shape.

    Arguments
    ---------
    x : torch.Tensor
        Embeddings, ``[batch, dim]`` or ``[batch, 1, dim]``.
    name : str
        Argument name used in error messages.

    Returns
    -------
    torch.Tensor
        ``[batch, dim]`` view of ``x``.

    Example
    -------
    >>> as_rows(torch.zeros(4, 1, 8), "student").shape
    torch.Size([4, 8])
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3 and x.shape[1] == 1:
        x = x.squeeze(1)
    if x.dim() != 2:
        raise ValueError(
            f"{name} must have shape [batch, dim] (or [batch, 1, dim]), "
            f"got {tuple(x.shape)}"
        )
    return x


def check_batch(x, name):
    """Raises on an empty batch or non-finite values in ``x``.

    Arguments
    ---------
    x : torch.Tensor
        A batch whose first axis is the batch axis.
    name : str
        Argument name used in error messages.

    Example
    -------
    >>> check_batch(torch.ones(2, 3), "student")
    >>> check_batch(torch.tensor([[1.0, float("nan")]]), "teacher")
    Traceback (most recent call last):
    ...
    ValueError: teacher has 1 non-finite value(s) (NaN or inf) in shape (1, 2)
    """
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    # One reduction, one device sync: cheap next to any loss it guards.
    bad = int((~torch.isfinite(x.detach())).sum())
    if bad:
        raise ValueError(
            f"{name} has {bad} non-finite value(s) (NaN or inf) in shape "
            f"{tuple(x.shape)}"
        )


def check_pair(student, teacher, same_dim=True):
    """Validates a (student, teacher) pair of embedding batches.

    Arguments
    ---------
    student : torch.Tensor
        ``[batch, dim]`` or ``[batch, 1, dim]``.
    teacher : torch.Tensor
        ``[batch, dim]`` or ``[batch, 1, dim]``.
    same_dim : bool
        Whether the feature widths must match too.

    Returns
    -------
    tuple of torch.Tensor
        Both as ``[batch, dim]``.

    Example
    -------
    >>> s, t = check_pair(torch.ones(2, 3), torch.ones(2, 4))
    Traceback (most recent call last):
    ...
    ValueError: student and teacher shapes differ: student (2, 3) vs teacher (2, 4)
    """
    student = as_rows(student, "student")
    teacher = as_rows(teacher, "teacher")
    if student.shape[0] != teacher.shape[0] or (
        same_dim and student.shape[1] != teacher.shape[1]
    ):
        what = "shapes" if same_dim else "batch sizes"
        raise ValueError(
            f"student and teacher {what} differ: student {tuple(student.shape)} "
            f"vs teacher {tuple(teacher.shape)}"
        )
    check_batch(student, "student")
    check_batch(teacher, "teacher")
    return student, teacher


def check_labels(labels, batch, name="labels"):
    """Returns ``labels`` as a 1-D long tensor of length ``batch``.

    Accepts SpeechBrain's ``[batch, 1]`` encoded labels.

    Example
    -------
    >>> check_labels(torch.tensor([[1], [0]]), 2)
    tensor([1, 0])
    """
    if labels is None:
        raise ValueError(f"this loss needs {name}, got None")
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels.squeeze(1)
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"{name} must have shape [{batch}] (or [{batch}, 1]), got {tuple(labels.shape)}"
        )
    return labels.long()
