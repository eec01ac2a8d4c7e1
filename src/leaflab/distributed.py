"""Several processes (torchrun) training one model with DistributedDataParallel, on one node or several.

`torchrun --nproc-per-node N stages/train.py <variant>` sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE;
`process_group()` then joins the process group (gloo on the CPU, nccl on GPUs) and leaves it at the end. Rank 0
alone logs to MLflow and writes files. Everything that can be checked before joining is (a CUDA device for each
process that asks for one, one device choice across nodes), and a collective that fails because another process
or node of the job stopped becomes one LeaflabError line instead of a traceback from every layer.

BatchNorm: in DDP each process would normalise with its own share of the batch. To keep results equal to a
single process (TBN's BatchNorm in particular), `convert_batchnorm` replaces every BatchNorm with a version that
uses the statistics of the whole global batch: torch.nn.SyncBatchNorm on GPUs; on the CPU (where SyncBatchNorm
refuses to run) `GlobalBatchNorm` below, which all-reduces per-channel sums with a differentiable all_reduce.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from leaflab.errors import LeaflabError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(preference: str, local_rank: int = 0) -> torch.device:
    """train.device: auto (CUDA when available), cpu, or cuda."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LeaflabError("train.device = 'cuda' but no CUDA device is available; use device: auto or cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(device_preference: str = "auto") -> Context:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if world_size > local_world_size and device_preference == "auto":
        raise LeaflabError(f"train.device = 'auto' in a job over several nodes ({world_size} processes, "
                           f"{local_world_size} on this node): set train.device to cuda (nccl) or cpu (gloo), so "
                           "every node picks the same backend")
    device = choose_device(device_preference, local_rank)
    if world_size > 1 and device.type == "cuda":
        check_nccl(local_world_size)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, device)


def check_nccl(local_world_size: int) -> None:
    """nccl needs a torch built with it and one CUDA device per process of the node."""
    if not dist.is_nccl_available():
        raise LeaflabError("train.device = 'cuda' with several processes needs nccl, which this torch build "
                           "lacks; install a CUDA build of torch or set train.device: cpu (gloo)")
    devices = torch.cuda.device_count()
    if local_world_size > devices:
        raise LeaflabError(f"torchrun started {local_world_size} processes on this node but it has {devices} CUDA "
                           f"device(s); nccl needs one device per process: use --nproc-per-node {devices}")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device_preference: str = "auto") -> Iterator[Context]:
    """setup(), then the work, then cleanup(); a collective that fails because another process of the job
    stopped (a killed process, a lost node) becomes one LeaflabError line saying how to resume."""
    ctx = setup(device_preference)
    try:
        yield ctx
    except RuntimeError as err:
        lost = lost_peer_error(err, ctx)
        if lost is None:
            raise
        raise lost from None
    finally:
        cleanup()


def lost_peer_error(err: BaseException, ctx: Context) -> LeaflabError | None:
    """The one-line error for a collective that failed because a peer is gone (None for any other error).

    torch raises those as DistError, or (gloo) as RuntimeError("[…/gloo/transport/tcp/pair.cc:545] Read error …:
    Connection reset by peer. …"), (nccl) RuntimeError("NCCL error …")."""
    text = str(err)
    peer_failure = isinstance(err, dist.DistError) or "gloo/transport" in text or "NCCL error" in text
    if not (ctx.distributed and peer_failure):
        return None
    first = text.split("] ", 1)[-1].split(". ")[0].strip() if text.startswith("[") else text.splitlines()[0]
    return LeaflabError(f"training process {ctx.rank} of {ctx.world_size} lost the other processes of the job "
                        f"({first}): a process or node stopped; start the same torchrun command again on every "
                        "node and training resumes from the last checkpoint")


def all_reduce_sum(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Sum a tensor over all processes (identity in a single process)."""
    if not ctx.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_process(flag: bool, ctx: Context) -> bool:
    """True when `flag` is true in any process (all processes must call it)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, ctx: Context):
    """Rank 0's value of `obj` in every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all processes (CPU/gloo); plain BatchNorm in eval mode or alone.

    Training: per channel c, S1 = Σ x, S2 = Σ x², N = count, summed over processes (differentiable all_reduce);
    mean = S1/N, var = S2/N − mean² (biased, used to normalise); the running variance gets var·N/(N−1), as
    torch's BatchNorm does. Sums are accumulated in float64.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        x64 = x.double()
        local = torch.cat([x64.sum(dims), (x64 * x64).sum(dims),
                           torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)])
        total = _AllReduceSum.apply(local)
        channels = x.shape[1]
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x64 - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_processes x; the gradient of a sum over processes is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def convert_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm → one over the global batch (SyncBatchNorm on CUDA, GlobalBatchNorm on the CPU)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:  # the same Parameter objects, so an optimiser built before still updates them
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module
