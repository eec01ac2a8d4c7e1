"""Time axis of every frontend: taps from window_ms, frame centres from hop_ms, 100 frames/s at any sample rate.

Scheme (the same for leaf, efficientleaf and mel):
- taps K = the odd number nearest window_ms·sr/1000, i.e. 2·floor(window_ms·sr/2000) + 1
  (401 at 16 kHz, 201 at 8 kHz, 551 at 22.05 kHz; equals the reference's "int, then +1 if even").
- hop h = hop_ms·sr/1000 samples as an exact fraction (160 at 16 kHz, 441/2 at 22.05 kHz).
- frame j is centred on sample c_j = floor(j·h + 1/2) (h rounded to the nearest sample, never accumulating drift);
  frames exist for every j with c_j <= n_samples − 1, so num_frames(n) = ceil((n − 1/2) / h).
  For an integer hop this is exactly the reference conv1d(stride=hop, padding=(K−1)/2) framing (100 frames for 1 s).
- the hop is periodic: with h = a/P in lowest terms, c_{j+P} = c_j + a. Strided computations use strides that
  divide a ("the hop period"), P phases of frames, each a plain strided convolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np


def taps_for_window(window_ms: float, sample_rate: int) -> int:
    """Odd number of taps nearest window_ms·sample_rate/1000 (401 for 25 ms at 16 kHz)."""
    exact = Fraction(window_ms) * sample_rate / 1000
    return 2 * int(exact // 2) + 1


@dataclass(frozen=True)
class FrameGrid:
    """Frame centres of one configuration. hop_samples is exact (a Fraction)."""

    sample_rate: int
    hop_samples: Fraction
    taps: int

    @classmethod
    def from_ms(cls, sample_rate: int, window_ms: float, hop_ms: float) -> "FrameGrid":
        return cls(sample_rate, Fraction(hop_ms) * sample_rate / 1000, taps_for_window(window_ms, sample_rate))

    @property
    def period_frames(self) -> int:
        """P: the frame-centre pattern repeats every P frames (1 for an integer hop)."""
        return self.hop_samples.denominator

    @property
    def period_samples(self) -> int:
        """a: the centres advance by a samples every P frames (= the hop for an integer hop)."""
        return self.hop_samples.numerator

    @cached_property
    def strides(self) -> list[int]:
        """Allowed strides: the divisors of the hop period a, ascending."""
        a = self.period_samples
        return [d for d in range(1, a + 1) if a % d == 0]

    def largest_stride_at_most(self, limit: float) -> int:
        """The largest allowed stride <= max(1, limit)."""
        best = 1
        for d in self.strides:
            if d <= limit:
                best = d
        return best

    def num_frames(self, n_samples: int) -> int:
        """Number of frames for a clip of n_samples: ceil((n − 1/2) / h), 0 for an empty clip."""
        n_samples = int(n_samples)  # a tracer's shape entry is a tensor: the clip length is fixed in a traced graph
        if n_samples <= 0:
            return 0
        q = (Fraction(n_samples) - Fraction(1, 2)) / self.hop_samples
        return int(-((-q.numerator) // q.denominator))

    def frame_centres(self, n_samples: int) -> np.ndarray:
        """[J] int64: c_j = floor(j·h + 1/2), the sample each frame is centred on."""
        j = np.arange(self.num_frames(n_samples), dtype=np.int64)
        a, p = self.period_samples, self.period_frames
        return (2 * j * a + p) // (2 * p)

    def frame_times_s(self, n_samples: int) -> np.ndarray:
        """[J] float64: the centre time of each frame in seconds (c_j / sample_rate)."""
        return self.frame_centres(n_samples).astype(np.float64) / self.sample_rate
