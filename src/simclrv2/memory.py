"""The memory buffer of SimCLRv2: a momentum encoder whose outputs are queued as negatives.

Paper, Sec. 2 ("we also incorporate the memory mechanism from MoCo"; He et al., "Momentum
Contrast for Unsupervised Visual Representation Learning", CVPR 2020): an exponential moving
average (decay 0.999) of the online encoder and head projects both views; the projections,
L2-normalised and gathered from every process, enter a first-in-first-out queue of K entries
that serve as extra negatives. Not in the official code; the paper reports about +1%.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist_utils


class MemoryQueue(nn.Module):
    """A ring buffer of ``size`` unit vectors; ``enqueue`` overwrites the oldest entries.

    Starts with random unit vectors (as MoCo) so that the number of negatives is constant from
    the first step. Its state (``keys``, ``pointer``) is saved in the checkpoint.
    """

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        size = self.keys.shape[0]
        n = keys.shape[0]
        if n > size:
            keys, n = keys[-size:], size
        slots = (self.pointer + torch.arange(n, device=keys.device)) % size
        self.keys.index_copy_(0, slots, keys.to(self.keys.dtype))
        self.pointer.copy_((self.pointer + n) % size)


class MomentumEncoder(nn.Module):
    """An EMA copy of a network: ``update`` moves it towards the online weights.

    Parameters follow ``ema = m * ema + (1 - m) * online``; buffers (BN running statistics) are
    copied. The copy never receives gradients.
    """

    def __init__(self, online: nn.Module, momentum: float = 0.999):
        super().__init__()
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.model = copy.deepcopy(online)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        ema_params = list(self.model.parameters())
        online_params = [p.detach() for p in online.parameters()]
        torch._foreach_lerp_(ema_params, online_params, 1.0 - self.momentum)
        for ema_b, b in zip(self.model.buffers(), online.buffers()):
            ema_b.copy_(b)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised projections of ``x`` by the momentum network, gathered across processes."""
        z, _ = self.model(x)
        return dist_utils.gather(F.normalize(z.float(), dim=1))
