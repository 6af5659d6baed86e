"""Optimizers and learning-rate schedules of SimCLRv2.

LARS (You et al., "Large Batch Training of Convolutional Networks", 2017) as the official
``lars_optimizer.py`` has it, with classic momentum. Schedules are precomputed per-step arrays
(linear warmup, then cosine decay to 0, as the official ``WarmUpAndCosineDecay``).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from torch import nn

EETA = 0.001


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with classic momentum.

    For each parameter w with gradient g (param-group options ``weight_decay`` and ``lars``)::

        g <- g + weight_decay * w
        trust = eeta * ||w|| / ||g||   (1 if either norm is 0, or if the group has lars=False)
        v <- momentum * v + lr * trust * g
        w <- w - v

    BN parameters and biases go in a group with ``weight_decay=0, lars=False``
    (see ``param_groups``). The update runs as multi-tensor (foreach) ops with no host sync.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eeta: float = EETA, nesterov: bool = False):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or eeta <= 0:
            raise ValueError(f"invalid LARS settings lr={lr} momentum={momentum} "
                             f"weight_decay={weight_decay} eeta={eeta}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eeta=eeta,
                        nesterov=nesterov, lars=True)
        super().__init__(params, defaults)
        self._scratch: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # The update is built in place in a per-parameter scratch tensor (allocated once, not part
            # of the optimizer state: it holds nothing between steps); p.grad is left as it is.
            update, bufs = [], []
            for p in params:
                if p not in self._scratch:
                    self._scratch[p] = torch.empty_like(p, memory_format=torch.preserve_format)
                update.append(self._scratch[p])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_copy_(update, [p.grad for p in params])
            if group["weight_decay"]:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            if group["lars"]:
                w_norms = torch.stack(torch._foreach_norm(params))
                g_norms = torch.stack(torch._foreach_norm(update))
                trust = torch.where((w_norms > 0) & (g_norms > 0),
                                    group["eeta"] * w_norms / g_norms.clamp_min(1e-30), 1.0)
                torch._foreach_mul_(update, list((trust * group["lr"]).unbind()))
            else:
                torch._foreach_mul_(update, group["lr"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, update)
            if group["nesterov"]:
                torch._foreach_add_(update, bufs, alpha=group["momentum"])
                torch._foreach_sub_(params, update)
            else:
                torch._foreach_sub_(params, bufs)
        return loss


def param_groups(model: nn.Module, weight_decay: float,
                 no_adapt_prefixes: tuple[str, ...] = ()) -> list[dict]:
    """Split parameters as the official code does; each group has a ``name``.

    BN parameters and biases (every parameter with at most one dimension in these models)
    get neither weight decay nor the LARS trust ratio (group "no_decay"); other weights get
    both ("decay"). Parameters under ``no_adapt_prefixes`` (the monitoring classifier, the
    official ``head_supervised``) go to groups "head_decay" (weights: decay, no trust ratio)
    and "head_no_decay" (biases), so that they can also be given their own learning rate.
    """
    groups = {
        "decay": {"params": [], "weight_decay": weight_decay, "lars": True},
        "no_decay": {"params": [], "weight_decay": 0.0, "lars": False},
        "head_decay": {"params": [], "weight_decay": weight_decay, "lars": False},
        "head_no_decay": {"params": [], "weight_decay": 0.0, "lars": False},
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = "head_" if name.startswith(no_adapt_prefixes) else ""
        if p.ndim <= 1:
            groups[head + "no_decay"]["params"].append(p)
        elif head:
            groups["head_decay"]["params"].append(p)
        else:
            groups["decay"]["params"].append(p)
    return [{"name": name, **g} for name, g in groups.items() if g["params"]]


def build_optimizer(name: str, groups: list[dict], lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``lars`` (official), ``sgd`` (Nesterov momentum, as the official "momentum") or ``adamw``."""
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    plain = [{k: v for k, v in g.items() if k not in ("lars",)} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(plain, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: use lars, sgd or adamw")


def scale_learning_rate(base_lr: float, batch_size: int, scaling: str) -> float:
    """``linear``: base * B / 256; ``sqrt``: base * sqrt(B) (the paper's v2 pretraining rule)."""
    if scaling == "linear":
        return base_lr * batch_size / 256.0
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    raise ValueError(f"unknown learning-rate scaling {scaling!r}: use linear or sqrt")


def warmup_cosine_schedule(peak_lr: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Per-step learning rates: linear warmup from 0 to ``peak_lr``, then cosine decay to 0."""
    steps = np.arange(total_steps, dtype=np.float64)
    warmup_steps = min(warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = (steps - warmup_steps) / decay_steps
    cosine = 0.5 * peak_lr * (1 + np.cos(np.pi * progress))
    warm = peak_lr * steps / max(warmup_steps, 1)
    return np.where(steps < warmup_steps, warm, cosine)
