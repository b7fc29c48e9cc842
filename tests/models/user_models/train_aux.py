# An auxiliary classifier that runs in training only (Inception, GoogLeNet): (logits, aux) in train mode.
from torch import nn


class AuxNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)
        self.aux = nn.Linear(8, num_classes)

    def forward(self, x):
        s = self.stem(x)
        logits = self.fc(self.body(s).mean((2, 3)))
        if self.training:
            return logits, self.aux(s.mean((2, 3)))
        return logits


def build(in_channels=1, num_classes=10):
    return AuxNet(in_channels, num_classes)
