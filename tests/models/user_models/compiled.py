# build() returns torch.compile(net): an OptimizedModule wrapping the network.
import torch
from torch import nn


def net(in_channels=1, num_classes=10):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def build(in_channels=1, num_classes=10):
    return torch.compile(net(in_channels, num_classes))  # compiled lazily, on the first call: none happens here
