"""The names users write and what they may be: encoder names (``r50_1x_sk1``), label-selection
methods, export formats, pipeline presets and image file extensions.

Torch-free, so that the command line's ``--help`` can list them without importing torch; the
modules that implement each name import it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UserError

# -- Encoders: r{depth}_{width}x_sk{0|1}, as the released SimCLRv2 checkpoints are named ----------

# depth -> (block kind, blocks per group) of the ResNet (``models.resnet``)
BLOCKS_PER_GROUP = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

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


# -- Choices of the other commands ------------------------------------------------------------

METHODS = ("typiclust", "probcover", "kcenter", "random")  # `select --method` (``selection.methods``)
DEFAULT_METHOD = "typiclust"

FORMATS = ("onnx", "torchscript", "safetensors")  # `export --format` (``convert.export``)

PIPELINE_PRESETS = ("demo", "cifar", "imagenet")  # configs/*.yaml for `run`; the rest are per stage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})  # files read as images
