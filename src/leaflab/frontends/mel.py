"""Fixed mel filterbank baseline: |STFT| magnitude (power 1) → N area-normalised mel triangles.

Frame j: the K samples centred on c_j (framing.py; zero padding (K−1)/2 at both ends), times a symmetric Hann
window of K taps (torch.hann_window(K, periodic=False)), rfft with n_fft = K (K//2 + 1 bins), magnitude,
then torchaudio.functional.melscale_fbanks(f_min, f_max, N, norm="slaney" (area-normalised), mel_scale="htk"
(= 1127·ln(1 + f/700), the scale of the Gabor init)). Output [B, N, J], J = 100 frames/s like the learnable
frontends. (The EfficientLEAF code uses hop 161 and center=False, giving 97 frames for 1 s; leaflab does not.)
Nothing is learnable here; the compression after it is.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio

from .filterbank import Filterbank
from .framing import FrameGrid
from .gabor import mel_points_hz


def mel_triangles(n_bins: int, n_filters: int, min_freq: float, max_freq: float, sample_rate: int) -> torch.Tensor:
    """[n_bins, N] area-normalised HTK-mel triangles (torchaudio.functional.melscale_fbanks, norm='slaney')."""
    return torchaudio.functional.melscale_fbanks(n_bins, min_freq, max_freq, n_filters, sample_rate,
                                                 norm="slaney", mel_scale="htk")


class MelFilterbank(Filterbank):
    """x [B, T] → mel magnitudes [B, N, J]. Buffers (not saved in the state_dict): window [K], fbank [K//2+1, N]."""

    def __init__(self, n_filters: int, min_freq: float, max_freq: float, grid: FrameGrid):
        super().__init__()
        self.grid = grid
        self.n_filters = n_filters
        self.min_freq, self.max_freq = min_freq, max_freq
        self.register_buffer("window", torch.hann_window(grid.taps, periodic=False), persistent=False)
        self.register_buffer("fbank", mel_triangles(grid.taps // 2 + 1, n_filters, min_freq, max_freq,
                                                    grid.sample_rate), persistent=False)

    @classmethod
    def from_config(cls, cfg, grid: FrameGrid) -> "MelFilterbank":
        return cls(cfg.n_filters, cfg.min_freq, cfg.max_freq, grid)

    def center_frequencies_hz(self) -> np.ndarray:
        return mel_points_hz(self.n_filters, self.min_freq, self.max_freq)[1:-1]

    def bandwidths_hz(self) -> np.ndarray:
        """FWHM of each triangle: (f_{n+1} − f_{n−1})/2."""
        f = mel_points_hz(self.n_filters, self.min_freq, self.max_freq)
        return (f[2:] - f[:-2]) / 2

    def pooling_widths_ms(self) -> np.ndarray:
        """The Hann window's standard deviation as a distribution, K·√(1/12 − 1/(2π²)), for every band."""
        taps = self.grid.taps
        return np.full(self.n_filters, 1000 * taps * math.sqrt(1 / 12 - 1 / (2 * math.pi**2)) / self.grid.sample_rate)

    def frequency_responses(self, n_fft: int) -> tuple[np.ndarray, np.ndarray]:
        """The triangles on n_fft//2 + 1 bins (area-normalised as in the fbank)."""
        sr, n_bins = self.grid.sample_rate, n_fft // 2 + 1
        fb = mel_triangles(n_bins, self.n_filters, self.min_freq, self.max_freq, sr)
        return np.arange(n_bins) * sr / n_fft, fb.T.double().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.grid.taps
        centres = torch.as_tensor(self.grid.frame_centres(x.shape[-1]), device=x.device)
        padded = torch.nn.functional.pad(x, (taps // 2, taps // 2))
        frames = padded[:, centres[:, None] + torch.arange(taps, device=x.device)]   # [B, J, K]
        magnitude = torch.fft.rfft(frames * self.window.to(x.dtype), n=taps).abs()    # [B, J, K//2+1]
        return (magnitude @ self.fbank.to(x.dtype)).transpose(1, 2)
