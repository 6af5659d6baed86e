"""Where and how a stage's network runs: device placement, channels-last, global BN, DDP, compile, bf16."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist_utils
from ..config import RuntimeOptions
from ..distributed import Runtime


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where asked (auto: on GPUs with native bf16, compute capability 8.0 or more: A100, H100, ...),
    else None (fp32). ``torch.cuda.is_bf16_supported()`` alone also says yes on V100/T4, which emulate it
    slowly, so ``auto`` keeps those in fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return None


def use_channels_last(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def prepare_model(model: nn.Module, cfg: RuntimeOptions, runtime: Runtime,
                  global_bn: bool) -> tuple[nn.Module, nn.Module]:
    """Move to the device, then global BN, DDP and torch.compile as configured.

    Returns (model, train_model): the plain module (saved in checkpoints) and the wrapped one
    the training step calls.
    """
    model = model.to(runtime.device)
    if use_channels_last(cfg.channels_last, runtime.device):
        model = model.to(memory_format=torch.channels_last)
    if runtime.distributed and global_bn:
        model = dist_utils.convert_to_global_bn(model, runtime.device)
    train_model: nn.Module = model
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if cfg.compile:
        train_model = torch.compile(train_model)
    return model, train_model


def input_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch in the memory format the network was put in."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
