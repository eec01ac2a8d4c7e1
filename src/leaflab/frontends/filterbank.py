"""The Filterbank interface every filterbank implements, and the learnable Gabor one LEAF and EfficientLEAF share.

A filterbank maps x [B, T] to band energies [B, N, J] at the frame rate and describes itself in physical units
(Hz, ms, numpy float64) so that plots and logs need not know which filterbank it is.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .framing import FrameGrid
from .gabor import (constrain_centers, constrain_sigmas, gabor_impulse_responses, mel_init, sigma_to_fwhm_hz)
from .pooling import constrain_pooling_widths


class Filterbank(nn.Module):
    """x [B, T] → [B, N, J]. `fast` picks the kernels (frontends/kernels) over the definition where there are any."""

    learnable = False
    fast = True

    def center_frequencies_hz(self) -> np.ndarray:
        """[N] Hz: each band's centre as used now."""
        raise NotImplementedError

    def bandwidths_hz(self) -> np.ndarray:
        """[N] Hz: each band's full width at half maximum."""
        raise NotImplementedError

    def pooling_widths_ms(self) -> np.ndarray:
        """[N] ms: standard deviation of each band's low-pass window in input time."""
        raise NotImplementedError

    def initial_center_frequencies_hz(self) -> np.ndarray:
        return self.center_frequencies_hz()

    def initial_bandwidths_hz(self) -> np.ndarray:
        return self.bandwidths_hz()

    def frequency_responses(self, n_fft: int) -> tuple[np.ndarray, np.ndarray]:
        """(freqs [n_fft//2 + 1] Hz, |H_n(f)| [N, n_fft//2 + 1]): DTFT of the impulse responses."""
        sr = self.grid.sample_rate
        freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
        omega = 2 * np.pi * freqs / sr
        mags = []
        for h in self.impulse_responses():
            t = np.arange(len(h)) - len(h) // 2
            mags.append(np.abs(np.exp(-1j * np.outer(omega, t)) @ h))
        return freqs, np.stack(mags)

    def impulse_responses(self) -> list[np.ndarray]:
        """Complex impulse response of each band as forward uses it."""
        raise NotImplementedError


class GaborFilterbank(Filterbank):
    """Learnable Gabor filters + Gaussian pooling, initialised from the mel scale: center_freqs η [N] rad/sample,
    bandwidths σ [N] samples, pooling_widths ρ [N] (raw; `constrained()` gives the values forward uses)."""

    learnable = True
    sigma_min_factor = 4.0

    def __init__(self, n_filters: int, min_freq: float, max_freq: float, grid: FrameGrid, pooling_init: float):
        super().__init__()
        self.grid = grid
        self.n_filters = n_filters
        centers, sigmas = mel_init(n_filters, min_freq, max_freq, grid.sample_rate)
        self.center_freqs = nn.Parameter(torch.tensor(centers, dtype=torch.float32))
        self.bandwidths = nn.Parameter(torch.tensor(sigmas, dtype=torch.float32))
        self.pooling_widths = nn.Parameter(torch.full((n_filters,), float(pooling_init)))
        self._initial = (centers, sigmas)

    def constrained(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(η, σ, ρ) clamped to [0, π], [σ_min·z, K·z], [2/K, 0.5]."""
        taps = self.grid.taps
        return (constrain_centers(self.center_freqs), constrain_sigmas(self.bandwidths, taps, self.sigma_min_factor),
                constrain_pooling_widths(self.pooling_widths, taps))

    def _numpy(self) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.double().cpu().numpy() for t in self.constrained()]

    def center_frequencies_hz(self) -> np.ndarray:
        return self._numpy()[0] * self.grid.sample_rate / (2 * np.pi)

    def bandwidths_hz(self) -> np.ndarray:
        """FWHM of the Gaussian frequency response, sr·z/σ."""
        return sigma_to_fwhm_hz(self._numpy()[1], self.grid.sample_rate)

    def initial_center_frequencies_hz(self, stored: bool = False) -> np.ndarray:
        """The analytic mel init (stored=True: as rounded into the float32 parameters)."""
        centers = np.float32(self._initial[0]).astype(np.float64) if stored else self._initial[0]
        return centers * self.grid.sample_rate / (2 * np.pi)

    def initial_bandwidths_hz(self, stored: bool = False) -> np.ndarray:
        sigmas = np.float32(self._initial[1]).astype(np.float64) if stored else self._initial[1]
        return sigma_to_fwhm_hz(sigmas, self.grid.sample_rate)

    def kernel_spans(self) -> list[tuple[int, int, int]]:
        """(first filter, end, taps) of each set of filters sharing a kernel length."""
        return [(0, self.n_filters, self.grid.taps)]

    def impulse_responses(self) -> list[np.ndarray]:
        centers, sigmas, _ = (torch.as_tensor(a) for a in self._numpy())
        out = []
        for start, stop, taps in self.kernel_spans():
            k = gabor_impulse_responses(centers[start:stop], sigmas[start:stop], taps // 2).numpy()
            out.extend(k[: stop - start] + 1j * k[stop - start:])
        return out
