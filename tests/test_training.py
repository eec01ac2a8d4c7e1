"""The training loop in-process on tiny data: determinism, what MLflow stores, non-finite losses, the lr stop."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from leaflab import tracking, training
from leaflab.config import flatten, load_config
from leaflab.errors import LeaflabError
from leaflab.frontends import Frontend
from leaflab.layout import Layout
from leaflab.models import KeywordSpotter
from test_training_support import comparable, make_workdir, tiny_params, write_params


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    make_workdir(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_training(variant: str = "a", seed: int = 0, **overrides) -> tuple[training.TrainResult, list[str]]:
    if overrides:
        write_params(Path.cwd(), tiny_params(**overrides))
    cfg = load_config("params.yaml")
    lines: list[str] = []
    return training.train(cfg, variant, seed, layout=Layout(), say=lines.append), lines


def test_same_params_and_seed_give_identical_histories_and_mlflow_stores_everything(workdir):
    first, lines = run_training("a")
    tracking.open_run(first.run_id).finish()
    epochs = load_config().train.epochs
    assert len(first.history) == epochs and len(lines) == epochs + 1
    assert first.history[-1]["train_accuracy"] > 0.5  # it learns the four sounds
    assert all(np.isfinite(v) for row in first.history for v in row.values())
    assert 0.0 <= first.history[0]["data_wait_fraction"] < 1.0

    shutil.rmtree(workdir / "checkpoints")  # no checkpoint: a fresh, second training in a new run
    second, _ = run_training("a")
    assert second.run_id != first.run_id
    assert comparable(second.history) == comparable(first.history)
    for p1, p2 in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(p1, p2)

    # what MLflow actually stored
    cfg = load_config()
    client = tracking.client()
    stored = client.get_run(first.run_id)
    assert stored.info.run_name == "a" and stored.info.status == "FINISHED"
    expected = {k: tracking._param_text(v) for k, v in flatten(cfg.variant_params("a")).items()}
    assert stored.data.params == {**expected, "seed": "0"}
    tags = stored.data.tags
    assert tags["variant"] == "a" and tags["seed"] == "0" and tags["params_hash"] == cfg.variant_params_hash("a")
    assert tags["params_hash_shared"] == cfg.shared_params_hash() and tags["leaflab.kind"] == "training"
    assert tags["device"] == "cpu" and tags["threads"] == "1" and tags["torch_version"] == torch.__version__
    assert tags["host"] and tags["cpu"]
    # MLflow's own context providers: who and what started the run
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    for key in [*training.EPOCH_METRICS, *(k for k in first.history[0] if k.startswith("frontend/"))]:
        steps = [m.step for m in client.get_metric_history(first.run_id, key)]
        assert sorted(steps) == list(range(epochs)), key
    values = dict(tracking.open_run(first.run_id).metric_history("val_loss"))
    assert values == {e: pytest.approx(row["val_loss"]) for e, row in enumerate(first.history)}
    run = tracking.open_run(first.run_id)
    artifacts = set(run.list_artifacts()) | set(run.list_artifacts("checkpoints"))
    assert {"config.json", "checkpoints/best.pt", "checkpoints/final.pt"} <= artifacts
    assert run.logged_image_steps("frontend") == {0, 2, 3}  # log_images_every 2, and the last epoch
    assert any(k.startswith("frontend/") for k in first.history[0])


def test_checkpoints_hold_everything_to_resume(workdir):
    result, _ = run_training("t", epochs=2)
    last = torch.load(workdir / "checkpoints/t/seed-0/last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["run_id"] == result.run_id
    assert last["params_hash"] == load_config().variant_params_hash("t")
    assert {"model", "optimizer", "scheduler", "rng", "state", "code"} <= set(last)
    assert {"torch", "numpy", "python", "loader"} <= set(last["rng"])
    assert last["state"]["history"] == result.history and last["state"]["stop_reason"] == "reached train.epochs = 2"
    best = torch.load(workdir / "checkpoints/t/seed-0/best.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch


def nan_logits_on_training_calls(monkeypatch, calls_with_nan):
    """Fault injection: the model returns NaN logits on the given training forward passes (1-based)."""
    real_forward, calls = KeywordSpotter.forward, {"n": 0}

    def forward(self, x):
        logits = real_forward(self, x)
        if not self.training:
            return logits
        calls["n"] += 1
        return logits * float("nan") if calls_with_nan(calls["n"]) else logits

    monkeypatch.setattr(KeywordSpotter, "forward", forward)


def test_a_non_finite_loss_is_skipped_and_counted(workdir, monkeypatch):
    nan_logits_on_training_calls(monkeypatch, lambda n: n in (2, 3))
    result, _ = run_training("t", epochs=2)
    assert result.history[0]["nonfinite_steps"] == 2 and result.history[1]["nonfinite_steps"] == 0
    assert all(np.isfinite(v) for row in result.history for v in row.values())


def test_too_many_non_finite_losses_in_a_row_stop_the_run(workdir, monkeypatch):
    nan_logits_on_training_calls(monkeypatch, lambda n: True)
    with pytest.raises(LeaflabError, match=r"5 times in a row \(epoch 1, step 5\)"):
        run_training("a")
    (run,) = tracking.search_runs("tests")
    assert run.info.status == "FAILED"


def test_training_stops_when_the_lr_falls_below_min_lr(workdir, monkeypatch):
    monkeypatch.setattr(training, "validate", lambda *args, **kwargs: (1.0, 0.25))  # never improves
    result, lines = run_training("a", epochs=6, lr=3.0e-3, min_lr=1.0e-3, lr_patience=0, lr_factor=0.1)
    assert len(result.history) == 2  # epoch 1 did not improve: lr 3e-3 → 3e-4 < 1e-3
    assert [row["lr"] for row in result.history] == pytest.approx([3.0e-3, 3.0e-3])
    assert "min_lr" in result.stop_reason and "min_lr" in lines[-1]


def test_frontend_lr_factor_zero_freezes_the_frontend_and_clipping_runs(workdir):
    result, _ = run_training("a", epochs=1, frontend_lr_factor=0.0, grad_clip_norm=0.5)
    fresh = Frontend(load_config().frontend_config("a"))
    for (name, trained), initial in zip(result.model.frontend.named_parameters(), fresh.parameters()):
        assert torch.equal(trained, initial), name
    assert np.isfinite(result.history[-1]["train_loss"])
