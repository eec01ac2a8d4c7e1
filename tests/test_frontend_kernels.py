"""The fast building blocks of the frontends against plain float64 references: blocked strided convolution,
channels-last depthwise pooling, fused complex energy, fused energy + pooling, the blocked PCEN smoother and its
adjoint, the interpolation matrix, and the glibc allocator setting."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leaflab.frontends.kernels.pooled_energy import pooled_energy
from leaflab.frontends.kernels.conv import complex_energy, depthwise_conv1d, strided_conv1d
from leaflab.frontends.kernels.leaf import interpolation_matrix
from leaflab.frontends.kernels.pcen import DENSE_MAX_FRAMES, decay_matrix, pcen_smoother
from leaflab.frontends.pcen import smoother as pcen_smoother_loop


@pytest.mark.parametrize("taps,stride,n_out", [(69, 1, 500), (123, 2, 301), (221, 4, 77), (401, 10, 160),
                                               (401, 1, 333), (65, 16, 40), (505, 160, 11), (3, 1, 1)])
def test_strided_conv1d_matches_direct_sum(taps, stride, n_out):
    # covers 1, 2 and 8 output phases per row and a length that is not a multiple of the row
    rng = np.random.default_rng(taps + stride)
    x = rng.standard_normal((2, (n_out - 1) * stride + taps + 5))
    h = rng.standard_normal((3, taps))
    ref = np.array([[[x[b, m * stride: m * stride + taps] @ h[c] for m in range(n_out)] for c in range(3)]
                    for b in range(2)])
    got = strided_conv1d(torch.tensor(x), torch.tensor(h), stride, n_out)
    assert got.shape == (2, 3, n_out)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_strided_conv1d_kernel_gradient_matches_reference():
    x = torch.randn(2, 700, dtype=torch.float64)
    h = torch.randn(4, 101, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 4, 60, dtype=torch.float64)
    (grad,) = torch.autograd.grad((strided_conv1d(x, h, 10, 60) * weights).sum(), h)
    h_ref = h.detach().clone().requires_grad_()
    ref = F.conv1d(x[:, None], h_ref[:, None], stride=10)[..., :60]
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), h_ref)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


# kernels spanning few rows (the matrix-product gradient) and many rows (conv2d's), both gradients
@pytest.mark.parametrize("taps,stride,n_out", [(65, 16, 40), (505, 160, 9), (209, 40, 20), (101, 10, 60)])
def test_strided_conv1d_gradients_match_conv1d(taps, stride, n_out):
    generator = torch.Generator().manual_seed(taps)
    x = torch.randn(2, (n_out - 1) * stride + taps + 3, dtype=torch.float64, generator=generator, requires_grad=True)
    h = torch.randn(4, taps, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.randn(2, 4, n_out, dtype=torch.float64, generator=generator)
    got = torch.autograd.grad((strided_conv1d(x, h, stride, n_out) * weights).sum(), (x, h))
    ref = torch.autograd.grad((F.conv1d(x[:, None], h[:, None], stride=stride)[..., :n_out] * weights).sum(), (x, h))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 7), (16, 7), (160, 200)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_depthwise_conv1d_matches_numpy(stride, padding, layout):
    rng = np.random.default_rng(stride + padding)
    n, length, taps = 3, 1000, 2 * padding + 1 if padding else 15
    signals = rng.standard_normal((2, n, length))
    kernels = rng.standard_normal((n, taps))
    padded = np.pad(signals, ((0, 0), (0, 0), (padding, padding)))
    n_out = (length + 2 * padding - taps) // stride + 1
    ref = np.array([[[padded[b, c, j * stride: j * stride + taps] @ kernels[c] for j in range(n_out)]
                     for c in range(n)] for b in range(2)])
    t = torch.tensor(signals)
    if layout == "channels_last":
        t = t.transpose(1, 2).contiguous().transpose(1, 2)
    got = depthwise_conv1d(t, torch.tensor(kernels), stride, padding)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_complex_energy_value_and_gradient():
    z = torch.randn(2, 6, 9, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(complex_energy(z), z[:, :3] ** 2 + z[:, 3:] ** 2)
    assert torch.autograd.gradcheck(complex_energy, (z,))
    z_last = torch.randn(2, 9, 6, dtype=torch.float64).transpose(1, 2).requires_grad_()
    assert torch.autograd.gradcheck(complex_energy, (z_last,))


def pooled_energy_loop(parts, windows, hop, n_frames):
    """P[b, i, j] = Σ_u w[i, u]·(re² + im²)[b, i, j·hop + u − (W−1)/2], zero outside the clip, frame by frame."""
    n, taps = windows.shape
    energy = parts[:, :n] ** 2 + parts[:, n:] ** 2                                # [B, n, M]
    padded = F.pad(energy, (taps // 2, taps // 2 + n_frames * hop))
    return torch.stack([(padded[..., j * hop: j * hop + taps] * windows).sum(-1) for j in range(n_frames)], -1)


# (M, n, hop, W, J): window longer and shorter than the hop, hop 1, one band, samples past the last window,
# frames past the end of the clip; both memory layouts of the parts
@pytest.mark.parametrize("layout", ["time-major", "channels-first"])
@pytest.mark.parametrize("length,n,hop,taps,n_frames", [(50, 3, 5, 11, 10), (47, 2, 4, 3, 12), (30, 1, 10, 21, 3),
                                                         (64, 3, 8, 9, 5), (40, 2, 1, 5, 40), (200, 2, 16, 41, 6),
                                                         (33, 2, 3, 31, 11)])
def test_pooled_energy_value_and_gradients_equal_the_loop(length, n, hop, taps, n_frames, layout):
    generator = torch.Generator().manual_seed(length + taps)
    parts = torch.randn(2, length, 2 * n, dtype=torch.float64, generator=generator).transpose(1, 2)
    if layout == "channels-first":
        parts = parts.contiguous()
    parts.requires_grad_()
    windows = torch.rand(n, taps, dtype=torch.float64, generator=generator, requires_grad=True)
    got = pooled_energy(parts, windows, hop, n_frames)
    ref = pooled_energy_loop(parts, windows, hop, n_frames)
    assert got.shape == (2, n, n_frames)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn(got.shape, dtype=torch.float64, generator=generator)
    grads = torch.autograd.grad((got * weights).sum(), (parts, windows))
    grads_ref = torch.autograd.grad((ref * weights).sum(), (parts, windows))
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda p, w: pooled_energy(p, w, hop, n_frames), (parts, windows))


@pytest.mark.parametrize("stride,taps", [(4, 101), (1, 401)])  # blocked conv (time-major), FFT (channels-first)
def test_pooled_energy_on_gabor_outputs_in_float32_and_rejects_mismatches(stride, taps):
    x = torch.randn(2, 1700, dtype=torch.float64)
    kernels = torch.randn(6, taps, dtype=torch.float64)
    n_out = (1700 - taps) // stride + 1
    parts = strided_conv1d(x, kernels, stride, n_out)
    assert parts.stride(1 if stride > 1 else 2) == 1  # the layout this case is meant to cover
    windows = torch.rand(3, 41, dtype=torch.float64)
    ref = pooled_energy_loop(parts, windows, 10, 10)
    got32 = pooled_energy(strided_conv1d(x.float(), kernels.float(), stride, n_out), windows.float(), 10, 10)
    assert (got32.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    with pytest.raises(ValueError, match="do not match"):
        pooled_energy(parts, windows[:, :40], 10, 10)
    with pytest.raises(ValueError, match="do not match"):
        pooled_energy(parts[:, :4], windows, 10, 10)


@pytest.mark.parametrize("n_frames", [1, 2, 3, 100, 101, 3000])
def test_pcen_smoother_value_and_gradients_equal_the_loop(n_frames):
    rng = np.random.default_rng(n_frames)
    x = torch.tensor(rng.random((2, 5, n_frames)) ** 3 * 10, requires_grad=True)
    s = torch.tensor([0.0, 0.04, 0.3, 0.999, 1.0], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor(rng.standard_normal((2, 5, n_frames)))
    fast = pcen_smoother(x, s)
    loop = pcen_smoother_loop(x, s)
    torch.testing.assert_close(fast, loop, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((fast * weights).sum(), (x, s))
    grads_loop = torch.autograd.grad((loop * weights).sum(), (x, s), allow_unused=True)
    torch.testing.assert_close(grads[0], grads_loop[0], rtol=1e-9, atol=1e-9)
    expected_s = grads_loop[1] if grads_loop[1] is not None else torch.zeros_like(s)  # T = 1: s unused
    torch.testing.assert_close(grads[1], expected_s, rtol=1e-9, atol=1e-9)


def test_decay_matrix_is_the_masked_power_toeplitz_matrix():
    q = torch.tensor([0.0, 0.5, 0.96, 1.0], dtype=torch.float64)
    lag = np.arange(7)[None, :] - np.arange(7)[:, None]                           # i − k
    ref = np.where(lag >= 0, q.numpy()[:, None, None] ** np.maximum(lag, 0), 0.0)
    np.testing.assert_array_equal(decay_matrix(q, 7).numpy(), ref)
    assert decay_matrix(q, 1).tolist() == [[[1.0]]] * 4
    assert decay_matrix(torch.tensor([0.5]), 200)[0, 0, 150].item() == 0.0    # 0.5^150 < 1e−30: no denormal


@pytest.mark.parametrize("n_frames", [DENSE_MAX_FRAMES, DENSE_MAX_FRAMES + 1])  # dense and blocked forms
def test_pcen_smoother_forms_agree_at_the_switch(n_frames):
    x = torch.rand(2, 3, n_frames, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.04, 0.3, 1.0], dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, n_frames, dtype=torch.float64)
    got = pcen_smoother(x, s)
    ref = pcen_smoother_loop(x, s)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(torch.autograd.grad((got * weights).sum(), (x, s)),
                    torch.autograd.grad((ref * weights).sum(), (x, s))):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_pcen_smoother_gradcheck_and_float32():
    x = torch.rand(2, 3, 11, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pcen_smoother, (x, s))
    x32 = torch.rand(4, 40, 100)
    s32 = torch.full((40,), 0.04)
    ref = pcen_smoother_loop(x32.double(), s32.double())
    assert (pcen_smoother(x32, s32).double() - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_interpolation_matrix_is_full_convolution():
    g = torch.randn(21, dtype=torch.float64)
    w = torch.randn(3, 40, dtype=torch.float64)
    ref = F.conv1d(w[:, None], g.flip(0)[None, None], padding=20)[:, 0]
    torch.testing.assert_close(w @ interpolation_matrix(g, 40), ref)


def test_retain_freed_memory_keeps_large_blocks_off_mmap():
    # in a child process: the setting is process-wide. mallinfo2().hblks counts blocks served by mmap.
    script = """
