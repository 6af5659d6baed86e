"""Where and how a stage's network runs: device placement, channels-last, global BN, DDP, compile, bf16."""

from __future__ import annotations

import functools
import inspect
import logging

import torch
from torch import nn

from .. import distributed as dist_utils
from ..config import RuntimeOptions
from ..distributed import Runtime
from ..models.resnet import ResNet

log = logging.getLogger("simclrv2")


# CPU features that compute bf16 products natively (/proc/cpuinfo flags): AVX512-BF16 (Intel Cooper Lake and
# later Xeons, AMD Zen 4 and later), AMX (Intel Sapphire Rapids and later), Arm's BF16 extension.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where asked, or (auto) where the hardware multiplies in bf16 natively: GPUs of compute
    capability 8.0 or more (A100, H100, ...) and CPUs with AVX512-BF16, AMX or Arm BF16 (there, bf16
    autocast made the convolutions of a pretraining step 1.7-2x faster than fp32: BENCHMARKS.md); else
    None (fp32). ``torch.cuda.is_bf16_supported()`` alone also says yes on V100/T4, which emulate it
    slowly, so ``auto`` keeps those in fp32, as CPUs without those instructions."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if not native_bf16(device):
            _warn_once(f"--precision bf16 on a {'GPU' if device.type == 'cuda' else 'CPU'} without native bf16: "
                       "it is emulated, often several times slower than fp32; "
                       "--precision auto would compute in fp32 here")
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device) else None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively (what ``--precision auto`` picks bf16 for)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and bool(NATIVE_BF16_CPU_FLAGS & cpu_flags())


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """The autocast region of a run's precision: ``dtype`` (from ``autocast_dtype``) on ``device``, or a
    disabled region for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def use_channels_last(setting: str, device: torch.device) -> bool:
    """Channels-last where asked, or (auto) on GPUs and on CPUs with oneDNN (the convolution kernels of
    both are fastest in that layout: 1.1-1.3x per CPU step measured, BENCHMARKS.md)."""
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())


def prepare_model(model: nn.Module, cfg: RuntimeOptions, runtime: Runtime,
                  global_bn: bool) -> tuple[nn.Module, nn.Module]:
    """Move to the device, then global BN, DDP and torch.compile as configured.

    Returns (model, train_model): the plain module (saved in checkpoints) and the wrapped one
    the training step calls.
    """
    model = model.to(runtime.device)
    if runtime.device.type == "cuda":
        # Every step has the same shapes: let cuDNN time its convolution algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
    if use_channels_last(cfg.channels_last, runtime.device):
        model = model.to(memory_format=torch.channels_last)
    if cfg.activation_checkpointing:
        for module in model.modules():
            if isinstance(module, ResNet):
                module.checkpoint_blocks = True
    if runtime.distributed and global_bn:
        model = dist_utils.convert_to_global_bn(model, runtime.device)
    train_model: nn.Module = model
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # gradient_as_bucket_view: the gradients are views into DDP's communication buckets (no copy, and
        # one gradient-sized buffer less).
        # Buffers (BN running statistics) are not re-broadcast from rank 0 before every forward: global BN keeps
        # them equal (without it each process keeps its own; rank 0's are saved). torch 2.13 renamed the
        # option (broadcast_buffers is deprecated there).
        ddp = nn.parallel.DistributedDataParallel
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                          else {"broadcast_buffers": False})
        train_model = ddp(model, device_ids=ids, gradient_as_bucket_view=True, **no_buffer_sync)
    if cfg.compile:
        train_model = torch.compile(train_model, backend=cfg.compile_backend)
    return model, train_model


def input_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch in the memory format the network was put in."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
