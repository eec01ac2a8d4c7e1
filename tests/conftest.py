"""Helpers shared by the tests: the repository's params.yaml with overrides, stage scripts as modules."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

from leaflab.config import read_params_yaml

REPO = Path(__file__).resolve().parents[1]


def merged(base: dict, overrides: dict) -> dict:
    """base with overrides applied key by key (nested mappings merge; other values replace)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def repo_params(overrides: dict | None = None) -> dict:
    """The repository's params.yaml as a mapping with `overrides` merged in. A `variants` override replaces the
    repository's variants (variant names are the user's, not settings to merge)."""
    params = read_params_yaml((REPO / "params.yaml").read_text())
    overrides = copy.deepcopy(overrides or {})
    variants = overrides.pop("variants", None)
    params = merged(params, overrides)
    if variants is not None:
        params["variants"] = variants
    return params


def load_stage(name: str):
    """stages/<name>.py as a module (the stage scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
