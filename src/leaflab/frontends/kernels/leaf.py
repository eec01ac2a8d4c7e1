"""Fast LEAF filterbank: the pooled Gabor energies of leaf.py computed with truncated supports, per-filter
strides and band-limited interpolation (the derivation and its error bound: docs/frontends.md).

Contract: leaf_pooled_energies(x, η, σ, windows, plan, grid) equals leaf.py's definition within ~1e−6 of each
band's maximum (float64), values and gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..framing import FrameGrid
from .conv import complex_energy, depthwise_conv1d, strided_conv1d
from .pooled_energy import pooled_energy
from ..gabor import gabor_impulse_responses

SUPPORT_SIGMAS = 5.0          # half support of a Gabor kernel in σ
ALIAS_SIGMA_BAND = 7.5        # energy band edge ω_p = 7.5/σ (spectrum < e^{-14} beyond)
ALIAS_MARGIN = 1.2            # π/s >= 1.2·ω_p
TRUNCATION_EDGE_MAX = 1e-4    # K-tap truncation edge above which a filter stays at stride 1
INTERP_ERFC_WIDTHS = 3.8      # transition half-width of g in units of τ (erfc(3.8) < 1e-7)
INTERP_TAIL = 8.5             # g is cut where exp(-(τt/2)²) < 1e-15


@dataclass
class StrideGroup:
    """Filters computed together: indices [n_g], stride s, half support L, interpolation kernel g [2R_g+1]."""

    indices: torch.Tensor
    stride: int
    half_support: int
    interpolator: torch.Tensor


def interpolation_lowpass(stride: int, passband: float, dtype, device) -> torch.Tensor:
    """g(t) = sin(πt/s)/(πt/s)·exp(−(τt/2)²), t = −R..R: gain 1 on |ω| < ω_p, ~0 beyond 2π/s − ω_p.

    τ = (2π/s − 2ω_p)/(2·3.8); R = ⌈8.5/τ⌉. g(m·s) = δ_m (interpolating). stride 1 → [1].
    """
    if stride == 1:
        return torch.ones(1, dtype=dtype, device=device)
    stopband = 2 * math.pi / stride - passband
    tau = (stopband - passband) / 2 / INTERP_ERFC_WIDTHS
    radius = int(math.ceil(INTERP_TAIL / tau))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    arg = math.pi * t / stride
    sinc = torch.where(t == 0, torch.ones(()), torch.sin(arg) / torch.where(t == 0, torch.ones(()), arg))
    return (sinc * torch.exp(-(tau * t / 2) ** 2)).to(dtype=dtype, device=device)


def interpolation_matrix(interpolator: torch.Tensor, taps: int) -> torch.Tensor:
    """G [K, K + 2R] with G[u, t] = g[t − u] (0 outside g's 2R + 1 taps), so that w @ G = w ∗ g (full length).

    A small dense product: on the CPU, conv1d with g's up to ~1000 taps on these short windows measured
    10–50× slower than this matrix product.
    """
    radius = interpolator.numel() // 2
    lag = (torch.arange(taps + 2 * radius, device=interpolator.device)[None, :]
           - torch.arange(taps, device=interpolator.device)[:, None])
    inside = (lag >= 0) & (lag <= 2 * radius)
    return torch.where(inside, interpolator[lag.clamp(0, 2 * radius)], 0.0)


def plan_stride_groups(sigmas: np.ndarray, grid: FrameGrid, dtype, device) -> list[StrideGroup]:
    """Choose per-filter stride and support from σ (see module docstring) and group equal strides."""
    taps = grid.taps
    half = taps // 2
    strides = []
    for sigma in sigmas:
        truncation_edge = math.exp(-half**2 / (2 * sigma**2))
        if truncation_edge > TRUNCATION_EDGE_MAX:
            strides.append(1)
        else:
            strides.append(grid.largest_stride_at_most(math.pi * sigma / (ALIAS_MARGIN * ALIAS_SIGMA_BAND)))
    groups = []
    for stride in sorted(set(strides), reverse=True):
        members = [n for n, s in enumerate(strides) if s == stride]
        sig = sigmas[members]
        half_support = min(half, int(math.ceil(SUPPORT_SIGMAS * float(sig.max()))))
        interpolator = interpolation_lowpass(stride, ALIAS_SIGMA_BAND / float(sig.min()), dtype, device)
        groups.append(StrideGroup(torch.tensor(members, device=device), stride, half_support, interpolator))
    return groups


def pooled_energies_strided(x: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor, windows: torch.Tensor,
                            group: StrideGroup, grid: FrameGrid) -> torch.Tensor:
    """Fast pooled energies of one stride group (module docstring, steps 1–3).

    x: [B, T]; centers, sigmas: [n_g]; windows: [n_g, K] → [B, n_g, J].
    """
    batch, n_samples = x.shape
    n = centers.shape[0]
    taps, s, L = grid.taps, group.stride, group.half_support
    a, periods = grid.period_samples, grid.period_frames
    frame_centres = grid.frame_centres(n_samples)
    n_frames = len(frame_centres)
    # v = w ∗ g on offsets −(K−1)/2 − R_g … ; pad so that offsets −R−s … R+s exist (R a multiple of s).
    g = group.interpolator
    r_g = g.numel() // 2
    v = windows @ interpolation_matrix(g, taps) if r_g else windows
    r_v = taps // 2 + r_g
    R = -(-r_v // s) * s
    v = F.pad(v, (R + s - r_v, R + s - r_v))          # index i ↔ offset i − (R + s)
    n_kernel = 2 * R // s + 2                         # ker_p[i] = v(−R − o_p + i·s)
    n_coarse = int(frame_centres[-1]) // s + n_kernel + 1   # coarse samples τ_m = −R + m·s
    # Energies on the coarse grid (z uses zero-padded x; E is the band-limited "natural" energy).
    kernels = gabor_impulse_responses(centers, sigmas, L)
    pad_left = R + L
    pad_right = max(0, (n_coarse - 1) * s + 2 * L + 1 - pad_left - n_samples)
    z = strided_conv1d(F.pad(x, (pad_left, pad_right)), kernels, s, n_coarse)
    energy = complex_energy(z)
    # Pool each phase of frames with its own sampled kernel, one strided depthwise conv per phase.
    out = energy.new_empty(batch, n, n_frames)
    for p in range(min(periods, n_frames)):
        c_p = int(frame_centres[p])
        q_p, o_p = divmod(c_p, s)
        start = s - o_p  # index of offset −R − o_p in v
        kernel_p = v[:, start: start + (n_kernel - 1) * s + 1: s]
        pooled = depthwise_conv1d(energy[..., q_p:], kernel_p, a // s)
        out[..., p::periods] = pooled[..., : len(range(p, n_frames, periods))]
    # Edge frames: the definition pools E·1[0,T); remove the band-limited E outside the clip.
    reach = min(L, taps // 2)
    edge = (frame_centres - taps // 2 < 0) | (frame_centres + taps // 2 > n_samples - 1)
    edge_frames = np.nonzero(edge)[0]
    if reach > 0 and len(edge_frames):
        x_ext = F.pad(x, (2 * L, 2 * L))
        seg_left = x_ext[:, L - reach: 3 * L]                      # t = −reach … −1
        seg_right = x_ext[:, n_samples + L: n_samples + 2 * L + reach + L]  # t = T … T + reach − 1
        z_out = torch.cat([strided_conv1d(seg_left, kernels, 1, reach),
                           strided_conv1d(seg_right, kernels, 1, reach)], dim=-1)
        e_out = complex_energy(z_out)               # [B, n, 2·reach]
        t_out = np.concatenate([np.arange(-reach, 0), np.arange(n_samples, n_samples + reach)])
        offset = t_out[None, :] - frame_centres[edge_frames][:, None] + taps // 2   # [J_e, 2·reach] window index
        inside = (offset >= 0) & (offset < taps)
        idx = torch.as_tensor(np.clip(offset, 0, taps - 1), device=x.device)
        weights = windows[:, idx] * torch.as_tensor(inside, dtype=windows.dtype, device=x.device)  # [n, J_e, 2r]
        correction = torch.einsum("bnt,njt->bnj", e_out, weights)
        out = out.index_add(-1, torch.as_tensor(edge_frames, device=x.device), -correction)
    return out


def pooled_energies_stride1(x: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor, windows: torch.Tensor,
                            group: StrideGroup, grid: FrameGrid) -> torch.Tensor:
    """A stride-1 group with an integer hop: the definition itself, E on every sample of the clip (zero outside)
    pooled at the frame centres, with kernels of ±L taps. pooled_energy.pooled_energy → [B, n_g, J]."""
    n_samples = x.shape[-1]
    L = group.half_support
    kernels = gabor_impulse_responses(centers, sigmas, L)
    z = strided_conv1d(F.pad(x, (L, L)), kernels, 1, n_samples)
    return pooled_energy(z, windows, grid.period_samples, grid.num_frames(n_samples))


def leaf_pooled_energies(x: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor, windows: torch.Tensor,
                         plan: list[StrideGroup], grid: FrameGrid) -> torch.Tensor:
    """[B, N, J]: every stride group of `plan` by its path, put back in filter order."""
    outputs, order = [], []
    for group in plan:
        i = group.indices
        if group.stride == 1 and grid.period_frames == 1:
            outputs.append(pooled_energies_stride1(x, centers[i], sigmas[i], windows[i], group, grid))
        else:
            outputs.append(pooled_energies_strided(x, centers[i], sigmas[i], windows[i], group, grid))
        order.append(i)
    out = torch.cat(outputs, dim=1)
    inverse = torch.empty_like(torch.cat(order))
    inverse[torch.cat(order)] = torch.arange(inverse.numel(), device=inverse.device)
    return out[:, inverse]
