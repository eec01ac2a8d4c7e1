"""Fast PCEN: the smoother as matrix products (dense decay matrix up to 256 frames, blocked beyond) with its
adjoint, and the whole compression as one autograd function with a hand-written backward. Derivation: docs/frontends.md.

Contracts: pcen_smoother(x, s) equals pcen.smoother (the frame loop); pcen_fused(E, α, δ, r, s, floor, ε) equals
pcen.pcen (values and gradients, rounding only).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

def linear_recurrence(inputs: torch.Tensor, decay: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """y_t = q·y_{t−1} + u_t with y_{−1} = initial, per band, by two blocked matrix products (module docstring).

    inputs u [N, R, T] (R rows per band), decay q [N] in [0, 1], initial [N, R] → y [N, R, T]. No autograd use.
    """
    n_bands, n_rows, n_frames = inputs.shape
    size = math.isqrt(n_frames - 1) + 1 if n_frames > 1 else 1              # block length b = ⌈√T⌉
    n_blocks = -(-n_frames // size)
    q = decay[:, None, None]
    lag = torch.arange(size, device=inputs.device)
    lags = lag[None, :] - lag[:, None]                                     # [b, b]: i − k
    within = torch.where(lags >= 0, q ** lags.clamp(min=0).to(inputs.dtype), 0.0)
    block = torch.arange(n_blocks, device=inputs.device)
    block_lags = block[None, :] - block[:, None]
    across = torch.where(block_lags >= 0, q ** (size * block_lags.clamp(min=0)).to(inputs.dtype), 0.0)
    blocks = F.pad(inputs, (0, n_blocks * size - n_frames)).reshape(n_bands, n_rows * n_blocks, size)
    # Products written as (Dᵀ·Uᵀ)ᵀ: MKL ran these skinny batched GEMMs 5× faster with the long side as columns.
    partial = _bmm_transposed(blocks, within).reshape(n_bands, n_rows, n_blocks, size)  # zero state per block
    entry_decay = q ** (size * (block + 1)).to(inputs.dtype)                   # [N, 1, nb]: q^{b(j+1)}
    ends = _bmm_transposed(partial[..., -1], across) + initial[..., None] * entry_decay
    entering = torch.cat([initial[..., None], ends[..., :-1]], dim=-1)        # state before each block
    step_decay = q ** (lag + 1).to(inputs.dtype)                               # [N, 1, b]: q^{i+1}
    partial.addcmul_(entering[..., None], step_decay[:, :, None, :])
    return partial.reshape(n_bands, n_rows, -1)[..., :n_frames]


def _bmm_transposed(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left @ right for [N, R, k] @ [N, k, c], computed as (rightᵀ @ leftᵀ)ᵀ (a view)."""
    return torch.bmm(right.transpose(1, 2), left.transpose(1, 2)).transpose(1, 2)


DENSE_MAX_FRAMES = 256  # up to this many frames the decay matrix D [N, T, T] is materialised


def decay_matrix(decay: torch.Tensor, n_frames: int) -> torch.Tensor:
    """D[n, k, i] = q_n^{i−k} for k ≤ i, else 0. decay q [N] in [0, 1] → [N, T, T].

    Powers below 1e−30 are set to 0 (their effect is below float32 rounding; denormals would slow the products).
    """
    lag = torch.arange(n_frames, device=decay.device, dtype=decay.dtype)
    powers = decay[:, None] ** lag
    powers = torch.where(powers < 1e-30, 0.0, powers)
    lags = torch.cat([powers.new_zeros(decay.shape[0], n_frames - 1), powers], dim=1)   # j ↔ lag j − (T − 1)
    hankel = lags.as_strided((decay.shape[0], n_frames, n_frames), (2 * n_frames - 1, 1, 1))  # lag i − (T−1−k')
    return hankel.flip(1)


def _smoother_decays(smooth: torch.Tensor, n_frames: int) -> torch.Tensor | None:
    """The decay matrix for the dense form, or None where T is too long for it (the blocked form is used)."""
    return decay_matrix(1 - smooth, n_frames) if n_frames <= DENSE_MAX_FRAMES else None


def _smooth_per_band(x: torch.Tensor, smooth: torch.Tensor, decays: torch.Tensor | None) -> torch.Tensor:
    """M for x [N, B, T] (per-band layout), s [N]: the recurrence with M_{−1} = x_0."""
    if decays is None:
        return linear_recurrence(smooth[:, None, None] * x, 1 - smooth, x[..., 0])
    inputs = smooth[:, None, None] * x
    inputs[..., 0] = x[..., 0]                                                 # u_0 = x_0 gives M_0 = x_0
    return torch.bmm(inputs, decays)


