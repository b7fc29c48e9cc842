"""CIFAR-style networks that adapt to the data's input channels and classes.

Each takes images ``(N, C, H, W)`` and returns logits ``(N, classes)``. All end in global average pooling,
so 28x28 Fashion-MNIST and 32x32 CIFAR work alike without changing the classifier: the ResNets and
MobileNetV2 take any input of at least 8x8 pixels, the VGGs (four 2x2 max-pools) at least 16x16.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from autoprune.models.registry import register_model


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016): two 3x3 conv + BN layers with a ReLU between, the shortcut added,
    then a ReLU.

    ``(N, in_planes, H, W)`` -> ``(N, planes, ceil(H / stride), ceil(W / stride))``. Where ``stride`` is not 1
    or the width changes, the shortcut is a 1x1 conv + BN projection (the paper's option B; its CIFAR networks
    pad with zeros, option A), otherwise the identity.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # A 1x1 projection rather than zero padding: a real layer the dependency graph can follow.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        """``(N, in_planes, H, W)`` -> ``(N, planes, ceil(H / stride), ceil(W / stride))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016, section 4.2): depth = 6n + 2.

    A 3x3 conv of 16 channels, three stages of n ``BasicBlock``s of 16, 32 and 64 channels (the second and
    third start at stride 2), global average pooling and a linear classifier. Unlike the paper, a block that
    changes width projects its shortcut with a 1x1 conv + BN instead of padding it with zeros. Convolutions
    are initialised Kaiming-normal (fan_out), BN scales to 1 and shifts to 0. Raises ``ValueError`` where
    ``depth`` is not 6n + 2.
    """

    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        planes, layers = 16, []
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(planes, width, stride))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x):
        """Images ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model(family="resnet")
def resnet20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-20 for CIFAR (``CifarResNet``, n = 3): 0.27M parameters and 41M MACs at 3x32x32 and 10 classes."""
    return CifarResNet(20, in_channels, num_classes)


@register_model(family="resnet")
def resnet32(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-32 for CIFAR (``CifarResNet``, n = 5): 0.47M parameters and 69M MACs at 3x32x32 and 10 classes."""
    return CifarResNet(32, in_channels, num_classes)


@register_model(family="resnet")
def resnet56(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-56 for CIFAR (``CifarResNet``, n = 9): 0.86M parameters and 126M MACs at 3x32x32 and 10 classes."""
    return CifarResNet(56, in_channels, num_classes)


_VGG_CFG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
}


class CifarVGG(nn.Module):
    """VGG with batch normalisation (Simonyan & Zisserman 2015; BN after every conv, Ioffe & Szegedy 2015),
    for small images.

    The 3x3 convolutions of configuration A (``depth`` 11) or D (16) with their first four 2x2 max-pools;
    global average pooling replaces the fifth max-pool and one linear layer the three fully connected
    ones. Inputs need at least 16x16 pixels. Convolutions are initialised Kaiming-normal (fan_out), BN
    scales to 1 and shifts to 0. Raises ``KeyError`` for a ``depth`` other than 11 or 16.
    """

    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _VGG_CFG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        # Global pooling replaces the fifth max-pool so that 28x28 inputs work as well as 32x32.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        _init(self)

    def forward(self, x):
        """Images ``(N, in_channels, H, W)``, H and W at least 16 -> logits ``(N, num_classes)``."""
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model(family="vgg")
def vgg11_bn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """VGG-11 with BN (``CifarVGG``, 8 conv layers): 9.2M parameters and 153M MACs at 3x32x32 and 10 classes."""
    return CifarVGG(11, in_channels, num_classes)


@register_model(family="vgg")
def vgg16_bn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """VGG-16 with BN (``CifarVGG``, 13 conv layers): 14.7M parameters and 313M MACs at 3x32x32 and 10 classes."""
    return CifarVGG(16, in_channels, num_classes)


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual block (Sandler et al. 2018).

    A 1x1 conv expanding to ``inp * expand`` channels (none where ``expand`` is 1) and a 3x3 depthwise conv at
    ``stride``, each with BN and ReLU6, then a linear 1x1 projection to ``out`` channels with BN; the input
    is added back where ``stride`` is 1 and ``inp == out``.
    """

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_residual = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        """``(N, inp, H, W)`` -> ``(N, out, ceil(H / stride), ceil(W / stride))``."""
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018, width multiplier 1.0) for small images.

    A 3x3 conv of 32 channels, the paper's 17 inverted residual blocks (``_CFG``: expansion, channels, blocks,
    stride), a 1x1 conv to 1280 channels, global average pooling and a linear classifier. Unlike the paper,
    the first conv and the 24-channel stage run at stride 1, so the network downsamples 8x (32x32 -> 4x4)
    rather than 32x, and there is no dropout before the classifier. Convolutions are initialised
    Kaiming-normal (fan_out), BN scales to 1 and shifts to 0.
    """

    # (expansion, channels, blocks, stride); strides of the first stages are 1 for small images.
    _CFG: ClassVar[list[tuple[int, int, int, int]]] = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    _STEM_STRIDE: ClassVar[int] = 1

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 32, 3, self._STEM_STRIDE, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)
        ]
        channels = 32
        for expand, out, blocks, stride in self._CFG:
            for i in range(blocks):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        layers += [nn.Conv2d(channels, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        _init(self)

    def forward(self, x):
        """Images ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``."""
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model(family="mobilenet")
def mobilenet_v2(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """MobileNetV2 for small images (``CifarMobileNetV2``): 2.2M parameters and 88M MACs at 3x32x32 and 10 classes."""
    return CifarMobileNetV2(in_channels, num_classes)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
