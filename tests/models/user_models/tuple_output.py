# forward returns a tuple (features, logits): the logits are not first.
from torch import nn


class FeaturesFirst(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return f, self.fc(f)


def build(in_channels=1, num_classes=10):
    return FeaturesFirst(in_channels, num_classes)
