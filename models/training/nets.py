"""Networks (torch). Inputs are front-end windows (batch, 1, frames, mel bands)."""

from __future__ import annotations

from typing import Any

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


class Classifier(nn.Module):
    """A network that scores labels: `logits` for training, softmax probabilities as output
    (so the exported graph needs no post-processing)."""

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=1)


class CompactCNN(Classifier):
    """The edge classifier: a strided stem, two residual stages, mean+max pooling, softmax.

    About 120k parameters and ~20 M multiply-adds per 97x64 window, sized for one Raspberry
    Pi core. Outputs class probabilities, so the exported graph needs no post-processing.
    """

    def __init__(self, n_labels: int, width: int = 32) -> None:
        super().__init__()
        self.spec = {"architecture": "compact_cnn", "n_labels": n_labels, "width": width}
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


class ConvAttention(Classifier):
    """The alternative classifier: SoundDitect's 1D-CNN + multi-head attention design, applied
    to log-mel frames (mel bands as channels) instead of raw 44.1 kHz samples, so it shares the
    bundle input contract. Temporal convolutions, then self-attention across the frames, then
    mean + max pooling over time and a softmax head.
    """

    def __init__(self, n_labels: int, n_mels: int = 64, width: int = 96, heads: int = 4) -> None:
        super().__init__()
        self.spec = {
            "architecture": "conv_attention",
            "n_labels": n_labels,
            "n_mels": n_mels,
            "width": width,
            "heads": heads,
        }
        self.convs = nn.Sequential(
            nn.Conv1d(n_mels, width, 5, padding=2, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Conv1d(width, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
        )
        self.attention = nn.MultiheadAttention(width, heads, dropout=0.1, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(2 * width, n_labels)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        # (batch, 1, frames, mels) -> (batch, mels, frames): frames are the sequence.
        h = self.convs(features[:, 0].transpose(1, 2) / 20.0).transpose(1, 2)
        attended, _ = self.attention(h, h, h, need_weights=False)
        h = self.norm(h + attended)
        pooled = torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=1)
        out: torch.Tensor = self.head(self.dropout(pooled))
        return out


class ConvAutoencoder(nn.Module):
    """Anomaly model: reconstructs a log-mel window; the score is the mean squared error.

    Trained on normal sounds only (the DCASE 2020 Task 2 baseline idea, convolutional). The
    input is standardised with the training windows' mean and spread, kept in the graph, and
    the exported model outputs the score itself: (batch, 1).
    """

    def __init__(
        self,
        mean: float = -50.0,
        std: float = 20.0,
        width: int = 16,
        frames: int = 97,
    ) -> None:
        super().__init__()
        self.spec = {
            "architecture": "conv_autoencoder",
            "mean": mean,
            "std": std,
            "width": width,
            "frames": frames,
        }
        self.mean, self.std = mean, std  # graph constants after export
        self.encoder = nn.Sequential(
            _conv(1, width, stride=2),
            _conv(width, 2 * width, stride=2),
            _conv(2 * width, 4 * width, stride=2),
            nn.Conv2d(4 * width, width, 1),
        )

        # The window is cropped to a multiple of 8 frames (97 -> 96) so every up-sampling is
        # an exact x2: nearest resizing at fractional ratios is computed differently by torch
        # and TFLite (scores came out twice as high), and TFLite cannot convert the
        # transposed convolutions odd sizes would need.
        self.frames = frames - frames % 8
        self.decoder = nn.Sequential(
            nn.Conv2d(width, 4 * width, 1),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2.0),
            _conv(4 * width, 2 * width),
            nn.Upsample(scale_factor=2.0),
            _conv(2 * width, width),
            nn.Upsample(scale_factor=2.0),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def reconstruction_error(self, features: torch.Tensor) -> torch.Tensor:
        x = (features[:, :, : self.frames] - self.mean) / self.std
        error: torch.Tensor = (self.decoder(self.encoder(x)) - x).pow(2)
        return error

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.reconstruction_error(features).mean(dim=(1, 2, 3)).unsqueeze(1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(spec: dict[str, Any]) -> nn.Module:
    """A network from the `spec` it reports: how the TFLite converter rebuilds it."""
    kwargs = {k: v for k, v in spec.items() if k != "architecture"}
    networks: dict[str, type[nn.Module]] = {
        "compact_cnn": CompactCNN,
        "conv_attention": ConvAttention,
        "conv_autoencoder": ConvAutoencoder,
    }
    return networks[spec["architecture"]](**kwargs)
