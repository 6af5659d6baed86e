"""Losses of SimCLRv2: the contrastive NT-Xent loss and the distillation loss.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations" (ICML 2020)
and "Big Self-Supervised Models are Strong Semi-Supervised Learners" (NeurIPS 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist_utils

LARGE_NUM = 1e9


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 to float32; keep float64 (so float64 checks of the losses stay exact)."""
    return x if x.dtype == torch.float64 else x.float()


class NTXentLoss(nn.Module):
    """Normalised-temperature cross entropy over two views, as the official ``add_contrastive_loss``.

    For view-1 sample i, the logits are its similarities to every view-2 sample (positive at i)
    and to every other view-1 sample (itself masked with -1e9), divided by the temperature; the
    same for view 2; the loss is the mean over i of the two cross entropies summed. When running
    distributed, the negatives are the *global* batch, gathered with gradient, so N processes
    give the loss and gradients of one process on the full batch. Optional extra negatives
    (``queue``, the MoCo-style memory of SimCLRv2) are appended to every row.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, queue: torch.Tensor | None = None) -> torch.Tensor:
        # At least float32 whatever the autocast state: 1/T-scaled logits in bf16 would lose
        # the small differences between negatives that the loss is made of.
        with torch.autocast(z1.device.type, enabled=False):
            z1 = F.normalize(at_least_float32(z1), dim=1)
            z2 = F.normalize(at_least_float32(z2), dim=1)
            n = z1.shape[0]
            z1_all = dist_utils.gather_with_grad(z1)
            z2_all = dist_utils.gather_with_grad(z2)
            total = z1_all.shape[0]
            offset = dist_utils.rank() * n
            local = torch.cat([z1, z2])
            keys = torch.cat([z1_all, z2_all])
            logits = local @ keys.T / self.temperature
            idx = torch.arange(n, device=z1.device) + offset
            rows = torch.arange(2 * n, device=z1.device)
            self_cols = torch.cat([idx, idx + total])
            positive_cols = torch.cat([idx + total, idx])
            logits[rows, self_cols] -= LARGE_NUM
            if queue is not None and queue.numel():
                logits = torch.cat([logits, local @ queue.to(local.dtype).T / self.temperature], dim=1)
            # Sum of the two directions, averaged over the n local samples.
            return F.cross_entropy(logits, positive_cols, reduction="sum") / n


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """-sum_y P_T(y|x; tau) log P_S(y|x; tau), averaged over the batch (SimCLRv2 Eq. 3).

    The teacher's logits are treated as fixed (detached): the gradient reaches only the student.
    """
    with torch.autocast(student_logits.device.type, enabled=False):
        teacher = F.softmax(at_least_float32(teacher_logits.detach()) / temperature, dim=1)
        log_student = F.log_softmax(at_least_float32(student_logits) / temperature, dim=1)
        return -(teacher * log_student).sum(1).mean()


def teacher_entropy(teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """-sum_y P_T(y|x; tau) log P_T(y|x; tau), averaged over the batch: the floor of
    ``distillation_loss``; the loss minus it is the KL divergence from teacher to student."""
    with torch.autocast(teacher_logits.device.type, enabled=False):
        log_p = F.log_softmax(at_least_float32(teacher_logits.detach()) / temperature, dim=1)
        return -(log_p.exp() * log_p).sum(1).mean()
