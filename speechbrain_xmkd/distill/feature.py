"""Feature-regression baselines with a trainable student adapter: FitNet, ICKD.

Registered as ``fitnet`` and ``ickd``; see
:mod:`speechbrain_xmkd.distill.baselines`.
"""

import torch
import torch.nn.functional as F

from .._checks import as_rows, check_batch, check_pair
from .registry import register_loss


def _check_width(x, expected, name, argument, shape=None):
    if x.shape[1] != expected:
        shape = tuple(x.shape if shape is None else shape)
        raise ValueError(
            f"{name} has width {x.shape[1]} (shape {shape}) but the loss was "
            f"built with {argument}={expected}"
        )


@register_loss("fitnet")
class FitNetLoss(torch.nn.Module):
    """FitNet hint loss: mean squared error between regressed student and teacher features.

    Per sample ``i``::

        L_i = mean_d (W f_s[i] + b - f_t[i])_d^2

    so ``L.mean()`` equals ``nn.MSELoss()(regressor(f_s), f_t)``, the
    RepDistiller ``HintLoss`` / mdistiller ``FitNet`` value. The regressor
    is trained jointly with the student (single stage, as RepDistiller and
    mdistiller do; torchdistill's two-stage schedule is not reproduced).
    The references regress conv maps with ``ConvReg`` (conv + BN + ReLU);
    on embeddings this is a plain ``Linear``: a ReLU would make every
    negative teacher coordinate unreachable.

    Arguments
    ---------
    student_dim : int
        Width of ``F_S``.
    teacher_dim : int
        Width of ``F_T``.

    Returns
    -------
    torch.Tensor
        ``[batch]`` per-sample loss (from ``forward``).

    Example
    -------
    >>> loss = FitNetLoss(student_dim=3, teacher_dim=2)
    >>> with torch.no_grad():
    ...     _ = loss.regressor.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
    ...     _ = loss.regressor.bias.zero_()
    >>> loss(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[0.0, 0.0]])).tolist()
    [2.5]
    """

    def __init__(self, student_dim, teacher_dim):
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.regressor = torch.nn.Linear(student_dim, teacher_dim)

    def forward(self, student, teacher, labels=None):
        """Returns the per-sample hint loss.

        Arguments
        ---------
        student : torch.Tensor
            ``[batch, student_dim]``.
        teacher : torch.Tensor
            ``[batch, teacher_dim]``.
        labels : torch.Tensor, optional
            Unused.

        Returns
        -------
        torch.Tensor
            ``[batch]``.
        """
        student, teacher = check_pair(student, teacher, same_dim=False)
        _check_width(student, self.student_dim, "student", "student_dim")
        _check_width(teacher, self.teacher_dim, "teacher", "teacher_dim")
        return (self.regressor(student) - teacher).pow(2).mean(dim=1)


def _channel_map(x, name):
    """``[B, C, H, W]`` / ``[B, C, T]`` -> ``[B, C, HW]``; embeddings -> ``[B, D, 1]``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 2 or (x.dim() == 3 and x.shape[1] == 1):
        return as_rows(x, name).unsqueeze(2)
    if x.dim() in (3, 4):
        return x.flatten(2)
    raise ValueError(
        f"{name} must be [batch, channels, H, W], [batch, channels, time] or "
        f"[batch, dim], got {tuple(x.shape)}"
    )


@register_loss("ickd")
class ICKDLoss(torch.nn.Module):
    """ICKD-C: match the inter-channel correlation (Gram) matrices of student and teacher.

    Following the official ICKD code (Liu et al., ICCV 2021): the student
    map goes through a 1x1 convolution without bias and batch norm to the
    teacher's channel count ``C``; the teacher map is used as is. For each
    sample, with ``F`` the ``[C, HW]`` map::

        G = normalize_rows(F F^T)          (C x C, each row unit L2 norm)
        L_i = sum_{c, c'} (G_s[i] - G_t[i])_{c c'}^2 / C

    so ``L.mean()`` is the reference ``sum (G_s - G_t)^2 / (C * B)``. The
    1x1 conv + BN is applied to the flattened ``[B, C, HW]`` map
    (``Conv1d`` + ``BatchNorm1d``), which is the same computation as the
    reference's ``Conv2d`` + ``BatchNorm2d``. The Gram is over channels, so
    student and teacher may differ in spatial size.

    Embeddings ``[batch, dim]`` (or ``[batch, 1, dim]``) are read as maps
    with ``dim`` channels and one position. Each Gram is then the outer
    product ``f f^T``, whose normalised row ``c`` is ``sign(f_c) f / |f|``:
    the loss matches the direction of the adapted student embedding to the
    teacher's, row by row up to the sign pattern. That is a weak signal;
    ICKD is meant for pre-pooling maps.

    Arguments
    ---------
    student_channels : int
        Channels (or width) of the student input.
    teacher_channels : int
        Channels (or width) of the teacher input.

    Returns
    -------
    torch.Tensor
        ``[batch]`` per-sample loss (from ``forward``).

    Example
    -------
    >>> loss = ICKDLoss(student_channels=8, teacher_channels=4)
    >>> loss(torch.randn(2, 8, 5, 5), torch.randn(2, 4, 3, 3)).shape
    torch.Size([2])
    >>> loss(torch.randn(3, 8), torch.randn(3, 4)).shape
    torch.Size([3])
    """

    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.embed = torch.nn.Sequential(
            torch.nn.Conv1d(student_channels, teacher_channels, kernel_size=1, bias=False),
            torch.nn.BatchNorm1d(teacher_channels),
        )

    def forward(self, student, teacher, labels=None):
        """Returns the per-sample channel-correlation loss.

        Arguments
        ---------
        student : torch.Tensor
            ``[batch, student_channels, ...]`` or ``[batch, student_channels]``.
        teacher : torch.Tensor
            ``[batch, teacher_channels, ...]`` or ``[batch, teacher_channels]``.
        labels : torch.Tensor, optional
            Unused.

        Returns
        -------
        torch.Tensor
            ``[batch]``.
        """
        student_map = _channel_map(student, "student")
        teacher_map = _channel_map(teacher, "teacher")
        check_batch(student_map, "student")
        check_batch(teacher_map, "teacher")
        if student_map.shape[0] != teacher_map.shape[0]:
            raise ValueError(
                f"student and teacher batch sizes differ: student "
                f"{tuple(student.shape)} vs teacher {tuple(teacher.shape)}"
            )
        _check_width(
            student_map, self.student_channels, "student", "student_channels", student.shape
        )
        _check_width(
            teacher_map, self.teacher_channels, "teacher", "teacher_channels", teacher.shape
        )
        student_map = self.embed(student_map)
        gram_s = F.normalize(student_map @ student_map.transpose(1, 2), dim=2)
        gram_t = F.normalize(teacher_map @ teacher_map.transpose(1, 2), dim=2)
        return (gram_s - gram_t).pow(2).sum(dim=(1, 2)) / self.teacher_channels
