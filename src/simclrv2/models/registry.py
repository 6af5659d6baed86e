"""Encoders by name: ``r{depth}_{width}x_sk{0|1}`` as the released SimCLRv2 checkpoints are named
(the names are parsed in ``simclrv2.names``, torch-free)."""

from __future__ import annotations

import torch

from ..names import BLOCKS_PER_GROUP, SK_RATIO, EncoderSpec, parse_model_name
from .resnet import ResNet


def list_models() -> list[str]:
    """Every registered name: all depths, widths 1x-3x, with and without selective kernels."""
    return [
        EncoderSpec(depth, width, sk).name
        for depth in sorted(BLOCKS_PER_GROUP)
        for width in (1, 2, 3)
        for sk in (False, True)
    ]


def create_model(name: str, small_images: bool = False) -> ResNet:
    """Build the encoder registered under ``name`` (e.g. ``create_model("r50_1x_sk1")``).

    ``small_images=True`` swaps in the CIFAR stem for inputs of 32 px or less.
    """
    spec = parse_model_name(name)
    return ResNet(spec.depth, spec.width, SK_RATIO if spec.sk else 0.0, small_images)


def count_parameters(module: torch.nn.Module) -> int:
    """Trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def encoder_parameter_count(name: str, small_images: bool = False) -> int:
    """Trainable encoder parameters, counted on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        return count_parameters(create_model(name, small_images))
