"""LEAF filterbank (Zeghidour et al. 2021): Gabor energies, then Gaussian pooling at the frame centres.

    P_n(j) = Σ_u w_n(u)·E_n(c_j + u),   E_n = |x ∗ φ_n|² (K taps, zero padding)      x [B, T] → [B, N, J]

The definition below convolves every sample with all K taps. The fast path (kernels/leaf.py) computes the same
numbers within ~1e−6 of each band's maximum with shorter supports and per-filter strides; its plan depends on σ
only and is cached until σ changes.
"""
from __future__ import annotations

import numpy as np
import torch

from .filterbank import GaborFilterbank
from .framing import FrameGrid
from .gabor import gabor_energies
from .kernels.leaf import StrideGroup, leaf_pooled_energies, plan_stride_groups
from .pooling import gaussian_pool, gaussian_pooling_windows


def leaf_definition(x: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor, windows: torch.Tensor,
                    grid: FrameGrid) -> torch.Tensor:
    """K-tap stride-1 Gabor energies pooled at the frame centres → [B, N, J]."""
    energies = gabor_energies(x, centers, sigmas, grid.taps)
    frame_centres = torch.as_tensor(grid.frame_centres(x.shape[-1]), device=x.device)
    stride = grid.period_samples if grid.period_frames == 1 else None
    return gaussian_pool(energies, windows, frame_centres, stride)


class LeafFilterbank(GaborFilterbank):
    """Learnable η, σ, ρ per filter; σ ≥ 4z."""

    sigma_min_factor = 4.0

    def __init__(self, n_filters: int, min_freq: float, max_freq: float, grid: FrameGrid, pooling_init: float):
        super().__init__(n_filters, min_freq, max_freq, grid, pooling_init)
        self._plan_key = None
        self._plan: list[StrideGroup] = []

    @classmethod
    def from_config(cls, cfg, grid: FrameGrid) -> "LeafFilterbank":
        return cls(cfg.n_filters, cfg.min_freq, cfg.max_freq, grid, cfg.pooling_init)

    def pooling_widths_ms(self) -> np.ndarray:
        """ρ·(K−1)/2 samples in ms."""
        return 1000 * self._numpy()[2] * (self.grid.taps - 1) / 2 / self.grid.sample_rate

    def stride_groups(self, sigmas: torch.Tensor) -> list[StrideGroup]:
        """The fast path's plan, recomputed (one host sync) only when σ, its dtype or device changed; plans made
        under torch.inference_mode hold tensors autograd refuses, so they are keyed apart."""
        p = self.bandwidths
        key = (p.data_ptr(), p._version, sigmas.dtype, sigmas.device, torch.is_inference_mode_enabled())
        if key != self._plan_key:
            self._plan = plan_stride_groups(sigmas.detach().double().cpu().numpy(), self.grid, sigmas.dtype,
                                            sigmas.device)
            self._plan_key = key
        return self._plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centers, sigmas, widths = (t.to(x.dtype) for t in self.constrained())
        windows = gaussian_pooling_windows(widths, self.grid.taps)
        if not self.fast:
            return leaf_definition(x, centers, sigmas, windows, self.grid)
        return leaf_pooled_energies(x, centers, sigmas, windows, self.stride_groups(sigmas), self.grid)
