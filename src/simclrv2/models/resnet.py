"""The SimCLRv2 encoder: a post-activation ResNet with width multiplier and selective kernels.

Faithful to the official ``tf2/resnet.py`` (google-research/simclr): ResNet v1 with the stride in
the 3x3 conv of the bottleneck, no conv biases, zero-initialised last BN gamma in every block,
a projection shortcut on the first block of *every* group (also where channel counts already
match), and for SK models the ResNet-D deep stem and average-pool shortcut. Inputs of 32 px or
less use the CIFAR stem (one 3x3/1 conv, no max pool).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..names import BLOCKS_PER_GROUP
from .batchnorm import BatchNorm, kept_running_stats
from .layers import (
    AvgPoolDown2x2,
    AvgPoolSame2x2,
    MaxPoolSame,
    SelectiveKernelConv,
    Subsample,
    conv2d,
    init_conv_,
)


def scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier (exact for the official integer widths)."""
    return max(1, int(round(channels * width)))


class Shortcut(nn.Module):
    """Projection shortcut: 1x1 conv + BN, ResNet-D style (pool, then 1x1/1 conv) with SK."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, resnet_d: bool):
        super().__init__()
        if resnet_d:
            self.pool = AvgPoolDown2x2() if stride > 1 else AvgPoolSame2x2()
            self.conv = conv2d(in_ch, out_ch, 1, 1)
        else:  # a 1x1 conv of stride s: the input subsampled, then a 1x1 stride-1 conv (see Subsample)
            self.pool = Subsample(stride) if stride > 1 else nn.Identity()
            self.conv = conv2d(in_ch, out_ch, 1, 1)
        self.bn = BatchNorm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pool(x)))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). SK only changes the shortcut, as in the official code."""

    expansion = 1

    def __init__(self, in_ch: int, filters: int, stride: int, projection: bool, sk_ratio: float):
        super().__init__()
        self.shortcut = Shortcut(in_ch, filters, stride, sk_ratio > 0) if projection else None
        self.conv1 = conv2d(in_ch, filters, 3, stride)
        self.bn1 = BatchNorm(filters)
        self.conv2 = conv2d(filters, filters, 3, 1)
        self.bn2 = BatchNorm(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + shortcut)

    def last_bn(self) -> BatchNorm:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided; selective-kernel when sk_ratio > 0) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, in_ch: int, filters: int, stride: int, projection: bool, sk_ratio: float):
        super().__init__()
        out_ch = 4 * filters
        self.shortcut = Shortcut(in_ch, out_ch, stride, sk_ratio > 0) if projection else None
        self.conv1 = conv2d(in_ch, filters, 1)
        self.bn1 = BatchNorm(filters)
        if sk_ratio > 0:
            self.conv2 = SelectiveKernelConv(filters, filters, stride, sk_ratio)
            self.bn2 = None  # the SK conv carries its own BN-ReLU
        else:
            self.conv2 = conv2d(filters, filters, 3, stride)
            self.bn2 = BatchNorm(filters)
        self.conv3 = conv2d(filters, out_ch, 1)
        self.bn3 = BatchNorm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.bn2 is not None:
            out = F.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        return F.relu(out + shortcut)

    def last_bn(self) -> BatchNorm:
        return self.bn3


class Stem(nn.Module):
    """The first layers: 7x7/2 conv (or the ResNet-D 3-conv stem with SK), BN-ReLU, SAME max pool.

    The small-image (CIFAR) stem is a single 3x3/1 conv + BN-ReLU without pooling.
    """

    def __init__(self, width: float, sk: bool, small_images: bool):
        super().__init__()
        out_ch = scaled(64, width)
        if small_images:
            convs = [conv2d(3, out_ch, 3, 1)]
            self.pool = nn.Identity()
        elif sk:
            half = out_ch // 2
            convs = [conv2d(3, half, 3, 2), conv2d(half, half, 3, 1), conv2d(half, out_ch, 3, 1)]
            self.pool = MaxPoolSame(3, 2)
        else:
            convs = [conv2d(3, out_ch, 7, 2)]
            self.pool = MaxPoolSame(3, 2)
        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(BatchNorm(c.out_channels) for c in convs)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in zip(self.convs, self.bns):
            x = F.relu(bn(conv(x)))
        return self.pool(x)


class ResNet(nn.Module):
    """SimCLRv2 ResNet encoder; ``forward`` returns globally average-pooled features.

    Args:
        depth: 18, 34, 50, 101, 152 or 200.
        width: width multiplier (1, 2, 3 for the released models; any positive value works).
        sk_ratio: 0 for plain ResNets, 0.0625 for the released selective-kernel models.
        small_images: use the CIFAR stem (for inputs of 32 px or less).
    """

    def __init__(self, depth: int = 50, width: float = 1, sk_ratio: float = 0.0,
                 small_images: bool = False):
        super().__init__()
        if depth not in BLOCKS_PER_GROUP:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS_PER_GROUP)}, got {depth}")
        if width <= 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        kind, counts = BLOCKS_PER_GROUP[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.width, self.sk_ratio, self.small_images = depth, width, sk_ratio, small_images
        self.stem = Stem(width, sk_ratio > 0, small_images)
        in_ch = self.stem.out_channels
        groups = []
        for base, count, stride in zip((64, 128, 256, 512), counts, (1, 2, 2, 2)):
            filters = scaled(base, width)
            blocks = []
            for i in range(count):
                blocks.append(block(in_ch, filters, stride if i == 0 else 1, i == 0, sk_ratio))
                in_ch = filters * block.expansion
            groups.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = groups
        self.out_dim = in_ch
        # Activation checkpointing (--activation-checkpointing): only the input of the stem and of each residual
        # block is kept in the forward pass; the backward pass runs each block again, one at a time. Set by
        # ``engine.placement``.
        self.checkpoint_blocks = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: truncated-normal fan-in convs, BN (1, 0), last BN gamma 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_(m.weight)
            elif isinstance(m, BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_bn().weight)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before pooling."""
        if not (self.checkpoint_blocks and torch.is_grad_enabled()):
            return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        for part in (self.stem, *self.layer1, *self.layer2, *self.layer3, *self.layer4):
            x = checkpoint(part, x, use_reentrant=False, preserve_rng_state=False,
                           context_fn=functools.partial(_recompute_context, part))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x).mean((2, 3))


def _recompute_context(part: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """The forward pass as usual; the backward pass's second run of a block normalises with the same batch
    statistics, and the BN running averages it moves again are put back."""
    return contextlib.nullcontext(), kept_running_stats(part)
