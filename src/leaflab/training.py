"""The training loop: one KeywordSpotter per (variant, seed), every epoch checkpointed and logged to MLflow.

Read it top to bottom: `train()` sets up data, model, optimiser and the MLflow run (or resumes them from the
last checkpoint), then runs epochs of `train_one_epoch` + `evaluate` until train.epochs or until
ReduceLROnPlateau has lowered the learning rate below train.min_lr. The set-up of the papers (REFERENCE.md):
Adam, ReduceLROnPlateau on the validation loss, loudness normalisation and random crops (leaflab.data.dataset),
a non-finite loss skipped (no optimiser step) and train.max_nonfinite_in_a_row of them in a row fatal.

Order per epoch, so that a kill at any moment can be resumed without a missing or duplicated MLflow step:
  train → validate → scheduler step → write best.pt (if better) → write last.pt (atomically) → log to MLflow.
On resume, the epochs in last.pt's history that MLflow lacks (a kill between the last two steps) are logged
first, then training continues from the next epoch with every state (model, optimiser, scheduler, RNGs) restored.

Several processes (torchrun): see leaflab.distributed. Rank 0 alone talks to MLflow and writes files.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from leaflab import checkpoints, distributed, tracking
from leaflab.config import Config, flatten
from leaflab.data import dataset as data
from leaflab.errors import LeaflabError
from leaflab.models import KeywordSpotter, build_model, frontend_config_to_dict

N_IMAGE_CLIPS = 16
IMAGE_KEY = "frontend"
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds",
                 "samples_per_s", "data_wait_fraction", "nonfinite_steps")


@dataclasses.dataclass
class TrainResult:
    variant: str
    seed: int
    run_id: str
    history: list[dict[str, float]]      # one dict of EPOCH_METRICS (+ frontend/…) per epoch
    model: KeywordSpotter                # the final (last-epoch) model, on the CPU, eval mode
    best_epoch: int
    stop_reason: str


def train(cfg: Config, variant: str, seed: int, *, prepared_dir: str | Path = "data/prepared",
          checkpoint_root: str | Path = ".", ctx: distributed.Context | None = None,
          say: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume) one model of `variant` with `seed`; returns the final model and its history.

    The MLflow run is left RUNNING at the end: the caller marks it FINISHED once it has written its outputs
    (stages/train.py). On an error it is marked FAILED (KILLED on Ctrl-C); a SIGKILL leaves it RUNNING."""
    ctx = ctx or distributed.Context()
    tc = cfg.train
    # ---- determinism -----------------------------------------------------------------------------------------
    torch.set_num_threads(threads_per_process(tc.threads))
    torch.set_flush_denormal(True)  # denormal floats (seen on random inputs) made CPU kernels up to 10× slower
    checkpoints.seed_everything(seed)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False

    # ---- data ------------------------------------------------------------------------------------------------
    classes = data.load_classes(prepared_dir)
    sample_rate = cfg.data.sample_rate
    crop_samples = int(round(tc.crop_seconds * sample_rate))
    if tc.batch_size % ctx.world_size:
        raise LeaflabError(f"train.batch_size = {tc.batch_size} is not divisible by the {ctx.world_size} "
                           "processes; choose a multiple so every process gets the same share")
    train_set = data.TrainingClips(prepared_dir, "train", crop_samples, seed, tc.loudness_target_db,
                                   tc.loudness_max_gain_db)
    if len(train_set) < tc.batch_size:
        raise LeaflabError(f"train.batch_size = {tc.batch_size} exceeds the {len(train_set)} training clips in "
                           f"{data.audio_path(prepared_dir, 'train')}; lower train.batch_size")
    loader_generator = torch.Generator().manual_seed(seed)
    train_sampler, train_loader = make_train_loader(train_set, tc.batch_size // ctx.world_size, tc.num_workers,
                                                    seed, ctx, loader_generator)
    val_audio, val_labels = data.open_split(prepared_dir, "validation")
    val_shard = np.arange(len(val_labels))[ctx.rank::ctx.world_size]
    image_indices = data.fixed_example_indices(val_labels, N_IMAGE_CLIPS)

    # ---- model, optimiser, schedule ----------------------------------------------------------------------------
    frontend_config = cfg.frontend_config(variant)
    model = build_model(frontend_config, cfg.model, len(classes)).to(ctx.device)
    if ctx.distributed:  # BatchNorm over the global batch, so N processes compute what one would
        model = distributed.convert_batchnorm(model, ctx.device)
    optimizer = torch.optim.Adam([
        {"params": list(model.frontend.parameters()), "lr": tc.lr * tc.frontend_lr_factor},
        {"params": list(model.classifier.parameters()), "lr": tc.lr},
    ], lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=tc.lr_factor,
                                                           patience=tc.lr_patience)

    # ---- resume or start: rank 0 decides, every process loads the same state ----------------------------------
    params_hash, code = cfg.variant_params_hash(variant), checkpoints.code_fingerprint()
    ckpt_dir = checkpoints.checkpoint_dir(checkpoint_root, variant, seed)
    state, run = (resume_or_start(cfg, variant, seed, params_hash, code, ckpt_dir, say) if ctx.is_main
                  else (None, None))
    state = distributed.broadcast_object(state, ctx)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoints.restore_rng_states(state["rng"], loader_generator)
    history: list[dict[str, float]] = list(state["history"]) if state else []
    loop = dict(state["loop"]) if state else {"best_val_loss": math.inf, "best_epoch": -1, "nonfinite_in_a_row": 0,
                                                "done": False, "stop_reason": ""}
    if state is not None and ctx.is_main and history:  # a kill may have come between checkpoint and image
        last_epoch = len(history) - 1
        if wants_image(last_epoch, tc.log_images_every, loop["done"]) \
                and last_epoch not in run.logged_image_steps(IMAGE_KEY):
            log_frontend_image(run, model, val_audio, val_labels, image_indices, classes, crop_samples, tc,
                               last_epoch)
    if ctx.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    else:
        ddp = model

    try:
        # ---- the epochs --------------------------------------------------------------------------------------
        for epoch in range(len(history), tc.epochs):
            if loop["done"]:
                break
            epoch_start, lr_epoch = time.perf_counter(), optimizer.param_groups[1]["lr"]
            stats = train_one_epoch(ddp, train_loader, train_set, train_sampler, optimizer, epoch, tc, ctx, loop)
            val_loss, val_accuracy = evaluate(model, val_audio, val_labels, val_shard, crop_samples, tc, ctx)
            scheduler.step(val_loss)
            lr_now = optimizer.param_groups[1]["lr"]
            metrics = {**stats, "val_loss": val_loss, "val_accuracy": val_accuracy,
                       "lr": lr_epoch, "epoch_seconds": time.perf_counter() - epoch_start,
                       **frontend_summary(model)}
            history.append(metrics)
            improved = val_loss < loop["best_val_loss"]
            if improved:
                loop["best_val_loss"], loop["best_epoch"] = val_loss, epoch
            if epoch + 1 >= tc.epochs:
                loop["done"], loop["stop_reason"] = True, f"reached train.epochs = {tc.epochs}"
            elif lr_now < tc.min_lr:
                loop["done"], loop["stop_reason"] = True, f"lr {lr_now:.2g} fell below train.min_lr = {tc.min_lr:g}"
            if ctx.is_main:
                snapshot = {"format": checkpoints.CHECKPOINT_FORMAT, "epoch": epoch, "run_id": run.run_id,
                            "params_hash": params_hash, "code": code,
                            "variant": variant, "seed": seed, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "rng": checkpoints.rng_states(loader_generator), "history": history, "loop": loop,
                            "metrics": metrics}
                if improved:
                    checkpoints.atomic_torch_save(snapshot, ckpt_dir / "best.pt")
                checkpoints.atomic_torch_save(snapshot, ckpt_dir / "last.pt")
                _kill_point("after_checkpoint", epoch)
                run.log_metrics(metrics, step=epoch)
                if wants_image(epoch, tc.log_images_every, loop["done"]):
                    log_frontend_image(run, model, val_audio, val_labels, image_indices, classes, crop_samples,
                                       tc, epoch)
                say(epoch_summary(variant, seed, epoch, tc.epochs, metrics))
            distributed.barrier(ctx)

        # ---- the end ---------------------------------------------------------------------------------------------
        if not loop["stop_reason"]:
            loop["stop_reason"] = f"reached train.epochs = {tc.epochs}"
        if ctx.is_main:
            say(f"{variant} seed {seed}: stopped after {len(history)} epochs ({loop['stop_reason']}); "
                f"best validation loss at epoch {loop['best_epoch'] + 1}/{tc.epochs}")
            with tracking.temporary_artifact_dir() as tmp:
                for source, name in ((ckpt_dir / "best.pt", "best.pt"), (ckpt_dir / "last.pt", "final.pt")):
                    if source.is_file():
                        (tmp / name).write_bytes(source.read_bytes())
                        run.log_artifact(tmp / name, "checkpoints")
    except BaseException as err:
        if ctx.is_main and run is not None and not isinstance(err, SystemExit):
            run.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    model = model.cpu().eval()
    return TrainResult(variant, seed, run.run_id if run else "", history, model, loop["best_epoch"],
                       loop["stop_reason"])


