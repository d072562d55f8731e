"""Face encoders used as cross-modal teachers, and the wrapper that freezes them.

Every encoder here has the same contract, so a yaml can swap one for another:

* ``embedding_dim`` (int) and ``input_size`` (int, square side in pixels);
* ``preprocess(images)`` turns decoded RGB images into the exact network
  input (layout, resizing and normalisation of the original project);
* ``forward(x)`` maps preprocessed ``[B, 3, S, S]`` to ``[B, D]`` embeddings,
  un-normalised unless the original model normalises;
* ``identity()`` is a string naming the architecture and preprocessing, used
  (together with a hash of the weights) to key the teacher-embedding cache.

The teacher in the paper is frozen (design step 1): wrap it in
``FrozenTeacher`` so ``Brain.modules.train()`` cannot switch its BatchNorm
or Dropout to training mode and no gradient ever reaches it.

Authors
 * speechbrain-xmkd contributors
"""

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_xmkd.teachers.checkpoint import load_state_dict_file


def freeze(teacher):
    """Puts ``teacher`` in eval mode and stops gradients to its parameters.

    Arguments
    ---------
    teacher : torch.nn.Module
        Module to freeze (in place).

    Returns
    -------
    torch.nn.Module
        The same module, for chaining.

    Example
    -------
    >>> m = freeze(torch.nn.Linear(2, 2))
    >>> m.training, m.weight.requires_grad
    (False, False)
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class FrozenTeacher(nn.Module):
    """Wraps an encoder so it stays frozen inside a training ``Brain``.

    ``train(mode)`` is a no-op for the wrapped encoder (it stays in eval
    mode, and so does the wrapper), parameters do not require grad, and
    ``forward`` runs under ``torch.no_grad()``. ``no_grad`` rather than
    ``inference_mode``: inference tensors cannot be saved for backward, so
    the trainable projection head that consumes E_T would fail on them.

    Leave it out of the Checkpointer's recoverables: its weights never
    change and are re-read from the teacher's own weights file.

    Arguments
    ---------
    encoder : torch.nn.Module
        A face (or other) encoder, e.g. ``IR50``; frozen in place.

    Example
    -------
    >>> t = FrozenTeacher(SmallFaceResNet(16, channels=(4, 4, 4, 4), input_size=16))
    >>> _ = torch.nn.ModuleDict({"teacher": t}).train()
    >>> t.training, t.encoder.training
    (False, False)
    >>> e = t.embed_images(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    >>> e.shape, e.requires_grad
    (torch.Size([2, 16]), False)
    """

    def __init__(self, encoder):
        super().__init__()
        self.encoder = freeze(encoder)
        self.training = False

    @property
    def embedding_dim(self):
        """Width D of the embeddings (from the encoder)."""
        return self.encoder.embedding_dim

    @property
    def input_size(self):
        """Side of the square network input (from the encoder)."""
        return self.encoder.input_size

    def identity(self):
        """Identity string of the wrapped encoder (same cache key as bare)."""
        identity = getattr(self.encoder, "identity", None)
        if identity is None:
            return type(self.encoder).__qualname__
        return identity()

    def preprocess(self, images):
        """Delegates to the encoder's ``preprocess``."""
        return self.encoder.preprocess(images)

    def train(self, mode=True):
        """Ignores ``mode``: the teacher is always in eval mode."""
        self.training = False
        self.encoder.eval()
        return self

    def forward(self, x):
        """Embeds preprocessed input without tracking gradients.

        Arguments
        ---------
        x : torch.Tensor
            Output of ``preprocess``.

        Returns
        -------
        torch.Tensor
            ``[B, D]`` teacher embeddings E_T (no grad).
        """
        # Cheap guard against a caller that reached into .encoder.train().
        if self.encoder.training:
            self.encoder.eval()
        with torch.no_grad():
            return self.encoder(x)

    def embed_images(self, images):
        """``forward(preprocess(images))``."""
        return self(self.preprocess(images))


class FaceEncoder(nn.Module):
    """Base class: the shared image preprocessing of the face teachers.

    ``preprocess`` accepts decoded RGB images as ``uint8`` or float tensors
    (or numpy arrays) with values on the 0..255 scale, channels-last
    ``[B, H, W, 3]`` (as decoded by OpenCV/PIL) or channels-first
    ``[B, 3, H, W]``; a single image without batch axis is accepted. It
    resizes to ``input_size`` (bilinear, antialiased) or, when
    ``resize_crop`` is set, resizes to ``resize_crop`` and takes the centre
    ``input_size`` crop, then returns ``(x - pixel_mean) / pixel_std`` as
    float32 ``[B, 3, S, S]``.

    Arguments
    ---------
    embedding_dim : int
        Output width D.
    input_size : int
        Side S of the square network input.
    resize_crop : int, optional
        Resize side before the centre crop; ``None`` resizes straight to S.
    """

    pixel_mean = 127.5
    pixel_std = 127.5

    def __init__(self, embedding_dim, input_size, resize_crop=None):
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.input_size = int(input_size)
        if resize_crop is not None and int(resize_crop) < self.input_size:
            raise ValueError(
                f"{type(self).__name__}: resize_crop={resize_crop} is smaller "
                f"than input_size={input_size}; use resize_crop >= input_size "
                "or None"
            )
        self.resize_crop = None if resize_crop is None else int(resize_crop)

    def _config(self):
        """Arguments that change the embedding, for ``identity()``."""
        return {}

    def identity(self):
        """Names architecture and preprocessing (weights are hashed apart).

        Returns
        -------
        str
            e.g. ``"IR50(input_size=112,resize_crop=128,mean=127.5,std=127.5)"``.
        """
        config = dict(self._config())
        config.update(
            input_size=self.input_size,
            resize_crop=self.resize_crop,
            mean=self.pixel_mean,
            std=self.pixel_std,
        )
        args = ",".join(f"{k}={v}" for k, v in config.items())
        return f"{type(self).__name__}({args})"

    def preprocess(self, images):
        """Turns decoded RGB images into network input (see class doc).

        Arguments
        ---------
        images : torch.Tensor or numpy.ndarray
            ``[B, H, W, 3]`` or ``[B, 3, H, W]`` (or one image), RGB,
            ``uint8`` or float on the 0..255 scale.

        Returns
        -------
        torch.Tensor
            float32 ``[B, 3, S, S]``, on the device of ``images``.
        """
        x = torch.as_tensor(images)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__}.preprocess expects RGB images "
                f"[B, H, W, 3] or [B, 3, H, W], got shape {tuple(x.shape)}"
            )
        if x.is_floating_point():
            peak = float(x.max()) if x.numel() else 0.0
            # 0..1 input would silently give embeddings of a near-black face.
            if 0.0 < peak <= 1.0:
                raise ValueError(
                    f"{type(self).__name__}.preprocess expects pixel values "
                    "on the 0..255 scale, got floats with maximum "
                    f"{peak:.3f}; multiply by 255 first"
                )
        x = x.float()
        size = self.input_size
        if self.resize_crop is not None:
            x = _resize(x, self.resize_crop)
            top = (self.resize_crop - size) // 2
            x = x[:, :, top : top + size, top : top + size]
        elif tuple(x.shape[-2:]) != (size, size):
            x = _resize(x, size)
        return (x - self.pixel_mean) / self.pixel_std

    def embed_images(self, images):
        """``forward(preprocess(images))``."""
        return self(self.preprocess(images))

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (
            self.input_size,
            self.input_size,
        ):
            raise ValueError(
                f"{type(self).__name__} expects preprocessed input "
                f"[B, 3, {self.input_size}, {self.input_size}], got "
                f"{tuple(x.shape)}; call .preprocess(images) first"
            )


