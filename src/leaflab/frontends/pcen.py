"""PCEN, per-channel energy normalisation (Wang et al. 2017; LEAF's compression).

    x = max(E, floor);   M_0 = x_0,  M_t = (1 − s)·M_{t−1} + s·x_t   (per band)
    y = (x / (ε + M)^α + δ)^r − δ^r,   with 1/(ε + M)^α computed as exp(−α·(ln ε + log1p(M/ε)))

Why: dividing by a running mean of the band's own energy (automatic gain control) removes loudness and slow
channel effects, the root compresses what is left. Learnable per band, two parameterisations:
- direct (LEAF): alpha, delta, root = 1/r, smooth_coef s, clamped in forward to α ≤ 1, δ ≥ 0, r = 1/max(root, 1),
  s ∈ [0, 1];
- learn_logs (the PCEN paper): log_alpha, log_delta, log_r, log_smooth_coef; the values are their exponentials
  (positive by construction, unclamped).
Input [B, N, T] → [B, 1, N, T]. Fast path: kernels/pcen.py (smoother as matrix products, hand-written backward).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from .kernels.pcen import pcen_fused, safe_power


def smoother(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """M_0 = x_0, M_t = (1 − s)·M_{t−1} + s·x_t, frame by frame: x [B, N, T], s [N] → [B, N, T]."""
    frames = [x[..., 0]]
    for t in range(1, x.shape[-1]):
        frames.append((1 - s) * frames[-1] + s * x[..., t])
    return torch.stack(frames, dim=-1)


def pcen(energies: torch.Tensor, alpha: torch.Tensor, delta: torch.Tensor, r: torch.Tensor, s: torch.Tensor,
         floor: float, eps: float) -> torch.Tensor:
    """The formula above with per-band α, δ, r, s [N]: [B, N, T] → [B, N, T]."""
    x = energies.clamp(min=floor)
    alpha, delta, r = alpha[:, None], delta[:, None], r[:, None]
    gain = torch.exp(-alpha * (math.log(eps) + torch.log1p(smoother(x, s) / eps)))
    return (x * gain + delta) ** r - safe_power(delta, r)


class PCEN(nn.Module):
    """Trainable PCEN with per-band parameters (module docstring). [B, N, T] → [B, 1, N, T]."""

    fast = True
    summary_prefix = "pcen"

    def __init__(self, n_bands: int, alpha: float, delta: float, root: float, smooth_coef: float,
                 energy_floor: float, eps: float, learn_logs: bool = False):
        super().__init__()
        self.learn_logs = learn_logs
        if learn_logs:
            for name, value in (("log_alpha", alpha), ("log_delta", delta), ("log_r", 1.0 / root),
                                ("log_smooth_coef", smooth_coef)):
                self.register_parameter(name, nn.Parameter(torch.full((n_bands,), math.log(value))))
        else:
            for name, value in (("alpha", alpha), ("delta", delta), ("root", root), ("smooth_coef", smooth_coef)):
                self.register_parameter(name, nn.Parameter(torch.full((n_bands,), float(value))))
        self.energy_floor, self.eps = energy_floor, eps

    @classmethod
    def from_config(cls, cfg) -> "PCEN":
        p = cfg.pcen
        return cls(cfg.n_filters, p.alpha, p.delta, p.root, p.smooth_coef, p.energy_floor, p.eps, p.learn_logs)

    out_channels = 1
    channel_names = ("",)

    def constrained(self) -> dict[str, torch.Tensor]:
        """Per-band α, δ, r, s as forward uses them."""
        if self.learn_logs:
            return {"alpha": self.log_alpha.exp(), "delta": self.log_delta.exp(), "r": self.log_r.exp(),
                    "s": self.log_smooth_coef.exp()}
        return {"alpha": self.alpha.clamp(max=1.0), "delta": self.delta.clamp(min=0.0),
                "r": 1.0 / self.root.clamp(min=1.0), "s": self.smooth_coef.clamp(0.0, 1.0)}

    def values(self) -> dict[str, np.ndarray]:
        """alpha, delta, r, s per band (float64) for plots and logs."""
        with torch.no_grad():
            return {k: v.double().cpu().numpy() for k, v in self.constrained().items()}

    def forward(self, energies: torch.Tensor) -> torch.Tensor:
        p = [v.to(energies.dtype) for v in self.constrained().values()]
        if not self.fast:
            return pcen(energies, *p, self.energy_floor, self.eps)[:, None]
        return pcen_fused(energies, *p, self.energy_floor, self.eps)[:, None]
