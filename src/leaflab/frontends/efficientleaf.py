"""EfficientLEAF filterbank (Schlüter & Gutenbrunner 2022): LEAF's Gabor filters in G groups, each with its own
convolution stride and kernel length, so that high-frequency filters need not run at every sample.

For group g (filters ⌊g·N/G⌋ … ⌊(g+1)·N/G⌋ − 1):
- stride s_g = the largest divisor of the hop (period) ≤ max(1, π / max(η in g) · stride_factor);
- kernel K_g = int(max(σ in g) · window_factor), +1 if even; energy E_n(m) = |x ∗ φ_n|²(m·s_g);
- pooling window W_g = int(K/s_g + 0.5), +1 if even, width ρ'_n = ρ_n/s_g · K/W_g, stride hop/s_g
  (not renormalised: a group's output carries a gain of about 1/s_g, which the compression absorbs).
σ ≥ 2z. Frame j reads the coarse sample nearest its centre, ⌊c_j/s_g + ½⌋ (non-integer hops, e.g. 22.05 kHz).
The geometry depends on η and σ (host integers); it is cached until they change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .filterbank import GaborFilterbank
from .framing import FrameGrid
from .gabor import gabor_energies
from .kernels.efficientleaf import efficientleaf_pooled_energies
from .pooling import gaussian_pool, gaussian_pooling_windows


@dataclass(frozen=True)
class GroupGeometry:
    """One group: filters [start, stop), conv stride, Gabor kernel taps, pooling window taps."""

    start: int
    stop: int
    conv_stride: int
    kernel_taps: int
    pool_taps: int


def odd_at_least(value: float) -> int:
    """int(value), +1 if even."""
    n = int(value)
    return n + 1 - n % 2


def group_geometry(centers: np.ndarray, sigmas: np.ndarray, groups: int, window_factor: float,
                   stride_factor: float, grid: FrameGrid) -> list[GroupGeometry]:
    """Geometry of every group from the constrained η, σ (module docstring)."""
    n = len(centers)
    splits = [g * n // groups for g in range(groups + 1)]
    out = []
    for start, stop in zip(splits[:-1], splits[1:]):
        max_center = float(centers[start:stop].max())
        limit = math.inf if max_center <= 0 else max(1.0, math.pi / max_center * stride_factor)
        stride = grid.strides[-1] if math.isinf(limit) else grid.largest_stride_at_most(limit)
        kernel_taps = odd_at_least(float(sigmas[start:stop].max()) * window_factor)
        out.append(GroupGeometry(start, stop, stride, kernel_taps, odd_at_least(grid.taps / stride + 0.5)))
    return out


def efficientleaf_definition(x: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor, widths: torch.Tensor,
                             geometry: list[GroupGeometry], grid: FrameGrid) -> torch.Tensor:
    """Group by group: strided energies, Gaussian pooling of ρ' over W_g taps at the frames → [B, N, J]."""
    frame_centres = grid.frame_centres(x.shape[-1])
    outputs = []
    for g in geometry:
        s, i = g.conv_stride, slice(g.start, g.stop)
        energies = gabor_energies(x, centers[i], sigmas[i], g.kernel_taps, s)
        windows = gaussian_pooling_windows(widths[i] / s * grid.taps / g.pool_taps, g.pool_taps)
        nearest = np.minimum((2 * frame_centres + s) // (2 * s), energies.shape[-1] - 1)  # coarse sample per frame
        index = torch.as_tensor(nearest, device=x.device)
        stride = grid.period_samples // s if grid.period_frames == 1 else None  # frames every hop/s coarse samples
        outputs.append(gaussian_pool(energies, windows, index, stride))
    return torch.cat(outputs, dim=1)


class EfficientLeafFilterbank(GaborFilterbank):
    """Learnable η, σ, ρ per filter in `groups` groups; σ ≥ 2z."""

    sigma_min_factor = 2.0

    def __init__(self, n_filters: int, min_freq: float, max_freq: float, grid: FrameGrid, pooling_init: float,
                 groups: int, window_factor: float, stride_factor: float):
        super().__init__(n_filters, min_freq, max_freq, grid, pooling_init)
        self.groups, self.window_factor, self.stride_factor = groups, window_factor, stride_factor
        self._geometry_key = None
        self._geometry: list[GroupGeometry] = []

    @classmethod
    def from_config(cls, cfg, grid: FrameGrid) -> "EfficientLeafFilterbank":
        return cls(cfg.n_filters, cfg.min_freq, cfg.max_freq, grid, cfg.pooling_init, cfg.groups, cfg.window_factor,
                   cfg.stride_factor)

    def geometry(self) -> list[GroupGeometry]:
        """Cached group geometry; recomputed (one host sync) only when η or σ changed. While torch.export or
        torch.compile traces, the parameters are the graph's constants and have no data: the cache is used."""
        if self._geometry and torch.compiler.is_compiling():
            return self._geometry
        c, b = self.center_freqs, self.bandwidths
        key = (c.data_ptr(), c._version, b.data_ptr(), b._version)
        if key != self._geometry_key:
            centers, sigmas, _ = self._numpy()
            self._geometry = group_geometry(centers, sigmas, self.groups, self.window_factor, self.stride_factor,
                                            self.grid)
            self._geometry_key = key
        return self._geometry

    def kernel_spans(self) -> list[tuple[int, int, int]]:
        return [(g.start, g.stop, g.kernel_taps) for g in self.geometry()]

    def pooling_widths_ms(self) -> np.ndarray:
        """ρ'·(W_g−1)/2·s_g samples of each group's window, in ms."""
        widths, out = self._numpy()[2], np.empty(self.n_filters)
        for g in self.geometry():
            s, w = g.conv_stride, g.pool_taps
            out[g.start:g.stop] = widths[g.start:g.stop] / s * self.grid.taps / w * (w - 1) / 2 * s
        return 1000 * out / self.grid.sample_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centers, sigmas, widths = (t.to(x.dtype) for t in self.constrained())
        if not self.fast:
            return efficientleaf_definition(x, centers, sigmas, widths, self.geometry(), self.grid)
        return efficientleaf_pooled_energies(x, centers, sigmas, widths, self.geometry(), self.grid)
