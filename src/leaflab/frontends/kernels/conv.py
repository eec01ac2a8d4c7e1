"""Fast convolutions of the frontends: blocked strided Gabor convolution, FFT correlation, channels-last
depthwise pooling convolution and the complex energy. Each computes exactly what its docstring's formula says;
tests/test_frontend_kernels.py checks values and gradients against direct sums. Why each form: docs/frontends.md.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


def strided_conv1d(x_padded: torch.Tensor, kernels: torch.Tensor, stride: int, n_out: int,
                   pad_left: int = 0) -> torch.Tensor:
    """out[b, c, m] = Σ_k x_padded[b, m·stride + k]·kernels[c, k], m = 0..n_out−1.

    x_padded: [B, L]; kernels: [C, K] → [B, C, n_out] (a channels-last view). x_padded is read as zero-padded by
    pad_left samples on the left and by as many as needed on the right (one copy of the signal in all).
    Blocked form: the signal is cut into rows of Q = P·stride samples (P output phases per row) and read as a
    channels-last [B, Q, 1, rows] image without a copy; one stride-1 conv2d with Q input channels and P·C output
    channels (kernel taps regrouped by phase, zeros where a phase runs past the kernel) gives P consecutive
    outputs per row, already in [B, m, C] memory order (why and how fast: docs/frontends.md).
    """
    channels, taps = kernels.shape
    if stride == 1 and taps >= FFT_MIN_TAPS:
        return fft_correlate(F.pad(x_padded, (pad_left, n_out + taps - 1 - pad_left - x_padded.shape[-1])),
                             kernels, n_out)
    phases = 1
    while phases < 8 and taps >= 40 * phases * stride:
        phases *= 2
    block = phases * stride
    n_rows = -(-n_out // phases)
    row_taps = -(-(taps + (phases - 1) * stride) // block)
    length = (n_rows + row_taps - 1) * block
    if pad_left or x_padded.shape[-1] != length:  # exactly `length` samples (zeros added or tail dropped)
        x_padded = F.pad(x_padded, (pad_left, length - pad_left - x_padded.shape[-1]))
    batch = x_padded.shape[0]
    image = x_padded.reshape(batch, -1, block).transpose(1, 2).unsqueeze(2)  # [B, Q, 1, rows], channels-last
    index = _blocked_kernel_index(taps, stride, phases, x_padded.device)                 # [P, Q, row_taps]
    weight = F.pad(kernels, (0, 1))[:, index]                                            # [C, P, Q, row_taps]
    weight = weight.transpose(0, 1).reshape(phases * channels, block, 1, row_taps)
    out = F.conv2d(image, weight)                                                        # [B, P·C, 1, rows]
    out = out.squeeze(2).transpose(1, 2).reshape(batch, n_rows * phases, channels)       # [B, m, C]
    return out[:, :n_out].transpose(1, 2)


FFT_MIN_TAPS = 201  # stride-1 kernels this long go through fft_correlate (measured faster from ~200 taps)


def fast_fft_size(n: int) -> int:
    """The smallest multiple of 16 ≥ n whose other prime factors are 2, 3, 5 and 7 (fast pocketfft/MKL sizes)."""
    size = -(-max(n, 1) // 16) * 16
    while True:
        rest = size // 16
        for prime in (2, 3, 5, 7):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 16


def fft_correlate(x_padded: torch.Tensor, kernels: torch.Tensor, n_out: int) -> torch.Tensor:
    """out[b, c, m] = Σ_k x_padded[b, m + k]·kernels[c, k], m = 0..n_out−1, by real FFTs → [B, C, n_out].

    One transform of the signal, one per kernel, one inverse per (clip, kernel), of a length ≥ n_out + K − 1,
    so the circular correlation never wraps.
    """
    taps = kernels.shape[1]
    length = n_out + taps - 1
    size = fast_fft_size(length)
    spectrum = torch.fft.rfft(x_padded[:, :length], n=size)
    responses = torch.fft.rfft(kernels, n=size)
    return torch.fft.irfft(spectrum[:, None] * responses.conj(), n=size)[..., :n_out]


def _blocked_kernel_index(taps: int, stride: int, phases: int, device: torch.device) -> torch.Tensor:
    """index[p, q, j] = j·Q + q − p·stride into a kernel of `taps` taps, or `taps` (a zero) outside it."""
    return torch.tensor(_blocked_kernel_index_np(taps, stride, phases), device=device)


@functools.lru_cache(maxsize=64)
def _blocked_kernel_index_np(taps: int, stride: int, phases: int) -> np.ndarray:
    # cached as numpy: a cached tensor made under torch.inference_mode could not be used with autograd later
    block = phases * stride
    row_taps = -(-(taps + (phases - 1) * stride) // block)
    index = (np.arange(row_taps)[None, None, :] * block + np.arange(block)[None, :, None]
             - (np.arange(phases) * stride)[:, None, None])
    index = np.where((index >= 0) & (index < taps), index, taps)
    index.flags.writeable = False
    return index


class _ComplexEnergy(torch.autograd.Function):
    """|re|² + |im|² of parts [..., 2, n] → [..., n]; one output pass forward, one gradient pass backward."""

    @staticmethod
    def forward(ctx, parts: torch.Tensor) -> torch.Tensor:
        real, imag = parts[..., 0, :], parts[..., 1, :]
        energy = real * real
        energy.addcmul_(imag, imag)
        ctx.save_for_backward(parts)
        return energy

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (parts,) = ctx.saved_tensors
        return parts * (2 * grad).unsqueeze(-2)


def complex_energy(z: torch.Tensor) -> torch.Tensor:
    """|z|² from stacked parts: z [B, 2n, M] (rows 0..n−1 real, n..2n−1 imaginary) → [B, n, M].

    Computed in the [B, M, 2, n] order strided_conv1d produces, so neither direction copies or zero-fills.
    """
    n = z.shape[1] // 2
    return _ComplexEnergy.apply(z.transpose(1, 2).unflatten(-1, (2, n))).transpose(1, 2)


def depthwise_conv1d(signals: torch.Tensor, kernels: torch.Tensor, stride: int = 1,
                     padding: int = 0) -> torch.Tensor:
    """out[b, n, j] = Σ_u kernels[n, u]·signals[b, n, j·stride + u − padding], zeros outside the signals.

    signals: [B, N, L] in any memory layout; kernels: [N, W] → [B, N, J]; a channels-last depthwise conv2d.
    """
    n = kernels.shape[0]
    last = signals.transpose(1, 2)                                       # [B, L, N]
    if padding:
        last = F.pad(last, (0, 0, padding, padding))
    image = last.contiguous().transpose(1, 2).unsqueeze(2)               # [B, N, 1, L] channels-last
    return F.conv2d(image, kernels[:, None, None, :], stride=(1, stride), groups=n).squeeze(2)
