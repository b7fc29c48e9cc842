# Conv3d on 5-D volumes (N, C, D, H, W): channels_last is for 4-D tensors only.
from torch import nn


def build(in_channels=1, num_classes=10):
    return nn.Sequential(nn.Conv3d(in_channels, 8, 3, 2, 1, bias=False), nn.BatchNorm3d(8), nn.ReLU(),
                         nn.Conv3d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm3d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))
