"""PCEN, per-channel energy normalisation (LEAF's compression), with a vectorised smoother.

x ← max(E, floor);  M_0 = x_0,  M_t = (1 − s)·M_{t−1} + s·x_t  (per band);
y = (x·exp(−α·(ln ε + log1p(M/ε))) + δ)^r − δ^r   ( = (x/(ε + M)^α + δ)^r − δ^r, computed stably ).
Learnable per band (constrained in forward, functionally): s ∈ [0, 1] (init 0.04), α ≤ 1 (0.96), δ ≥ 0 (2),
root = 1/r ≥ 1 (2, i.e. r = 0.5 ≤ 1). Input [B, N, T] → output [B, 1, N, T].

The smoother is a first-order linear recurrence M_t = A_t·M_{t−1} + b_t (A_0 = 0, b_0 = x_0; A_t = 1 − s,
b_t = s·x_t). It is evaluated by an inclusive parallel scan (Hillis–Steele doubling: ⌈log2 T⌉ steps of
b_t ← b_t + A_t·b_{t−d}, A_t ← A_t·A_{t−d}). Only products of factors in [0, 1] and sums of non-negative terms
appear, so nothing overflows or divides, and (1 − s)^t simply underflows to 0 for long T, which is its value.
`pcen_smoother_loop` is the frame-by-frame reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def pcen_smoother_loop(x: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """Reference: M_0 = x_0, M_t = (1 − s)·M_{t−1} + s·x_t, a Python loop over frames. x [B, N, T], s [N]."""
    s = smooth
    frames = [x[..., 0]]
    for t in range(1, x.shape[-1]):
        frames.append((1 - s) * frames[-1] + s * x[..., t])
    return torch.stack(frames, dim=-1)


def pcen_smoother_scan(x: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """Same recurrence by a doubling scan in ⌈log2 T⌉ vectorised steps. x [B, N, T], s [N] → [B, N, T]."""
    n_frames = x.shape[-1]
    decay = (1 - smooth)[:, None].expand(-1, n_frames)                       # A_t, [N, T]
    decay = torch.cat([torch.zeros_like(decay[:, :1]), decay[:, 1:]], dim=-1)  # A_0 = 0
    acc = torch.cat([x[..., :1], smooth[:, None] * x[..., 1:]], dim=-1)       # b_t
    d = 1
    while d < n_frames:
        acc = torch.cat([acc[..., :d], acc[..., d:] + decay[:, d:] * acc[..., :-d]], dim=-1)
        decay = torch.cat([decay[:, :d], decay[:, d:] * decay[:, :-d]], dim=-1)
        d *= 2
    return acc


def _safe_power(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """base^exponent for base ≥ 0, 0 at base = 0 with a finite (zero) gradient."""
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, torch.ones_like(base)) ** exponent,
                       torch.zeros_like(base))


class PCEN(nn.Module):
    """Trainable PCEN. Parameters [N]: alpha, delta, root (= 1/r), smooth_coef (s). [B, N, T] → [B, 1, N, T]."""

    def __init__(self, n_bands: int, alpha: float, delta: float, root: float, smooth_coef: float,
                 energy_floor: float, eps: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((n_bands,), float(alpha)))
        self.delta = nn.Parameter(torch.full((n_bands,), float(delta)))
        self.root = nn.Parameter(torch.full((n_bands,), float(root)))
        self.smooth_coef = nn.Parameter(torch.full((n_bands,), float(smooth_coef)))
        self.energy_floor = energy_floor
        self.eps = eps
        self.exact = False  # True: frame-by-frame loop smoother (reference)

    def constrained(self) -> dict[str, torch.Tensor]:
        """Constrained per-band values: alpha ≤ 1, delta ≥ 0, r = 1/max(root, 1) ≤ 1, s ∈ [0, 1]."""
        return {"alpha": self.alpha.clamp(max=1.0), "delta": self.delta.clamp(min=0.0),
                "r": 1.0 / self.root.clamp(min=1.0), "s": self.smooth_coef.clamp(0.0, 1.0)}

    def forward(self, energies: torch.Tensor) -> torch.Tensor:
        p = {k: v.to(energies.dtype) for k, v in self.constrained().items()}
        x = energies.clamp(min=self.energy_floor)
        smoother = (pcen_smoother_loop if self.exact else pcen_smoother_scan)(x, p["s"])
        alpha, delta, r = p["alpha"][:, None], p["delta"][:, None], p["r"][:, None]
        gain = torch.exp(-alpha * (math.log(self.eps) + torch.log1p(smoother / self.eps)))
        y = (x * gain + delta) ** r - _safe_power(delta, r)
        return y[:, None]
