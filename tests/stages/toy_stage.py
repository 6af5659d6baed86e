"""A stage defined outside src/, as the README's "Layout, and adding a stage" says to write one: the proof
that a stage is one module plus its config (tests/stages/test_toy_stage.py; registered for the whole suite
by tests/conftest.py, and as an installed plugin through the ``simclrv2.stages`` entry point).

The toy regresses each image's mean brightness with a one-output classifier network (mean squared
error). Its loss weight ramps up over the first ``--ramp-steps`` steps: a schedule inside the step, which
needs the step index the engine passes. This file is torch-free (``--help`` reads it); the step and
``build`` are in ``toy_step``, which the ``Stage`` names.
"""

from __future__ import annotations

from dataclasses import dataclass

from simclrv2.config import StageConfig, option
from simclrv2.stages import Stage


@dataclass
class ToyConfig(StageConfig):
    """The toy stage: each image's mean brightness, regressed (a test of the stage contract)."""

    model: str = option("r18_0.125x_sk0", "encoder, r{depth}_{width}x_sk{0|1}")
    ramp_steps: int = option(4, "steps over which the loss weight rises from 1/N to 1", minimum=1)


TOY = Stage("toy", "toy", "a test-only stage: regress each image's mean brightness", ToyConfig, "toy_step")
