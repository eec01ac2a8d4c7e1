"""The papers' classifier: EfficientNet-B0 (random init) on the frontend output as a 1- or 2-channel image.

torchvision.models.efficientnet_b0(weights=None) with two changes, as in CPJKU/EfficientLEAF main.py
(EfficientNet.from_name("efficientnet-b0", include_top=False, in_channels=C) + AudioClassifier):
  - the stem convolution takes `in_channels` (1 for PCEN, 2 for TBN) instead of 3 (same 3×3, stride 2, 32 maps);
  - the head is a global max-pool over (freq, time) and Linear(1280, n_classes) instead of average pooling.
Dropout before the Linear is `model.dropout` (the reference has none: set it to 0 to match). ~4.05 M parameters
for 35 classes.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class EfficientNetB0(nn.Module):
    """x [B, in_channels, F, T] → logits [B, n_classes]."""

    def __init__(self, in_channels: int, n_classes: int, dropout: float = 0.0):
        import torchvision  # here, not at the top: importing it costs seconds that compact_cnn runs do not need

        super().__init__()
        net = torchvision.models.efficientnet_b0(weights=None)
        stem = net.features[0][0]
        new_stem = nn.Conv2d(in_channels, stem.out_channels, kernel_size=stem.kernel_size, stride=stem.stride,
                             padding=stem.padding, bias=False)
        nn.init.kaiming_normal_(new_stem.weight, mode="fan_out")  # torchvision's init for its convolutions
        net.features[0][0] = new_stem
        self.features = net.features
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(1280, n_classes)
        bound = 1.0 / math.sqrt(n_classes)  # torchvision's init for the classifier
        nn.init.uniform_(self.head.weight, -bound, bound)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.amax(self.features(x), dim=(-2, -1))  # global max-pool → [B, 1280]
        return self.head(self.dropout(pooled))
