"""A trained keyword spotter, or its learned frontend alone, as a file other runtimes load: ONNX, TorchScript,
or torch.export's .pt2.

    path = export_spotter(spotter, part="model", fmt="onnx", out=Path("exports/tbn-model.onnx"))
    y = run_exported(path, x)             # the exported file run by its own runtime (onnxruntime for ONNX)

What is exported takes raw mono waveforms float32 [batch, samples] at the model's sample rate, one window of
the training crop long (`crop_samples`), and applies the model's loudness normalisation itself:
  part "model"    → class probabilities [batch, n_classes] (the classes are in the .json written beside it);
  part "frontend" → the frontend's output [batch, channels, n_filters, frames].
The frontend is exported in its reference definitions (plain PyTorch operations, same parameters): the fast
kernels are hand-written autograd functions that the exporters do not trace.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leaflab.data.dataset import STD_EPS
from leaflab.errors import LeaflabError
from leaflab.inference import Spotter

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}
PARTS = ("model", "frontend")
ONNX_OPSET = 18


class LoudnessNormalised(nn.Module):
    """`inner` applied to the waveform scaled as leaflab.data.dataset.loudness_normalize does (per row:
    gain = min(10^(max_gain/20), 10^(target/20) / (std + eps)), std unbiased), then softmax if asked."""

    def __init__(self, inner: nn.Module, target_db: float, max_gain_db: float, enabled: bool, softmax: bool):
        super().__init__()
        self.inner = inner
        self.target = float(10.0 ** (target_db / 20.0))
        self.max_gain = float(10.0 ** (max_gain_db / 20.0))
        self.enabled = bool(enabled)
        self.softmax = bool(softmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            gain = torch.clamp(self.target / (torch.std(x, dim=-1, keepdim=True) + STD_EPS), max=self.max_gain)
            x = x * gain
        y = self.inner(x)
        return torch.softmax(y, dim=-1) if self.softmax else y


def exportable(spotter: Spotter, part: str) -> nn.Module:
    """The module to export: reference frontend definitions, eval mode, loudness normalisation inside."""
    if part not in PARTS:
        raise LeaflabError(f"export part {part!r}: expected one of {', '.join(PARTS)}")
    spotter.model.frontend.implementation = "reference"
    spotter.model.eval()
    inner = spotter.model if part == "model" else spotter.model.frontend
    loud = spotter.loudness
    return LoudnessNormalised(inner, loud.target_db, loud.max_gain_db, loud.enabled, softmax=part == "model").eval()


def require_onnx() -> None:
    """ONNX export and its check need onnx, onnxscript and onnxruntime: the `export` extra, which `make run` skips."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise LeaflabError(f"ONNX export needs {', '.join(missing)}: pip install -e '.[export]' (make test installs "
                           "it), or export with --format torchscript or pt2")


def example_input(spotter: Spotter, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Speech-level noise, one window long: what the exporters trace and the checks compare on."""
    generator = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(batch, spotter.crop_samples, generator=generator)


def export_spotter(spotter: Spotter, part: str, fmt: str, out: Path) -> Path:
    """Write the export to `out` (and `out` + .json: format, part, classes, sample rate, input length)."""
    if fmt not in FORMATS:
        raise LeaflabError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    module = exportable(spotter, part)
    x = example_input(spotter)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        module(x)  # once eagerly: the frontend caches what depends on its parameters' values (group strides)
        if fmt == "onnx":
            torch.onnx.export(module, (x,), str(out), input_names=["waveform"],
                              output_names=["probabilities" if part == "model" else "features"],
                              dynamic_shapes={"x": {0: batch}}, opset_version=ONNX_OPSET, dynamo=True,
                              verbose=False)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, (x,), check_trace=False), str(out))
        else:
            torch.export.save(torch.export.export(module, (x,), dynamic_shapes={"x": {0: batch}}), str(out))
    sidecar = {"format": fmt, "part": part, "input": "float32 [batch, samples] raw mono waveform",
               "samples": spotter.crop_samples, "sample_rate": spotter.sample_rate, "classes": spotter.classes,
               "variant": spotter.metadata.get("variant"), "seed": spotter.metadata.get("seed"),
               "loudness_normalize": spotter.loudness.enabled}
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return out


def run_exported(path: Path, x: np.ndarray) -> np.ndarray:
    """Run an exported file with its own runtime: onnxruntime, torch.jit.load or torch.export.load."""
    x = np.asarray(x, dtype=np.float32)
    name = str(path)
    if name.endswith(FORMATS["onnx"]):
        import onnxruntime

        session = onnxruntime.InferenceSession(name, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        if name.endswith(FORMATS["torchscript"]):
            return torch.jit.load(name)(torch.as_tensor(x)).numpy()
        return torch.export.load(name).module()(torch.as_tensor(x)).numpy()


def max_relative_error(exported: np.ndarray, expected: np.ndarray) -> float:
    """max |a − b| / max |b| (relative to the output's scale, so near-zero entries do not blow it up)."""
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(np.asarray(exported, np.float64) - np.asarray(expected, np.float64)).max() / scale)


def verify(spotter: Spotter, part: str, path: Path, tolerance: float = 1e-4) -> float:
    """The exported file against PyTorch on fresh input of another batch size; LeaflabError beyond tolerance."""
    x = example_input(spotter, batch=3, seed=1)
    with torch.no_grad():
        expected = exportable(spotter, part)(x).numpy()
    error = max_relative_error(run_exported(path, x.numpy()), expected)
    if not error <= tolerance:
        raise LeaflabError(f"{path}: the exported {part} differs from PyTorch by {error:.2e} (relative), more "
                           f"than {tolerance:.0e}")
    return error
