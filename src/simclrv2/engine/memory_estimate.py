"""The peak memory of a training step, estimated before training starts.

The stage's own step runs once on a twin whose tensors have shapes, dtypes and devices but no data
(``FakeTensorMode``): its weights, gradients, optimizer state, batch, augmented views, saved activations
and temporaries are counted, each tensor from the op that makes it until it is freed, in blocks of 512
bytes as the CUDA caching allocator rounds them; what the step leaves behind (optimizer state) is added to
its forward-backward peak, as every later step has it. Nothing is allocated and the real model and
optimizer are not touched; a trace takes a fraction of a second for a small model. The
estimate came within 2% of the peak of two real steps, on CPU (the CPU allocator's events,
``tests/engine/test_memory_estimate.py``) and on an H200 (``torch.cuda.max_memory_allocated``,
BENCHMARKS.md section 9).

Not counted: the CUDA context and cuDNN/cuBLAS workspaces (outside PyTorch's allocator) and the
caching allocator's fragmentation; the check leaves ``HEADROOM`` of the device for them. With
``--compile`` the estimate is that of the eager step, which fused kernels usually lower.
"""

from __future__ import annotations

import copy
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from .. import distributed as dist_utils
from ..data.loader import Batch
from ..distributed import unwrap
from ..errors import UserError
from ..host import available_memory
from ..optim import build_optimizer
from .placement import autocast
from .stage import TrainStep

log = logging.getLogger("simclrv2")

GIB = 1 << 30
BLOCK = 512  # bytes: the CUDA caching allocator's rounding of every allocation
HEADROOM = 0.1  # of the usable memory, left for what the estimate does not count (see the module docstring)


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage made under it, until the storage is freed; ``peak``
    is the most that were alive at once. Storages made before it are added with ``add``."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = -(-storage.nbytes() // BLOCK) * BLOCK
        self._seen[storage] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.add(value)
        return out


def _fake_twin(step: TrainStep, mode: FakeTensorMode,
               micro_batch: int | None) -> tuple[TrainStep, dict[int, torch.Tensor]]:
    """A copy of ``step`` (``TrainStep.replaced``) whose modules (``TrainStep.modules``) are copies with fake
    tensors (DDP and compile wrappers replaced by the module inside), with ``micro_batch`` if given; the map
    from each real parameter and buffer to its fake."""
    memo: dict[int, Any] = {}
    fakes: dict[int, torch.Tensor] = {}
    modules = step.modules()
    for module in modules.values():
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in fakes:
                fake = mode.from_tensor(tensor)
                if isinstance(tensor, nn.Parameter):
                    fake = nn.Parameter(fake, requires_grad=tensor.requires_grad)
                fakes[id(tensor)] = memo[id(tensor)] = fake
    copies = {}
    for name, module in modules.items():
        inner = unwrap(module)
        if id(inner) not in memo:
            copy.deepcopy(inner, memo)  # copies the Python structure; tensors come from the memo
        copies[name] = memo[id(inner)]
    return step.replaced(copies, micro_batch), fakes


def trace_peak(step: TrainStep, optimizer: torch.optim.Optimizer, optimizer_name: str, momentum: float, batch_images: int,
               load_size: int, device: torch.device, precision: torch.dtype | None,
               micro_batch: int | None = None) -> tuple[int, int]:
    """(peak, resident) bytes of a training step of ``step`` on a batch of ``batch_images`` uint8 images of
    side ``load_size`` (as the loader hands them), with a fresh ``optimizer_name`` optimizer (``momentum``)
    over ``optimizer``'s groups, under ``precision`` autocast; ``resident``: the weights and buffers the step
    holds. ``micro_batch`` overrides the step's.

    One step is traced. What it leaves behind (the optimizer state, LARS's scratch, the queue's keys) is there
    during every later step's forward and backward pass: the peak is the larger of the first step's and
    (its forward-backward peak + what it left behind)."""
    mode = FakeTensorMode()
    twin, fakes = _fake_twin(step, mode, micro_batch)
    groups = [{**group, "params": [fakes[id(p)] for p in group["params"]]} for group in optimizer.param_groups]
    counter = LiveBytes()
    with mode:
        fake_optimizer = build_optimizer(optimizer_name, groups, lr=0.0, momentum=momentum)
        for fake in fakes.values():
            counter.add(fake)
        resident = counter.live
        with counter:
            n, side = batch_images, load_size
            batch = Batch(torch.empty((n, 3, side, side), dtype=torch.uint8, device=device),
                          torch.full((n, 2), float(side), device=device),
                          torch.zeros(n, dtype=torch.long, device=device),
                          torch.arange(n))
            before = counter.live
            with autocast(device, precision):
                loss, logs = twin(batch, torch.Generator(device=device), 0)
            if not twin.computes_gradients:
                loss.backward()
            forward_backward = counter.peak
            fake_optimizer.step()
            fake_optimizer.zero_grad(set_to_none=True)
            twin.after_update()
            del loss, logs
            left_behind = counter.live - before
    return max(counter.peak, forward_backward + left_behind), resident