# ---- one epoch -----------------------------------------------------------------------------------------------
def train_one_epoch(model: torch.nn.Module, loader, train_set: data.TrainingClips, sampler, optimizer,
                    epoch: int, tc, ctx: distributed.Context, loop: dict, max_steps: int | None = None
                    ) -> dict[str, float]:
    """One pass over the training batches. Returns train_loss / train_accuracy (over the finite steps of all
    processes), samples_per_s, data_wait_fraction (time blocked on the loader / time of the pass) and
    nonfinite_steps. A non-finite loss (in any process) skips the step; `loop['nonfinite_in_a_row']` of them
    in a row = train.max_nonfinite_in_a_row stops training with a LeaflabError."""
    model.train()
    train_set.set_epoch(epoch)
    sampler.set_epoch(epoch)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, clips (finite steps)
    nonfinite, processed, wait_s = 0, 0, 0.0
    bar = tqdm(total=min(len(loader), max_steps or len(loader)), desc=f"epoch {epoch}", unit="batch",
               leave=False, file=sys.stderr, disable=None if ctx.is_main else True, mininterval=1.0)
    start = time.perf_counter()
    batches = iter(loader)
    for step in range(min(len(loader), max_steps or len(loader))):
        t0 = time.perf_counter()
        x, y, _ = next(batches)
        wait_s += time.perf_counter() - t0
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        buffers = [b.detach().clone() for b in model.buffers()]  # BatchNorm statistics, restored on a bad step
        logits = model(x)
        loss = compute_loss(logits, y)
        if distributed.any_process(not bool(torch.isfinite(loss)), ctx):
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)
            nonfinite += 1
            loop["nonfinite_in_a_row"] += 1
            if loop["nonfinite_in_a_row"] >= tc.max_nonfinite_in_a_row:
                raise LeaflabError(f"non-finite training loss {tc.max_nonfinite_in_a_row} times in a row "
                                   f"(epoch {epoch}, step {step}); lower train.lr or set train.grad_clip_norm")
            continue
        loop["nonfinite_in_a_row"] = 0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip_norm)
        optimizer.step()
        with torch.no_grad():
            totals += torch.tensor([loss.item() * len(y), (logits.argmax(-1) == y).sum().item(), len(y)],
                                   dtype=torch.float64)
        processed += len(y) * ctx.world_size
        seconds = time.perf_counter() - start
        bar.set_postfix(loss=f"{totals[0] / max(totals[2], 1):.3f}", acc=f"{totals[1] / max(totals[2], 1):.3f}",
                        samples_s=f"{processed / seconds:.0f}", refresh=False)
        bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    totals = distributed.all_reduce_sum(totals.to(ctx.device), ctx).cpu()
    wait_fraction = distributed.all_reduce_sum(torch.tensor([wait_s / max(seconds, 1e-9)], device=ctx.device),
                                               ctx).item() / ctx.world_size
    return {"train_loss": float(totals[0] / totals[2]) if totals[2] else math.nan,
            "train_accuracy": float(totals[1] / totals[2]) if totals[2] else math.nan,
            "samples_per_s": processed / max(seconds, 1e-9), "data_wait_fraction": wait_fraction,
            "nonfinite_steps": float(nonfinite)}


