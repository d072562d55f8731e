"""Frozen teachers for cross-modal distillation, their safe loading and the
teacher-embedding cache."""

from speechbrain_xmkd.teachers.augment import FaceAugment
from speechbrain_xmkd.teachers.cache import (
    TeacherEmbeddingCache,
    build_or_load_cache,
    load_face_image,
    weights_sha256,
)
from speechbrain_xmkd.teachers.checkpoint import CheckpointError, load_state_dict_file
from speechbrain_xmkd.teachers.face import (
    IR50,
    IRSE50,
    FacenetInceptionResnetV1,
    FrozenTeacher,
    IRNet,
    SmallFaceResNet,
    freeze,
)

__all__ = [
    "CheckpointError",
    "FaceAugment",
    "FacenetInceptionResnetV1",
    "FrozenTeacher",
    "IR50",
    "IRNet",
    "IRSE50",
    "SmallFaceResNet",
    "TeacherEmbeddingCache",
    "build_or_load_cache",
    "freeze",
    "load_face_image",
    "load_state_dict_file",
    "weights_sha256",
]
