"""Frontend: a filterbank followed by a compression, both picked by name from registry.py.

    fe = Frontend(FrontendConfig(filterbank="efficientleaf", compression="tbn"))
    y = fe(x)     # x float [B, samples] or [B, 1, samples] → y [B, C, n_filters, frames]

C = fe.out_channels (the compression's). Frames: 100 per second at hop 10 ms for any sample rate (framing.py).
Inspection helpers return numpy arrays in Hz / ms; the frontend knows nothing about files, DVC or MLflow.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from leaflab.errors import LeaflabError

from .config import IMPLEMENTATIONS, FrontendConfig, validate_config
from .framing import FrameGrid
from .registry import COMPRESSIONS, FILTERBANKS


class Frontend(nn.Module):
    """Filterbank + compression; cfg.implementation picks the fast kernels or the reference definitions."""

    def __init__(self, cfg: FrontendConfig = FrontendConfig()):
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self.grid = FrameGrid.from_ms(cfg.sample_rate, cfg.window_ms, cfg.hop_ms)
        self.filterbank = FILTERBANKS[cfg.filterbank].from_config(cfg, self.grid)
        self.compression = COMPRESSIONS[cfg.compression].from_config(cfg)
        self.implementation = cfg.implementation

    @property
    def implementation(self) -> str:
        """"fast" (frontends/kernels) or "reference" (the plain-autograd definitions)."""
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise LeaflabError(f"Frontend.implementation = {value!r}: expected fast or reference")
        self._implementation = value
        self.filterbank.fast = self.compression.fast = value == "fast"

    @property
    def out_channels(self) -> int:
        return self.compression.out_channels

    @property
    def channel_names(self) -> tuple[str, ...]:
        """A label per output channel (e.g. TBN's "log energy", "median-subtracted")."""
        return self.compression.channel_names

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

    # ---- inspection: the filterbank's and the compression's own descriptions -------------------------------
    def center_frequencies_hz(self) -> np.ndarray:
        return self.filterbank.center_frequencies_hz()

    def initial_center_frequencies_hz(self) -> np.ndarray:
        return self.filterbank.initial_center_frequencies_hz()

    def bandwidths_hz(self) -> np.ndarray:
        return self.filterbank.bandwidths_hz()

    def initial_bandwidths_hz(self) -> np.ndarray:
        return self.filterbank.initial_bandwidths_hz()

    def pooling_widths_ms(self) -> np.ndarray:
        return self.filterbank.pooling_widths_ms()

    def frequency_responses(self, n_fft: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        return self.filterbank.frequency_responses(n_fft)

    def compression_parameters(self) -> dict[str, np.ndarray]:
        """Per-band values: PCEN alpha, delta, r, s; TBN a."""
        return self.compression.values()

    def parameter_summary(self) -> dict[str, float]:
        """Scalars for per-epoch logging (learned vs init, measured from the float32-stored init)."""
        fb = self.filterbank
        centers, bw = fb.center_frequencies_hz(), fb.bandwidths_hz()
        centers0 = fb.initial_center_frequencies_hz(stored=True) if fb.learnable else centers
        bw0 = fb.initial_bandwidths_hz(stored=True) if fb.learnable else bw
        out = {"frontend/center_hz_mean": float(centers.mean()),
               "frontend/center_hz_mean_abs_change": float(np.abs(centers - centers0).mean()),
               "frontend/bandwidth_hz_mean": float(bw.mean()),
               "frontend/bandwidth_mean_rel_change": float(np.abs(bw / bw0 - 1).mean()),
               "frontend/pooling_width_ms_mean": float(self.pooling_widths_ms().mean())}
        for key, value in self.compression_parameters().items():
            out[f"frontend/{self.compression.summary_prefix}_{key}_mean"] = float(value.mean())
        return out
