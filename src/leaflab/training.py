"""The training loop: one KeywordSpotter per (variant, seed), every epoch checkpointed and logged to MLflow.

`train()` reads top to bottom: data, model, optimiser; then the training state and MLflow run are resumed or
started (`start_or_resume`); then epochs of `train_one_epoch` + `validate` run until train.epochs or until
ReduceLROnPlateau has lowered the learning rate below train.min_lr. The papers' set-up: Adam,
ReduceLROnPlateau on the validation loss, loudness normalisation and random crops (leaflab.data.dataset), a
non-finite loss skipped (no optimiser step) and train.max_nonfinite_in_a_row of them in a row fatal.

Order per epoch, so that a kill at any moment can be resumed with no MLflow step missing or duplicated:
  train → validate → scheduler step → checkpoint (best.pt, last.pt) → log the epoch to MLflow.
On resume, the epochs of the checkpoint that MLflow lacks (a kill between the last two steps) are logged first.

When a training is resumed and when it starts anew (DVC's `dvc repro -f` means "run it again"):
  - an interrupted training (checkpoint of these params and code, its run not FINISHED) resumes in its run;
  - a completed one (its run FINISHED: the train stage published it) trains anew, in a new run;
  - a run killed before its first checkpoint is reused from scratch (it holds no epoch yet);
  - a run that can no longer be continued (other params, unreadable checkpoint) is marked KILLED, saying why.

Several processes (torchrun): see leaflab.distributed. Rank 0 alone talks to MLflow and writes files.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from leaflab import distributed, tracking
from leaflab.checkpoints import Checkpointer, code_fingerprint, restore_rng_states, rng_states, seed_everything
from leaflab.config import Config, flatten
from leaflab.data import dataset as data
from leaflab.dvc_hash import folder_digest
from leaflab.errors import LeaflabError
from leaflab.layout import Layout
from leaflab.machine import machine_tags
from leaflab.redaction import redact
from leaflab.models import KeywordSpotter, build_model

N_IMAGE_CLIPS = 16
IMAGE_KEY = "frontend"
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds",
                 "samples_per_s", "data_wait_fraction", "nonfinite_steps")


@dataclass
class TrainingState:
    """Where a training stands after its last complete epoch (saved in every checkpoint)."""

    history: list[dict[str, float]] = field(default_factory=list)   # EPOCH_METRICS (+ frontend/…) per epoch
    best_val_loss: float = math.inf
    best_epoch: int = -1
    nonfinite_in_a_row: int = 0
    stop_reason: str = ""                                            # set once training is complete

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def record(self, metrics: dict[str, float], lr_now: float, tc) -> bool:
        """Append an epoch's metrics; decide whether training stops. True when the epoch is the best so far."""
        epoch = len(self.history)
        self.history.append(metrics)
        improved = metrics["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = metrics["val_loss"], epoch
        if epoch + 1 >= tc.epochs:
            self.stop_reason = f"reached train.epochs = {tc.epochs}"
        elif lr_now < tc.min_lr:
            self.stop_reason = f"lr {lr_now:.2g} fell below train.min_lr = {tc.min_lr:g}"
        return improved


@dataclass
class TrainResult:
    variant: str
    seed: int
    run_id: str
    history: list[dict[str, float]]
    model: KeywordSpotter                # the final (last-epoch) model, on the CPU, eval mode
    best_epoch: int
    stop_reason: str


def train(cfg: Config, variant: str, seed: int, *, layout: Layout = Layout(),
          ctx: distributed.Context | None = None, say: Callable[[str], None] = print,
          threads: int | None = None, progress: bool = True) -> TrainResult:
    """Train (or resume) one model of `variant` with `seed`; returns the final model and its history.

    threads: torch intra-op threads (default: train.threads shared among torchrun's processes on this machine);
    progress: show a progress bar per epoch. The MLflow run is left RUNNING at the end: the caller marks it
    FINISHED once it has published the model (leaflab.pipeline.train). On an error it is marked FAILED (KILLED on
    Ctrl-C); a SIGKILL leaves it RUNNING until the next attempt resumes or closes it."""
    ctx = ctx or distributed.Context()
    tc = cfg.train
    torch.set_num_threads(threads or threads_per_process(tc.threads))
    torch.set_flush_denormal(True)  # denormal floats (seen on random inputs) made CPU kernels up to 10× slower
    seed_everything(seed)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False

    clips = TrainingData(cfg, layout.prepared, seed, ctx)
    model = build_model(cfg.frontend_config(variant), cfg.model, len(clips.classes)).to(ctx.device)
    if ctx.distributed:  # BatchNorm over the global batch, so N processes compute what one would
        model = distributed.convert_batchnorm(model, ctx.device)
    optimizer = torch.optim.Adam([
        {"params": list(model.frontend.parameters()), "lr": tc.lr * tc.frontend_lr_factor},
        {"params": list(model.classifier.parameters()), "lr": tc.lr},
    ], lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=tc.lr_factor,
                                                           patience=tc.lr_patience)

    checkpointer = Checkpointer(layout.checkpoints(variant, seed), cfg.variant_params_hash(variant),
                                code_fingerprint(), say)
    snapshot, run = start_or_resume(cfg, variant, seed, checkpointer, layout.prepared, say) if ctx.is_main \
        else (None, None)
    snapshot = distributed.broadcast_object(snapshot, ctx)
    state = TrainingState()
    if snapshot is not None:
        model.load_state_dict(snapshot["model"])
        optimizer.load_state_dict(snapshot["optimizer"])
        scheduler.load_state_dict(snapshot["scheduler"])
        restore_rng_states(snapshot["rng"], clips.loader_generator)
        state = TrainingState(**snapshot["state"])
    logger = EpochLogger(run, clips, variant, seed, tc, say) if ctx.is_main else None
    if logger and snapshot is not None:
        logger.catch_up(state, model)
    trained = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) if ctx.distributed else model

    monitor = tracking.system_metrics_monitor(run) if ctx.is_main else None
    try:
        for epoch in range(len(state.history), tc.epochs):
            if state.done:
                break
            epoch_start, lr_epoch = time.perf_counter(), optimizer.param_groups[1]["lr"]
            stats = train_one_epoch(trained, clips, optimizer, epoch, tc, ctx, state, progress)
            val_loss, val_accuracy = validate(model, clips, tc, ctx)
            scheduler.step(val_loss)
            metrics = {**stats, "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": lr_epoch,
                       "epoch_seconds": time.perf_counter() - epoch_start, **frontend_summary(model)}
            improved = state.record(metrics, optimizer.param_groups[1]["lr"], tc)
            if ctx.is_main:
                checkpointer.save({"epoch": epoch, "run_id": run.run_id, "variant": variant, "seed": seed,
                                   "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "rng": rng_states(clips.loader_generator),
                                   "state": asdict(state)}, improved)
                logger.log_epoch(epoch, metrics, model, last=state.done)
            distributed.barrier(ctx)
        if ctx.is_main:
            say(f"{variant} seed {seed}: stopped after {len(state.history)} epochs ({state.stop_reason}); "
                f"best validation loss at epoch {state.best_epoch + 1}/{tc.epochs}")
            logger.log_checkpoints(checkpointer)
    except BaseException as err:
        if ctx.is_main and run is not None and not isinstance(err, SystemExit):
            try:
                run.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            except Exception:  # noqa: BLE001 (e.g. the tracking server is gone: report `err`, not this; the
                pass           # run stays RUNNING with its checkpoint, and the next attempt resumes it)
        raise
    finally:
        if monitor is not None:
            monitor.finish()
    return TrainResult(variant, seed, run.run_id if run else "", state.history, model.cpu().eval(),
                       state.best_epoch, state.stop_reason)


