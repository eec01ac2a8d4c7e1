"""Frontend: a filterbank (leaf | efficientleaf | mel) followed by a compression (pcen | tbn).

    fe = Frontend(FrontendConfig(filterbank="efficientleaf", compression="tbn"))
    y = fe(x)     # x float [B, samples] or [B, 1, samples] → y [B, C, n_filters, frames]

C = fe.out_channels: 1 for PCEN (and TBN without median append), 2 for TBN with median append.
Frames: 100 per second at hop 10 ms for any sample rate (framing.py). Init is deterministic (docs/frontends.md).
The frontend knows nothing about files, DVC or MLflow. Inspection helpers return numpy arrays in Hz / ms.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from leaflab.errors import LeaflabError

from .config import FrontendConfig, validate_config
from .efficientleaf import EfficientLeafFilterbank
from .framing import FrameGrid
from .gabor import gabor_impulse_responses, mel_init, sigma_to_fwhm_hz
from .leaf import LeafFilterbank
from .mel import MelFilterbank, mel_triangles
from .pcen import PCEN
from .tbn import LogTBN


class Frontend(nn.Module):
    """Filterbank + compression. `exact=True` selects the slow reference paths (direct K-tap LEAF, loop PCEN)."""

    def __init__(self, cfg: FrontendConfig = FrontendConfig(), exact: bool = False):
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self.grid = FrameGrid.from_ms(cfg.sample_rate, cfg.window_ms, cfg.hop_ms)
        args = (cfg.n_filters, cfg.min_freq, cfg.max_freq, self.grid)
        if cfg.filterbank == "leaf":
            self.filterbank = LeafFilterbank(*args, cfg.pooling_init)
        elif cfg.filterbank == "efficientleaf":
            self.filterbank = EfficientLeafFilterbank(*args, cfg.pooling_init, cfg.groups, cfg.window_factor,
                                                      cfg.stride_factor)
        else:
            self.filterbank = MelFilterbank(*args)
        if cfg.compression == "pcen":
            p = cfg.pcen
            self.compression = PCEN(cfg.n_filters, p.alpha, p.delta, p.root, p.smooth_coef, p.energy_floor, p.eps)
        else:
            t = cfg.tbn
            self.compression = LogTBN(cfg.n_filters, t.log_gain, t.median_append, t.momentum, t.bn_eps)
        centers, sigmas = mel_init(cfg.n_filters, cfg.min_freq, cfg.max_freq, cfg.sample_rate)
        self._initial_centers_hz = centers * cfg.sample_rate / (2 * np.pi)
        self._initial_sigmas = sigmas
        # the init as stored in float32 parameters: "change" is measured from these (exactly 0 at init)
        self._stored_initial_centers_hz = np.float32(centers).astype(np.float64) * cfg.sample_rate / (2 * np.pi)
        self._stored_initial_bandwidths_hz = sigma_to_fwhm_hz(np.float32(sigmas).astype(np.float64),
                                                              cfg.sample_rate)
        self.exact = exact

    # ---- running -------------------------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """True: reference implementations (direct full-K LEAF convolution, frame loop PCEN)."""
        return self._exact

    @exact.setter
    def exact(self, value: bool) -> None:
        self._exact = bool(value)
        for module in (self.filterbank, self.compression):
            if hasattr(module, "exact"):
                module.exact = self._exact

    @property
    def out_channels(self) -> int:
        return 2 if (self.cfg.compression == "tbn" and self.cfg.tbn.median_append) else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, samples] or [B, 1, samples] → [B, C, n_filters, frames]."""
        if x.dim() == 3 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 2:
            raise LeaflabError(f"Frontend input shape {tuple(x.shape)}: expected [B, samples] or [B, 1, samples]")
        if x.shape[-1] < 1:
            raise LeaflabError("Frontend input has 0 samples: pass at least one sample per clip")
        if not x.is_floating_point():
            x = x.float()
        return self.compression(self.filterbank(x))

    def num_frames(self, n_samples: int) -> int:
        """Frames for a clip of n_samples: ceil((n − 1/2)/hop) (100 for 1 s at any sample rate)."""
        return self.grid.num_frames(int(n_samples))

    def frame_times_s(self, n_samples: int) -> np.ndarray:
        """[frames] centre time of each frame in seconds."""
        return self.grid.frame_times_s(int(n_samples))

    # ---- parameters ----------------------------------------------------------------------------------------
    def filterbank_parameters(self) -> list[nn.Parameter]:
        return list(self.filterbank.parameters())

    def compression_parameters_list(self) -> list[nn.Parameter]:
        return list(self.compression.parameters())

    # ---- inspection (numpy, current constrained values) -------------------------------------------------------
    def _constrained_filterbank(self):
        with torch.no_grad():
            return [t.double().cpu().numpy() for t in self.filterbank.constrained()]

    def center_frequencies_hz(self) -> np.ndarray:
        """[N] Hz: η·sr/(2π) (constrained); for mel the fixed mel centres."""
        if self.cfg.filterbank == "mel":
            return self.filterbank.center_frequencies_hz()
        return self._constrained_filterbank()[0] * self.cfg.sample_rate / (2 * np.pi)

    def initial_center_frequencies_hz(self) -> np.ndarray:
        """[N] Hz: the analytic mel init."""
        return self._initial_centers_hz.copy()

    def bandwidths_hz(self) -> np.ndarray:
        """[N] Hz: FWHM of the Gabor filter's Gaussian frequency response, sr·z/σ (z = √(2 ln 2)/π);
        for mel: FWHM of the triangle, (f_{n+1} − f_{n−1})/2."""
        if self.cfg.filterbank == "mel":
            return self.filterbank.bandwidths_hz()
        return sigma_to_fwhm_hz(self._constrained_filterbank()[1], self.cfg.sample_rate)

    def initial_bandwidths_hz(self) -> np.ndarray:
        """[N] Hz: the same definition at init (mel: the fixed triangles)."""
        if self.cfg.filterbank == "mel":
            return self.filterbank.bandwidths_hz()
        return sigma_to_fwhm_hz(self._initial_sigmas, self.cfg.sample_rate)

    def pooling_widths_ms(self) -> np.ndarray:
        """[N] ms: standard deviation of the Gaussian pooling window in input time, ρ·(K−1)/2/sr.
        EfficientLEAF: ρ'·(W_g−1)/2·s_g/sr of its group's window. mel: the standard deviation of the Hann
        window seen as a distribution, K·√(1/12 − 1/(2π²))/sr (same for every band)."""
        taps, sr = self.grid.taps, self.cfg.sample_rate
        if self.cfg.filterbank == "mel":
            return np.full(self.cfg.n_filters, 1000 * taps * math.sqrt(1 / 12 - 1 / (2 * math.pi**2)) / sr)
        widths = self._constrained_filterbank()[2]
        if self.cfg.filterbank == "leaf":
            return 1000 * widths * (taps - 1) / 2 / sr
        out = np.empty_like(widths)
        for geo in self.filterbank.geometry():
            s, w = geo.conv_stride, geo.pool_taps
            out[geo.start:geo.stop] = widths[geo.start:geo.stop] / s * taps / w * (w - 1) / 2 * s
        return 1000 * out / sr

    def compression_parameters(self) -> dict[str, np.ndarray]:
        """PCEN: alpha, delta, r, s per band (constrained); TBN: a per band."""
        with torch.no_grad():
            if self.cfg.compression == "pcen":
                return {k: v.double().cpu().numpy() for k, v in self.compression.constrained().items()}
            return {"a": self.compression.log_gain.double().cpu().numpy()}

    def impulse_responses(self) -> list[np.ndarray]:
        """Complex impulse response of each filter as used by forward ([K] for LEAF, [K_g] for EfficientLEAF)."""
        centers, sigmas, _ = (torch.as_tensor(a) for a in self._constrained_filterbank())
        n = len(centers)
        if self.cfg.filterbank == "leaf":
            spans = [(0, n, self.grid.taps)]
        else:
            spans = [(g.start, g.stop, g.kernel_taps) for g in self.filterbank.geometry()]
        out = []
        for start, stop, taps in spans:
            k = gabor_impulse_responses(centers[start:stop], sigmas[start:stop], taps // 2).numpy()
            m = stop - start
            out.extend(k[:m] + 1j * k[m:])
        return out

    def frequency_responses(self, n_fft: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(freqs_hz [n_fft//2 + 1], |H_n(f)| [N, n_fft//2 + 1]) of the current filters (DTFT of the impulse
        responses; mel: the triangles, peak 1/area-normalised as in the fbank)."""
        sr = self.cfg.sample_rate
        n_bins = n_fft // 2 + 1
        freqs = np.arange(n_bins) * sr / n_fft
        if self.cfg.filterbank == "mel":
            fb = mel_triangles(n_bins, self.cfg.n_filters, self.cfg.min_freq, self.cfg.max_freq, sr)
            return freqs, fb.T.double().numpy()
        omega = 2 * np.pi * freqs / sr
        mags = []
        for h in self.impulse_responses():
            t = np.arange(len(h)) - len(h) // 2
            mags.append(np.abs(np.exp(-1j * np.outer(omega, t)) @ h))
        return freqs, np.stack(mags)

    def parameter_summary(self) -> dict[str, float]:
        """Scalars for per-epoch logging (learned vs init)."""
        out: dict[str, float] = {}
        centers = self.center_frequencies_hz()
        out["frontend/center_hz_mean"] = float(centers.mean())
        learnable = self.cfg.filterbank != "mel"
        out["frontend/center_hz_mean_abs_change"] = \
            float(np.abs(centers - self._stored_initial_centers_hz).mean()) if learnable else 0.0
        bw = self.bandwidths_hz()
        bw0 = self._stored_initial_bandwidths_hz if learnable else bw
        out["frontend/bandwidth_hz_mean"] = float(bw.mean())
        out["frontend/bandwidth_mean_rel_change"] = float(np.abs(bw / bw0 - 1).mean())
        out["frontend/pooling_width_ms_mean"] = float(self.pooling_widths_ms().mean())
        for key, value in self.compression_parameters().items():
            prefix = "pcen" if self.cfg.compression == "pcen" else "tbn"
            out[f"frontend/{prefix}_{key}_mean"] = float(value.mean())
        return out
