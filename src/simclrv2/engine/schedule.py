"""The recipe of a run before it starts: the learning rate of every step (an array computed once:
linear warmup, cosine decay), and the settings that run but usually train badly."""

from __future__ import annotations

import numpy as np

from ..config import StageConfig
from ..optim import scale_learning_rate, warmup_cosine_schedule


def make_schedule(cfg: StageConfig, steps_per_epoch: int) -> np.ndarray:
    """Per-step learning rates: scaled peak, linear warmup, cosine decay to 0."""
    peak = scale_learning_rate(cfg.lr, cfg.batch_size, cfg.lr_scaling)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return warmup_cosine_schedule(peak, steps_per_epoch * cfg.epochs, warmup)


BN_MIN_IMAGES = 16  # per forward pass: fewer make batch-norm statistics noisy


def recipe_warnings(cfg: StageConfig, world_size: int, labeled: bool) -> list[str]:
    """Settings of any stage that run but usually give a poor model, each with its fix (logged as warnings;
    a stage adds its own in ``Parts.warnings``). ``labeled``: the stage trains on a labeled subset."""
    found = []
    if 0 < cfg.epochs <= cfg.warmup_epochs:
        found.append(f"--epochs {cfg.epochs} <= --warmup-epochs {cfg.warmup_epochs:g}: the run ends while the learning "
                     "rate is still rising, which usually leaves a poorly trained model; train longer or lower "
                     f"--warmup-epochs (e.g. {max(cfg.epochs // 10, 0)})")
    per_pass = cfg.micro_batch or cfg.batch_size // max(world_size, 1)
    if per_pass < BN_MIN_IMAGES:
        found.append(f"batch norm sees {per_pass} images per forward pass (the paper: 4096 over 32-128 devices, "
                     f">= 32 each): its statistics are noisy; use a larger --batch-size"
                     + (" or --micro-batch" if cfg.micro_batch else "")
                     + (" (with few labels every labeled image is already in the batch)" if labeled else ""))
    return found
