"""Heads of SimCLRv2: the deep projection head and the linear classifier.

Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised Learners" (NeurIPS 2020),
Sec. 2: a 3-layer projection head, and fine-tuning "from the middle" of it (from layer 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import BatchNorm


class ProjectionLayer(nn.Module):
    """Dense without bias -> BN; ReLU on all but the last layer of the head.

    The official last layer has BN with gamma but without beta (``center=False``); it is a
    BN without affine parameters times a learned per-channel ``scale``, so that no frozen
    bias exists that a later ``requires_grad_(True)`` could wake up.
    """

    def __init__(self, in_dim: int, out_dim: int, last: bool):
        super().__init__()
        self.last = last
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.normal_(self.linear.weight, std=0.01)
        self.bn = BatchNorm(out_dim, affine=not last)
        self.scale = nn.Parameter(torch.ones(out_dim)) if last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.linear(x))
        return x * self.scale if self.last else F.relu(x)


class ProjectionHead(nn.Module):
    """The SimCLRv2 projection head g(.) (3 layers: in -> hidden -> hidden -> out).

    ``forward`` returns the projection z used by the contrastive loss; ``hiddens`` returns
    [h0, h1, ..., hL] where h0 is the encoder output and hj the output of layer j (after
    BN-ReLU), the representations one can fine-tune from.
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128,
                 num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"the projection head needs at least one layer, got {num_layers}")
        hidden_dim = hidden_dim or in_dim
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(
            ProjectionLayer(dims[i], dims[i + 1], last=i == num_layers - 1)
            for i in range(num_layers)
        )

    def hiddens(self, h: torch.Tensor) -> list[torch.Tensor]:
        out = [h]
        for layer in self.layers:
            out.append(layer(out[-1]))
        return out

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)
        return h


class LinearHead(nn.Module):
    """Linear classifier with bias, weights drawn from N(0, 0.01^2), bias 0 (official init)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
