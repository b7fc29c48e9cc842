# nn.ConvTranspose2d between ordinary convs (encoder-decoder trunk).
# Kind of model users bring to pruning tools; see README.md beside this file.
from torch import nn


class UpDownNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                                nn.ReLU())
        self.refine = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.refine(self.up(self.down2(self.down1(x))))
        return self.fc(x.mean((2, 3)))


def build(in_channels=1, num_classes=10):
    return UpDownNet(in_channels, num_classes)
