"""Gabor filterbank (LEAF): mel initialisation, constraints, impulse responses, and the exact energy.

Init (REFERENCE.md): mel points m_i = linspace(mel(f_min), mel(f_max), N + 2), mel(f) = 1127·ln(1 + f/700),
f_i = 700·(e^{m_i/1127} − 1); centre η_n = 2π·f_n/sr (rad/sample); width σ_n = (sr/2)/(f_{n+1} − f_{n−1}) (samples).
Impulse response, t = −L…L:  φ_n(t) = exp(−t²/(2σ_n²))·exp(i·η_n·t) / (√(2π)·σ_n).
Energy: E_n = (x ∗ Re φ_n)² + (x ∗ Im φ_n)², zero padding, "same" length.
Constraints (functional, applied in forward): η ∈ [0, π]; σ ∈ [σ_min·z, K·z], z = √(2 ln 2)/π
(σ_min = 4 for LEAF, 2 for EfficientLEAF).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

FWHM_Z = math.sqrt(2 * math.log(2)) / math.pi  # z: sigma = z / (FWHM in cycles per sample)


def mel_points_hz(n_filters: int, min_freq: float, max_freq: float) -> np.ndarray:
    """[N + 2] float64: f_i = 700·(exp(m_i/1127) − 1), m_i evenly spaced on 1127·ln(1 + f/700)."""
    lo, hi = 1127.0 * np.log1p(min_freq / 700.0), 1127.0 * np.log1p(max_freq / 700.0)
    return 700.0 * np.expm1(np.linspace(lo, hi, n_filters + 2) / 1127.0)


def mel_init(n_filters: int, min_freq: float, max_freq: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Analytic init: (η [N] rad/sample, σ [N] samples), float64."""
    f = mel_points_hz(n_filters, min_freq, max_freq)
    centers = 2.0 * np.pi * f[1:-1] / sample_rate
    sigmas = (sample_rate / 2.0) / (f[2:] - f[:-2])
    return centers, sigmas


def constrain_centers(centers: torch.Tensor) -> torch.Tensor:
    """η clamped to [0, π] (functional)."""
    return centers.clamp(0.0, math.pi)


def constrain_sigmas(sigmas: torch.Tensor, taps: int, min_factor: float = 4.0) -> torch.Tensor:
    """σ clamped to [min_factor·z, K·z] (functional); min_factor 4 for LEAF, 2 for EfficientLEAF."""
    return sigmas.clamp(min_factor * FWHM_Z, taps * FWHM_Z)


def sigma_to_fwhm_hz(sigmas, sample_rate: int):
    """FWHM of |Φ(ω)| = exp(−σ²(ω−η)²/2) in Hz: 2·√(2 ln 2)/σ rad/sample = sr·z/σ."""
    return sample_rate * FWHM_Z / sigmas


def gabor_impulse_responses(centers: torch.Tensor, sigmas: torch.Tensor, half_length: int) -> torch.Tensor:
    """Real and imaginary parts of φ_n(t) for t = −L…L (L = half_length).

    centers, sigmas: [N] → [2N, 2L + 1]: rows 0..N−1 are Re φ_n, rows N..2N−1 are Im φ_n.
    """
    t = torch.arange(-half_length, half_length + 1, dtype=centers.dtype, device=centers.device)
    envelope = torch.exp(-0.5 * (t / sigmas[:, None]) ** 2) / (math.sqrt(2 * math.pi) * sigmas[:, None])
    phase = centers[:, None] * t
    return torch.cat([envelope * torch.cos(phase), envelope * torch.sin(phase)], dim=0)


def strided_conv1d(x_padded: torch.Tensor, kernels: torch.Tensor, stride: int, n_out: int) -> torch.Tensor:
    """out[b, c, m] = Σ_k x_padded[b, m·stride + k]·kernels[c, k], m = 0..n_out−1 (no padding added here).

    x_padded: [B, L] with L >= (n_out − 1)·stride + K; kernels: [C, K] → [B, C, n_out].
    Implemented as a polyphase stride-1 convolution with `stride` input channels (measured 2–8× faster than
    conv1d(stride=s) on CPU, and it keeps the work proportional to n_out).
    """
    channels, taps = kernels.shape
    if stride == 1:
        return F.conv1d(x_padded[:, None, : n_out + taps - 1], kernels[:, None])
    taps_per_phase = -(-taps // stride)
    length = (n_out + taps_per_phase - 1) * stride
    if x_padded.shape[-1] < length:
        x_padded = F.pad(x_padded, (0, length - x_padded.shape[-1]))
    phases = x_padded[:, :length].reshape(x_padded.shape[0], -1, stride).transpose(1, 2)
    kernel_phases = F.pad(kernels, (0, taps_per_phase * stride - taps))
    kernel_phases = kernel_phases.reshape(channels, taps_per_phase, stride).transpose(1, 2)
    return F.conv1d(phases, kernel_phases)


def gabor_energies_exact(x: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor, taps: int) -> torch.Tensor:
    """E_n(t) = |x ∗ φ_n|²(t), t = 0..T−1, full K taps, zero padding (K−1)/2 ("same").

    x: [B, T]; centers, sigmas: [N] (already constrained) → [B, N, T]. The reference definition (slow).
    """
    n = centers.shape[0]
    kernels = gabor_impulse_responses(centers, sigmas, taps // 2)
    z = F.conv1d(F.pad(x, (taps // 2, taps // 2))[:, None], kernels[:, None])
    return z[:, :n] ** 2 + z[:, n:] ** 2
