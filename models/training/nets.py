"""Networks (torch). Inputs are front-end windows (batch, 1, frames, mel bands)."""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(x + self.body(x))
        return out


class CompactCNN(nn.Module):
    """The edge classifier: a strided stem, two residual stages, mean+max pooling, softmax.

    About 120k parameters and ~20 M multiply-adds per 97x64 window, sized for one Raspberry
    Pi core. Outputs class probabilities, so the exported graph needs no post-processing.
    """

    def __init__(self, n_labels: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(1, width // 2, stride=2),
            _conv(width // 2, width),
            nn.MaxPool2d(2),
            _Residual(width),
            _conv(width, 2 * width),
            nn.MaxPool2d(2),
            _Residual(2 * width),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(4 * width, n_labels)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        # Window-mean normalised dB sit around 0 with a spread of ~20 dB: scale to about unit.
        h = self.features(features / 20.0)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))  # type: ignore[no-any-return]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
