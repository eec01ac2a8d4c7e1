"""torch.compile (inductor) on the readable frontend definitions against the hand-written kernels, CPU.

    python benchmarks/compile.py [--batch 8] [--repeats 5] [--threads 2] [--steps N] [--only pcen,leaf,...]

For each kernel of leaflab/frontends/kernels: the definition in eager mode, the definition compiled, the kernel in
eager mode; forward + backward of one batch of 1-s 16 kHz clips (PCEN: its input, 40 bands × 100 frames). The
compiled row's first call includes the compilation; "amortised" adds compile time / steps to the step time, with
steps = the training steps of one `make run` seed process (params.yaml: epochs × training clips / batch size; each
seed process compiles for itself). Without a C compiler (or if inductor fails) the compiled rows say so and the
definitions run eagerly. A kernel is worth keeping where it beats the compiled definition's amortised time.
"""
from __future__ import annotations

import argparse
import math
import shutil
import time

import torch

from leaflab.frontends import Frontend, FrontendConfig
from leaflab.frontends.efficientleaf import efficientleaf_definition
from leaflab.frontends.kernels.efficientleaf import efficientleaf_pooled_energies
from leaflab.frontends.kernels.leaf import leaf_pooled_energies
from leaflab.frontends.kernels.pcen import pcen_fused
from leaflab.frontends.leaf import leaf_definition
from leaflab.frontends.pcen import pcen
from leaflab.frontends.pooling import gaussian_pooling_windows
from leaflab.runtime import retain_freed_memory

EIGHT_GROUPS = dict(groups=8, window_factor=6.0, stride_factor=16.0)


def make_run_steps() -> int:
    """Training steps of one seed process in `make run`, from params.yaml (synthetic data: words × speakers ×
    clips per word, less the validation and test shares)."""
    from leaflab.config import load_config
    cfg = load_config()
    syn = cfg.data.synthetic
    clips = len(syn.words) * syn.speakers * syn.clips_per_word
    train = clips * (1 - (syn.validation_percent + syn.testing_percent) / 100)
    return cfg.train.epochs * math.ceil(train / cfg.train.batch_size)


def cases(batch: int):
    """(name, definition, kernel, inputs needing grad) per kernel."""
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(batch, 16000, generator=g)
    out = []
    energies = (torch.rand(batch, 40, 100, generator=g) ** 2).requires_grad_()
    p = [torch.full((40,), v, requires_grad=True) for v in (0.96, 2.0, 0.5, 0.04)]
    out.append(("pcen", lambda e, a, d, r, s: pcen(e, a, d, r, s, 1e-5, 1e-12),
                lambda e, a, d, r, s: pcen_fused(e, a, d, r, s, 1e-5, 1e-12), [energies, *p]))
    leaf = Frontend(FrontendConfig(filterbank="leaf")).filterbank
    params = [t.detach().clone().requires_grad_() for t in leaf.constrained()]
    plan, grid = leaf.stride_groups(params[1]), leaf.grid
    out.append(("leaf", lambda c, s, r: leaf_definition(x, c, s, gaussian_pooling_windows(r, grid.taps), grid),
                lambda c, s, r: leaf_pooled_energies(x, c, s, gaussian_pooling_windows(r, grid.taps), plan, grid),
                params))
    for name, kw in (("efficientleaf 4G", {}), ("efficientleaf 8G", EIGHT_GROUPS)):
        fb = Frontend(FrontendConfig(**kw)).filterbank
        params = [t.detach().clone().requires_grad_() for t in fb.constrained()]
        geometry, grid_e = fb.geometry(), fb.grid
        out.append((name, lambda c, s, r, geometry=geometry, grid_e=grid_e:
                    efficientleaf_definition(x, c, s, r, geometry, grid_e),
                    lambda c, s, r, geometry=geometry, grid_e=grid_e:
                    efficientleaf_pooled_energies(x, c, s, r, geometry, grid_e), params))
    return out


def step_time(fn, inputs, repeats: int) -> tuple[float, float]:
    """(first call s, best of `repeats` later calls s) of forward + backward."""
    def step():
        for t in inputs:
            t.grad = None
        fn(*inputs).square().mean().backward()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="steps to amortise over (default: from params.yaml)")
    parser.add_argument("--only", default="", help="comma-separated case names")
    args = parser.parse_args()
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    steps = args.steps or make_run_steps()
    compiler = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, best of {args.repeats}; "
          f"C compiler: {compiler or 'none (compiled rows run eagerly)'}; amortised over {steps} steps")
    print("| kernel | definition eager ms | compiled: compile s | compiled ms | compiled amortised ms | "
          "kernel ms | kernel vs compiled (amortised) |")
    print("|---|---|---|---|---|---|---|")
    only = set(filter(None, args.only.split(",")))
    for name, definition, kernel, inputs in cases(args.batch):
        if only and name not in only:
            continue
        _, eager = step_time(definition, inputs, args.repeats)
        _, fast = step_time(kernel, inputs, args.repeats)
        compiled_text = "eager (no compiler)"
        compiled = amortised = math.nan
        compile_s = math.nan
        if compiler:
            torch._dynamo.reset()
            try:
                first, compiled = step_time(torch.compile(definition), inputs, args.repeats)
                compile_s = first - compiled
                amortised = compiled + compile_s / steps
                compiled_text = f"{compiled * 1000:.1f}"
            except Exception as err:  # noqa: BLE001 (inductor unavailable or failing: report it, keep going)
                compiled_text = f"failed ({type(err).__name__})"
        ratio = amortised / fast if not math.isnan(amortised) else eager / fast
        print(f"| {name} | {eager * 1000:.1f} | {compile_s:.1f} | {compiled_text} | {amortised * 1000:.1f} | "
              f"{fast * 1000:.1f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