import ctypes, json, platform
from leaflab.runtime import retain_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
def mmapped_blocks_for_64mib():
    already = libc.mallinfo2().hblks
    p = libc.malloc(64 << 20)
    n = libc.mallinfo2().hblks - already
    libc.free(ctypes.c_void_p(p))
    return n
before = mmapped_blocks_for_64mib()
applied = retain_freed_memory()
print(json.dumps({"before": before, "applied": applied, "again": retain_freed_memory(),
                  "after": mmapped_blocks_for_64mib()}))
"""
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    out = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                    check=True).stdout)
    assert out == {"before": 1, "applied": True, "again": True, "after": 0}


@pytest.mark.parametrize("filterbank", ["leaf", "efficientleaf"])
def test_training_works_after_inference_mode(filterbank):
    # evaluation runs under torch.inference_mode; nothing it caches may break a later backward pass
    from leaflab.frontends import Frontend, FrontendConfig
    fe = Frontend(FrontendConfig(filterbank=filterbank, n_filters=8))
    x = 0.1 * torch.randn(2, 4000)
    with torch.inference_mode():
        fe(x)
    fe(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fe.filterbank.parameters())


@pytest.mark.parametrize("n_frames", [1, 2, 100, 300])
def test_fused_pcen_gradients_equal_the_reference(n_frames):
    # the hand-written backward of PCEN vs plain autograd through the frame-loop definition, every input
    from leaflab.frontends.pcen import PCEN
    torch.manual_seed(n_frames)
    pcen = PCEN(5, 0.96, 2.0, 2.0, 0.04, 1e-5, 1e-12).double()
    with torch.no_grad():
        pcen.smooth_coef.copy_(torch.tensor([0.0, 0.04, 0.3, 0.999, 1.0]))
        pcen.alpha.copy_(torch.tensor([0.5, 0.96, 1.0, 0.2, 0.9]))
        pcen.delta.copy_(torch.tensor([2.0, 0.0, 0.5, 2.0, 1.0]))
        pcen.root.copy_(torch.tensor([2.0, 1.0, 3.0, 1.5, 2.0]))
    energies = torch.rand(3, 5, n_frames, dtype=torch.float64) ** 3 * 10
    energies[0, 0, : n_frames // 2] = 0.0                          # below the floor: no gradient there
    energies.requires_grad_()
    weights = torch.randn(3, 1, 5, n_frames, dtype=torch.float64)
    results = []
    for fast in (True, False):
        pcen.fast = fast
        out = pcen(energies)
        grads = torch.autograd.grad((out * weights).sum(), [energies, *pcen.parameters()], allow_unused=True)
        results.append((out, [torch.zeros(5, dtype=torch.float64) if g is None else g for g in grads]))
    (fast, fast_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(fast_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert (fast_grads[0][0, 0, : n_frames // 2] == 0).all()


# ---- the filterbank kernels against their definitions (values, gradients, gradcheck) -------------------------------
@pytest.mark.parametrize("filterbank", ["leaf", "efficientleaf"])
def test_filterbank_kernels_equal_their_definitions_with_gradients_and_gradcheck(filterbank):
    from leaflab.frontends import Frontend, FrontendConfig
    from leaflab.frontends.efficientleaf import efficientleaf_definition
    from leaflab.frontends.kernels.efficientleaf import efficientleaf_pooled_energies
    from leaflab.frontends.kernels.leaf import leaf_pooled_energies
    from leaflab.frontends.leaf import leaf_definition
    from leaflab.frontends.pooling import gaussian_pooling_windows

    fb = Frontend(FrontendConfig(filterbank=filterbank, n_filters=6, groups=2, max_freq=7000.0)).double().filterbank
    grid = fb.grid
    x = torch.randn(2, 1200, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    params = [t.detach().clone().requires_grad_() for t in fb.constrained()]
    if filterbank == "leaf":
        plan = fb.stride_groups(params[1])

        def fast(x, c, s, r):
            return leaf_pooled_energies(x, c, s, gaussian_pooling_windows(r, grid.taps), plan, grid)

        def definition(x, c, s, r):
            return leaf_definition(x, c, s, gaussian_pooling_windows(r, grid.taps), grid)
        tolerance = 1e-5       # the fast LEAF's stated approximation (docs/frontends.md)
    else:
        geometry = fb.geometry()

        def fast(x, c, s, r):
            return efficientleaf_pooled_energies(x, c, s, r, geometry, grid)

        def definition(x, c, s, r):
            return efficientleaf_definition(x, c, s, r, geometry, grid)
        tolerance = 1e-10
    weights = torch.randn(2, 6, grid.num_frames(1200), dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    outputs = []
    for fn in (fast, definition):
        y = fn(x, *params)
        outputs.append((y.detach(), torch.autograd.grad((y * weights).sum(), [x, *params])))
    (y_fast, g_fast), (y_def, g_def) = outputs
    scale = y_def.abs().amax(-1, keepdim=True)
    assert ((y_fast - y_def).abs() / scale).max() < tolerance
    for got, want in zip(g_fast, g_def):
        assert ((got - want).abs().max() / want.abs().max()) < 10 * tolerance
    assert torch.autograd.gradcheck(lambda *p: fast(x.detach()[:, :600], *p), params, eps=1e-6, atol=1e-6,
                                    rtol=1e-4)


def test_pcen_kernel_gradcheck():
    from leaflab.frontends.kernels.pcen import pcen_fused
    g = torch.Generator().manual_seed(6)
    energies = (torch.rand(2, 3, 20, dtype=torch.float64, generator=g) ** 2 * 5).requires_grad_()
    alpha, delta, r, s = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in
                          ([0.9, 0.5, 0.96], [2.0, 1.0, 0.5], [0.5, 0.3, 0.9], [0.04, 0.3, 0.9]))
    assert torch.autograd.gradcheck(lambda *a: pcen_fused(*a, 1e-5, 1e-12), (energies, alpha, delta, r, s))
