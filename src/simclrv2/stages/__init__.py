"""The stages of SimCLRv2, each a declared part the engine runs (``simclrv2.engine``).

A stage is one short module: its config (``StageConfig`` plus its own options), its training
step class, and ``build(cfg, runtime) -> Parts``. ``STAGES`` lists them for the command line and
the pipeline; ``run(cfg)`` trains the stage a config belongs to. A new stage is a new module here
and one line in ``STAGES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.stage import Build
from . import distill, finetune, linear_eval, pretrain


@dataclass(frozen=True)
class Stage:
    """A stage as the command line and the pipeline see it."""

    name: str  # config section, folder and record name
    command: str  # the sub-command (the name with '-' for '_', as every flag)
    help: str
    config: type
    build: Build


STAGES = {s.name: s for s in (
    Stage("pretrain", "pretrain", "step 1: contrastive pretraining on unlabeled images",
          pretrain.PretrainConfig, pretrain.build),
    Stage("finetune", "finetune", "step 2: fine-tune a pretrained network on the labeled images (or --from scratch)",
          finetune.FinetuneConfig, finetune.build),
    Stage("linear_eval", "linear-eval", "linear classifier on frozen features (the standard representation measure)",
          linear_eval.LinearEvalConfig, linear_eval.build),
    Stage("distill", "distill", "step 3: distill a fine-tuned teacher into a student on unlabeled images",
          distill.DistillConfig, distill.build),
)}


def run(cfg: Any) -> dict[str, Any]:
    """Train the stage whose config ``cfg`` is; the result (also in ``cfg.out``/result.json)."""
    from ..config import validate
    from ..engine.loop import run as run_engine

    stage = next(s for s in STAGES.values() if type(cfg) is s.config)
    return run_engine(validate(cfg), stage.build)