def threads_per_process(threads: int) -> int:
    """train.threads shared among the processes torchrun started on this machine."""
    import os

    return max(1, threads // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


# ---- the data of one training ----------------------------------------------------------------------------------
class TrainingData:
    """The training batches (random crops, loudness-normalised), the validation split and its fixed image clips."""

    def __init__(self, cfg: Config, prepared_dir: Path, seed: int, ctx: distributed.Context):
        tc = cfg.train
        self.classes = data.load_classes(prepared_dir)
        self.crop_samples = int(round(tc.crop_seconds * cfg.data.sample_rate))
        if tc.batch_size % ctx.world_size:
            raise LeaflabError(f"train.batch_size = {tc.batch_size} is not divisible by the {ctx.world_size} "
                               "processes; choose a multiple so every process gets the same share")
        self.train_set = data.TrainingClips(prepared_dir, "train", self.crop_samples, seed, tc.loudness_target_db,
                                            tc.loudness_max_gain_db, normalize=tc.loudness_normalize)
        if len(self.train_set) < tc.batch_size:
            raise LeaflabError(f"train.batch_size = {tc.batch_size} exceeds the {len(self.train_set)} training "
                               f"clips in {data.audio_path(prepared_dir, 'train')}; lower train.batch_size")
        self.loader_generator = torch.Generator().manual_seed(seed)
        self.sampler, self.loader = make_train_loader(self.train_set, tc.batch_size // ctx.world_size,
                                                      tc.num_workers, seed, ctx, self.loader_generator)
        self.val_audio, self.val_labels = data.open_split(prepared_dir, "validation")
        self.val_shard = np.arange(len(self.val_labels))[ctx.rank::ctx.world_size]
        self.image_indices = data.fixed_example_indices(self.val_labels, N_IMAGE_CLIPS)


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


# ---- one epoch -----------------------------------------------------------------------------------------------
def train_one_epoch(model: torch.nn.Module, clips: TrainingData, optimizer, epoch: int, tc,
                    ctx: distributed.Context, state: TrainingState, progress: bool = True) -> dict[str, float]:
    """One pass over the training batches. Returns train_loss / train_accuracy (over the finite steps of all
    processes), samples_per_s, data_wait_fraction (time blocked on the loader / time of the pass) and
    nonfinite_steps. A non-finite loss (in any process) skips the step; train.max_nonfinite_in_a_row of them
    in a row stop training with a LeaflabError."""
    model.train()
    clips.train_set.set_epoch(epoch)
    clips.sampler.set_epoch(epoch)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, clips (finite steps)
    nonfinite, processed, wait_s = 0, 0, 0.0
    bar = tqdm(total=len(clips.loader), desc=f"epoch {epoch + 1}", unit="batch", leave=False, file=sys.stderr,
               disable=None if ctx.is_main and progress else True, mininterval=1.0)
    start = time.perf_counter()
    batches = iter(clips.loader)
    for step in range(len(clips.loader)):
        t0 = time.perf_counter()
        x, y, _ = next(batches)
        wait_s += time.perf_counter() - t0
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        buffers = [b.detach().clone() for b in model.buffers()]  # BatchNorm statistics, restored on a bad step
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if distributed.any_process(not bool(torch.isfinite(loss)), ctx):
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)
            nonfinite += 1
            state.nonfinite_in_a_row += 1
            if state.nonfinite_in_a_row >= tc.max_nonfinite_in_a_row:
                raise LeaflabError(f"non-finite training loss {tc.max_nonfinite_in_a_row} times in a row "
                                   f"(epoch {epoch + 1}, step {step + 1}); lower train.lr or set "
                                   "train.grad_clip_norm")
            continue
        state.nonfinite_in_a_row = 0
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


