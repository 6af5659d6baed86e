"""Batch normalization whose moving variance is the official code's: the biased batch variance.

PyTorch's BatchNorm normalises with the biased batch variance but moves ``running_var`` toward the
unbiased one (times n / (n - 1)). The official SimCLRv2 code (TF2 ``BatchNormalization(fused=False)``,
TF1 cross-replica BN) moves it toward the biased one, the variance it normalised with. The two differ
by ``momentum * var / (n - 1)`` per step: nothing at batch 4096 over 7x7 maps, a lot for the projection
head and the selective-kernel attention (n = the batch size) at the small batches of CPU runs and of
fine-tuning on 20-145 labels. Their eval-mode outputs (kNN, linear evaluation, ``evaluate``,
``predict``, exported models) follow the running statistics.

``BatchNorm`` keeps PyTorch's fused kernel, lets it write its update into a copy of the running
variance, and derives the official update from it, exactly: with r the running variance before the
step, m the momentum, v the biased batch variance and n the count per channel, PyTorch's update is
t = (1 - m) r + m v n / (n - 1), and the official one (1 - m) r + m v = ((n - 1) t + (1 - m) r) / n.
No extra pass over the activations.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RECALIBRATION_IMAGES  # noqa: F401 - defined with the options (torch-free), imported from here too


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """``nn.BatchNorm1d``/``2d`` (any input of 2 or more dimensions, channels second) whose running
    variance moves toward the biased batch variance, as the official code's does."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats) or self.momentum is None:
            return super().forward(x)
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        # (a copy: autograd keeps the tensor the kernel got, which must not change before backward)
        moved = self.running_var.clone()
        out = F.batch_norm(x, self.running_mean, moved, self.weight, self.bias, True, self.momentum, self.eps)
        with torch.no_grad():
            n, m = x.numel() / x.shape[1], self.momentum
            self.running_var.mul_((1 - m) / n).add_(moved, alpha=(n - 1) / n)
        return out


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """BN layers in training mode normalise with batch statistics but leave their running ones
    (and ``num_batches_tracked``) unchanged: a pass whose statistics another pass will record."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


@contextmanager
def kept_running_stats(model: nn.Module) -> Iterator[None]:
    """BN layers run as they are (the same ops, so the same tensors saved for backward) but their running
    statistics are put back afterwards: a second run of a pass whose statistics were already recorded (the
    recomputation of activation checkpointing)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[t.clone() for t in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in layers]
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, values in zip(layers, saved):
                for buffer, value in zip((layer.running_mean, layer.running_var, layer.num_batches_tracked), values):
                    buffer.copy_(value)


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterator[torch.Tensor]) -> int:
    """Re-estimate every BN layer's running statistics as the mean of its batch statistics over
    ``batches`` (network inputs), as PreciseBN does (Wu & Johnson, "Rethinking 'Batch' in BatchNorm",
    2021): at the end of a short or few-label run the moving averages lag the weights they describe.

    Batch k enters with momentum 1 / (k + 1), so the running mean and (biased) variance end as the plain
    averages over the batches. Returns the number of batches; the model keeps its training mode.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    model.train()
    count = 0
    try:
        for x in batches:
            for layer in layers:
                layer.momentum = 1.0 / (count + 1)
            model(x)
            count += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return count
