"""EfficientLEAF filterbank (Schlüter & Gutenbrunner 2022): Gabor filters in G groups with own strides and kernels.

The N filters are split into G contiguous groups (filters ⌊g·N/G⌋ … ⌊(g+1)·N/G⌋ − 1). For group g:
- conv stride s_g = the largest divisor of the hop (period) that is ≤ max(1, π / max(η in g) · stride_factor);
- kernel K_g = int(max(σ in g) · window_factor), +1 if even (so odd); taps t = −(K_g−1)/2 … (K_g−1)/2;
- energy E_n(m) = |x ∗ φ_n|²(m·s_g), zero padding (K_g−1)/2, m = 0 … ⌊(T−1)/s_g⌋;
- pooling window W_g = int(K/s_g + 0.5), +1 if even, with ρ'_n = ρ_n/s_g · K/W_g (w of pooling.py over W_g taps),
  depthwise, padding (W_g−1)/2, stride hop/s_g. The windows are NOT renormalised: a group's output carries a gain
  of about 1/s_g relative to LEAF (10.2/4.0/2.0/1.0 at init for G = 4); the compression absorbs it.
Constraints: η ∈ [0, π], σ ∈ [2z, K·z], ρ ∈ [2/K, 0.5] (functional). Groups are concatenated: [B, N, J].
K_g may exceed K (e.g. 505 for G = 8, window_factor 6).

The group geometry depends on the values of η and σ (host-side integers). It is cached and recomputed only when
η or σ change (keyed on the parameters' version counters): no host synchronisation per forward otherwise.
Convolutions use the blocked channels-last form of gabor.strided_conv1d (the same numbers as conv1d(stride=s_g));
energy and pooling are one autograd function (energy_pooling.pooled_energy) with a matrix-product backward.
Non-integer hops (22.05 kHz): strides divide the hop period a (h = a/P), and frame j is read at the coarse
sample nearest its centre, ⌊c_j/s_g + 1/2⌋ (identical to the reference framing for an integer hop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .framing import FrameGrid
from .energy_pooling import pooled_energy
from .gabor import complex_energy, gabor_impulse_responses, strided_conv1d
from .pooling import GaborPoolingParameters, gaussian_pool, gaussian_pooling_windows


@dataclass(frozen=True)
class GroupGeometry:
    """One group: filters [start, stop), conv stride, Gabor kernel taps, pooling window taps."""

    start: int
    stop: int
    conv_stride: int
    kernel_taps: int
    pool_taps: int


def odd_at_least(value: float) -> int:
    """int(value), +1 if even (the reference's rounding to an odd size)."""
    n = int(value)
    return n + 1 - n % 2


def group_geometry(centers: np.ndarray, sigmas: np.ndarray, groups: int, window_factor: float,
                   stride_factor: float, grid: FrameGrid) -> list[GroupGeometry]:
    """Geometry of every group from constrained η, σ (host arrays), as the module docstring defines it."""
    n = len(centers)
    splits = [g * n // groups for g in range(groups + 1)]
    out = []
    for start, stop in zip(splits[:-1], splits[1:]):
        max_center = float(centers[start:stop].max())
        limit = math.inf if max_center <= 0 else max(1.0, math.pi / max_center * stride_factor)
        stride = grid.strides[-1] if math.isinf(limit) else grid.largest_stride_at_most(limit)
        kernel_taps = odd_at_least(float(sigmas[start:stop].max()) * window_factor)
        pool_taps = odd_at_least(grid.taps / stride + 0.5)
        out.append(GroupGeometry(start, stop, stride, kernel_taps, pool_taps))
    return out


class EfficientLeafFilterbank(GaborPoolingParameters):
    """EfficientLEAF filterbank (learnable η, σ, ρ per filter). x [B, T] → pooled energies [B, N, J]."""

    sigma_min_factor = 2.0

    def __init__(self, n_filters: int, min_freq: float, max_freq: float, grid: FrameGrid, pooling_init: float,
                 groups: int, window_factor: float, stride_factor: float):
        super().__init__(n_filters, min_freq, max_freq, grid, pooling_init)
        self.groups = groups
        self.window_factor = window_factor
        self.stride_factor = stride_factor
        self._geometry_key = None
        self._geometry: list[GroupGeometry] = []

    def geometry(self) -> list[GroupGeometry]:
        """Cached group geometry; recomputed (one host sync) only when η or σ changed."""
        c, b = self.center_freqs, self.bandwidths
        key = (c.data_ptr(), c._version, b.data_ptr(), b._version)
        if key != self._geometry_key:
            centers, sigmas, _ = (t.detach().double().cpu().numpy() for t in self.constrained())
            self._geometry = group_geometry(centers, sigmas, self.groups, self.window_factor, self.stride_factor,
                                            self.grid)
            self._geometry_key = key
        return self._geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centers, sigmas, widths = (t.to(x.dtype) for t in self.constrained())
        n_samples = x.shape[-1]
        centres = self.grid.frame_centres(n_samples)
        outputs = []
        for geo in self.geometry():
            s, k_g, w_g = geo.conv_stride, geo.kernel_taps, geo.pool_taps
            kernels = gabor_impulse_responses(centers[geo.start:geo.stop], sigmas[geo.start:geo.stop], k_g // 2)
            n_coarse = (n_samples - 1) // s + 1
            z = strided_conv1d(F.pad(x, (k_g // 2, k_g // 2)), kernels, s, n_coarse)
            group_widths = widths[geo.start:geo.stop] / s * self.grid.taps / w_g
            windows = gaussian_pooling_windows(group_widths, w_g)
            if self.grid.period_frames == 1:  # frames every period_samples // s coarse samples, from 0
                outputs.append(pooled_energy(z, windows, self.grid.period_samples // s,
                                             len(centres)))
            else:
                index = np.minimum((2 * centres + s) // (2 * s), n_coarse - 1)
                outputs.append(gaussian_pool(complex_energy(z), windows, torch.as_tensor(index, device=x.device),
                                             None))
        return torch.cat(outputs, dim=1)
