"""Distillation losses, one family per file, all named in one registry.

Importing this package registers every loss, so a yaml can name any of them
(``Distiller(loss="soft_feature", ...)`` or
``!apply:speechbrain_xmkd.distill.build_loss``).
"""

from .registry import available_losses, build_loss, get_loss_class, register_loss
from .baselines import CCLLoss, CLIPLoss, FitNetLoss, ICKDLoss, KDLoss, PKTLoss, SPLoss
from .soft import SharedClassifierLoss, SoftFeatureLoss

__all__ = [
    "available_losses",
    "CCLLoss",
    "CLIPLoss",
    "FitNetLoss",
    "ICKDLoss",
    "KDLoss",
    "PKTLoss",
    "SPLoss",
    "build_loss",
    "get_loss_class",
    "register_loss",
    "SharedClassifierLoss",
    "SoftFeatureLoss",
]
