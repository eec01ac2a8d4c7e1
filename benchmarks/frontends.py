"""Frontend speed on CPU: forward and forward+backward per batch of 1-s 16 kHz clips, samples/s, parameter counts.

    python benchmarks/frontends.py [--repeats 5] [--quick] [--threads 2] [--system-malloc]

Every filterbank × compression, the 8-group EfficientLEAF ("8G-opt": groups 8, window factor 6, stride factor 16),
and each learnable frontend's reference definition (frontend.implementation: reference: direct convolutions and the
frame-loop PCEN) in the same run, so speed-ups are ratios measured together. Best (minimum) of --repeats after one warm-up (PCEN alone: at least 30), the robust
statistic on a shared machine (other processes only ever add time); --stat median prints medians instead. --quick: batch 8 only, 3 repeats.
leaflab.runtime.retain_freed_memory() is applied as the stage scripts apply it; --system-malloc measures without.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch

from leaflab.frontends import Frontend, FrontendConfig
from leaflab.frontends.pcen import PCEN
from leaflab.runtime import retain_freed_memory

STAT = "min"
EIGHT_GROUPS = dict(groups=8, window_factor=6.0, stride_factor=16.0)
PCEN_REPEATS = 30
FAST_VS_REFERENCE = ("leaf+pcen", "efficientleaf+pcen", "efficientleaf-8G+pcen")
REFERENCE = " REFERENCE (definition)"  # PCEN alone takes milliseconds: more repeats make its minimum (and the ratio) stable


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) if STAT == "min" else statistics.median(times)


def measure(fe: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    def forward():
        with torch.no_grad():
            fe(x)

    def forward_backward():
        fe.zero_grad(set_to_none=True)
        fe(x).square().mean().backward()

    return timed(forward, repeats), timed(forward_backward, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="batch 8 only, 3 repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stat", choices=["min", "median"], default="min")
    parser.add_argument("--system-malloc", action="store_true", help="do not apply retain_freed_memory()")
    args = parser.parse_args()
    retained = False if args.system_malloc else retain_freed_memory()
    global STAT
    STAT = args.stat
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    batches = [8] if args.quick else [8, 32]
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{args.stat} of {repeats} repeats, retain_freed_memory {'on' if retained else 'off'}")
    variants = []
    for fb in ("mel", "efficientleaf", "leaf"):
        for comp in ("pcen", "tbn"):
            variants.append((f"{fb}+{comp}", FrontendConfig(filterbank=fb, compression=comp)))
    variants.insert(4, ("efficientleaf-8G+pcen", FrontendConfig(**EIGHT_GROUPS)))
    variants.insert(5, ("efficientleaf-8G+tbn", FrontendConfig(compression="tbn", **EIGHT_GROUPS)))
    for name, cfg in [v for v in variants if v[0] in FAST_VS_REFERENCE]:
        variants.append((name + REFERENCE, dataclasses.replace(cfg, implementation="reference")))
    generator = torch.Generator().manual_seed(0)
    print("| frontend | params | batch | forward ms | fwd+bwd ms | fwd+bwd samples/s |")
    print("|---|---|---|---|---|---|")
    results = {}
    for batch in batches:
        x = 0.1 * torch.randn(batch, 16000, generator=generator)
        for name, cfg in variants:
            fe = Frontend(cfg)
            fwd, fwd_bwd = measure(fe, x, repeats)
            results[(name, batch)] = fwd_bwd
            n_params = sum(p.numel() for p in fe.parameters())
            print(f"| {name} | {n_params} | {batch} | {1000 * fwd:.1f} | {1000 * fwd_bwd:.1f} | "
                  f"{batch / fwd_bwd:.0f} |", flush=True)
        energies = torch.rand(batch, 40, 100, generator=generator, requires_grad=True)
        for exact in (False, True):
            pcen = PCEN(40, 0.96, 2.0, 2.0, 0.04, 1e-5, 1e-12)
            pcen.fast = not exact
            t = timed(lambda: pcen(energies).sum().backward(), max(repeats, PCEN_REPEATS))
            name = "PCEN alone, " + ("frame loop (reference)" if exact else "blocked matmul")
            results[(name, batch)] = t
            print(f"| {name} | 160 | {batch} | | {1000 * t:.2f} | {batch / t:.0f} |", flush=True)
    print()
    for batch in batches:
        mel = results[("mel+pcen", batch)]
        for name in FAST_VS_REFERENCE:
            fast = results[(name, batch)]
            print(f"batch {batch}: {name} fwd+bwd is {results[(name + REFERENCE, batch)] / fast:.1f}x faster than its "
                  f"reference definition, {fast / mel:.1f}x the time of mel+pcen")
        loop = results[("PCEN alone, frame loop (reference)", batch)]
        pcen_ratio = loop / results[("PCEN alone, blocked matmul", batch)]
        print(f"batch {batch}: PCEN (blocked-matmul smoother) is {pcen_ratio:.1f}x faster than the frame loop")


if __name__ == "__main__":
    main()
