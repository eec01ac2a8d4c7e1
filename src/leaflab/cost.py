"""What a model costs beside its accuracy: multiply-accumulates per clip, parameters, measured throughput.

MACs are counted by torch's own FlopCounterMode on one clip's forward pass (FLOPs / 2): matrix products and
convolutions, the operations that dominate; elementwise work (energies, PCEN's powers, BatchNorm) and FFTs are
not counted, so a count is a floor that compares like with like across frontends. A frontend is counted on its
reference definition (frontend.implementation: reference): the fast kernels' own autograd functions and FFTs
would hide work, and the count should not depend on how cleverly it is computed. Throughput is measured, and a
measurement only means something with the machine it ran on (leaflab.machine).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from leaflab.frontends import Frontend


@torch.inference_mode()
def macs_per_clip(module: torch.nn.Module, clip_samples: int) -> int:
    """Multiply-accumulates of module(x) for one clip x [1, clip_samples] (matrix products and convolutions),
    in eval mode, frontends on their reference definitions; the module's mode and implementations are restored."""
    was_training = module.training
    frontends = [(m, m.implementation) for m in module.modules() if isinstance(m, Frontend)]
    module.eval()
    try:
        for frontend, _ in frontends:
            frontend.implementation = "reference"
        with FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, clip_samples))
    finally:
        module.train(was_training)
        for frontend, implementation in frontends:
            frontend.implementation = implementation
    return int(counter.get_total_flops()) // 2


def model_macs(model: torch.nn.Module, clip_samples: int) -> dict[str, int]:
    """{'frontend', 'classifier'} MACs per clip of a KeywordSpotter (the classifier on the frontend's output)."""
    total = macs_per_clip(model, clip_samples)
    frontend = macs_per_clip(model.frontend, clip_samples)
    return {"frontend": frontend, "classifier": total - frontend}


def count_parameters(module: torch.nn.Module | None) -> int:
    return 0 if module is None else int(sum(p.numel() for p in module.parameters()))


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of the frontend, the classifier and the whole model (a KeywordSpotter)."""
    return {"frontend": count_parameters(getattr(model, "frontend", None)),
            "classifier": count_parameters(getattr(model, "classifier", None)),
            "total": count_parameters(model)}


@torch.inference_mode()
def clips_per_second(fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, repeats: int,
                     warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> float:
    """Throughput of `fn` on one batch: batch size / median wall time of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn(batch)
    times = []
    for _ in range(max(1, repeats)):
        start = clock()
        fn(batch)
        times.append(clock() - start)
    return batch.shape[0] / max(statistics.median(times), 1e-12)


def measure_throughput(model: torch.nn.Module, crop_samples: int, batch_size: int, repeats: int,
                       threads: int | None = None, warmup: int = 2, seed: int = 0) -> dict[str, float]:
    """Inference clips/s of the frontend alone and of the whole model on a random batch [batch_size,
    crop_samples] (CPU unless the model lives elsewhere), with `threads` torch intra-op threads."""
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    generator = torch.Generator().manual_seed(seed)
    batch = (0.1 * torch.randn(batch_size, crop_samples, generator=generator)).to(device)
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(module):
        def call(x):
            out = module(x)
            synchronise()
            return out
        return call

    try:
        return {"clips_per_s_model": clips_per_second(timed(model), batch, repeats, warmup),
                "clips_per_s_frontend": clips_per_second(timed(model.frontend), batch, repeats, warmup),
                "batch_size": batch_size, "threads": torch.get_num_threads(), "device": device.type}
    finally:
        torch.set_num_threads(previous_threads)
