"""Stage train@<variant>: one model per seed of train.seeds, each in its own MLflow run, then the outputs.

Writes runs/<V>/seed-<s>/model.pt and runs/<V>/mlflow_run.json (the DVC output), reports/<V>/train_metrics.json
(a DVC metric: the headline numbers, means over seeds), reports/<V>/history.csv (per-epoch means over seeds, a
DVC plot) and reports/<V>/history_per_seed.csv; logs each seed's model into its run as an MLflow model (leaflab.mlflow_model);
then marks every seed's run FINISHED (a published training:
the next run of the stage trains anew).
"""

from __future__ import annotations

import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

from leaflab import distributed, mlflow_model, tracking, training
from leaflab.config import Config
from leaflab.data import dataset as data
from leaflab.layout import Layout, write_csv, write_json
from leaflab.models import save_trained

HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "samples_per_s")


def run(cfg: Config, variant: str, layout: Layout = Layout(), say: Callable[[str], None] = print) -> None:
    cfg.variant_frontend(variant)  # an unknown variant stops here, naming the defined ones
    data.check_prepared(layout.prepared)
    tracking.check_reachable(tracking.tracking_uri())
    with distributed.process_group(cfg.train.device) as ctx:
        processes = 1 if ctx.distributed else min(cfg.train.processes, len(cfg.train.seeds))
        if processes > 1:
            results = seeds_in_processes(cfg, variant, layout, processes, say)
        else:
            results = [training.train(cfg, variant, seed, layout=layout, ctx=ctx, say=say) for seed in cfg.train.seeds]
        if ctx.is_main:
            publish(cfg, variant, results, layout)
            for result in results:
                model_id = mlflow_model.log_spotter(result.run_id, layout.model_file(variant, result.seed))
                say(f"{variant} seed {result.seed}: MLflow model {mlflow_model.run_model_uri(result.run_id)} "
                    f"(models:/{model_id})")
                tracking.open_run(result.run_id).finish("FINISHED")
        distributed.barrier(ctx)


def seeds_in_processes(cfg: Config, variant: str, layout: Layout, processes: int,
                       say: Callable[[str], None]) -> list[training.TrainResult]:
    """Train the seeds in `processes` worker processes at once, train.threads shared among them. On a CPU with
    few cores a training is mostly small operations that one thread runs as fast as two, so separate trainings
    side by side finish sooner than one after another. Each worker logs its own MLflow run and checkpoints, so
    a kill of the stage resumes every seed where it stopped."""
    threads = max(1, cfg.train.threads // processes)
    tracking.experiment_id(cfg.tracking.experiment)  # create the store first: workers creating it at once collide
    say(f"{variant}: training seeds {list(cfg.train.seeds)} in {processes} processes of {threads} thread(s) each")
    # not multiprocessing.Pool: its workers are daemons, which may not start the DataLoader's worker processes
    with ProcessPoolExecutor(processes, multiprocessing.get_context("spawn"),
                             initializer=_worker_dies_with_its_parent) as pool:
        jobs = [pool.submit(_train_one_seed, cfg, variant, seed, layout, threads) for seed in cfg.train.seeds]
        return [job.result() for job in jobs]


def _train_one_seed(cfg: Config, variant: str, seed: int, layout: Layout, threads: int) -> training.TrainResult:
    """One seed in a worker process; its lines go straight to the stage's output."""
    from leaflab.runtime import retain_freed_memory

    retain_freed_memory()
    return training.train(cfg, variant, seed, layout=layout, say=lambda line: print(line, flush=True),
                          threads=threads, progress=False)


def _worker_dies_with_its_parent() -> None:
    """Linux: the worker gets SIGKILL when the stage process dies, so a killed stage leaves no training behind."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def publish(cfg: Config, variant: str, results: list[training.TrainResult], layout: Layout) -> None:
    """The trained models, the run file and the training reports of `variant`."""
    classes = data.load_classes(layout.prepared)
    params_hash = cfg.variant_params_hash(variant)
    for result in results:
        save_trained(layout.model_file(variant, result.seed), result.model,
                     frontend_config=cfg.frontend_config(variant), model_config=cfg.model, classes=classes,
                     variant=variant, seed=result.seed, params_hash=params_hash,
                     sample_rate=cfg.data.sample_rate, crop_samples=round(cfg.train.crop_seconds * cfg.data.sample_rate),
                     extra={"run_id": result.run_id, "epochs": len(result.history),
                            "loudness_normalize": cfg.train.loudness_normalize,
                            "loudness_target_db": cfg.train.loudness_target_db,
                            "loudness_max_gain_db": cfg.train.loudness_max_gain_db})
    reports = layout.reports(variant)
    write_json(reports / "train_metrics.json", headline(results))
    epochs = range(max(len(r.history) for r in results))
    write_csv(reports / "history.csv", ["epoch", *HISTORY_KEYS],
              ([epoch + 1, *(_mean_at(results, epoch, key) for key in HISTORY_KEYS)] for epoch in epochs))
    write_csv(reports / "history_per_seed.csv", ["seed", "epoch", *HISTORY_KEYS],
              ([r.seed, epoch + 1, *(f"{row[key]:.6g}" for key in HISTORY_KEYS)]
               for r in results for epoch, row in enumerate(r.history)))
    layout.write_run_file(variant, params_hash, [(r.seed, r.run_id) for r in results])


def headline(results: list[training.TrainResult]) -> dict:
    """train_metrics.json: final-epoch validation numbers and training speed, means over the seeds."""
    finals = [r.history[-1] for r in results]
    return {"val_accuracy": statistics.fmean(f["val_accuracy"] for f in finals),
            "val_loss": statistics.fmean(f["val_loss"] for f in finals),
            "train_samples_per_s": statistics.fmean(row["samples_per_s"] for r in results for row in r.history),
            "epochs": max(len(r.history) for r in results)}  # the seeds are a param: no column of their own


def _mean_at(results: list[training.TrainResult], epoch: int, key: str) -> str:
    values = [r.history[epoch][key] for r in results if epoch < len(r.history)]
    return f"{statistics.fmean(values):.6g}"
