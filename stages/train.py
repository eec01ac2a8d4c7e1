"""DVC stage `train@<variant>`: train one model per seed of params.yaml train.seeds, log each to its own MLflow run.

    python stages/train.py <variant>                                   # single process (DVC runs this)
    torchrun --nproc-per-node N stages/train.py <variant>              # DistributedDataParallel, same outputs

Reads data/prepared/ (the preprocess stage's outputs) and params.yaml. Writes, for variant V:
  runs/V/model.pt             final (last-epoch) model of the first seed (leaflab.models.load_trained reads it)
  runs/V/model-seed<s>.pt     the final models of further seeds
  runs/V/mlflow_run.json      {"variant", "run_id" (first seed's), "runs": [{"seed", "run_id", "model"}, …]}
  runs/V/history-seed<s>.csv  per-epoch metrics of further seeds
  reports/V/train_metrics.json  final-epoch metrics (the first seed's at the top, every seed under "seeds"),
                                a DVC metric (outside runs/V, which is one DVC output)
  reports/V/history.csv         per-epoch metrics of the first seed, for `dvc plots`
Checkpoints (resume after a kill) live outside the outputs, in checkpoints/V/seed-<s>/{last,best}.pt.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from leaflab import stage
from leaflab.config import load_config

PREPARED = Path("data/prepared")
RUNS = Path("runs")
REPORTS = Path("reports")


def main(argv: list[str] | None = None) -> int:
    return stage.run_for_variant(__doc__.splitlines()[0], run_stage, argv)


def run_stage(variant: str) -> None:
    cfg = load_config("params.yaml")
    cfg.variant_frontend(variant)  # an unknown variant stops here, naming the defined ones
    from leaflab.data import dataset as data  # (heavy imports after the cheap checks: errors come fast)

    data.check_prepared(PREPARED)
    from leaflab import distributed, tracking, training

    tracking.check_reachable(tracking.tracking_uri())
    with distributed.process_group(cfg.train.device) as ctx:
        results = [training.train(cfg, variant, seed, prepared_dir=PREPARED, ctx=ctx) for seed in cfg.train.seeds]
        if ctx.is_main:
            write_outputs(cfg, variant, results)
            for result in results:
                tracking.open_run(result.run_id).finish("FINISHED")
        distributed.barrier(ctx)


def write_outputs(cfg, variant: str, results: list) -> None:
    """runs/<variant>/…: the models, mlflow_run.json, train_metrics.json and the per-epoch histories."""
    from leaflab import training
    from leaflab.data import dataset as data
    from leaflab.models import save_trained

    out = RUNS / variant
    out.mkdir(parents=True, exist_ok=True)
    crop_samples = int(round(cfg.train.crop_seconds * cfg.data.sample_rate))
    classes = data.load_classes(PREPARED)
    runs, per_seed = [], {}
    for i, result in enumerate(results):
        suffix = "" if i == 0 else f"-seed{result.seed}"
        model_path = out / f"model{suffix}.pt"
        save_trained(model_path, result.model, frontend_config=cfg.frontend_config(variant), model_config=cfg.model,
                     classes=classes, variant=variant, seed=result.seed, params_hash=cfg.variant_params_hash(variant),
                     sample_rate=cfg.data.sample_rate, crop_samples=crop_samples,
                     extra={"run_id": result.run_id, "epochs": len(result.history),
                            "loudness_target_db": cfg.train.loudness_target_db,
                            "loudness_max_gain_db": cfg.train.loudness_max_gain_db})
        history_path = REPORTS / variant / "history.csv" if i == 0 else out / f"history{suffix}.csv"
        write_history(history_path, result.history)
        runs.append({"seed": result.seed, "run_id": result.run_id, "model": model_path.as_posix()})
        final = result.history[-1]
        per_seed[str(result.seed)] = {**{k: final[k] for k in training.EPOCH_METRICS},
                                      "epochs": len(result.history), "best_epoch": result.best_epoch}
    first = per_seed[str(results[0].seed)]
    write_json(REPORTS / variant / "train_metrics.json", {**first, "seeds": per_seed})
    write_json(out / "mlflow_run.json", {"variant": variant, "run_id": results[0].run_id, "runs": runs})


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = ["epoch", *history[0].keys()]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for epoch, row in enumerate(history):
            writer.writerow({"epoch": epoch, **{k: f"{v:.6g}" for k, v in row.items()}})
    os.replace(tmp, path)


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
