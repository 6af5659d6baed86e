"""Data-parallel training with plain ``torch.distributed`` (launched by ``torchrun``).

NCCL on GPUs, gloo on CPUs. Two things SimCLRv2 needs beyond DDP: negatives gathered from
every process *with* their gradient (``gather_with_grad``) and global BatchNorm, whose
statistics span the global batch: ``GlobalBatchNorm`` all-reduces the per-channel sums with
autograd, on any device (PyTorch's ``SyncBatchNorm`` runs only on GPUs and moves the running
variance toward the unbiased variance, not the official code's biased one).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError
from .models.batchnorm import BatchNorm


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    """Rank 0, or a single process; before the process group exists, torchrun's RANK decides."""
    return rank() == 0 if is_initialized() else os.environ.get("RANK", "0") == "0"


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is usable, else "cpu"; "cuda" without one is a UserError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda, but this machine has no usable CUDA GPU (or torch is a CPU build): "
                        "use --device cpu, or install the CUDA build of torch")
    return device


def setup(device: str = "auto") -> Runtime:
    """Pick the device and, under ``torchrun`` (``WORLD_SIZE`` > 1), join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device)
    if device == "cuda" and local_rank >= torch.cuda.device_count():
        raise UserError(f"process {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible): "
                        "start at most that many processes per node (torchrun --nproc-per-node)")
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world > 1 and not is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Runtime(rank(), world_size(), local_rank, dev)


def single_process(device: str = "auto") -> Runtime:
    """A Runtime for work one process does alone (evaluation, prediction): no process group."""
    device = resolve_device(device)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return Runtime(0, 1, dev.index or 0, dev)


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


# Collectives with autograd, on PyTorch's functional collectives (the ops torch.compile traces without a graph
# break; ``torch.distributed.nn.functional``, deprecated, breaks the graph at each call).
_functional = torch.ops._c10d_functional


def _world_group() -> str:
    return dist.group.WORLD.group_name


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of each input is the sum of the outputs' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _functional.wait_tensor(_functional.all_reduce(x.contiguous(), "sum", _world_group()))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _functional.wait_tensor(_functional.all_reduce(grad.contiguous(), "sum", _world_group()))


class _AllGather(torch.autograd.Function):
    """Concatenation along dim 0 in rank order; each process gets back the summed gradient of its slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _functional.wait_tensor(_functional.all_gather_into_tensor(x.contiguous(), world_size(), _world_group()))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _functional.wait_tensor(
            _functional.reduce_scatter_tensor(grad.contiguous(), "sum", world_size(), _world_group()))


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over processes, with autograd (a new tensor; ``x`` itself with one process)."""
    return x if world_size() == 1 else _AllReduceSum.apply(x)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process in rank order; gradients flow back to their owners."""
    return x if world_size() == 1 else _AllGather.apply(x)


def no_sync(net: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` for all but the last of several backward passes of one step (gradients
    accumulate locally and are all-reduced once); a no-op for a network without DDP."""
    ddp = getattr(net, "_orig_mod", net)
    if last or not isinstance(ddp, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process in rank order (no gradient)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``x`` (any number on each), concatenated in rank order (no gradient)."""
    world = world_size()
    if world == 1:
        return x
    counts = gather(torch.tensor([x.shape[0]], device=x.device)).tolist()
    rows = max(counts)
    padded = x.new_zeros((rows, *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = gather(padded).view(world, rows, *x.shape[1:])
    return torch.cat([parts[r, :counts[r]] for r in range(world)])


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes (a new tensor; no gradient)."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


class GlobalBatchNorm(BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any device.

    Per-channel sums and sums of squares are all-reduced with autograd support, so the
    gradients are those of BatchNorm over the concatenated batch; the running variance moves
    toward the biased variance of the global batch, as the official cross-replica BN's does.
    With one process, or in eval mode, it is ``BatchNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x if x.dtype == torch.float64 else x.float()  # at least float32 for the sums
        count = xf.new_full((1,), x.numel() / x.shape[1])  # a fill, not a copy from the host
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = all_reduce_sum(stats)
        c = x.shape[1]
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_(var.to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_to_global_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm for its cross-process version, ``GlobalBatchNorm`` (on every device)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_to_global_bn(child, device))
    return module


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