def compute_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


# ---- validation / prediction ---------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(model: torch.nn.Module, audio: np.ndarray, indices: np.ndarray, crop_samples: int,
                   target_db: float, max_gain_db: float, batch_size: int = 128,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits [len(indices), n_classes] of clips of `audio` (int16 [n, samples]), model in eval mode: each clip
    is cut into windows of crop_samples (the last zero-padded), loudness-normalised, and its windows' logits
    are averaged (as the reference evaluates files)."""
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        x, owner = data.eval_batch(audio, chunk, crop_samples, target_db, max_gain_db)
        logits = model(torch.from_numpy(x).to(device)).float().cpu()
        summed = torch.zeros(len(chunk), logits.shape[1]).index_add_(0, torch.from_numpy(owner), logits)
        counts = torch.bincount(torch.from_numpy(owner), minlength=len(chunk)).clamp_min(1)
        out.append(summed / counts[:, None])
    return torch.cat(out) if out else torch.zeros(0, 0)


def evaluate(model: torch.nn.Module, audio: np.ndarray, labels: np.ndarray, shard: np.ndarray, crop_samples: int,
             tc, ctx: distributed.Context) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over all processes' shards of a split."""
    logits = predict_logits(model, audio, shard, crop_samples, tc.loudness_target_db, tc.loudness_max_gain_db,
                            batch_size=max(tc.batch_size // ctx.world_size, 1) * 2, device=ctx.device)
    targets = torch.from_numpy(np.asarray(labels[shard], dtype=np.int64))
    if len(shard):
        sums = torch.tensor([F.cross_entropy(logits, targets, reduction="sum").item(),
                             (logits.argmax(-1) == targets).sum().item(), len(shard)], dtype=torch.float64)
    else:
        sums = torch.zeros(3, dtype=torch.float64)
    sums = distributed.all_reduce_sum(sums.to(ctx.device), ctx).cpu()
    model.train()
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


# ---- set-up helpers ------------------------------------------------------------------------------------------
def threads_per_process(threads: int) -> int:
    """train.threads shared among the processes torchrun started on this machine."""
    import os

    return max(1, threads // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def make_train_loader(train_set: data.TrainingClips, batch_size: int, num_workers: int, seed: int,
                      ctx: distributed.Context, generator: torch.Generator):
    """(sampler, loader) of whole batches: a DistributedSampler (also with one process, so one and several
    processes see the same global batches: batch b of process r holds positions b·B + r, b·B + r + W, … of the
    epoch's permutation, seeded by (seed, epoch)); the last incomplete batch is dropped."""
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank,
                                                  shuffle=True, seed=seed, drop_last=True)
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=True)
    loader = torch.utils.data.DataLoader(train_set, sampler=batches, batch_size=None, num_workers=num_workers,
                                         pin_memory=ctx.device.type == "cuda", generator=generator,
                                         prefetch_factor=4 if num_workers > 0 else None)
    return sampler, loader


