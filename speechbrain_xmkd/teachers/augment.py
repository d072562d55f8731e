"""Face-image augmentation for training face models and for teacher-side augmentation.

Runs on the GPU on whole batches (one ``affine_grid`` + ``grid_sample``), on
pixel-scale images before an encoder's ``preprocess``.
"""

import torch
import torch.nn.functional as F


class FaceAugment(torch.nn.Module):
    """Random flip, crop/shift and brightness for a batch of face images.

    One affine resampling per batch (``affine_grid`` + ``grid_sample``)
    does the flip, the crop (a square of ``min_scale``..1 of the side,
    resized back) and the shift; then each image is multiplied by a
    brightness factor. Works on pixel-scale images, before the encoder's
    ``preprocess``, so it does not depend on the encoder's normalisation.

    Arguments
    ---------
    flip_prob : float
        Probability of a horizontal flip.
    max_shift : float
        Largest shift of the crop centre, as a fraction of the side.
    min_scale : float
        Smallest crop side, as a fraction of the image side (1: no crop).
    brightness : float
        Brightness factors are uniform in ``[1 - brightness, 1 + brightness]``.

    Example
    -------
    >>> augment = FaceAugment(flip_prob=1.0, max_shift=0.0, min_scale=1.0, brightness=0.0)
    >>> x = torch.arange(12.0).reshape(1, 1, 3, 4).expand(1, 3, 3, 4)
    >>> torch.allclose(augment(x), x.flip(-1), atol=1e-4)
    True
    >>> FaceAugment()(torch.rand(2, 3, 16, 16) * 255).shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(self, flip_prob=0.5, max_shift=0.06, min_scale=0.85, brightness=0.25):
        super().__init__()
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"FaceAugment: flip_prob must be in [0, 1], got {flip_prob!r}")
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"FaceAugment: min_scale must be in (0, 1], got {min_scale!r}")
        if max_shift < 0 or not 0.0 <= brightness < 1.0:
            raise ValueError(
                "FaceAugment: need max_shift >= 0 and 0 <= brightness < 1, got "
                f"max_shift={max_shift!r}, brightness={brightness!r}"
            )
        self.flip_prob = float(flip_prob)
        self.max_shift = float(max_shift)
        self.min_scale = float(min_scale)
        self.brightness = float(brightness)

    def forward(self, images):
        """Augments ``[B, 3, H, W]`` float images on the 0..255 scale.

        Arguments
        ---------
        images : torch.Tensor
            Float batch, pixel values 0..255.

        Returns
        -------
        torch.Tensor
            Augmented batch, same shape, clamped to 0..255.
        """
        batch = images.shape[0]
        device = images.device

        def uniform(low, high, *shape):
            return low + (high - low) * torch.rand(*shape, device=device)

        scale = uniform(self.min_scale, 1.0, batch)
        flip = torch.rand(batch, device=device) < self.flip_prob
        # affine_grid works in [-1, 1] coordinates: a shift of f sides is 2f.
        shift = uniform(-2 * self.max_shift, 2 * self.max_shift, batch, 2)
        theta = torch.zeros(batch, 2, 3, device=device)
        theta[:, 0, 0] = torch.where(flip, -scale, scale)
        theta[:, 1, 1] = scale
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        factor = uniform(1 - self.brightness, 1 + self.brightness, batch)
        return (out * factor.view(batch, 1, 1, 1)).clamp(0.0, 255.0)
