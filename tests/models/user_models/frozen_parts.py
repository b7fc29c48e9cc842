# a frozen BatchNorm (statistics and affine terms as buffers, as detection backbones ship them) and a
# frozen stem (requires_grad off).
import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class FrozenNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.stem_bn = FrozenBatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 16, 3, 2, 1, bias=False)
        self.b1 = FrozenBatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, 2, 1, bias=False)
        self.b2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)
        self.stem.requires_grad_(False)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def build(in_channels=1, num_classes=10):
    return FrozenNet(in_channels, num_classes)