def resume_or_start(cfg: Config, variant: str, seed: int, params_hash: str, code: str, ckpt_dir: Path,
                    say: Callable[[str], None]) -> tuple[dict | None, tracking.Run]:
    """(the checkpoint to resume, its MLflow run) or (None, a new MLflow run) — rank 0 only.

    A checkpoint is resumed only when its params hash and code fingerprint equal the current ones and its MLflow
    run still exists; otherwise one line says why and training starts fresh in a new run."""
    state, why_not = checkpoints.load_checkpoint(ckpt_dir / "last.pt")
    if state is not None:
        if state.get("params_hash") != params_hash:
            why_not = (f"{ckpt_dir / 'last.pt'} was trained with other params (hash {state.get('params_hash')} "
                       f"≠ {params_hash}): starting fresh")
        elif state.get("code") != code:
            why_not = f"{ckpt_dir / 'last.pt'} was trained with other code: starting fresh"
        elif not tracking.run_exists(state["run_id"]):
            why_not = (f"{ckpt_dir / 'last.pt'}: its MLflow run {state['run_id']} is not in "
                       f"{tracking.tracking_uri()}: starting fresh")
        if why_not:
            say(why_not)
            state = None
            for name in ("last.pt", "best.pt"):
                (ckpt_dir / name).unlink(missing_ok=True)
    if state is not None:
        run = tracking.open_run(state["run_id"])
        run.mark_running()
        resync_logged_metrics(run, state["history"])
        epochs_done = len(state["history"])
        say(f"{variant} seed {seed}: resuming after epoch {epochs_done - 1} from {ckpt_dir / 'last.pt'} "
            f"(MLflow run {run.run_id})" + (" — training was already complete" if state["loop"]["done"] else ""))
        return state, run
    run_name = variant if len(cfg.train.seeds) == 1 else f"{variant}-seed{seed}"
    run = tracking.start_run(cfg.tracking.experiment, run_name, tracking.run_tags(variant, seed, params_hash))
    run.log_params(flatten(cfg.variant_params(variant)))
    run.log_dict({**cfg.variant_params(variant), "training_seed": seed,
                  "frontend_config": frontend_config_to_dict(cfg.frontend_config(variant)),
                  "params_hash": params_hash}, "config.json")
    return None, run


