"""Fast EfficientLEAF filterbank: all groups' kernels and windows made in one go, consecutive groups with the same
stride run as one convolution, energy and pooling fused (pooled_energy). Why and how much faster: docs/frontends.md.

Contract: efficientleaf_pooled_energies(x, η, σ, ρ, geometry, grid) equals efficientleaf.py's definition
(rounding only), values and gradients.
"""
from __future__ import annotations

import numpy as np
import torch

from ..framing import FrameGrid
from ..gabor import gabor_impulse_responses
from .conv import complex_energy, depthwise_conv1d, strided_conv1d
from .pooled_energy import pooled_energy


def same_stride_runs(geometry: list) -> list[list]:
    """Consecutive groups with the same conv stride (hence the same pooling taps): computed as one, with one
    convolution over the largest K_g of the run (8 groups at stride factor 16 make 6 runs; 4 groups make 4)."""
    runs: list[list] = []
    for geo in geometry:
        if runs and runs[-1][-1].conv_stride == geo.conv_stride:
            runs[-1].append(geo)
        else:
            runs.append([geo])
    return runs


def _tap_mask(run: list, taps: int, dtype, device) -> torch.Tensor:
    """[n_run, taps]: 1 where |t| ≤ (K_g − 1)/2 of the filter's own group, 0 elsewhere (t centred)."""
    t = np.abs(np.arange(taps) - taps // 2)
    mask = np.concatenate([np.broadcast_to(t <= geo.kernel_taps // 2, (geo.stop - geo.start, taps)) for geo in run])
    return torch.as_tensor(mask, dtype=dtype, device=device)


def efficientleaf_pooled_energies(x: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor,
                                  widths: torch.Tensor, geometry, grid: FrameGrid) -> torch.Tensor:
    """[B, N, J] from x [B, T] and the constrained η, σ, ρ [N] with the group geometry of efficientleaf.py."""
    n_samples = x.shape[-1]
    frame_centres = grid.frame_centres(n_samples)
    # Impulse responses and pooling windows of all groups in one go, centred on grids of the largest group's
    # taps; each group slices its own taps out of them (fewer small ops: what 8 groups spend their time on).
    half = max(geo.kernel_taps for geo in geometry) // 2
    all_kernels = gabor_impulse_responses(centers, sigmas, half).view(2, centers.shape[0], 2 * half + 1)
    all_windows = pooling_windows(widths, geometry, grid.taps)
    pool_half = all_windows.shape[1] // 2
    outputs = []
    for run in same_stride_runs(geometry):
        s, k_g, w_g = run[0].conv_stride, max(geo.kernel_taps for geo in run), run[0].pool_taps
        start, stop = run[0].start, run[-1].stop
        kernels = all_kernels[:, start:stop, half - k_g // 2: half + k_g // 2 + 1]
        if any(geo.kernel_taps != k_g for geo in run):  # zero the taps past each group's own K_g
            kernels = kernels * _tap_mask(run, k_g, kernels.dtype, kernels.device)
        n_coarse = (n_samples - 1) // s + 1
        z = strided_conv1d(x, kernels.reshape(-1, k_g), s, n_coarse, pad_left=k_g // 2)
        windows = all_windows[start:stop, pool_half - w_g // 2: pool_half + w_g // 2 + 1]
        if grid.period_frames == 1:  # frames every period_samples // s coarse samples, from 0
            outputs.append(pooled_energy(z, windows, grid.period_samples // s, len(frame_centres)))
        else:
            index = np.minimum((2 * frame_centres + s) // (2 * s), n_coarse - 1)
            pooled = depthwise_conv1d(complex_energy(z), windows, 1, w_g // 2)
            outputs.append(pooled[..., torch.as_tensor(index, device=x.device)])
    return torch.cat(outputs, dim=1)


def pooling_windows(widths: torch.Tensor, geometry, taps: int) -> torch.Tensor:
    """Every filter's window w_n(u) = exp(−½·(2u/((W_g − 1)·ρ'_n))²), ρ'_n = ρ_n/s_g·K/W_g, on the centred taps
    u = −(W_max − 1)/2 … (W_max − 1)/2 (the windows of pooling.py written around the centre) → [N, W_max]."""
    pool_taps = np.concatenate([np.full(g.stop - g.start, g.pool_taps) for g in geometry])
    strides = np.concatenate([np.full(g.stop - g.start, g.conv_stride) for g in geometry])
    # 2/((W − 1)·ρ') = 2·s·W/((W − 1)·K·ρ), a per-filter constant times 1/ρ
    # a 1-tap window (possible at 22.05 kHz with stride factor 16) is [1]: its scale is 0, not 2·s/(0·K)
    scale = np.where(pool_taps > 1, 2.0 * strides * pool_taps / (np.maximum(pool_taps - 1, 1) * taps), 0.0)
    scale = torch.as_tensor(scale, dtype=widths.dtype, device=widths.device)
    half = int(pool_taps.max()) // 2
    u = torch.arange(-half, half + 1, dtype=widths.dtype, device=widths.device)
    return torch.exp(-0.5 * (u * (scale / widths)[:, None]) ** 2)
