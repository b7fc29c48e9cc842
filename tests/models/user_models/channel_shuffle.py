# ShuffleNet's channel shuffle: view (N, 2, C/2, H, W), swap the two middle dims, back to (N, C, H, W).
import torch.nn.functional as F
from torch import nn


class ShuffleNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 16, 3, 2, 1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.b2 = nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 32, 3, 2, 1)
        self.b3 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


def build(in_channels=1, num_classes=10):
    return ShuffleNet(in_channels, num_classes)
