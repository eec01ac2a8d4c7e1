"""CPU time of one training step (forward, backward, Adam) per sample, for the frontend set-ups and CNN memory
layouts that decide how long `make run` takes. Configurations are measured interleaved (round-robin, best of
--rounds), in one process with one thread, so the ratios hold on a busy machine.

    python benchmarks/train_step.py                  # batch 64, 1-s clips at 16 kHz, 40 filters, 35 classes
    python benchmarks/train_step.py --rounds 7 --steps 5

CPU time (time.process_time) rather than wall time: other processes on the machine lengthen the wall time of
each step but not its CPU time.
"""

from __future__ import annotations

import argparse
import time

import torch

from leaflab.frontends import Frontend, FrontendConfig
from leaflab.models.compact_cnn import CompactCNN

SETUPS = {
    "4G (groups 4, window 4.75, stride 1)": {"groups": 4, "window_factor": 4.75, "stride_factor": 1.0},
    "8G-opt (groups 8, window 6, stride 16)": {"groups": 8, "window_factor": 6.0, "stride_factor": 16.0},
}


def make_step(frontend_kwargs: dict, compression: str, channels_last: bool, batch: int):
    torch.manual_seed(0)
    frontend = Frontend(FrontendConfig(compression=compression, **frontend_kwargs))
    cnn = CompactCNN(frontend.out_channels, 35, channels_last=channels_last)
    model = torch.nn.Sequential(frontend, cnn)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 16000) * 0.1
    y = torch.randint(0, 35, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="steps per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = {(setup, compression, layout): make_step(kwargs, compression, layout == "channels-last", args.batch)
               for setup, kwargs in SETUPS.items() for compression in ("pcen", "tbn")
               for layout in ("channels-first", "channels-last")}
    best = {key: float("inf") for key in configs}
    for step in configs.values():  # warm-up: oneDNN picks and caches its kernels
        step()
    for _ in range(args.rounds):
        for key, step in configs.items():
            started = time.process_time()
            for _ in range(args.steps):
                step()
            best[key] = min(best[key], (time.process_time() - started) / args.steps / args.batch * 1e3)
    baseline = {c: best[(next(iter(SETUPS)), c, "channels-first")] for c in ("pcen", "tbn")}
    print(f"| frontend set-up | compression | CNN layout | ms CPU per sample (1 thread, batch {args.batch}) "
          "| speed-up vs 4G channels-first |")
    print("|---|---|---|---|---|")
    for (setup, compression, layout), ms in best.items():
        print(f"| {setup} | {compression} | {layout} | {ms:.2f} | {baseline[compression] / ms:.2f}x |")


if __name__ == "__main__":
    main()
