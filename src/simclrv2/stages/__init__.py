"""The stages of SimCLRv2, each a declared part the engine runs (``simclrv2.engine``).

A stage is one short module: its training step class and ``build(cfg, runtime) -> Parts``; its
config (``StageConfig`` plus its own options) is in ``configs``, torch-free for the command line.
``STAGES`` lists them for the command line and the pipeline, and imports a stage's module (and
torch) only when its ``build`` is asked for; ``run(cfg)`` trains the stage a config belongs to. A
new stage is a new module here, its config and one line in ``STAGES``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .configs import DistillConfig, FinetuneConfig, LinearEvalConfig, PretrainConfig

if TYPE_CHECKING:
    from ..engine.stage import Build


@dataclass(frozen=True)
class Stage:
    """A stage as the command line and the pipeline see it."""

    name: str  # config section, folder and record name
    command: str  # the sub-command (the name with '-' for '_', as every flag)
    help: str
    config: type
    module: str  # simclrv2.stages.<module> defines build

    @property
    def build(self) -> Build:
        """``build(cfg, runtime) -> Parts`` of the stage (importing its module imports torch)."""
        return importlib.import_module(f"{__name__}.{self.module}").build


STAGES = {s.name: s for s in (
    Stage("pretrain", "pretrain", "step 1: contrastive pretraining on unlabeled images",
          PretrainConfig, "pretrain"),
    Stage("finetune", "finetune", "step 2: fine-tune a pretrained network on the labeled images (or --from scratch)",
          FinetuneConfig, "finetune"),
    Stage("linear_eval", "linear-eval", "linear classifier on frozen features (the standard representation measure)",
          LinearEvalConfig, "linear_eval"),
    Stage("distill", "distill", "step 3: distill a fine-tuned teacher into a student on unlabeled images",
          DistillConfig, "distill"),
)}


def run(cfg: Any) -> dict[str, Any]:
    """Train the stage whose config ``cfg`` is; the result (also in ``cfg.out``/result.json)."""
    from ..config import validate
    from ..engine.loop import run as run_engine

    stage = next(s for s in STAGES.values() if type(cfg) is s.config)
    return run_engine(validate(cfg), stage.build)