# ---- validation ------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(model: torch.nn.Module, audio: np.ndarray, indices: np.ndarray, crop_samples: int,
                   target_db: float, max_gain_db: float, batch_size: int = 128,
                   device: torch.device | str = "cpu", normalize: bool = True) -> torch.Tensor:
    """Logits [len(indices), n_classes] of clips of `audio` (int16 [n, samples]), model in eval mode: each clip
    is cut into windows of crop_samples (the last zero-padded), loudness-normalised, and its windows' logits
    are averaged (as the reference evaluates files)."""
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        x, owner = data.eval_batch(audio, chunk, crop_samples, target_db, max_gain_db, normalize)
        logits = model(torch.from_numpy(x).to(device)).float().cpu()
        summed = torch.zeros(len(chunk), logits.shape[1]).index_add_(0, torch.from_numpy(owner), logits)
        counts = torch.bincount(torch.from_numpy(owner), minlength=len(chunk)).clamp_min(1)
        out.append(summed / counts[:, None])
    return torch.cat(out) if out else torch.zeros(0, 0)


def validate(model: torch.nn.Module, clips: TrainingData, tc, ctx: distributed.Context) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over all processes' shards of the validation split."""
    shard = clips.val_shard
    logits = predict_logits(model, clips.val_audio, shard, clips.crop_samples, tc.loudness_target_db,
                            tc.loudness_max_gain_db, batch_size=max(tc.batch_size // ctx.world_size, 1) * 2,
                            device=ctx.device, normalize=tc.loudness_normalize)
    targets = torch.from_numpy(np.asarray(clips.val_labels[shard], dtype=np.int64))
    if len(shard):
        sums = torch.tensor([F.cross_entropy(logits, targets, reduction="sum").item(),
                             (logits.argmax(-1) == targets).sum().item(), len(shard)], dtype=torch.float64)
    else:
        sums = torch.zeros(3, dtype=torch.float64)
    sums = distributed.all_reduce_sum(sums.to(ctx.device), ctx).cpu()
    model.train()
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


# ---- resume or start (rank 0) ------------------------------------------------------------------------------------
def start_or_resume(cfg: Config, variant: str, seed: int, checkpointer: Checkpointer, prepared_dir: Path,
                    say: Callable[[str], None]) -> tuple[dict | None, tracking.Run]:
    """(the checkpoint to resume, its MLflow run) or (None, the run to train in from scratch): the rules of the
    module docstring. Every run this attempt does not continue is left FINISHED or marked KILLED, never RUNNING."""
    snapshot = checkpointer.load()
    if snapshot is not None:
        run = tracking.find_run(snapshot["run_id"])
        if run is None:
            say(f"checkpoint {checkpointer.last}: its MLflow run {snapshot['run_id']} is not in "
                f"{redact(tracking.tracking_uri())}; starting from scratch")
        elif run.status() == "FINISHED":
            say(f"{variant} seed {seed}: the training in MLflow run {run.run_id} was complete; training anew in a "
                "new run (dvc repro -f)")
        else:
            run.check_identity(variant, seed, checkpointer.params_hash)
            run.mark_running()
            epochs = len(snapshot["state"]["history"])
            say(f"{variant} seed {seed}: resuming after epoch {epochs} from {checkpointer.last} "
                f"(MLflow run {run.run_id})")
            return snapshot, run
        checkpointer.discard()
    abandoned = tracking.find_run(checkpointer.remembered_run() or "")
    if abandoned is not None and abandoned.status() == "RUNNING" and not abandoned.has_metrics():
        say(f"{variant} seed {seed}: reusing MLflow run {abandoned.run_id}, killed before its first epoch")
        return None, abandoned
    close_abandoned_runs(cfg.tracking.experiment, variant, seed, say)
    digest = folder_digest(prepared_dir)
    run = tracking.start_run(cfg.tracking.experiment, variant if len(cfg.train.seeds) == 1 else f"{variant}-seed{seed}",
                             {**training_tags(cfg, variant, seed, checkpointer.params_hash), "data_digest": digest})
    run.log_dataset("prepared", digest, str(prepared_dir.resolve()), "training")
    run.log_params({**flatten(cfg.variant_params(variant)), "seed": seed})
    run.log_dict({**cfg.variant_params(variant), "seed": seed, "params_hash": checkpointer.params_hash},
                 "config.json")
    checkpointer.remember_run(run.run_id)
    return None, run


def training_tags(cfg: Config, variant: str, seed: int, params_hash: str) -> dict[str, str]:
    """What identifies a training run (checked by every stage that reopens it) and what it ran on."""
    return {"leaflab.kind": "training", "variant": variant, "seed": str(seed), "params_hash": params_hash,
            "params_hash_shared": cfg.shared_params_hash(),
            **machine_tags(distributed.choose_device(cfg.train.device), torch.get_num_threads())}


def close_abandoned_runs(experiment: str, variant: str, seed: int, say: Callable[[str], None]) -> None:
    """Mark KILLED the RUNNING runs of this variant and seed that no process continues (their checkpoints were
    unusable, or they were killed before their first one): a new training is about to start."""
    for run in tracking.running_runs(experiment, variant, seed):
        run.finish("KILLED", reason="superseded: the next training of this variant and seed started anew")
        say(f"{variant} seed {seed}: marked the interrupted MLflow run {run.run_id} KILLED (not resumable)")


# ---- logging (rank 0) --------------------------------------------------------------------------------------------
class EpochLogger:
    """Each epoch into MLflow (metrics at step = epoch index, the frontend image) and one line on the console."""

    def __init__(self, run: tracking.Run, clips: TrainingData, variant: str, seed: int, tc,
                 say: Callable[[str], None]):
        self.run, self.clips, self.variant, self.seed, self.tc, self.say = run, clips, variant, seed, tc, say

    def log_epoch(self, epoch: int, metrics: dict[str, float], model: KeywordSpotter, last: bool) -> None:
        self.run.log_metrics(metrics, step=epoch)
        if self._wants_image(epoch, last):
            self._log_image(model, epoch)
        self.say(epoch_summary(self.variant, self.seed, epoch, self.tc.epochs, metrics))

    def catch_up(self, state: TrainingState, model: KeywordSpotter) -> None:
        """After a resume: log what the checkpoint has and MLflow lacks (a kill between the two)."""
        if not state.history:
            return
        for key in state.history[0]:
            missing = set(range(len(state.history))) - self.run.logged_steps(key)
            for step in sorted(missing):
                self.run.log_metrics({key: state.history[step][key]}, step=step)
        last = len(state.history) - 1
        if self._wants_image(last, state.done) and last not in self.run.logged_image_steps(IMAGE_KEY):
            self._log_image(model, last)

    def log_checkpoints(self, checkpointer: Checkpointer) -> None:
        with tracking.temporary_artifact_dir() as tmp:
            for source, name in ((checkpointer.best, "best.pt"), (checkpointer.last, "final.pt")):
                if source.is_file():
                    (tmp / name).write_bytes(source.read_bytes())
                    self.run.log_artifact(tmp / name, "checkpoints")

    def _wants_image(self, epoch: int, last: bool) -> bool:
        every = self.tc.log_images_every
        return every > 0 and (epoch % every == 0 or last)

    @torch.no_grad()
    def _log_image(self, model: KeywordSpotter, epoch: int) -> None:
        """The frontend output of the same validation clips, as MLflow image `frontend` at step `epoch`."""
        from leaflab.plots import frontend_grid_image  # (matplotlib: imported only when an image is drawn)

        clips, tc = self.clips, self.tc
        was_training = model.training
        model.eval()
        x, owner = data.eval_batch(clips.val_audio, clips.image_indices, clips.crop_samples, tc.loudness_target_db,
                                   tc.loudness_max_gain_db, tc.loudness_normalize)
        first_windows = np.unique(owner, return_index=True)[1]
        device = next(model.parameters()).device
        outputs = model.frontend(torch.from_numpy(x[first_windows]).to(device)).float().cpu().numpy()
        model.train(was_training)
        titles = [f"{clips.classes[int(clips.val_labels[i])]} #{int(i)}" for i in clips.image_indices]
        image = frontend_grid_image(outputs, titles, np.asarray(model.frontend.center_frequencies_hz(), dtype=float),
                                    np.asarray(model.frontend.frame_times_s(clips.crop_samples), dtype=float),
                                    names=getattr(model.frontend, "channel_names", None))
        self.run.log_image_step(image, key=IMAGE_KEY, step=epoch)


def frontend_summary(model: KeywordSpotter) -> dict[str, float]:
    """The frontend's learned parameters summarised, as metrics named frontend/…"""
    return {(k if k.startswith("frontend/") else f"frontend/{k}"): float(v)
            for k, v in model.frontend.parameter_summary().items()}


def epoch_summary(variant: str, seed: int, epoch: int, epochs: int, m: dict[str, float]) -> str:
    return (f"{variant} seed {seed} epoch {epoch + 1}/{epochs}: train loss {m['train_loss']:.4f} "
            f"acc {m['train_accuracy']:.3f} | val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.3f} | "
            f"lr {m['lr']:.2g} | {m['samples_per_s']:.0f} samples/s, data wait {m['data_wait_fraction']:.1%}, "
            f"{m['epoch_seconds']:.1f} s" + (f", {m['nonfinite_steps']:.0f} non-finite" if m['nonfinite_steps']
                                               else ""))
