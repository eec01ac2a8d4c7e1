"""LogTBN (EfficientLEAF's compression): log compression, optional median filter, temporal batch normalisation.

    L = log1p(10^a · E)        a: one value or one per band (per_band), learnable or fixed (trainable)
    median none:     X = L                                  → 1 channel
    median subtract: X = L − median_t(L)                    → 1 channel
    median append:   X = [L, L − median_t(L)]               → 2 channels
    then BatchNorm over (batch, time) with one feature per (channel, band), affine.

Why: the log gives loudness a fixed additive offset, the median removes it per clip and band (a stationary
channel), and batch normalisation puts every band on one scale without PCEN's recurrence. torch.median takes
the lower middle value for an even T. In training mode a clip's output depends on its batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

MEDIANS = ("none", "subtract", "append")


def lower_median(x: torch.Tensor) -> torch.Tensor:
    """The lower middle value over the last axis, keepdim (torch.median's). ONNX has no median: in an ONNX export
    it is the ((T−1)//2)-th of the sorted values, the same number."""
    if torch.onnx.is_in_onnx_export():
        return torch.sort(x, dim=-1).values.narrow(-1, (x.shape[-1] - 1) // 2, 1)
    return x.median(dim=-1, keepdim=True).values


class LogTBN(nn.Module):
    """log_gain a ([N], or [] unless per_band; a buffer unless trainable); bn: BatchNorm1d over C·N features."""

    fast = True
    summary_prefix = "tbn"

    def __init__(self, n_bands: int, log_gain: float, median: str, momentum: float, bn_eps: float,
                 trainable: bool = True, per_band: bool = True):
        super().__init__()
        if median not in MEDIANS:
            raise ValueError(f"median = {median!r}: expected one of {', '.join(MEDIANS)}")
        gain = torch.full((n_bands,) if per_band else (), float(log_gain))
        if trainable:
            self.log_gain = nn.Parameter(gain)
        else:
            self.register_buffer("log_gain", gain)
        self.n_bands, self.median = n_bands, median
        self.out_channels = 2 if median == "append" else 1
        self.channel_names = {"none": ("log energy",), "subtract": ("median-subtracted",),
                              "append": ("log energy", "median-subtracted")}[median]
        self.bn = nn.BatchNorm1d(self.out_channels * n_bands, eps=bn_eps, momentum=momentum, affine=True)

    @classmethod
    def from_config(cls, cfg) -> "LogTBN":
        t = cfg.tbn
        return cls(cfg.n_filters, t.log_gain, t.median, t.momentum, t.bn_eps, t.trainable, t.per_band)

    def values(self) -> dict[str, np.ndarray]:
        """a per band (float64) for plots and logs."""
        with torch.no_grad():
            return {"a": self.log_gain.double().cpu().expand(self.n_bands).numpy().copy()}

    def forward(self, energies: torch.Tensor) -> torch.Tensor:
        batch, n_bands, n_frames = energies.shape
        gain = self.log_gain.to(energies.dtype)
        logs = torch.log1p(10.0 ** (gain[:, None] if gain.dim() else gain) * energies)[:, None]
        if self.median != "none":
            filtered = logs - lower_median(logs)
            logs = torch.cat([logs, filtered], dim=1) if self.median == "append" else filtered
        normed = self.bn(logs.reshape(batch, self.out_channels * n_bands, n_frames))
        return normed.reshape(batch, self.out_channels, n_bands, n_frames)
