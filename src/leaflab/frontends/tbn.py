"""LogTBN (EfficientLEAF's compression): log compression, optional median "append", temporal batch norm.

L = log1p(10^{a_n} · E)  (a_n learnable per band, init 5);
median append: X = concat[L, L − median_t(L)] → [B, 2, N, T] (torch.median: lower middle value for even T);
then BatchNorm over (batch, time) with one feature per (channel, band) (2N or N features), affine,
eps and momentum from TBNConfig. In training mode it normalises with the batch's statistics, so a clip's output
depends on its batch. Input [B, N, T] → [B, C, N, T], C = 2 with median append, else 1.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class LogTBN(nn.Module):
    """Parameters: log_gain a [N]; bn (BatchNorm1d over C·N features)."""

    def __init__(self, n_bands: int, log_gain: float, median_append: bool, momentum: float, bn_eps: float):
        super().__init__()
        self.log_gain = nn.Parameter(torch.full((n_bands,), float(log_gain)))
        self.median_append = median_append
        self.channels = 2 if median_append else 1
        self.bn = nn.BatchNorm1d(self.channels * n_bands, eps=bn_eps, momentum=momentum, affine=True)

    def forward(self, energies: torch.Tensor) -> torch.Tensor:
        batch, n_bands, n_frames = energies.shape
        logs = torch.log1p(10.0 ** self.log_gain.to(energies.dtype)[:, None] * energies)[:, None]
        if self.median_append:
            logs = torch.cat([logs, logs - logs.median(dim=-1, keepdim=True).values], dim=1)
        normed = self.bn(logs.reshape(batch, self.channels * n_bands, n_frames))
        return normed.reshape(batch, self.channels, n_bands, n_frames)
