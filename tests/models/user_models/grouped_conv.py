# a grouped convolution (groups=4, not depthwise) between ordinary ones (ResNeXt style).
import torch.nn.functional as F
from torch import nn


class GroupedConvNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 16, 3, 2, 1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, 2, 1, groups=4)
        self.b2 = nn.BatchNorm2d(32)
        self.c3 = nn.Conv2d(32, 32, 1)
        self.b3 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


def build(in_channels=1, num_classes=10):
    return GroupedConvNet(in_channels, num_classes)
