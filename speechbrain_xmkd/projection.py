"""Trainable projection head on a frozen teacher embedding (Eq. 2-4).

Zhao et al. keep the teacher encoder frozen and add a small MLP on its
output, mixed with the original embedding through a skip connection::

    E'_T = MLP(E_T)                       # Eq. 3
    F_T  = alpha * E_T + (1 - alpha) * E'_T   # Eq. 4

so ``alpha`` says how much of the teacher's original geometry is kept.
"""

import torch

from ._checks import as_rows, check_batch


def semi_orthogonal(rows, cols, seed=0):
    """Returns a fixed ``[rows, cols]`` matrix with orthonormal rows or columns.

    With ``rows <= cols`` the rows are orthonormal (``W @ W.T = I``), so the
    map projects onto a ``rows``-dimensional subspace without distortion; with
    ``rows > cols`` the columns are orthonormal and the map is an isometry.
    Drawn from a seeded generator so the same arguments give the same matrix
    on every machine and rank.

    Arguments
    ---------
    rows : int
        Output width.
    cols : int
        Input width.
    seed : int
        Seed of the Gaussian draw that is orthonormalised.

    Returns
    -------
    torch.Tensor
        ``[rows, cols]`` float32 matrix.

    Example
    -------
    >>> w = semi_orthogonal(3, 5)
    >>> torch.allclose(w @ w.T, torch.eye(3), atol=1e-6)
    True
    """
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(max(rows, cols), min(rows, cols), generator=generator)
    q, r = torch.linalg.qr(gaussian.double())
    # Fix the sign ambiguity of QR so the result is unique for the seed.
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    q = q.float()
    return q.T.contiguous() if rows <= cols else q.contiguous()


class ProjectionHead(torch.nn.Module):
    """Projects a frozen teacher embedding into the student's space (Eq. 2-4).

    ``F_T = alpha * skip(E_T) + (1 - alpha) * MLP(E_T)``, where ``skip`` is
    the identity when the teacher and student widths are equal and otherwise
    a fixed, seeded semi-orthogonal map (a buffer: saved in checkpoints,
    never trained), so that ``alpha`` keeps meaning "share of the original
    teacher geometry" whatever the widths.

    Arguments
    ---------
    teacher_dim : int
        Width of the teacher embedding ``E_T``.
    student_dim : int, optional
        Width of the student embedding ``F_S`` (default: ``teacher_dim``).
    hidden_dim : int, optional
        Hidden width of the MLP (default: ``student_dim``).
    num_layers : int
        Linear layers in the MLP (>= 1); hidden layers use BatchNorm + ReLU.
    alpha : float
        Skip mix of Eq. 4, in [0, 1]. The paper's best is 0.6 (Table 5).
    seed : int
        Seed of the fixed skip map when the widths differ.

    Example
    -------
    >>> head = ProjectionHead(teacher_dim=512, student_dim=256)
    >>> head(torch.randn(4, 512)).shape
    torch.Size([4, 256])
    >>> head.skip.shape
    torch.Size([256, 512])
    """

    def __init__(
        self,
        teacher_dim,
        student_dim=None,
        hidden_dim=None,
        num_layers=2,
        alpha=0.6,
        seed=0,
    ):
        super().__init__()
        student_dim = teacher_dim if student_dim is None else student_dim
        hidden_dim = student_dim if hidden_dim is None else hidden_dim
        for name, value in (
            ("teacher_dim", teacher_dim),
            ("student_dim", student_dim),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"ProjectionHead: {name} must be a positive integer, got {value!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ProjectionHead: alpha must be in [0, 1], got {alpha!r}")
        self.teacher_dim = int(teacher_dim)
        self.student_dim = int(student_dim)
        self.alpha = float(alpha)

        layers = []
        width = self.teacher_dim
        for _ in range(num_layers - 1):
            layers += [
                torch.nn.Linear(width, hidden_dim),
                torch.nn.BatchNorm1d(hidden_dim),
                torch.nn.ReLU(inplace=True),
            ]
            width = hidden_dim
        layers.append(torch.nn.Linear(width, self.student_dim))
        self.mlp = torch.nn.Sequential(*layers)

        if self.teacher_dim == self.student_dim:
            self.skip = None
        else:
            self.register_buffer(
                "skip", semi_orthogonal(self.student_dim, self.teacher_dim, seed)
            )

    def forward(self, teacher_embedding):
        """Returns ``F_T`` for a batch of raw teacher embeddings ``E_T``.

        Arguments
        ---------
        teacher_embedding : torch.Tensor
            ``[batch, teacher_dim]`` (or ``[batch, 1, teacher_dim]``).

        Returns
        -------
        torch.Tensor
            ``[batch, student_dim]``.
        """
        x = as_rows(teacher_embedding, "teacher_embedding")
        if x.shape[1] != self.teacher_dim:
            raise ValueError(
                f"ProjectionHead expects teacher embeddings of width {self.teacher_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        check_batch(x, "teacher_embedding")
        kept = x if self.skip is None else x @ self.skip.T.to(x.dtype)
        if self.alpha == 1.0:
            return kept
        return self.alpha * kept + (1.0 - self.alpha) * self.mlp(x)


class FixedProjection(torch.nn.Module):
    """The raw teacher embedding at the student's width, with nothing trained.

    Identity when the widths are equal; otherwise the same fixed, seeded
    semi-orthogonal map as :class:`ProjectionHead`'s skip path (an isometry
    when the teacher is narrower), so distances and angles between teacher
    embeddings are kept. Baselines distil from this "raw" ``F_T`` when a
    loss needs equal widths (CLIP, CCL) and the teacher's differs.

    Arguments
    ---------
    teacher_dim : int
        Width of ``E_T``.
    student_dim : int
        Width of ``F_S``.
    seed : int
        Seed of the map when the widths differ.

    Example
    -------
    >>> x = torch.randn(4, 3)
    >>> torch.equal(FixedProjection(3, 3)(x), x)
    True
    >>> y = FixedProjection(3, 5)(x)
    >>> y.shape, torch.allclose(y.norm(dim=1), x.norm(dim=1), atol=1e-5)
    (torch.Size([4, 5]), True)
    """

    def __init__(self, teacher_dim, student_dim, seed=0):
        super().__init__()
        self.teacher_dim = int(teacher_dim)
        self.student_dim = int(student_dim)
        if self.teacher_dim == self.student_dim:
            self.skip = None
        else:
            self.register_buffer("skip", semi_orthogonal(self.student_dim, self.teacher_dim, seed))

    def forward(self, teacher_embedding):
        """``[batch, teacher_dim]`` -> ``[batch, student_dim]``."""
        x = as_rows(teacher_embedding, "teacher_embedding")
        if x.shape[1] != self.teacher_dim:
            raise ValueError(
                f"FixedProjection expects teacher embeddings of width {self.teacher_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        return x if self.skip is None else x @ self.skip.T.to(x.dtype)