def resync_logged_metrics(run: tracking.Run, history: list[dict[str, float]]) -> None:
    """Log the epochs of the checkpoint's history that MLflow lacks (a kill between checkpoint and logging)."""
    if not history:
        return
    for key in history[0]:
        missing = set(range(len(history))) - run.logged_steps(key)
        for step in sorted(missing):
            run.log_metrics({key: history[step][key]}, step=step)


def _kill_point(name: str, epoch: int) -> None:
    """Test hook for the resume tests: LEAFLAB_TEST_SIGKILL=<name>:<epoch> SIGKILLs this process here."""
    import os
    import signal

    if os.environ.get("LEAFLAB_TEST_SIGKILL") == f"{name}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


# ---- reporting -----------------------------------------------------------------------------------------------
def frontend_summary(model: KeywordSpotter) -> dict[str, float]:
    """The frontend's learned parameters summarised, as metrics named frontend/…"""
    return {(k if k.startswith("frontend/") else f"frontend/{k}"): float(v)
            for k, v in model.frontend.parameter_summary().items()}


def wants_image(epoch: int, every: int, last: bool) -> bool:
    return every > 0 and (epoch % every == 0 or last)


@torch.no_grad()
def log_frontend_image(run: tracking.Run, model: KeywordSpotter, audio: np.ndarray, labels: np.ndarray,
                       indices: np.ndarray, classes: list[str], crop_samples: int, tc, epoch: int) -> None:
    """The frontend output of the same validation clips, every epoch, as MLflow image `frontend` at step epoch."""
    was_training = model.training
    model.eval()
    x, owner = data.eval_batch(audio, indices, crop_samples, tc.loudness_target_db, tc.loudness_max_gain_db)
    first_windows = np.unique(owner, return_index=True)[1]
    device = next(model.parameters()).device
    outputs = model.frontend(torch.from_numpy(x[first_windows]).to(device)).float().cpu().numpy()
    model.train(was_training)
    titles = [f"{classes[int(labels[i])]} #{int(i)}" for i in indices]
    from leaflab.plots import frontend_grid_image  # (matplotlib: imported only when an image is drawn)

    image = frontend_grid_image(outputs, titles, np.asarray(model.frontend.center_frequencies_hz(), dtype=float),
                                np.asarray(model.frontend.frame_times_s(crop_samples), dtype=float))
    run.log_image_step(image, key=IMAGE_KEY, step=epoch)


def epoch_summary(variant: str, seed: int, epoch: int, epochs: int, m: dict[str, float]) -> str:
    return (f"{variant} seed {seed} epoch {epoch + 1}/{epochs}: train loss {m['train_loss']:.4f} "
            f"acc {m['train_accuracy']:.3f} | val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.3f} | "
            f"lr {m['lr']:.2g} | {m['samples_per_s']:.0f} samples/s, data wait {m['data_wait_fraction']:.1%}, "
            f"{m['epoch_seconds']:.1f} s" + (f", {m['nonfinite_steps']:.0f} non-finite" if m['nonfinite_steps']
                                               else ""))