def _resize(x, size):
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


# ---------------------------------------------------------------------------
# face.evoLVe IR / IR-SE backbones
# ---------------------------------------------------------------------------

# Units per stage for the depths face.evoLVe ships (stage widths 64..512).
IR_STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
IR_STAGE_WIDTHS = (64, 128, 256, 512)


class _SqueezeExcite(nn.Module):
    """Channel gating of IR-SE units; attribute names fix the state_dict keys
    (``res_layer.5.fc1.weight``, ``res_layer.5.fc2.weight``)."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class _IRUnit(nn.Module):
    """Improved-residual unit: BN-conv-PReLU-conv(stride)-BN [+SE] + shortcut.

    The shortcut is a (parameter-free) ``MaxPool2d(1, stride)`` subsampler
    when the width is unchanged, else a strided 1x1 conv + BN; the names
    ``shortcut_layer`` / ``res_layer`` and their Sequential indices are the
    checkpoint's key names.
    """

    def __init__(self, in_channels, out_channels, stride, se=False):
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if se:
            layers.append(_SqueezeExcite(out_channels))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IRNet(FaceEncoder):
    """IR / IR-SE face backbone, state_dict-compatible with face.evoLVe.

    Top-level modules ``input_layer``, ``body`` (one entry per unit) and
    ``output_layer`` reproduce face.evoLVe's ``Backbone`` key names and
    shapes, so its released checkpoints (e.g. ``backbone_ir50_ms1m_*.pth``)
    load unchanged. The output is the raw 512-d BatchNorm1d output; the
    original applies l2 normalisation only outside the network.

    Preprocessing (face.evoLVe): RGB, ``(x/255 - 0.5)/0.5`` =
    ``(x - 127.5)/127.5``. With the default ``resize_crop=128`` an aligned
    112x112 face is resized to 128 and centre-cropped to 112, as
    face.evoLVe's feature-extraction helpers do (training used Resize(128)
    + RandomCrop(112), so this matches the scale the network saw).

    Arguments
    ---------
    depth : int
        50, 100 or 152.
    se : bool
        Adds squeeze-excitation to every unit (IR-SE).
    input_size : int
        112 or 224.
    weights : str, optional
        face.evoLVe checkpoint to load (via ``load_state_dict_file``).
    resize_crop : int, optional
        See above; ``None`` resizes straight to ``input_size``.
    """

    def __init__(
        self, depth=50, se=False, input_size=112, weights=None, resize_crop=128
    ):
        if depth not in IR_STAGE_UNITS:
            raise ValueError(
                f"IRNet depth must be one of {sorted(IR_STAGE_UNITS)}, got {depth}"
            )
        if input_size not in (112, 224):
            raise ValueError(f"IRNet input_size must be 112 or 224, got {input_size}")
        super().__init__(512, input_size, resize_crop)
        self.depth = depth
        self.se = bool(se)

        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        units = []
        in_channels = IR_STAGE_WIDTHS[0]
        for width, count in zip(IR_STAGE_WIDTHS, IR_STAGE_UNITS[depth]):
            for i in range(count):
                # The first unit of every stage halves the resolution.
                units.append(_IRUnit(in_channels, width, 2 if i == 0 else 1, se))
                in_channels = width
        self.body = nn.Sequential(*units)
        side = input_size // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(0.5),
            nn.Flatten(),
            nn.Linear(512 * side * side, 512),
            nn.BatchNorm1d(512),
        )
        if weights is not None:
            load_state_dict_file(weights, self)

    def _config(self):
        return {"depth": self.depth, "se": self.se}

    def forward(self, x):
        """Embeds preprocessed faces.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, 3, S, S]`` from ``preprocess``.

        Returns
        -------
        torch.Tensor
            ``[B, 512]`` un-normalised embeddings.
        """
        self._check_input(x)
        return self.output_layer(self.body(self.input_layer(x)))


class IR50(IRNet):
    """face.evoLVe IR-50 (units 3-4-14-3), 112x112 RGB in, 512-d out.

    See ``IRNet`` for the preprocessing and checkpoint compatibility.

    Arguments
    ---------
    weights : str, optional
        face.evoLVe IR-50 checkpoint, e.g. ``backbone_ir50_ms1m_epoch120.pth``.
    input_size : int
        112 (or 224 for the 224 variant).
    resize_crop : int, optional
        Resize side before the centre crop (default 128, as face.evoLVe).

    Example
    -------
    >>> model = IR50().eval()
    >>> faces = torch.randint(0, 256, (1, 112, 112, 3), dtype=torch.uint8)
    >>> model(model.preprocess(faces)).shape
    torch.Size([1, 512])
    >>> model.identity()
    'IR50(depth=50,se=False,input_size=112,resize_crop=128,mean=127.5,std=127.5)'
    """

    def __init__(self, weights=None, input_size=112, resize_crop=128):
        super().__init__(50, False, input_size, weights, resize_crop)


class IRSE50(IRNet):
    """face.evoLVe IR-SE-50: ``IR50`` with squeeze-excitation in every unit.

    Arguments
    ---------
    weights : str, optional
        face.evoLVe IR-SE-50 checkpoint.
    input_size : int
        112 or 224.
    resize_crop : int, optional
        Resize side before the centre crop (default 128).

    Example
    -------
    >>> "body.0.res_layer.5.fc1.weight" in IRSE50().state_dict()
    True
    """

    def __init__(self, weights=None, input_size=112, resize_crop=128):
        super().__init__(50, True, input_size, weights, resize_crop)


# ---------------------------------------------------------------------------
# facenet-pytorch InceptionResnetV1
# ---------------------------------------------------------------------------


class FacenetInceptionResnetV1(FaceEncoder):
    """facenet-pytorch's InceptionResnetV1 loaded from a local weights file.

    The network is built with ``pretrained=None`` so facenet-pytorch never
    downloads anything; ``weights`` is a local state_dict such as
    ``20180402-114759-vggface2.pt`` (its ``logits.*`` classifier is dropped).

    Preprocessing (facenet ``fixed_image_standardization``): RGB,
    ``(x - 127.5)/128``, 160x160; 112x112 aligned faces are resized to 160.

    Arguments
    ---------
    weights : str, optional
        Local state_dict file; ``None`` keeps the random initialisation.
    normalize : bool
        True returns facenet's own l2-normalised output. False returns the
        ``last_bn`` output before normalisation: use it when embedding norms
        matter (the quality weight of Eq. 11 is constant on unit vectors).

    Example
    -------
    >>> model = FacenetInceptionResnetV1(normalize=False).eval()
    >>> faces = torch.randint(0, 256, (1, 112, 112, 3), dtype=torch.uint8)
    >>> model(model.preprocess(faces)).shape
    torch.Size([1, 512])
    """

    pixel_mean = 127.5
    pixel_std = 128.0

    def __init__(self, weights=None, normalize=True):
        super().__init__(512, 160, None)
        # Imported here: facenet-pytorch pulls in its MTCNN stack on import.
        from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

        self.normalize = bool(normalize)
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        if weights is not None:
            load_state_dict_file(weights, self.net, ignore=("logits.*",))

    def _config(self):
        return {"normalize": self.normalize}

    def forward(self, x):
        """Embeds preprocessed faces.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, 3, 160, 160]`` from ``preprocess``.

        Returns
        -------
        torch.Tensor
            ``[B, 512]``, unit-norm when ``normalize`` else raw.
        """
        self._check_input(x)
        if self.normalize:
            return self.net(x)
        # facenet's forward ends with F.normalize(last_bn(...)); capture the
        # last_bn output instead of re-implementing its layer sequence.
        captured = []
        handle = self.net.last_bn.register_forward_hook(
            lambda module, inputs, output: captured.append(output)
        )
        try:
            self.net(x)
        finally:
            handle.remove()
        return captured[0]


# ---------------------------------------------------------------------------
# Small trainable face CNN (the paper's weak teacher, Table 2)
# ---------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallFaceResNet(FaceEncoder):
    """A small ResNet face encoder trained from scratch (a weak teacher).

    Stem conv (stride 2), one stage per entry of ``channels`` (the first at
    stride 1, the others at stride 2), global average pooling, a linear
    map to ``embedding_dim`` and BatchNorm1d, like the IR backbones' head.
    ``classifier`` (present only with ``num_classes``) is for training the
    teacher: ``logits = model.classifier(model(x))``.

    Preprocessing: RGB, ``(x - 127.5)/127.5``, resized to ``input_size``.

    Arguments
    ---------
    embedding_dim : int
        Output width D.
    channels : tuple of int
        Width of each stage.
    input_size : int
        Side of the square input.
    num_classes : int, optional
        Adds a linear classifier head with this many identities.
    blocks_per_stage : int
        Residual blocks in each stage.
    weights : str, optional
        A state_dict saved from this class (its classifier keys are ignored).

    Example
    -------
    >>> model = SmallFaceResNet(32, (8, 8, 16, 16), input_size=32, num_classes=5)
    >>> faces = torch.zeros(4, 32, 32, 3, dtype=torch.uint8)
    >>> emb = model(model.preprocess(faces))
    >>> emb.shape, model.classifier(emb).shape
    (torch.Size([4, 32]), torch.Size([4, 5]))
    """

    def __init__(
        self,
        embedding_dim=128,
        channels=(32, 64, 128, 256),
        input_size=112,
        num_classes=None,
        blocks_per_stage=1,
        weights=None,
    ):
        super().__init__(embedding_dim, input_size, None)
        self.channels = tuple(int(c) for c in channels)
        self.blocks_per_stage = int(blocks_per_stage)
        self.stem = nn.Sequential(
            nn.Conv2d(3, self.channels[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(self.channels[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_channels = self.channels[0]
        for i, width in enumerate(self.channels):
            blocks = []
            for j in range(self.blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Linear(in_channels, self.embedding_dim)
        self.embedding_norm = nn.BatchNorm1d(self.embedding_dim)
        self.classifier = (
            nn.Linear(self.embedding_dim, int(num_classes)) if num_classes else None
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if weights is not None:
            load_state_dict_file(weights, self, ignore=("classifier.*",))

    def _config(self):
        return {
            "embedding_dim": self.embedding_dim,
            "channels": list(self.channels),
            "blocks_per_stage": self.blocks_per_stage,
        }

    def forward(self, x):
        """Embeds preprocessed faces.

        Arguments
        ---------
        x : torch.Tensor
            ``[B, 3, S, S]`` from ``preprocess``.

        Returns
        -------
        torch.Tensor
            ``[B, embedding_dim]`` un-normalised embeddings.
        """
        self._check_input(x)
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.embedding_norm(self.embedding(x))
