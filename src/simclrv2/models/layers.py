"""Building blocks of the SimCLRv2 ResNet that PyTorch has no exact equivalent for.

The official TensorFlow code (google-research/simclr, ``tf2/resnet.py``) uses TF "SAME" padding
in two places where PyTorch's symmetric ``padding=`` gives different numbers: the 3x3/2 max pool
of the stem and the 2x2/1 average pool of the ResNet-D shortcut. Official weights reproduce
official outputs only if these match, so they are implemented here and tested against
hand-computed references.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import BatchNorm


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one spatial dimension.

    TF pads so that the output has ceil(size / stride) elements, putting the odd extra
    element after: on an even input a 3x3/2 pool pads (0, 1), on an odd one (1, 1).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MaxPoolSame(nn.Module):
    """Max pool with TF "SAME" padding (padded cells never win the max)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel_size, self.stride)
        k, s = self.kernel_size, self.stride
        if top == bottom == left == right:
            # Odd inputs: symmetric, so PyTorch's implicit -inf padding does it without a copy.
            return F.max_pool2d(x, k, s, padding=top)
        if (top, left) == (0, 0) and bottom == right == 1:
            # Even inputs: padding after only. ceil_mode adds the one extra window that would
            # read the padded cell and ignores that cell, as -inf padding would.
            return F.max_pool2d(x, k, s, ceil_mode=True)
        x = F.pad(x, (left, right, top, bottom), value=-math.inf)
        return F.max_pool2d(x, k, s)


class AvgPoolSame2x2(nn.Module):
    """2x2/1 average pool with TF "SAME" padding, which averages over valid cells only.

    TF pads one cell after each spatial dimension and excludes the padding from the count.
    Replicating the last row/column and averaging all four cells gives exactly that: at the
    edge the replicated cells equal the valid ones they copy.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)


class AvgPoolDown2x2(nn.Module):
    """The ResNet-D stride-2 shortcut pool: zero-pad (0, 1) then 2x2/2 "VALID" average."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 2)


class Subsample(nn.Module):
    """Every ``stride``-th row and column, from the first: what a 1x1 convolution of that stride reads.

    The shortcut's 1x1 stride-2 convolution runs as this, then a 1x1 stride-1 convolution: the same
    result, bit for bit (tests/models/test_models.py), without PyTorch 2.13's CPU kernel for a strided 1x1
    convolution's backward in channels-last, which corrupts the heap on a batch of an odd size with few
    channels (5 images of 8 channels: a segfault or "double free" when fine-tuning on 5 labels)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::self.stride, ::self.stride]


def conv2d(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free conv with the official padding.

    TF's ``Conv2dFixedPadding`` pads (k-1)//2 before and the rest after when strided and uses
    "SAME" otherwise; for the odd kernels used here both are symmetric k//2 padding.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"only odd kernels keep TF padding symmetric, got {kernel_size}")
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, bias=False)


def init_conv_(weight: torch.Tensor) -> None:
    """TF ``VarianceScaling()`` default: fan-in, scale 1, normal truncated at 2 std."""
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    # 0.8796... is the std of a unit normal truncated to [-2, 2]; TF divides by it so that
    # the truncated distribution has the intended variance.
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


class SelectiveKernelConv(nn.Module):
    """Selective-kernel 3x3 conv of SimCLRv2 (SKNet, Li et al. 2019, as the official code has it).

    One 3x3 conv with 2f outputs, BN-ReLU, split into two paths of f channels. A squeeze
    (global average of the summed paths) -> 1x1 conv -> BN-ReLU -> 1x1 conv to 2f gives two
    logits per channel; a softmax over the paths weights their sum. Both paths are 3x3.
    """

    def __init__(self, in_ch: int, filters: int, stride: int, sk_ratio: float, min_dim: int = 32):
        super().__init__()
        self.filters = filters
        mid = max(int(filters * sk_ratio), min_dim)
        self.conv = conv2d(in_ch, 2 * filters, 3, stride)
        self.bn = BatchNorm(2 * filters)
        self.fc1 = nn.Conv2d(filters, mid, 1, bias=False)
        self.fc1_bn = BatchNorm(mid)
        self.fc2 = nn.Conv2d(mid, 2 * filters, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        b, _, h, w = x.shape
        paths = x.view(b, 2, self.filters, h, w)
        squeeze = paths.sum(1).mean((2, 3), keepdim=True)
        attention = self.fc2(F.relu(self.fc1_bn(self.fc1(squeeze))))
        # (softmax runs in fp32 under autocast; the weighted sum keeps the activations' dtype and, written
        # as two products, their memory format: channels-last stays channels-last)
        a = attention.view(b, 2, self.filters, 1, 1).softmax(dim=1).to(x.dtype)
        return paths[:, 0] * a[:, 0] + paths[:, 1] * a[:, 1]
