"""leaflab's frontends against the papers' own implementation, measured in one run (ratios, not absolute times).

    git clone https://github.com/CPJKU/EfficientLEAF /somewhere/EfficientLEAF
    python benchmarks/versus_reference.py /somewhere/EfficientLEAF [--rounds 4] [--threads 2]

Imports the reference's model/leaf.py and model/efficientleaf.py from that checkout (nothing of it is in this
repository) and times forward + backward of a batch of 1-s 16 kHz clips for LEAF + PCEN, EfficientLEAF 4 groups
+ PCEN and 8 groups ("8G-opt") + PCEN / LogTBN, each at the reference's own settings. The two implementations
alternate within every round; each round keeps the minimum of 3 repeats, and the median over rounds is printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import torch

from frontends import timed  # benchmarks/frontends.py: one warm-up, then the minimum of the repeats
from leaflab.frontends import Frontend, FrontendConfig
from leaflab.runtime import retain_freed_memory

SETUPS = {  # name: (reference EfficientLeaf / Leaf keyword arguments, leaflab frontend settings)
    "leaf+pcen": (None, dict(filterbank="leaf", compression="pcen")),
    "efficientleaf 4G+pcen": (dict(num_groups=4, conv_win_factor=4.77, stride_factor=1.0, compression="pcen"),
                              dict(filterbank="efficientleaf", compression="pcen", groups=4, window_factor=4.77,
                                   stride_factor=1.0)),
    "efficientleaf 8G+pcen": (dict(num_groups=8, conv_win_factor=6.0, stride_factor=16.0, compression="pcen"),
                              dict(filterbank="efficientleaf", compression="pcen", groups=8, window_factor=6.0,
                                   stride_factor=16.0)),
    "efficientleaf 8G+tbn": (dict(num_groups=8, conv_win_factor=6.0, stride_factor=16.0, compression="logtbn"),
                             dict(filterbank="efficientleaf", compression="tbn", groups=8, window_factor=6.0,
                                  stride_factor=16.0)),
}


def reference_models(checkout: Path):
    """The reference's model package, imported from the checkout without running its __init__ (which needs
    its classifier's dependencies)."""
    package = checkout / "model"
    if not (package / "efficientleaf.py").is_file():
        sys.exit(f"{checkout}: no model/efficientleaf.py; clone https://github.com/CPJKU/EfficientLEAF there")
    spec = importlib.util.spec_from_loader("reference_model", loader=None, is_package=True)
    root = importlib.util.module_from_spec(spec)
    root.__path__ = [str(package)]
    sys.modules["reference_model"] = root
    modules = {}
    for name in ("leaf", "efficientleaf"):
        module_spec = importlib.util.spec_from_file_location(f"reference_model.{name}", package / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(module_spec)
        sys.modules[f"reference_model.{name}"] = modules[name]
        module_spec.loader.exec_module(modules[name])
    return modules["leaf"].Leaf, modules["efficientleaf"].EfficientLeaf


def fwd_bwd(frontend: torch.nn.Module, x: torch.Tensor):
    def step():
        frontend.zero_grad(set_to_none=True)
        frontend(x).sum().backward()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="a checkout of CPJKU/EfficientLEAF")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args()
    leaf, efficient_leaf = reference_models(args.reference)
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fwd+bwd, median over {args.rounds} rounds of min of 3")
    for batch in args.batches:
        x = 0.1 * torch.randn(batch, 16000, generator=torch.Generator().manual_seed(0))
        for name, (reference_kwargs, ours) in SETUPS.items():
            reference = (leaf() if reference_kwargs is None else efficient_leaf(**reference_kwargs)).train()
            mine = Frontend(FrontendConfig.from_dict(dict(sample_rate=16000, **ours), "benchmark")).train()
            times = {"reference": [], "leaflab": []}
            for round_ in range(args.rounds):
                order = ("reference", "leaflab") if round_ % 2 == 0 else ("leaflab", "reference")
                for who in order:
                    times[who].append(timed(fwd_bwd(reference if who == "reference" else mine, x), 3))
            theirs, ours_ms = (statistics.median(times[k]) * 1e3 for k in ("reference", "leaflab"))
            print(f"batch {batch:3d}  {name:22s}  reference {theirs:8.1f} ms  leaflab {ours_ms:7.1f} ms  "
                  f"→ {theirs / ours_ms:4.1f}x", flush=True)


if __name__ == "__main__":
    main()
