"""A compact CNN for CPUs: the frontend output [B, C, n_filters, frames] treated as a C-channel image.

Blocks: for each width w in `channels`: Conv2d 3×3 (padding 1, no bias) → BatchNorm2d → ReLU → MaxPool2d 2×2
(the pooling is skipped along an axis that is already down to 1). Then a global max-pool over (freq, time) as in
the papers' classifier head, dropout, Linear(channels[-1], n_classes).
With the default widths (24, 48, 96, 128) and 40 × 100 inputs: ~0.16 M parameters, ~30 M multiply-adds per clip
(the EfficientLEAF frontend in front of it costs more).
Weights and activations are kept channels-last: oneDNN's convolutions on CPU run about 1.8× faster in that layout
(measured in BENCHMARKS.md); the numbers differ from channels-first only at float rounding.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv(x)))
        kernel = (2 if x.shape[-2] >= 2 else 1, 2 if x.shape[-1] >= 2 else 1)
        return nn.functional.max_pool2d(x, kernel) if kernel != (1, 1) else x


class CompactCNN(nn.Module):
    """x [B, in_channels, F, T] → logits [B, n_classes]."""

    def __init__(self, in_channels: int, n_classes: int, channels: tuple[int, ...] = (24, 48, 96, 128),
                 dropout: float = 0.1, channels_last: bool = True):
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        widths = (in_channels, *channels)
        self.blocks = nn.Sequential(*(ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], n_classes)
        self.blocks.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(x.contiguous(memory_format=self.memory_format))
        pooled = torch.amax(features, dim=(-2, -1))  # global max-pool → [B, channels[-1]]
        return self.head(self.dropout(pooled))
