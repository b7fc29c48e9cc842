"""ImageNet-sized networks (224x224 inputs) for latency studies, beside the CIFAR-style zoo.

Each takes images ``(N, C, H, W)`` and returns logits ``(N, classes)``; both adapt to the data's input
channels and classes. Both downsample 32x (224x224 -> 7x7) and end in global average pooling, so any input
size runs, but they are built for 224x224. The blocks are the CIFAR zoo's own: ``BasicBlock`` and
``InvertedResidual`` are the papers' blocks unchanged (only the stems and strides of the CIFAR networks
differ from the papers; the ImageNet MobileNetV2 is the CIFAR one with the paper's strides), and ``_init`` is the usual Kaiming-normal (fan_out) / BN 1, 0 initialisation.
The layers are named as in the CIFAR networks, so the ``resnet`` and ``mobilenet`` search spaces apply.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from autoprune.models.registry import register_model
from autoprune.models.zoo import BasicBlock, CifarMobileNetV2, _init


class ImageNetResNet(nn.Module):
    """The ImageNet ResNet of He et al. (2016, table 1) with basic blocks: ResNet-18 for ``blocks`` (2, 2, 2, 2).

    A 7x7 stride-2 conv of 64 channels (``conv1``, ``bn1``, ReLU), a 3x3 stride-2 max-pool (``maxpool``), four
    stages ``layer1``..``layer4`` of ``BasicBlock``s at 64, 128, 256 and 512 channels (the last three start at
    stride 2 and project their shortcut with a 1x1 conv + BN, the paper's option B), global average pooling
    (``pool``) and a linear classifier (``fc``). ``(N, in_channels, H, W)`` -> ``(N, num_classes)``; the
    feature map before pooling is ``(N, 512, ceil(H / 32), ceil(W / 32))`` (7x7 at 224x224).
    """

    def __init__(self, blocks: tuple[int, int, int, int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        planes, layers = 64, []
        for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage_blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                stage_blocks.append(BasicBlock(planes, width, stride))
                planes = width
            layers.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _init(self)

    def forward(self, x):
        """Images ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


@register_model(family="resnet")
def resnet18_imagenet(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    """ResNet-18 for ImageNet (``ImageNetResNet``, 2 blocks a stage): ``(N, 3, 224, 224)`` -> ``(N, 1000)``.

    Counted by ``autoprune.measure.count`` at 3x224x224 and 1000 classes: 1,814,073,344 MACs (1.81 G) and
    11,689,512 parameters (11.69 M), the paper's figures."""
    return ImageNetResNet((2, 2, 2, 2), in_channels, num_classes)


class ImageNetMobileNetV2(CifarMobileNetV2):
    """MobileNetV2 (Sandler et al. 2018, table 2) at width multiplier 1.0 for 224x224 images: the CIFAR zoo's
    ``CifarMobileNetV2`` with the paper's strides (a stride-2 first conv, and the 24-channel stage at stride 2).

    ``features``: a 3x3 stride-2 conv of 32 channels with BN and ReLU6, the paper's 17 inverted residual blocks
    (``_CFG``: expansion, channels, blocks, stride of the first block), a 1x1 conv to 1280 channels with BN and
    ReLU6; then global average pooling (``pool``) and a linear classifier (``classifier``).
    ``(N, in_channels, H, W)`` -> ``(N, num_classes)``; the feature map before pooling is
    ``(N, 1280, ceil(H / 32), ceil(W / 32))`` (7x7 at 224x224). Where it departs from the paper: the paper's
    final 1x1 conv classifier is a linear layer here (the same arithmetic on a pooled 1x1 map), with no
    dropout before it.
    """

    # (expansion, channels, blocks, stride): the paper's table 2.
    _CFG: ClassVar[list[tuple[int, int, int, int]]] = [
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    _STEM_STRIDE: ClassVar[int] = 2


@register_model(family="mobilenet")
def mobilenet_v2_imagenet(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 1.0 for ImageNet (``ImageNetMobileNetV2``): ``(N, 3, 224, 224)`` -> ``(N, 1000)``.

    Counted by ``autoprune.measure.count`` at 3x224x224 and 1000 classes: 300,774,272 MACs (301 M) and
    3,504,872 parameters (3.50 M), the paper's figures."""
    return ImageNetMobileNetV2(in_channels, num_classes)
