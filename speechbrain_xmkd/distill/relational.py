"""Batch-relational baselines: PKT and SP compare sample-to-sample similarities.

Both compare ``[batch, batch]`` matrices, so student and teacher widths may
differ. Registered as ``pkt`` and ``sp``; see
:mod:`speechbrain_xmkd.distill.baselines`.
"""

import torch
import torch.nn.functional as F

from .._checks import check_pair
from .registry import register_loss


@register_loss("pkt")
class PKTLoss(torch.nn.Module):
    """Probabilistic knowledge transfer: KL between cosine-affinity distributions.

    As in Passalis & Tefas (ECCV 2018) and the identical code in
    RepDistiller, mdistiller and torchdistill::

        f <- f / (|f| + eps)
        P = row_normalise((f f^T + 1) / 2)          (B x B)
        L_i = mean_j P_t[i, j] * log((P_t[i, j] + eps) / (P_s[i, j] + eps))

    so ``L.mean()`` is the references' mean over all ``B x B`` entries (not
    a sum of per-row KLs): values are tiny, hence their weight of 3e4. The
    references' NaN-to-zero step after normalising is not needed: with
    finite inputs, which are checked, ``|f| + eps > 0``.

    Arguments
    ---------
    eps : float
        Stabiliser in the norm and in the log ratio (references: 1e-7).

    Returns
    -------
    torch.Tensor
        ``[batch]`` per-sample loss (from ``forward``).

    Example
    -------
    >>> loss = PKTLoss()
    >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> loss(f, f)
    tensor([0., 0.])
    >>> loss(torch.randn(4, 16), torch.randn(4, 32)).shape
    torch.Size([4])
    """

    def __init__(self, eps=1e-7):
        super().__init__()
        self.eps = eps

    def _affinity(self, x):
        x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        similarity = (x @ x.t() + 1.0) / 2.0
        return similarity / similarity.sum(dim=1, keepdim=True)

    def forward(self, student, teacher, labels=None):
        """Returns the per-sample PKT loss.

        Arguments
        ---------
        student : torch.Tensor
            ``[batch, dim_s]``.
        teacher : torch.Tensor
            ``[batch, dim_t]``.
        labels : torch.Tensor, optional
            Unused.

        Returns
        -------
        torch.Tensor
            ``[batch]``.
        """
        student, teacher = check_pair(student, teacher, same_dim=False)
        p_s = self._affinity(student)
        p_t = self._affinity(teacher)
        ratio = torch.log((p_t + self.eps) / (p_s + self.eps))
        return (p_t * ratio).mean(dim=1)


def _flatten_rows(x, name):
    """``[B, C, *]`` feature maps -> ``[B, C * prod(*)]``; ``[B, D]`` unchanged."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"{name} must be [batch, dim] or [batch, channels, ...], got {tuple(x.shape)}"
        )
    return x.flatten(1)


@register_loss("sp")
class SPLoss(torch.nn.Module):
    """Similarity-preserving KD: match row-normalised batch Gram matrices.

    As in Tung & Mori (ICCV 2019) and RepDistiller / mdistiller /
    torchdistill, with ``f`` flattened to ``[B, N]``::

        G = normalize_rows(f f^T)                   (B x B)
        L_i = sum_j (G_t[i, j] - G_s[i, j])^2 / B

    so ``L.mean()`` is the references' ``||G_t - G_s||_F^2 / B^2``. The
    references apply it to the last conv stage before pooling; feature maps
    ``[B, C, *]`` are accepted and flattened.

    Arguments
    ---------
    None

    Returns
    -------
    torch.Tensor
        ``[batch]`` per-sample loss (from ``forward``).

    Example
    -------
    >>> loss = SPLoss()
    >>> f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    >>> loss(f_s, f_t)
    tensor([0.2929, 0.2929])
    >>> loss(torch.randn(4, 8, 3, 3), torch.randn(4, 16)).shape
    torch.Size([4])
    """

    def forward(self, student, teacher, labels=None):
        """Returns the per-sample SP loss.

        Arguments
        ---------
        student : torch.Tensor
            ``[batch, dim]`` or ``[batch, channels, ...]``.
        teacher : torch.Tensor
            ``[batch, dim]`` or ``[batch, channels, ...]``.
        labels : torch.Tensor, optional
            Unused.

        Returns
        -------
        torch.Tensor
            ``[batch]``.
        """
        student, teacher = check_pair(
            _flatten_rows(student, "student"),
            _flatten_rows(teacher, "teacher"),
            same_dim=False,
        )
        gram_s = F.normalize(student @ student.t(), dim=1)
        gram_t = F.normalize(teacher @ teacher.t(), dim=1)
        return (gram_t - gram_s).pow(2).sum(dim=1) / student.shape[0]
