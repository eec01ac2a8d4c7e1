"""What a measurement ran on: speeds from different machines are never averaged, so every run names its own."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import torch


def cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_tags(device: torch.device | str, threads: int) -> dict[str, str]:
    """host, cpu (model and logical cores), device (cpu or the GPU's name), threads, torch version."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"host": socket.gethostname(), "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores)",
            "device": name, "threads": str(threads), "torch_version": torch.__version__}