def _smoother_adjoint(grad: torch.Tensor, x: torch.Tensor, smoothed: torch.Tensor, smooth: torch.Tensor,
                      decays: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂x, ∂s) of the smoother for ∂M = grad, all [N, B, T]: λ_t = G_t + q·λ_{t+1} run backwards in time
    (λ = G·Dᵀ), ∂x_t = s·λ_t (∂x_0 = λ_0), ∂s = Σ_t λ_t·(x_t − M_{t−1})."""
    if decays is not None:
        adjoint = torch.bmm(grad, decays.transpose(1, 2))
    else:
        reversed_grad = grad.flip(-1)
        adjoint = linear_recurrence(reversed_grad, 1 - smooth, torch.zeros_like(reversed_grad[..., 0])).flip(-1)
    grad_x = adjoint * smooth[:, None, None]
    grad_x[..., 0] = adjoint[..., 0]
    previous = torch.cat([x[..., :1], smoothed[..., :-1]], dim=-1)            # M_{t−1}, M_{−1} = x_0
    grad_smooth = (adjoint * (x - previous)).sum(dim=(1, 2))
    return grad_x, grad_smooth


class _Smoother(torch.autograd.Function):
    """M = smoother(x, s) for x [B, N, T], s [N]; forward and adjoint by linear_recurrence."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
        per_band = x.detach().transpose(0, 1).contiguous()                      # [N, B, T]
        s = smooth.detach()
        decays = _smoother_decays(s, per_band.shape[-1])
        smoothed = _smooth_per_band(per_band, s, decays)
        ctx.save_for_backward(per_band, s, smoothed, decays)
        return smoothed.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        per_band, s, smoothed, decays = ctx.saved_tensors
        grad_x, grad_s = _smoother_adjoint(grad.transpose(0, 1), per_band, smoothed, s, decays)
        return grad_x.transpose(0, 1), grad_s


def pcen_smoother(x: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """M_0 = x_0, M_t = (1 − s)·M_{t−1} + s·x_t without a loop over frames. x [B, N, T], s [N] → [B, N, T]."""
    return _Smoother.apply(x, smooth.to(x.dtype))


class _PCENFused(torch.autograd.Function):
    """(x·G + δ)^r with x = max(E, floor), G = exp(−α·(ln ε + log1p(M/ε))), M = the smoother of x.

    The same numbers as pcen_reference without its − δ^r term, computed per band ([N, B, T] layout for the
    smoother's matrix products) with a hand-written backward: u^r as exp(r·ln u) and every derivative from saved
    values, so no transcendental is evaluated twice and autograd keeps no graph of ~30 elementwise nodes.
    """

    @staticmethod
    def forward(ctx, energies, alpha, delta, r, smooth, floor: float, eps: float):
        per_band = energies.detach().transpose(0, 1).contiguous()                 # [N, B, T]
        outside = per_band < floor                                                # where clamp's gradient is 0
        x = per_band.clamp_(min=floor)
        a, d, rr = (v.detach()[:, None, None] for v in (alpha, delta, r))
        decays = _smoother_decays(smooth.detach(), x.shape[-1])
        smoothed = _smooth_per_band(x, smooth.detach(), decays)
        log_level = torch.log1p(smoothed / eps).add_(math.log(eps))               # ln(ε + M), stably
        gain = torch.exp(-a * log_level)
        u = torch.addcmul(d, x, gain)
        log_u = torch.log(u)
        out = torch.exp(rr * log_u)
        ctx.save_for_backward(outside, x, smoothed, log_level, gain, u, log_u, out, alpha, r, smooth, decays)
        ctx.eps = eps
        return out.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad):
        outside, x, smoothed, log_level, gain, u, log_u, out, alpha, r, smooth, decays = ctx.saved_tensors
        a, rr = (v[:, None, None] for v in (alpha, r))
        grad_out = grad.transpose(0, 1) * out                                     # ∂/∂(r·ln u)
        grad_r = (grad_out * log_u).sum(dim=(1, 2))
        grad_u = grad_out.mul_(rr).div_(u)                                        # r·u^r / u
        grad_delta = grad_u.sum(dim=(1, 2))
        grad_gain_scaled = grad_u * x * gain                                      # ∂/∂(−α·ln(ε+M)) · (−1)
        grad_alpha = -(grad_gain_scaled * log_level).sum(dim=(1, 2))
        grad_smoothed = grad_gain_scaled.mul_(-a).div_(smoothed + ctx.eps)
        grad_x, grad_smooth = _smoother_adjoint(grad_smoothed, x, smoothed, smooth, decays)
        grad_x.addcmul_(grad_u, gain)                                             # x's direct path
        grad_energies = grad_x.masked_fill_(outside, 0.0).transpose(0, 1)
        return grad_energies, grad_alpha, grad_delta, grad_r, grad_smooth, None, None


def pcen_fused(energies: torch.Tensor, alpha: torch.Tensor, delta: torch.Tensor, r: torch.Tensor,
               smooth: torch.Tensor, floor: float, eps: float) -> torch.Tensor:
    """PCEN [B, N, T] → [B, N, T] (per-band α, δ, r, s [N], already constrained)."""
    powered = _PCENFused.apply(energies, alpha, delta, r, smooth, floor, eps)
    return powered - safe_power(delta, r)[:, None]


def safe_power(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """base^exponent for base ≥ 0, 0 at base = 0 with a finite (zero) gradient."""
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, torch.ones_like(base)) ** exponent,
                       torch.zeros_like(base))
