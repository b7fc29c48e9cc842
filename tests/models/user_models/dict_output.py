# forward returns a dict {'logits', 'aux'} (auxiliary head).
# Kind of model users bring to pruning tools; see README.md beside this file.
from torch import nn


class TwoHeadNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.cls = nn.Linear(32, num_classes)
        self.aux = nn.Linear(32, 4)

    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return {"logits": self.cls(f), "aux": self.aux(f)}


def build(in_channels=1, num_classes=10):
    return TwoHeadNet(in_channels, num_classes)
