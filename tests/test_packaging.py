"""What pyproject.toml promises: every package the code imports is declared, and the frontends work with the core
dependencies alone (torch, torchaudio, numpy), without the pipeline's."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO / "src" / "leaflab"


def declared() -> tuple[set[str], set[str]]:
    """(core distributions, core + pipeline + export distributions), normalised names."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = lambda specs: {re.split(r"[<>=!\[ ;]", spec)[0].lower().replace("_", "-") for spec in specs}
    core = names(project["dependencies"])
    extras = project["optional-dependencies"]
    return core, core | names(extras["pipeline"]) | names(extras["export"])


def imported_top_level(paths) -> set[str]:
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"leaflab"}


def distributions_of(modules: set[str]) -> dict[str, set[str]]:
    owners = packages_distributions()
    return {m: {d.lower().replace("_", "-") for d in owners.get(m, [])} for m in modules}


def test_every_imported_package_is_declared():
    _, everything = declared()
    missing = {m: dists for m, dists in distributions_of(imported_top_level(SOURCES.rglob("*.py"))).items()
               if not dists & everything}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_frontends_import_only_the_core_dependencies():
    core, _ = declared()
    frontend_files = [*(SOURCES / "frontends").rglob("*.py"), SOURCES / "errors.py", SOURCES / "schema.py",
                      SOURCES / "runtime.py"]
    outside = {m: dists for m, dists in distributions_of(imported_top_level(frontend_files)).items()
               if not dists & core}
    assert not outside, f"the frontends import packages outside the core dependencies: {outside}"


def test_a_frontend_runs_with_the_pipeline_packages_unimportable():
    """As after `pip install leaflab` without extras: importing mlflow, dvc, yaml, scipy, … fails."""
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"mlflow", "dvc", "yaml", "scipy", "pandas", "typer", "rich", "soundfile",
                                  "matplotlib", "torchvision", "onnx", "onnxruntime", "espeakng_loader", "tqdm"}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Block())
import torch
from leaflab.frontends import Frontend, FrontendConfig
for filterbank in ("leaf", "efficientleaf", "mel"):
    for compression in ("pcen", "tbn"):
        y = Frontend(FrontendConfig(filterbank=filterbank, compression=compression, sample_rate=8000,
                                max_freq=3800.0))(torch.randn(2, 8000))
        assert y.shape[-2:] == (40, 100), y.shape
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
