# a conv feature extractor, then an LSTM over the image columns (a CRNN-style reader).
import torch.nn.functional as F
from torch import nn


class LSTMNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 16, 3, 2, 1)
        self.b1 = nn.BatchNorm2d(16)
        self.lstm = nn.LSTM(16 * 14, 32, batch_first=True)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))  # (N, 16, 14, 14)
        sequence = x.permute(0, 3, 1, 2).flatten(2)  # (N, 14 columns, 16 * 14 features)
        out, _ = self.lstm(sequence)
        return self.fc(out[:, -1])


def build(in_channels=1, num_classes=10):
    return LSTMNet(in_channels, num_classes)