def usable_bytes(device: torch.device, resident: int) -> int:
    """The memory one training process may use: what is free (on a GPU, also the blocks PyTorch's caching
    allocator holds unused; on the CPU the available memory, shared among the node's processes) plus the
    weights and buffers the step already holds (``resident``, counted in the estimate). What else the process
    holds (an image cache on the GPU, say) is not free, and not in the estimate."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device) + resident
    available = _mem_available()
    if available is None:
        return 0
    return available // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) + resident


def _mem_available() -> int | None:
    return available_memory()


@dataclass
class MemoryEstimate:
    """The estimate for a process's share of the batch (``images`` per forward pass)."""

    peak: int
    resident: int
    images: int
    usable: int
    knob: str  # the option that sets ``images``: --batch-size or --micro-batch

    @property
    def fits(self) -> bool:
        return self.usable <= 0 or self.peak <= (1 - HEADROOM) * self.usable

    def line(self) -> str:
        where = f" of the {size(self.usable)} this process may use" if self.usable > 0 else ""
        return (f"memory: a training step needs about {size(self.peak)} per process{where} ({self.images} images "
                f"per forward pass; weights and buffers {size(self.resident)})")


def size(count: int) -> str:
    return f"{count / GIB:.1f} GiB" if count >= GIB else f"{count / (1 << 20):.0f} MiB"


def estimate_step(engine: Any, images: int | None = None) -> MemoryEstimate:
    """The peak of ``engine``'s training step with ``images`` per forward pass on each process (default:
    the run's)."""
    cfg, runtime, step = engine.cfg, engine.runtime, engine.step
    per_process = cfg.batch_size // runtime.world_size
    micro = step.micro_batch
    knob = "--micro-batch" if micro is not None else "--batch-size"
    current = micro if micro is not None else per_process
    images = images or current
    peak, resident = trace_peak(step, engine.optimizer, cfg.optimizer, cfg.momentum,
                                per_process if micro is not None else images,
                                cfg.resolved_load_size(), runtime.device, engine.autocast,
                                micro_batch=images if micro is not None else None)
    return MemoryEstimate(peak, resident, images, usable_bytes(runtime.device, resident), knob)


def largest_fitting(engine: Any, at: MemoryEstimate) -> int:
    """The most images per forward pass whose estimated peak fits, from a second trace at half the images
    (the peak grows linearly with them); 0 if not even one fits."""
    half = max(1, at.images // 2) if at.images > 1 else 2
    other = estimate_step(engine, half)
    per_image = (at.peak - other.peak) / (at.images - half)
    fixed = at.peak - per_image * at.images
    if per_image <= 0:
        return at.images
    return max(0, int(((1 - HEADROOM) * at.usable - fixed) // per_image))


def check_memory(engine: Any) -> MemoryEstimate | None:
    """Log the estimate; refuse (``UserError``: exit 2) a step that would not fit, naming the largest
    number of images per forward pass that does. None when the step cannot be traced (logged). Under
    torchrun the processes agree: all refuse when one would not fit (none is left waiting for the others)."""
    try:
        found = estimate_step(engine)
    except Exception as error:  # an op without a data-free implementation: train without the check
        log.warning("memory estimate unavailable (%s: %s); training without it", type(error).__name__, error)
        found = None
    refused = found is not None and not found.fits
    if engine.runtime.distributed:
        flag = torch.tensor(1.0 if refused else 0.0, device=engine.runtime.device)
        refused = dist_utils.all_reduce_mean(flag).item() > 0
    if found is None:
        return None
    if not refused:
        if engine.runtime.is_main:
            log.info("%s", found.line())
        return found
    largest = largest_fitting(engine, found)
    world = engine.runtime.world_size
    if largest < 1:
        advice = "not even one image per forward pass fits: use a smaller model, or more memory"
    elif found.knob == "--micro-batch":
        advice = f"the largest that fits is about --micro-batch {largest}"
    else:
        advice = (f"the largest that fits is about {largest} images per process: --batch-size {largest * world}, "
                  f"or keep the batch and add --micro-batch {largest} (the same training step, in parts)")
    why = f"more than {1 - HEADROOM:.0%} of it" if not found.fits else "another process has too little free memory"
    raise UserError(f"{found.line()[len('memory: '):]}: {why}; {advice}; --activation-checkpointing also lowers it; "
                    "--no-check-memory tries anyway")
