# Models whose outputs autoprune cannot take as they are: each factory is one kind.
from torch import nn


class Net(nn.Module):
    def __init__(self, in_channels=1, num_classes=10, returns="logits", width=None):
        super().__init__()
        self.returns = returns
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, width or num_classes)
        self.aux = nn.Linear(8, 4)

    def forward(self, x):
        if self.returns == "small-batches" and x.shape[0] > 64:
            raise RuntimeError("this model was written for batches of at most 64 images")
        logits = self.fc(self.body(x))
        if self.returns == "string":
            return "logits"
        if self.returns == "train-aux-first" and self.training:
            return self.aux(self.body(x)), logits  # the wrong head first, in train mode only
        if self.returns == "detached":
            return logits.detach()  # runs, and cannot be trained
        return logits


def string(in_channels=1, num_classes=10):
    return Net(in_channels, num_classes, "string")


def three_classes(in_channels=1, num_classes=10):
    return Net(in_channels, num_classes, width=3)  # ignores num_classes


def train_aux_first(in_channels=1, num_classes=10):
    return Net(in_channels, num_classes, "train-aux-first")


def detached(in_channels=1, num_classes=10):
    return Net(in_channels, num_classes, "detached")


def small_batches(in_channels=1, num_classes=10):
    return Net(in_channels, num_classes, "small-batches")  # passes the set-up checks, fails on a batch of 256
