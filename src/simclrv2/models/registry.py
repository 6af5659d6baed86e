"""Model names: ``r{depth}_{width}x_sk{0|1}`` as the released SimCLRv2 checkpoints are named."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UserError
from .resnet import BLOCKS_PER_GROUP, ResNet

SK_RATIO = 0.0625
NAME_PATTERN = re.compile(r"^r(\d+)_(\d+(?:\.\d+)?)x_sk([01])\Z")

# The 13 models Google released (SPEC, Table 1 of the paper).
RELEASED = (
    "r50_1x_sk0", "r50_1x_sk1", "r50_2x_sk0", "r50_2x_sk1",
    "r101_1x_sk0", "r101_1x_sk1", "r101_2x_sk0", "r101_2x_sk1",
    "r152_1x_sk0", "r152_1x_sk1", "r152_2x_sk0", "r152_2x_sk1", "r152_3x_sk1",
)


@dataclass(frozen=True)
class EncoderSpec:
    depth: int
    width: float
    sk: bool

    @property
    def name(self) -> str:
        width = int(self.width) if float(self.width).is_integer() else self.width
        return f"r{self.depth}_{width}x_sk{int(self.sk)}"


def parse_model_name(name: str) -> EncoderSpec:
    """``"r50_2x_sk1"`` -> EncoderSpec(50, 2, True); a one-line UserError for anything else."""
    match = NAME_PATTERN.match(name)
    if not match or int(match.group(1)) not in BLOCKS_PER_GROUP or float(match.group(2)) <= 0:
        raise UserError(
            f"unknown model {name!r}: use r{{depth}}_{{width}}x_sk{{0|1}} with depth in "
            f"{sorted(BLOCKS_PER_GROUP)} and a positive width, e.g. r50_1x_sk1 "
            "(`simclrv2 models` lists them)"
        )
    return EncoderSpec(int(match.group(1)), float(match.group(2)), match.group(3) == "1")


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
