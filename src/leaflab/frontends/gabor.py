"""Gabor filters (LEAF): mel initialisation, constraints, impulse responses and the energy |x ∗ φ_n|².

Init: mel points f_i (N + 2, evenly spaced on 1127·ln(1 + f/700) from f_min to f_max); centre η_n = 2π·f_n/sr
(rad/sample), width σ_n = (sr/2)/(f_{n+1} − f_{n−1}) (samples), so a filter starts as wide as a mel triangle.
Impulse response, t = −L…L:  φ_n(t) = exp(−t²/(2σ_n²))·exp(i·η_n·t) / (√(2π)·σ_n).
Constraints (applied in forward): η ∈ [0, π]; σ ∈ [σ_min·z, K·z], z = √(2 ln 2)/π (σ_min 4 for LEAF, 2 for
EfficientLEAF): a filter never gets narrower in time than a few samples nor wider than the window.
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
    return 2.0 * np.pi * f[1:-1] / sample_rate, (sample_rate / 2.0) / (f[2:] - f[:-2])


def constrain_centers(centers: torch.Tensor) -> torch.Tensor:
    """η clamped to [0, π]."""
    return centers.clamp(0.0, math.pi)


def constrain_sigmas(sigmas: torch.Tensor, taps: int, min_factor: float = 4.0) -> torch.Tensor:
    """σ clamped to [min_factor·z, K·z]."""
    return sigmas.clamp(min_factor * FWHM_Z, taps * FWHM_Z)


def sigma_to_fwhm_hz(sigmas, sample_rate: int):
    """FWHM of |Φ(ω)| = exp(−σ²(ω−η)²/2) in Hz: 2·√(2 ln 2)/σ rad/sample = sr·z/σ."""
    return sample_rate * FWHM_Z / sigmas


def gabor_impulse_responses(centers: torch.Tensor, sigmas: torch.Tensor, half_length: int) -> torch.Tensor:
    """Re and Im of φ_n(t), t = −L…L: centers, sigmas [N] → [2N, 2L + 1] (rows 0..N−1 real, N..2N−1 imag)."""
    t = torch.arange(-half_length, half_length + 1, dtype=centers.dtype, device=centers.device)
    envelope = torch.exp(-0.5 * (t / sigmas[:, None]) ** 2) / (math.sqrt(2 * math.pi) * sigmas[:, None])
    phase = centers[:, None] * t
    return torch.cat([envelope * torch.cos(phase), envelope * torch.sin(phase)], dim=0)


def gabor_energies(x: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor, taps: int,
                   stride: int = 1) -> torch.Tensor:
    """E_n(m) = |x ∗ φ_n|²(m·s), K taps, zero padding (K−1)/2: x [B, T], η, σ [N] → [B, N, ⌈T/s⌉]."""
    n = centers.shape[0]
    kernels = gabor_impulse_responses(centers, sigmas, taps // 2)
    z = F.conv1d(F.pad(x, (taps // 2, taps // 2))[:, None], kernels[:, None], stride=stride)
    return z[:, :n] ** 2 + z[:, n:] ** 2
