"""Gaussian low-pass pooling (LEAF): one learnable window per filter, applied at the frame centres.

Window over W taps, t = 0..W−1:  w_n(t) = exp(−½·((2t/(W−1) − 1)/ρ_n)²)   (peak 1, not normalised),
a Gaussian of standard deviation ρ_n·(W−1)/2 samples. Constraint: ρ ∈ [2/W, 0.5]; init 0.4.
Pooling: P_n(j) = Σ_u w_n(u + (W−1)/2)·E_n(c_j + u), E_n = 0 outside the clip: a learnable-width low-pass that
decides how much of each band's envelope reaches the frame rate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def constrain_pooling_widths(widths: torch.Tensor, taps: int) -> torch.Tensor:
    """ρ clamped to [2/W, 0.5]."""
    return widths.clamp(2.0 / taps, 0.5)


def gaussian_pooling_windows(widths: torch.Tensor, taps: int) -> torch.Tensor:
    """w_n(t) = exp(−½((2t/(W−1) − 1)/ρ_n)²), t = 0..W−1: ρ [N] → [N, W]. A 1-tap window is [1]."""
    t = torch.arange(taps, dtype=widths.dtype, device=widths.device)
    offsets = 2.0 * t / (taps - 1) - 1.0 if taps > 1 else t  # (W − 1 = 0: the centre tap, offset 0)
    return torch.exp(-0.5 * (offsets / widths[:, None]) ** 2)


def gaussian_pool(energies: torch.Tensor, windows: torch.Tensor, centres: torch.Tensor,
                  stride: int | None) -> torch.Tensor:
    """P_n(j) = Σ_u w_n(u + (W−1)/2)·E_n(c_j + u), zeros outside.

    energies [B, N, L], windows [N, odd W], centres [J] (frame centres, indices into L) → [B, N, J].

    stride: pass s when the centres are exactly 0, s, 2s, … (one strided convolution), else None.
    """
    n, taps = windows.shape
    padded = F.pad(energies, (taps // 2, taps // 2))
    if stride is not None:
        return F.conv1d(padded, windows[:, None], stride=stride, groups=n)[..., : centres.numel()]
    return F.conv1d(padded, windows[:, None], groups=n)[..., centres]
