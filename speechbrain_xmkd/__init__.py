"""speechbrain-xmkd: cross-modal knowledge distillation for SpeechBrain.

Zhao et al., "Cross-Modal Distillation for Widely Differing Modalities"
(2025): a frozen teacher of another modality, a trainable projection head
(:class:`ProjectionHead`), soft feature- and classifier-level losses
(:mod:`speechbrain_xmkd.distill`), quality-based sample weights
(:class:`QualityWeighter`), combined by :class:`Distiller`.
"""

from .distill import available_losses, build_loss
from .distiller import Distiller
from .projection import ProjectionHead
from .quality import QualityWeighter

__version__ = "0.1.0"

__all__ = [
    "Distiller",
    "ProjectionHead",
    "QualityWeighter",
    "available_losses",
    "build_loss",
]
