"""Gabor energy and Gaussian pooling at evenly spaced frames as one autograd function, with a backward of
matrix products over blocks of h samples (derivation: docs/frontends.md).

Contract: pooled_energy(z, w, h, J)[b, i, j] = Σ_u w[i, u]·E[b, i, j·h + u − (W−1)/2], E = re² + im² of the
parts z [B, 2n, M] (0 outside [0, M)): pooling.gaussian_pool of the energies with stride h, values and gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .conv import depthwise_conv1d


def _geometry(length: int, taps: int, hop: int, n_frames: int) -> tuple[int, int, int, int]:
    """(pad, D, A, used): half window, window rows per frame, blocks reached by any frame, samples inside one."""
    pad = taps // 2
    blocks = -(-taps // hop)
    n_blocks = n_frames + blocks - 1
    return pad, blocks, n_blocks, min(length, n_blocks * hop - pad)


def _energy_into(energy: torch.Tensor, parts: torch.Tensor, pad: int, used: int) -> None:
    """energy [B, n, A·h] (any strides) ← re² + im² of parts [B, 2n, M] at τ = t + pad, zeros elsewhere."""
    n = energy.shape[1]
    energy[..., :pad].zero_()
    energy[..., pad + used:].zero_()
    inner = energy[..., pad: pad + used]
    real, imag = parts[:, :n, :used], parts[:, n:, :used]
    torch.mul(real, real, out=inner)
    inner.addcmul_(imag, imag)


def _window_rows(windows: torch.Tensor, hop: int, blocks: int) -> torch.Tensor:
    """[n, h, D] with entry (i, p, d) = w[i, d·h + p] (0 past W)."""
    n, taps = windows.shape
    return F.pad(windows, (0, blocks * hop - taps)).view(n, blocks, hop).transpose(1, 2)


def _shifted_gradients(grad: torch.Tensor, n_blocks: int, blocks: int) -> torch.Tensor:
    """∂P[b, i, a − d] at (b, i, a, d) for grad ∂P [B, n, J] → [B, n, A, D], 0 where a − d is not a frame."""
    batch, n, n_frames = grad.shape
    shifted = grad.new_zeros(batch, n, n_blocks, blocks)
    for d in range(blocks):
        shifted[:, :, d: d + n_frames, d] = grad
    return shifted


def _block_diagonal(windows: torch.Tensor, hop: int, blocks: int, parts: int, scale: float) -> torch.Tensor:
    """[D·n, h·parts·n] with entry ((d, i), (p, part, i')) = scale·w[i, d·h + p]·[i = i'] (0 past W)."""
    n = windows.shape[0]
    rows = _window_rows(windows, hop, blocks)                                        # [n, h, D]
    diagonal = torch.diag_embed(scale * rows.permute(2, 1, 0))                      # [D, h, n, n]: (d, p, i, i')
    matrix = diagonal.permute(0, 2, 1, 3).unsqueeze(3).expand(blocks, n, hop, parts, n)
    return matrix.reshape(blocks * n, hop * parts * n)


class _PooledEnergy(torch.autograd.Function):
    """Time-major parts [B, M, 2n]: products over blocks with the bands side by side (block-diagonal matrices)."""

    @staticmethod
    def forward(ctx, parts: torch.Tensor, windows: torch.Tensor, hop: int, n_frames: int) -> torch.Tensor:
        batch, length, channels = parts.shape
        n, taps = windows.shape
        pad, blocks, n_blocks, used = _geometry(length, taps, hop, n_frames)
        energy = parts.new_empty(batch, n_blocks * hop, n)         # E on τ = t + pad, zero outside the clip
        _energy_into(energy.transpose(1, 2), parts.transpose(1, 2), pad, used)
        pooled = depthwise_conv1d(energy.transpose(1, 2), windows, hop)[..., :n_frames]
        ctx.save_for_backward(parts, windows, energy)
        ctx.geometry = (hop, pad, blocks, n_blocks, used)
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        parts, windows, energy = ctx.saved_tensors
        hop, pad, blocks, n_blocks, used = ctx.geometry
        batch, length, channels = parts.shape
        n, taps = windows.shape
        shifted = _shifted_gradients(grad, n_blocks, blocks).permute(0, 2, 3, 1)   # (b, a, d, i)
        shifted = shifted.reshape(batch * n_blocks, blocks * n)
        grad_parts = grad_windows = None
        if ctx.needs_input_grad[0]:
            spread = shifted @ _block_diagonal(windows, hop, blocks, 2, 2.0)  # 2·∂E for both parts, [B·A, h·2n]
            spread = spread.view(batch, n_blocks * hop, channels)[:, pad: pad + used]
            grad_parts = parts[:, :used] * spread
            if used < length:                                       # samples no window reaches
                grad_parts = F.pad(grad_parts, (0, 0, 0, length - used))
        if ctx.needs_input_grad[1]:
            full = shifted.t() @ energy.view(batch * n_blocks, hop * n)          # [D·n, h·n]
            diagonal = torch.diagonal(full.view(blocks, n, hop, n), dim1=1, dim2=3)  # [D, h, n]
            grad_windows = diagonal.permute(2, 0, 1).reshape(n, blocks * hop)[:, :taps]
        return grad_parts, grad_windows, None, None


class _PooledEnergyChannelsFirst(torch.autograd.Function):
    """Channels-first parts [B, 2n, M] (e.g. from FFTs): per-band products over blocks, [A, h] @ [h, D]."""

    @staticmethod
    def forward(ctx, parts: torch.Tensor, windows: torch.Tensor, hop: int, n_frames: int) -> torch.Tensor:
        batch, channels, length = parts.shape
        n, taps = windows.shape
        pad, blocks, n_blocks, used = _geometry(length, taps, hop, n_frames)
        energy = parts.new_empty(batch, n, n_blocks * hop)
        _energy_into(energy, parts, pad, used)
        rows = _window_rows(windows, hop, blocks)                                    # [n, h, D]
        products = energy.view(batch, n, n_blocks, hop) @ rows                       # [B, n, A, D]
        pooled = products[:, :, :n_frames, 0].clone()
        for d in range(1, blocks):
            pooled += products[:, :, d: d + n_frames, d]
        ctx.save_for_backward(parts, windows, energy)
        ctx.geometry = (hop, pad, blocks, n_blocks, used)
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        parts, windows, energy = ctx.saved_tensors
        hop, pad, blocks, n_blocks, used = ctx.geometry
        batch, channels, length = parts.shape
        n, taps = windows.shape
        shifted = _shifted_gradients(grad, n_blocks, blocks)
        grad_parts = grad_windows = None
        if ctx.needs_input_grad[0]:
            rows = _window_rows(2.0 * windows, hop, blocks)
            spread = (shifted @ rows.transpose(1, 2)).view(batch, n, n_blocks * hop)[..., pad: pad + used]
            grad_parts = parts.new_zeros(batch, channels, length) if used < length else parts.new_empty(
                batch, channels, length)
            torch.mul(parts[:, :n, :used], spread, out=grad_parts[:, :n, :used])
            torch.mul(parts[:, n:, :used], spread, out=grad_parts[:, n:, :used])
        if ctx.needs_input_grad[1]:
            per_clip = energy.view(batch, n, n_blocks, hop).transpose(2, 3) @ shifted   # [B, n, h, D]
            grad_windows = per_clip.sum(0).transpose(1, 2).reshape(n, blocks * hop)[:, :taps]
        return grad_parts, grad_windows, None, None


def pooled_energy(parts: torch.Tensor, windows: torch.Tensor, hop: int, n_frames: int) -> torch.Tensor:
    """P [B, n, J] from the parts z [B, 2n, M] and windows [n, W] (module docstring).

    z may be a transposed view of time-major memory [B, M, 2n] (strided_conv1d's output) or channels-first
    [B, 2n, M] (fft_correlate's); each layout has its own backward, so that no gradient is transposed.
    """
    if windows.shape[1] % 2 == 0 or parts.shape[1] != 2 * windows.shape[0]:
        raise ValueError(f"pooled_energy: parts {tuple(parts.shape)} and windows {tuple(windows.shape)} do not match "
                         "([B, 2n, M] and [n, odd W])")
    if parts.stride(1) == 1 and parts.stride(2) == parts.shape[1]:
        return _PooledEnergy.apply(parts.transpose(1, 2), windows, hop, n_frames)
    return _PooledEnergyChannelsFirst.apply(parts, windows, hop, n_frames)
