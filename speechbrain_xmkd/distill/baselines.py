"""The distillation baselines the paper compares, each registered under a yaml name.

=========  =================  =================================================
name       class              what it matches
=========  =================  =================================================
``kd``     :class:`KDLoss`    softened class posteriors (Hinton et al., 2015)
``fitnet`` :class:`FitNetLoss` regressed features, squared error (Romero et al.)
``pkt``    :class:`PKTLoss`   cosine-affinity distributions (Passalis & Tefas)
``sp``     :class:`SPLoss`    batch similarity matrices (Tung & Mori)
``ickd``   :class:`ICKDLoss`  inter-channel correlations (Liu et al., 2021)
``ccl``    :class:`CCLLoss`   compositional contrastive (Chen et al., 2021)
``clip``   :class:`CLIPLoss`  symmetric InfoNCE (Radford et al., 2021)
=========  =================  =================================================

All follow the call contract of :mod:`speechbrain_xmkd.distill.registry`:
``loss(student, teacher, labels=None)`` returns ``[batch]`` per-sample
values whose mean is the reference implementation's batch loss. The
classes live in short files by family (:mod:`.logit`, :mod:`.feature`,
:mod:`.relational`, :mod:`.contrastive`); importing this module registers
them all.

In yaml::

    distill_loss: !new:speechbrain_xmkd.distill.baselines.KDLoss
        temperature: 4.0
        classifier: !ref <classifier>
        logit_scale: 30.0

Example
-------
>>> from speechbrain_xmkd.distill.registry import build_loss
>>> loss = build_loss("sp")
>>> loss(torch.randn(4, 8), torch.randn(4, 16)).shape
torch.Size([4])
"""

import torch  # noqa: F401  (used by the module doctest)

from .contrastive import CCLLoss, CLIPLoss, class_contrastive, symmetric_kl
from .feature import FitNetLoss, ICKDLoss
from .logit import KDLoss, classifier_logits
from .relational import PKTLoss, SPLoss

__all__ = [
    "CCLLoss",
    "CLIPLoss",
    "FitNetLoss",
    "ICKDLoss",
    "KDLoss",
    "PKTLoss",
    "SPLoss",
    "class_contrastive",
    "classifier_logits",
    "symmetric_kl",
]
