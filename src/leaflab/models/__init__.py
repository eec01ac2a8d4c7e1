"""Classifiers and the keyword spotter (frontend + classifier); saving and loading a trained one.

    model = build_model(frontend_config, model_config, n_classes)   # KeywordSpotter
    logits = model(x)      # x float32 [B, samples], already loudness-normalised → [B, n_classes]
    model, meta = load_trained("runs/pcen/model.pt")                # eval mode; meta: classes, variant, …

Knows nothing of files beyond the one it is given, nor of DVC or MLflow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from leaflab.checkpoints import atomic_torch_save
from leaflab.errors import LeaflabError
from leaflab.models.compact_cnn import CompactCNN
from leaflab.models.efficientnet import EfficientNetB0

MODEL_FORMAT = 1


class KeywordSpotter(nn.Module):
    """x float32 [B, samples] (loudness-normalised) → frontend [B, C, n_filters, frames] → logits [B, n_classes]."""

    def __init__(self, frontend: nn.Module, classifier: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.frontend(x))


def build_classifier(model_config: Mapping[str, Any] | Any, in_channels: int, n_classes: int) -> nn.Module:
    """`model.classifier` of params.yaml: compact_cnn (channels, dropout) or efficientnet_b0 (dropout)."""
    cfg = _plain(model_config)
    if cfg["classifier"] == "compact_cnn":
        return CompactCNN(in_channels, n_classes, tuple(cfg["channels"]), cfg["dropout"])
    if cfg["classifier"] == "efficientnet_b0":
        return EfficientNetB0(in_channels, n_classes, cfg["dropout"])
    raise LeaflabError(f"model.classifier = {cfg['classifier']!r}: expected compact_cnn or efficientnet_b0")


def build_model(frontend_config, model_config: Mapping[str, Any] | Any, n_classes: int) -> KeywordSpotter:
    """A fresh KeywordSpotter (the classifier's random init follows torch's global RNG: seed it first)."""
    from leaflab.frontends import Frontend

    frontend = Frontend(frontend_config)
    return KeywordSpotter(frontend, build_classifier(model_config, frontend.out_channels, n_classes))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- saving / loading ----------------------------------------------------------------------------------------
def frontend_config_to_dict(frontend_config) -> dict:
    from leaflab.schema import as_dict

    return as_dict(frontend_config)


def frontend_config_from_dict(data: Mapping[str, Any]):
    """Rebuild a leaflab.frontends.FrontendConfig from its dict (keys it lacks take their defaults)."""
    from leaflab.frontends import FrontendConfig

    return FrontendConfig.from_dict(dict(data), "model file frontend_config")


def save_trained(path: str | Path, model: KeywordSpotter, *, frontend_config, model_config, classes: list[str],
                 variant: str, seed: int, params_hash: str, sample_rate: int, crop_samples: int,
                 extra: Mapping[str, Any] | None = None) -> None:
    """runs/<V>/model.pt: everything load_trained needs, written atomically."""
    metadata = {"format": MODEL_FORMAT, "frontend_config": frontend_config_to_dict(frontend_config),
                "model_config": _plain(model_config), "classes": list(classes), "variant": variant,
                "seed": int(seed), "params_hash": params_hash, "sample_rate": int(sample_rate),
                "crop_samples": int(crop_samples), **(dict(extra) if extra else {})}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": state, "metadata": metadata}, path)


def load_trained(path: str | Path) -> tuple[KeywordSpotter, dict]:
    """(KeywordSpotter in eval mode on the CPU, metadata dict) rebuilt from a saved model file alone."""
    path = Path(path)
    if not path.is_file():
        raise LeaflabError(f"{path}: no trained model; run `dvc repro train` first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        metadata = saved["metadata"]
    except Exception as err:  # noqa: BLE001 (a corrupt or foreign file: one clear message)
        raise LeaflabError(f"{path}: not a leaflab model file ({type(err).__name__}: {err}); "
                           "rerun the train stage") from None
    model = build_model(frontend_config_from_dict(metadata["frontend_config"]), metadata["model_config"],
                        len(metadata["classes"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, metadata


def _plain(model_config) -> dict:
    if dataclasses.is_dataclass(model_config):
        from leaflab.schema import as_dict

        return as_dict(model_config)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model_config).items()}


__all__ = ["KeywordSpotter", "CompactCNN", "EfficientNetB0", "build_classifier", "build_model", "load_trained",
           "save_trained", "count_parameters", "frontend_config_to_dict", "frontend_config_from_dict"]
