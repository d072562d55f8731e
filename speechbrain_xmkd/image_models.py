"""Image students: torchvision ResNet trunks that return the pooled embedding.

The image recipe's student is a ResNet without pretraining whose penultimate
pooled feature (512-d for ResNet18/34) is the student embedding ``F_S``; the
classifier is a separate ``Linear`` (the task head that classifier-level
distillation shares), so the trunk here ends at the global average pool.
"""

import torch
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock


class ResNetEmbedding(torch.nn.Module):
    """torchvision ResNet18/34 (``weights=None``) up to the pooled feature.

    Arguments
    ---------
    depth : int
        18 or 34.
    cifar_stem : bool
        Replace the 7x7 stride-2 stem and its max-pool by one 3x3 stride-1
        convolution, the usual ResNet for 32x32 inputs (CIFAR at native
        size instead of upsampled to 224).

    Example
    -------
    >>> model = ResNetEmbedding(18, cifar_stem=True)
    >>> model(torch.randn(2, 3, 32, 32)).shape, model.embedding_dim
    (torch.Size([2, 512]), 512)
    """

    def __init__(self, depth=18, cifar_stem=False):
        super().__init__()
        builders = {18: resnet.resnet18, 34: resnet.resnet34}
        if depth not in builders:
            raise ValueError(f"ResNetEmbedding: depth must be 18 or 34, got {depth!r}")
        trunk = builders[depth](weights=None)
        if cifar_stem:
            trunk.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            torch.nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
            trunk.maxpool = torch.nn.Identity()
        self.embedding_dim = trunk.fc.in_features
        trunk.fc = torch.nn.Identity()
        self.trunk = trunk

    def forward(self, images):
        """``[batch, 3, H, W]`` normalised images -> ``[batch, 512]``."""
        return self.trunk(images)


class CompactResNet(torch.nn.Module):
    """A narrow ResNet of torchvision ``BasicBlock`` s for fast CPU runs on small images.

    3x3 stem (stride 1, no max-pool), one stage per width, stride 2 from
    the second stage on, global average pool. With the defaults it costs
    about 1/30 of a CIFAR-style ResNet18.

    Arguments
    ---------
    widths : list of int
        Channels per stage; the last is the embedding width.
    blocks : list of int
        ``BasicBlock`` s per stage.

    Example
    -------
    >>> model = CompactResNet(widths=[8, 16], blocks=[1, 1])
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 16])
    """

    def __init__(self, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)):
        super().__init__()
        widths, blocks = list(widths), list(blocks)
        if not widths or len(widths) != len(blocks) or min(widths) < 1 or min(blocks) < 1:
            raise ValueError(
                f"CompactResNet: widths and blocks must be equally long lists of positive "
                f"integers, got {widths} and {blocks}"
            )
        layers = [
            torch.nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False),
            torch.nn.BatchNorm2d(widths[0]),
            torch.nn.ReLU(inplace=True),
        ]
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                downsample = None
                if stride != 1 or channels != width:
                    downsample = torch.nn.Sequential(
                        torch.nn.Conv2d(channels, width, kernel_size=1, stride=stride, bias=False),
                        torch.nn.BatchNorm2d(width),
                    )
                layers.append(BasicBlock(channels, width, stride=stride, downsample=downsample))
                channels = width
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
        self.layers = torch.nn.Sequential(*layers)
        self.embedding_dim = channels
        for module in self.modules():  # torchvision's ResNet initialisation
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images):
        """``[batch, 3, H, W]`` normalised images -> ``[batch, widths[-1]]``."""
        return self.layers(images)
